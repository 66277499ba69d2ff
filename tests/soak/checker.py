"""Check a finished soak: every acknowledged operation against every database's final state.

The writers' logs are replayed into, for each group, the set of states it may be in:
whether it exists, its possible names, and for every (writer, member) pair whether the
member may be there. An acknowledged operation narrows the set to its outcome; an
unknown one (it may have committed) widens it by its outcome; a failed one leaves it.
Then the API database (the authority once the soak ends in ``api-only``) must hold a
state inside the set for every group, and nothing else:

* **lost writes**: an acknowledged group, name or member missing; an acknowledged
  removal or rename undone; an operation that found no group its acknowledged create
  made and no destroy removed;
* **resurrected groups**: a group whose destroy was acknowledged (and no later unknown
  operation could have recreated it: none can) live anywhere;
* **reads after destroy**: a read that started more than the reader's phase TTL (plus a
  second) after a destroy was acknowledged, and returned the group;
* **duplicate rows**: two live member rows for one member of one group, in any database
  (the legacy duplicates written before the soak excepted);
* **journals left over**, **cell copies left live** after ``cleanup``, a final
  diff-report that was not clean, legacy groups not migrated field by field.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from shadowdb import models
from shadowdb.testing import LegacyGroup


@dataclasses.dataclass
class Possible:
    """The states one group may be in at the end."""

    exists: set[bool]
    names: set[str | None]
    members: dict[tuple[str, str], set[bool]] = dataclasses.field(default_factory=dict)
    destroyed_at: float | None = None  # when its destroy was acknowledged
    owner: str | None = None


@dataclasses.dataclass
class Op:
    writer: str
    n: int
    op: str
    group: str
    t0: float
    outcome: str = "unknown"  # no end line: the process died mid-operation
    t1: float | None = None
    name: str | None = None
    members: tuple[str, ...] = ()
    result: dict[str, Any] | None = None
    error: str | None = None


def read_logs(folder: Path) -> list[Op]:
    """Read every writer log under ``folder``: one Op per started operation."""
    ops: dict[tuple[str, int], Op] = {}
    for path in sorted(folder.glob("writer-*.log")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by SIGKILL: its operation stays unknown
            key = (rec["w"], rec["n"])
            if "op" in rec:
                ops[key] = Op(
                    rec["w"],
                    rec["n"],
                    rec["op"],
                    rec["g"],
                    rec["t0"],
                    name=rec.get("name"),
                    members=tuple(rec.get("m", ())),
                )
            elif key in ops:
                op = ops[key]
                op.outcome, op.t1 = rec["outcome"], rec["t1"]
                op.result, op.error = rec.get("result"), rec.get("error")
    return sorted(ops.values(), key=lambda o: (o.writer, o.n))


@dataclasses.dataclass
class Report:
    """What the checker found (each list holds one line per problem)."""

    lost: list[str] = dataclasses.field(default_factory=list)
    resurrected: list[str] = dataclasses.field(default_factory=list)
    reads_after_destroy: list[str] = dataclasses.field(default_factory=list)
    duplicates: list[str] = dataclasses.field(default_factory=list)
    journals: list[str] = dataclasses.field(default_factory=list)
    leftovers: list[str] = dataclasses.field(default_factory=list)
    legacy: list[str] = dataclasses.field(default_factory=list)
    diff: list[str] = dataclasses.field(default_factory=list)
    groups_checked: int = 0
    stale_reads: int = 0
    ops: Counter[str] = dataclasses.field(default_factory=Counter)

    @property
    def problems(self) -> list[str]:
        return [
            *(f"lost write: {x}" for x in self.lost),
            *(f"resurrected: {x}" for x in self.resurrected),
            *(f"read after destroy: {x}" for x in self.reads_after_destroy),
            *(f"duplicate rows: {x}" for x in self.duplicates),
            *(f"journal left: {x}" for x in self.journals),
            *(f"cell copy left live: {x}" for x in self.leftovers),
            *(f"legacy group: {x}" for x in self.legacy),
            *(f"diff-report: {x}" for x in self.diff),
        ]


def model(ops: Iterable[Op], shared: Iterable[str]) -> tuple[dict[str, Possible], Report]:
    """Replay ``ops`` into the possible final states of every group."""
    report = Report()
    groups: dict[str, Possible] = {g: Possible({True}, {None}) for g in shared}
    for uuid in groups:
        groups[uuid].names = {f"shared-{uuid[:8]}"}
    # Each writer's operations are sequential; replay them per writer, in order. Groups
    # a writer names are its own (create/rename/destroy) or shared (members only), so
    # the order between writers matters only for member pairs, which have one writer.
    for op in ops:
        report.ops[f"{op.op}:{op.outcome}"] += 1
        p = groups.get(op.group)
        if op.op == "create":
            if op.outcome == "failed":
                continue
            p = groups[op.group] = Possible(
                {True} if op.outcome == "ack" else {True, False}, {op.name}, owner=op.writer
            )
            for m in op.members:
                p.members[(op.writer, m)] = {True} if op.outcome == "ack" else {True, False}
            continue
        if p is None:
            continue  # a group whose create was refused: nothing to track
        if op.outcome == "failed":
            if p.exists == {True} and op.error and op.error.startswith("GroupNotFound"):
                report.lost.append(f"{op.writer}#{op.n} {op.op} found no group {op.group}")
            continue
        ack = op.outcome == "ack"
        if op.op == "rename":
            p.names = {op.name} if ack else p.names | {op.name}
        elif op.op == "destroy":
            p.exists = {False} if ack else p.exists | {False}
            if ack:
                p.destroyed_at = op.t1
        elif op.op in ("add", "remove"):
            value = op.op == "add"
            for m in op.members:
                key = (op.writer, m)
                before = p.members.get(key, {False})
                p.members[key] = {value} if ack else before | {value}
    return groups, report


def check_reads(
    ops: Iterable[Op], groups: dict[str, Possible], ttl: dict[str, float], report: Report
) -> None:
    """Flag reads that returned a group after its destroy was acknowledged."""
    for op in ops:
        if op.op != "get" or op.outcome != "ack":
            continue
        p = groups.get(op.group)
        if p is None or p.destroyed_at is None or op.t0 <= p.destroyed_at:
            continue
        allowance = ttl.get(op.writer, 0.0) + 1.0
        if op.t0 > p.destroyed_at + allowance:
            report.reads_after_destroy.append(
                f"{op.writer}#{op.n} read {op.group} {op.t0 - p.destroyed_at:.2f}s after "
                "its destroy was acknowledged"
            )
        else:
            report.stale_reads += 1


def _api_state(api: sa.Engine) -> dict[str, tuple[str | None, list[str]]]:
    g, m = models.api_groups, models.api_members
    with api.connect() as conn:
        rows = {r.id: (r.uuid, r.name) for r in conn.execute(sa.select(g.c.id, g.c.uuid, g.c.name))}
        members: dict[int, list[str]] = defaultdict(list)
        for gid, member in conn.execute(sa.select(m.c.group_id, m.c.instance_uuid)):
            members[gid].append(member)
    return {uuid: (name, members[gid]) for gid, (uuid, name) in rows.items()}


def check_final(
    groups: dict[str, Possible],
    api: sa.Engine,
    cells: dict[str, sa.Engine],
    legacy: list[LegacyGroup],
    report: Report,
) -> None:
    """Compare every database's final state with the possible states."""
    actual = _api_state(api)
    legacy_by_uuid = {g.uuid: g for g in legacy}
    for uuid, p in groups.items():
        report.groups_checked += 1
        here = actual.get(uuid)
        if here is None:
            if False not in p.exists:
                report.lost.append(f"group {uuid} (owner {p.owner}) is missing")
            continue
        if True not in p.exists:
            report.resurrected.append(f"group {uuid} (owner {p.owner}) is live after its destroy")
            continue
        name, members = here
        if name not in p.names:
            report.lost.append(
                f"group {uuid}: name {name!r}, expected one of {sorted(map(str, p.names))}"
            )
        if len(set(members)) != len(members):
            report.duplicates.append(f"API database, group {uuid}")
        have = set(members)
        tracked = {m for _, m in p.members}
        for (writer, member), possible in p.members.items():
            if (member in have) not in possible:
                state = "present" if member in have else "absent"
                report.lost.append(f"group {uuid}: member {member} of {writer} is {state}")
        for member in have - tracked:
            report.lost.append(f"group {uuid}: member {member} no operation added")
    for uuid, (name, members) in actual.items():
        if uuid in groups:
            continue
        old = legacy_by_uuid.get(uuid)
        if old is None:
            report.lost.append(f"group {uuid} ({name!r}) in the API database, written by nobody")
            continue
        report.groups_checked += 1
        if old.deleted:
            report.resurrected.append(f"legacy group {uuid} was deleted in its cell")
        elif name != old.name or sorted(set(members)) != sorted(old.members):
            report.legacy.append(
                f"{uuid}: {name!r} {sorted(members)} != {old.name!r} {sorted(old.members)}"
            )
        if len(set(members)) != len(members):
            report.duplicates.append(f"API database, legacy group {uuid}")
    for old in legacy:
        if not old.deleted and old.uuid not in actual:
            report.legacy.append(f"{old.uuid} ({old.shapes}) was not migrated")
    with api.connect() as conn:
        left = conn.scalar(sa.select(sa.func.count()).select_from(models.api_journal))
    if left:
        report.journals.append(f"API journal holds {left} entries")
    duplicated_legacy = {g.uuid for g in legacy if "duplicate-members" in g.shapes}
    for name, engine in cells.items():
        g, m = models.cell_groups, models.cell_members
        with engine.connect() as conn:
            left = conn.scalar(sa.select(sa.func.count()).select_from(models.cell_journal))
            if left:
                report.journals.append(f"journal of cell {name} holds {left} entries")
            live = list(conn.scalars(sa.select(g.c.uuid).where(g.c.deleted == 0)))
            for uuid in live:
                report.leftovers.append(f"cell {name}: {uuid}")
            pairs = conn.execute(
                sa.select(g.c.uuid, m.c.instance_id, sa.func.count())
                .select_from(m.join(g, g.c.id == m.c.group_id))
                .where(m.c.deleted == 0, g.c.deleted == 0)
                .group_by(g.c.uuid, m.c.instance_id)
                .having(sa.func.count() > 1)
            ).all()
            for uuid, member, count in pairs:
                if uuid not in duplicated_legacy:
                    report.duplicates.append(f"cell {name}, group {uuid}: {member} x{count}")
