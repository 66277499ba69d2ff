"""Inject each kind of divergence straight into the databases, as SQL, for diff-report tests."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from shadowdb import models
from shadowdb.diff import DiffReport
from tests.conftest import Topology
from tests.support.helpers import NOW, new_uuid, seed_api_group, seed_cell_group


def no_sleep(_seconds: float) -> None:
    """Skip waits (the backfill's drain wait) in tests that do not observe them."""


@contextlib.contextmanager
def unchecked(engine: sa.Engine) -> Iterator[sa.Connection]:
    """Open a transaction whose writes skip foreign-key checks (to leave orphan rows)."""
    with engine.begin() as conn:
        dialect = conn.dialect.name
        if dialect in ("mysql", "mariadb"):
            conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 0")
        elif dialect == "postgresql":
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        yield conn
        if dialect in ("mysql", "mariadb"):
            conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 1")


def seed_pair(
    topology: Topology,
    *,
    cell: str = "cell1",
    uuid: str | None = None,
    name: str = "g",
    policies: Sequence[str] = ("anti-affinity",),
    members: Sequence[str] = (),
    created_at: dt.datetime = NOW,
) -> str:
    """Insert one group, identical in the API database and in ``cell``."""
    uuid = uuid or new_uuid()
    seed_cell_group(
        topology.cell_engine(cell),
        uuid=uuid,
        name=name,
        policies=policies,
        members=members,
        created_at=created_at,
    )
    seed_api_group(
        topology.dbs.api,
        uuid=uuid,
        name=name,
        policies=policies,
        members=members,
        created_at=created_at,
    )
    return uuid


def seed_deleted_cell_group(engine: sa.Engine, **kwargs: Any) -> str:
    """Insert a cell group deleted as Nova deletes: its policies and members too."""
    uuid = seed_cell_group(engine, deleted=True, **kwargs)
    with engine.begin() as conn:
        gid = conn.execute(
            sa.select(models.cell_groups.c.id).where(models.cell_groups.c.uuid == uuid)
        ).scalar_one()
        for child in (models.cell_policies, models.cell_members):
            conn.execute(child.update().where(child.c.group_id == gid).values(deleted=child.c.id))
    return uuid


def seed_clean(topology: Topology, count: int) -> list[str]:
    """Insert ``count`` level groups over both cells, with the noise a clean system has.

    Noise that must not count: deleted cell groups (with their children), soft-deleted
    policy and member rows of live groups, and a NULL name.
    """
    uuids = []
    for i in range(count):
        cell = "cell1" if i % 3 else "cell2"
        members = [new_uuid() for _ in range(i % 4)]
        uuids.append(seed_pair(topology, cell=cell, name=f"g{i}" if i % 5 else "", members=members))
    engine = topology.cell_engine("cell1")
    seed_deleted_cell_group(engine, name="deleted", members=[new_uuid()])
    null_name = seed_pair(topology, name="x")
    uuids.append(null_name)
    for table in (models.cell_groups,):
        with engine.begin() as conn:
            conn.execute(table.update().where(table.c.uuid == null_name).values(name=None))
    with topology.dbs.api.begin() as conn:
        conn.execute(
            models.api_groups.update()
            .where(models.api_groups.c.uuid == null_name)
            .values(name=None)
        )
    # A retired member row of a live group: soft-deleted in the cell, gone from the API.
    with engine.begin() as conn:
        gid = conn.execute(
            sa.select(models.cell_groups.c.id).where(models.cell_groups.c.uuid == null_name)
        ).scalar_one()
        pk = conn.execute(
            models.cell_members.insert().values(
                group_id=gid, instance_id=new_uuid(), deleted=0, created_at=NOW
            )
        ).inserted_primary_key[0]
        conn.execute(
            models.cell_members.update().where(models.cell_members.c.id == pk).values(deleted=pk)
        )
    return uuids


def _cell_group_id(topology: Topology, cell: str, uuid: str) -> int:
    with topology.cell_engine(cell).connect() as conn:
        return int(
            conn.execute(
                sa.select(models.cell_groups.c.id).where(
                    models.cell_groups.c.uuid == uuid, models.cell_groups.c.deleted == 0
                )
            ).scalar_one()
        )


def _api_group_id(topology: Topology, uuid: str) -> int:
    with topology.dbs.api.connect() as conn:
        return int(
            conn.execute(
                sa.select(models.api_groups.c.id).where(models.api_groups.c.uuid == uuid)
            ).scalar_one()
        )


@dataclasses.dataclass
class Injected:
    """What was injected: the expected ``(key, kind)`` pairs, by kind."""

    expected: set[tuple[str, str]] = dataclasses.field(default_factory=set)
    keys: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    #: Groups given duplicate live rows (legacy noise: noted, never a difference).
    duplicated: set[str] = dataclasses.field(default_factory=set)

    def add(self, key: str, kind: str) -> str:
        self.expected.add((key, kind))
        self.keys.setdefault(kind, []).append(key)
        return key


def inject_missing_in_api(topology: Topology, found: Injected) -> None:
    found.add(
        seed_cell_group(topology.cell_engine("cell2"), members=[new_uuid()]), "missing-in-api"
    )


def inject_missing_in_cells(topology: Topology, found: Injected) -> None:
    uuid = seed_api_group(topology.dbs.api, members=[new_uuid()])
    found.add(uuid, "missing-in-cells")
    # Deleted in its cell (soft): still in no cell.
    deleted = new_uuid()
    seed_deleted_cell_group(topology.cell_engine("cell1"), uuid=deleted)
    seed_api_group(topology.dbs.api, uuid=deleted)
    found.add(deleted, "missing-in-cells")


def inject_field_mismatches(topology: Topology, found: Injected) -> None:
    api = topology.dbs.api
    t = models.api_groups
    for column, value in (
        ("name", "renamed"),
        ("user_id", "someone-else"),
        ("project_id", "p9"),
        ("created_at", NOW + dt.timedelta(seconds=1)),
    ):
        uuid = seed_pair(topology, cell="cell2")
        with api.begin() as conn:
            conn.execute(t.update().where(t.c.uuid == uuid).values({column: value}))
        found.add(uuid, "field-mismatch")
    # A NULL name on one side only is a difference; "" against NULL too.
    uuid = seed_pair(topology, name="")
    with api.begin() as conn:
        conn.execute(t.update().where(t.c.uuid == uuid).values(name=None))
    found.add(uuid, "field-mismatch")


def inject_policy_mismatch(topology: Topology, found: Injected) -> None:
    uuid = seed_pair(topology, policies=("anti-affinity",))
    gid = _cell_group_id(topology, "cell1", uuid)
    p = models.cell_policies
    with topology.cell_engine("cell1").begin() as conn:
        conn.execute(p.update().where(p.c.group_id == gid).values(policy="soft-affinity"))
    found.add(uuid, "policy-mismatch")


def inject_member_mismatches(topology: Topology, found: Injected, *, duplicate_in: str) -> None:
    """Member sets that differ, and duplicate rows on ``duplicate_in``.

    Three groups: one whose member sets differ; one whose copies hold the same set, one
    member stored twice on ``duplicate_in`` (level: compared as sets); one with a
    duplicate row *and* a member missing on the other side (a difference all the same).
    """
    extra = new_uuid()
    uuid = seed_pair(topology, members=[new_uuid()])
    with topology.dbs.api.begin() as conn:
        conn.execute(
            models.api_members.insert().values(
                group_id=_api_group_id(topology, uuid), instance_uuid=extra
            )
        )
    found.add(uuid, "member-mismatch")
    for also_differs in (False, True):
        member = new_uuid()
        dup = seed_pair(topology, cell="cell2", members=[member, new_uuid()])
        _duplicate_member(topology, dup, member, duplicate_in)
        found.duplicated.add(dup)
        if also_differs:
            _duplicate_member(topology, dup, new_uuid(), duplicate_in)
            found.add(dup, "member-mismatch")


def _duplicate_member(topology: Topology, uuid: str, member: str, side: str) -> None:
    """Add a live member row for ``member`` to ``uuid``'s copy on ``side`` (cell2 or api)."""
    if side == "api":
        with topology.dbs.api.begin() as conn:
            conn.execute(
                models.api_members.insert().values(
                    group_id=_api_group_id(topology, uuid), instance_uuid=member
                )
            )
    else:
        with topology.cell_engine("cell2").begin() as conn:
            conn.execute(
                models.cell_members.insert().values(
                    group_id=_cell_group_id(topology, "cell2", uuid),
                    instance_id=member,
                    deleted=0,
                    created_at=NOW,
                )
            )


def inject_live_in_two_cells(topology: Topology, found: Injected) -> None:
    uuid = seed_pair(topology, cell="cell1")
    seed_cell_group(topology.cell_engine("cell2"), uuid=uuid, name="g")
    found.add(uuid, "live-in-two-cells")


def inject_orphans(topology: Topology, found: Injected) -> None:
    """An API policy row of no group; cell member rows of a deleted and of an absent group."""
    with unchecked(topology.dbs.api) as conn:
        pk = conn.execute(
            models.api_policies.insert().values(group_id=987654, policy="affinity")
        ).inserted_primary_key[0]
    found.add(f"api:instance_group_policy:{pk}", "orphan")
    engine = topology.cell_engine("cell1")
    gone = seed_cell_group(engine, policies=(), deleted=True)
    with engine.connect() as conn:
        gid = conn.execute(
            sa.select(models.cell_groups.c.id).where(models.cell_groups.c.uuid == gone)
        ).scalar_one()
    with unchecked(engine) as conn:
        pk = conn.execute(
            models.cell_members.insert().values(
                group_id=gid, instance_id=new_uuid(), deleted=0, created_at=NOW
            )
        ).inserted_primary_key[0]
        found.add(f"cell1:instance_group_member:{pk}", "orphan")
        pk = conn.execute(
            models.cell_policies.insert().values(
                group_id=876543, policy="affinity", deleted=0, created_at=NOW
            )
        ).inserted_primary_key[0]
        found.add(f"cell1:instance_group_policy:{pk}", "orphan")


def inject_everything(topology: Topology, *, duplicate_in: str = "api") -> Injected:
    """Inject one or more keys of every kind; return them."""
    found = Injected()
    inject_missing_in_api(topology, found)
    inject_missing_in_cells(topology, found)
    inject_field_mismatches(topology, found)
    inject_policy_mismatch(topology, found)
    inject_member_mismatches(topology, found, duplicate_in=duplicate_in)
    inject_live_in_two_cells(topology, found)
    inject_orphans(topology, found)
    return found


def reported(report: DiffReport) -> set[tuple[str, str]]:
    """Return the ``(key, kind)`` pairs a report names."""
    return {(f.key, f.kind.value) for f in report.findings}
