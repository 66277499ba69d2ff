"""Helpers for testing code that uses shadowdb (shadowdb's own tests use them too).

* :class:`StatementCounter` counts the statements a block sends to each database.
* :func:`write_legacy_cells` fills registered cells with instance groups the way years
  of Nova leave them (NULL timestamps, nameless groups, duplicate member rows, policies
  all soft-deleted, members whose instances are gone or in cell0, long unicode names,
  soft-deleted groups), seeded and reproducible: a rehearsal of the cutover on data as
  untidy as production's, with the expected end state of every group to check it by.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import re
import threading
import uuid as uuid_mod
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event

from shadowdb import models

if TYPE_CHECKING:
    from shadowdb.databases import Databases

__all__ = [
    "LEGACY_SHAPES",
    "LegacyGroup",
    "StatementCounter",
    "plan_legacy_groups",
    "write_legacy_cells",
]


class StatementCounter:
    """Count the SQL statements sent through some engines while the block runs.

    Example::

        with StatementCounter({"api": dbs.api, "cell1": dbs.cell("cell1").engine}) as n:
            InstanceGroup.get_by_uuid(ctx, uuid)
        assert n.counts["cell1"] == 0

    Attributes:
        counts: statements per engine name.
        statements: (engine name, SQL text) in the order sent.
        seen: per engine name, (SQL text, parameters) in the order sent.
    """

    def __init__(self, engines: dict[str, sa.Engine] | Iterable[tuple[str, sa.Engine]]) -> None:
        self._engines = dict(engines)
        self.counts: dict[str, int] = dict.fromkeys(self._engines, 0)
        self.statements: list[tuple[str, str]] = []
        self.seen: dict[str, list[tuple[str, Any]]] = {name: [] for name in self._engines}
        self._lock = threading.Lock()
        self._listeners: list[tuple[sa.Engine, Any]] = []

    def __enter__(self) -> StatementCounter:
        for name, engine in self._engines.items():

            def listener(*args: Any, _name: str = name) -> None:
                statement, parameters = args[2], args[3]
                with self._lock:
                    self.counts[_name] += 1
                    self.statements.append((_name, str(statement)))
                    self.seen[_name].append((str(statement), parameters))

            event.listen(engine, "before_cursor_execute", listener)
            self._listeners.append((engine, listener))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for engine, listener in self._listeners:
            event.remove(engine, "before_cursor_execute", listener)
        self._listeners.clear()

    def total(self, *names: str) -> int:
        """Return the number of statements sent through the named engines (all if none)."""
        return sum(n for name, n in self.counts.items() if not names or name in names)

    def texts(self, name: str, containing: str = "") -> list[str]:
        """Return the statements engine ``name`` ran whose text contains ``containing``."""
        return [text for text, _ in self.seen[name] if containing in text]

    def sent(self) -> str:
        """Return everything sent to any database: statements and parameters, as text.

        Hex literals written into a statement (MariaDB's member lists,
        :class:`shadowdb.packed.Hex`) are decoded, so a value is found whichever way it
        travelled.
        """

        def decoded(text: str) -> str:
            return _HEX_LITERAL.sub(lambda m: bytes.fromhex(m[1]).decode(), text)

        return repr([(decoded(t), params) for sent in self.seen.values() for t, params in sent])


_HEX_LITERAL = re.compile(r"X'([0-9a-f]*)'")


# --------------------------------------------------------------------------- legacy cells

#: Each shape a legacy group may take, with the share of groups that take it (a group
#: may take several; the rest are tidy). Shares follow what long-lived clouds hold: most
#: groups tidy, a few percent of each oddity, a tenth deleted long ago.
LEGACY_SHAPES: Mapping[str, float] = {
    "null-timestamps": 0.04,  # created_at and updated_at NULL (rows older than the columns)
    "nameless": 0.05,  # name NULL
    "no-user": 0.03,  # user_id NULL
    "two-policies": 0.03,  # two live policy rows (Nova's API once took a list)
    "policies-deleted": 0.02,  # every policy row soft-deleted: no live policy
    "duplicate-members": 0.04,  # one instance with two live member rows
    "removed-members": 0.08,  # soft-deleted member rows beside the live ones
    "member-instance-deleted": 0.05,  # a member whose instance row is soft-deleted
    "member-unknown": 0.03,  # a member no instance row or mapping knows
    "member-in-cell0": 0.02,  # a member whose instance is mapped to cell0 (never a host)
    "long-unicode-name": 0.04,  # 255 characters, most of them not ASCII
    "empty": 0.10,  # no member at all
    "deleted-group": 0.10,  # the group itself soft-deleted, with its rows
}

_POLICIES = ("anti-affinity", "affinity", "soft-anti-affinity", "soft-affinity")
_LONG = "Ωμέγα-グループ-группа-"  # characters every utf8 (3-byte) column stores


@dataclasses.dataclass(frozen=True)
class LegacyGroup:
    """One group :func:`write_legacy_cells` wrote, and what a faithful migration keeps.

    Attributes:
        uuid: the group's uuid.
        cell: the name of the cell holding it.
        shapes: the :data:`LEGACY_SHAPES` it took (empty: tidy).
        deleted: the group is soft-deleted; no migration may bring it back.
        name, user_id, project_id, created_at, updated_at: its row, as written.
        policies: its live policies, each once, in insertion order.
        members: its live members, each once, in insertion order.
        hosts: the hosts of its members' live instances (what ``get_hosts`` answers).
    """

    uuid: str
    cell: str
    shapes: tuple[str, ...]
    deleted: bool
    name: str | None
    user_id: str | None
    project_id: str | None
    created_at: dt.datetime | None
    updated_at: dt.datetime | None
    policies: tuple[str, ...]
    members: tuple[str, ...]
    hosts: frozenset[str]


def write_legacy_cells(
    dbs: Databases,
    *,
    groups: int,
    seed: int,
    cells: Sequence[str] | None = None,
    shapes: Mapping[str, float] = LEGACY_SHAPES,
) -> list[LegacyGroup]:
    """Write ``groups`` legacy groups into each named cell, as Nova would have left them.

    Groups go straight into the cells' Nova tables, with the instances their members
    name (in the cell, or in cell0 for ``member-in-cell0``) and the ``instance_mappings``
    rows that route them, as Nova writes them. The same ``seed`` writes the same
    deployment (uuids included). Nothing of shadowdb's own is written: the cells are a
    deployment before the cutover.

    Args:
        groups: groups per cell (deleted ones included).
        seed: the seed of every random choice.
        cells: the cells to fill (default: every registered cell but cell0).
        shapes: the share of groups taking each shape (default :data:`LEGACY_SHAPES`).

    Returns:
        Every group written, in the order written.
    """
    registered = dbs.refresh_cells()
    targets = (
        [dbs.cell(name) for name in cells]
        if cells is not None
        else [c for c in registered if not c.is_cell0]
    )
    cell0 = next((c for c in registered if c.is_cell0), None)
    written: list[LegacyGroup] = []
    for cell in targets:
        plan = _plan(cell.name, groups, seed, shapes, cell0 is not None)
        mappings: list[dict[str, Any]] = []
        with cell.engine.begin() as conn:
            for group in plan:
                _write_group(conn, group)
                for instance in group.instances:
                    if instance.where == "cell":
                        conn.execute(models.cell_instances.insert().values(**instance.row()))
                        mappings.append(instance.mapping(cell.id))
        if cell0 is not None:
            in_cell0 = [i for g in plan for i in g.instances if i.where == "cell0"]
            if in_cell0:
                with cell0.engine.begin() as conn:
                    conn.execute(models.cell_instances.insert(), [i.row() for i in in_cell0])
                mappings.extend(i.mapping(cell0.id) for i in in_cell0)
        if mappings:
            with dbs.api.begin() as conn:
                conn.execute(models.api_instance_mappings.insert(), mappings)
        written.extend(g.expected() for g in plan)
    return written


def plan_legacy_groups(
    cell: str,
    *,
    groups: int,
    seed: int,
    shapes: Mapping[str, float] = LEGACY_SHAPES,
    with_cell0: bool = True,
) -> list[LegacyGroup]:
    """Return what :func:`write_legacy_cells` writes into ``cell``, writing nothing.

    Each cell's groups come from their own stream of the seed, so adding a cell to a
    rehearsal does not change the others. ``with_cell0``: whether cell0 is mapped (if
    not, no member is placed there).
    """
    return [g.expected() for g in _plan(cell, groups, seed, shapes, with_cell0)]


def _plan(
    cell: str, groups: int, seed: int, shapes: Mapping[str, float], with_cell0: bool
) -> list[_Planned]:
    unknown = set(shapes) - set(LEGACY_SHAPES)
    if unknown:
        raise ValueError(f"unknown legacy shapes: {', '.join(sorted(unknown))}")
    rng = random.Random(f"{seed}/{cell}")
    return [_plan_group(rng, cell, n, shapes, with_cell0) for n in range(groups)]


@dataclasses.dataclass
class _Instance:
    uuid: str
    where: str  # "cell", "cell0" or "nowhere"
    host: str | None
    project_id: str
    user_id: str | None
    deleted: bool
    created_at: dt.datetime

    def row(self) -> dict[str, Any]:
        return {
            "uuid": self.uuid,
            "host": self.host,
            "project_id": self.project_id,
            "user_id": self.user_id,
            "vm_state": "error" if self.where == "cell0" else "active",
            "created_at": self.created_at,
            "deleted": 0,
            "deleted_at": None,
        } | ({"deleted": 1, "deleted_at": self.created_at} if self.deleted else {})

    def mapping(self, cell_id: int) -> dict[str, Any]:
        return {
            "instance_uuid": self.uuid,
            "cell_id": cell_id,
            "project_id": self.project_id,
            "user_id": self.user_id,
            "queued_for_delete": self.deleted,
            "created_at": self.created_at,
        }


@dataclasses.dataclass
class _Planned:
    uuid: str
    cell: str
    shapes: tuple[str, ...]
    row: dict[str, Any]
    policies: list[tuple[str, bool]]  # (policy, live)
    members: list[tuple[str, bool]]  # (instance uuid, live row)
    instances: list[_Instance]

    def expected(self) -> LegacyGroup:
        live = [i for i in self.instances if i.where == "cell" and not i.deleted and i.host]
        members = tuple(dict.fromkeys(m for m, alive in self.members if alive))
        return LegacyGroup(
            uuid=self.uuid,
            cell=self.cell,
            shapes=self.shapes,
            deleted="deleted-group" in self.shapes,
            name=self.row["name"],
            user_id=self.row["user_id"],
            project_id=self.row["project_id"],
            created_at=self.row["created_at"],
            updated_at=self.row["updated_at"],
            policies=tuple(dict.fromkeys(p for p, alive in self.policies if alive)),
            members=members,
            hosts=frozenset(i.host for i in live if i.uuid in members and i.host),
        )


def _plan_group(
    rng: random.Random, cell: str, n: int, shapes: Mapping[str, float], with_cell0: bool
) -> _Planned:
    taken = tuple(s for s, share in shapes.items() if rng.random() < share)
    if not with_cell0:
        taken = tuple(s for s in taken if s != "member-in-cell0")
    uid = str(uuid_mod.UUID(int=rng.getrandbits(128), version=4))
    project = f"project-{rng.randrange(40):02d}"
    user = None if "no-user" in taken else f"user-{rng.randrange(200):03d}"
    # Whole seconds: Nova's MySQL columns hold no fraction.
    stamp = dt.datetime(2016, 1, 1) + dt.timedelta(seconds=rng.randrange(8 * 365 * 86400))
    later = stamp + dt.timedelta(days=rng.randrange(400))
    born: dt.datetime | None = None if "null-timestamps" in taken else stamp
    touched: dt.datetime | None = None if "null-timestamps" in taken else later
    if "nameless" in taken:
        name: str | None = None
    elif "long-unicode-name" in taken:
        name = (f"{cell}-{n}-" + _LONG * 20)[:255]
    else:
        name = f"{cell}-group-{n}"
    first = rng.choice(_POLICIES)
    policies = [(first, "policies-deleted" not in taken)]
    if "two-policies" in taken:
        policies.append((rng.choice([p for p in _POLICIES if p != first]), True))
    if "policies-deleted" in taken and "two-policies" in taken:
        policies[-1] = (policies[-1][0], False)

    def instance(where: str = "cell", deleted: bool = False) -> _Instance:
        host = f"{cell}-compute-{rng.randrange(60):02d}" if where == "cell" else None
        return _Instance(
            str(uuid_mod.UUID(int=rng.getrandbits(128), version=4)),
            where,
            host,
            project,
            user,
            deleted,
            stamp,
        )

    instances = [] if "empty" in taken else [instance() for _ in range(rng.randint(1, 6))]
    if "member-instance-deleted" in taken:
        instances.append(instance(deleted=True))
    if "member-unknown" in taken:
        instances.append(instance("nowhere"))
    if "member-in-cell0" in taken:
        instances.append(instance("cell0"))
    members = [(i.uuid, True) for i in instances]
    if "duplicate-members" in taken and instances:
        members.append((instances[0].uuid, True))
    if "removed-members" in taken:
        gone = instance(deleted=True)
        instances.append(gone)
        members.append((gone.uuid, False))
    row = {
        "uuid": uid,
        "name": name,
        "user_id": user,
        "project_id": project,
        "created_at": born,
        "updated_at": touched,
    }
    return _Planned(uid, cell, taken, row, policies, members, instances)


def _write_group(conn: sa.Connection, group: _Planned) -> None:
    stamp = group.row["created_at"]
    inserted = conn.execute(models.cell_groups.insert().values(**group.row, deleted=0))
    assert inserted.inserted_primary_key is not None
    gid = inserted.inserted_primary_key[0]
    children = (
        (models.cell_policies, "policy", group.policies),
        (models.cell_members, "instance_id", group.members),
    )
    for table, column, values in children:
        if values:
            conn.execute(
                table.insert(),
                [
                    {
                        "group_id": gid,
                        column: value,
                        "created_at": stamp,
                        "deleted": 0 if alive else 1,
                        "deleted_at": None if alive else stamp or dt.datetime(2024, 1, 1),
                    }
                    for value, alive in values
                ],
            )
    if "deleted-group" in group.shapes:
        # Nova's soft delete: the row's deleted column takes its id, and its children go.
        when = stamp or dt.datetime(2024, 1, 1)
        g = models.cell_groups
        conn.execute(g.update().where(g.c.id == gid).values(deleted=gid, deleted_at=when))
        for table, _column, _values in children:
            conn.execute(
                table.update()
                .where(table.c.group_id == gid, table.c.deleted == 0)
                .values(deleted=table.c.id, deleted_at=when)
            )
