"""Shared by the backfill's process tests: seed a legacy deployment, run processes, compare.

:func:`seed_legacy` fills both cells with what a real deployment holds (live and
soft-deleted groups, soft-deleted members, groups already copied, groups with pending
journal entries on either side); :func:`diff` compares every group on both sides, the
way a diff-report does; :func:`run_crashing` runs ``tests/support/crashing_backfill.py`` as a
real process.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from shadowdb import models
from shadowdb.databases import Databases, reader
from shadowdb.queries import API, CELL, GroupRecord
from tests.conftest import Topology
from tests.support.helpers import NOW, new_uuid, seed_api_group, seed_cell_group

RUNNER = Path(__file__).with_name("crashing_backfill.py")
#: The venv's interpreter (pytest runs under it) and its ``shadowdb`` console script.
PYTHON = sys.executable
SHADOWDB = str(Path(sys.executable).with_name("shadowdb"))

POLICIES = ("affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity")


@dataclasses.dataclass(frozen=True)
class Legacy:
    """What :func:`seed_legacy` put where."""

    #: Every live cell group (uuid -> cell name): each must end up in the API database.
    live: dict[str, str]
    #: Soft-deleted cell groups: never copied.
    deleted: tuple[str, ...]
    #: Groups whose API copy was already level before the backfill.
    level: tuple[str, ...]
    #: Groups with a pending journal entry (cell side, then API side).
    cell_journaled: tuple[str, ...]
    api_journaled: tuple[str, ...]

    @property
    def to_copy(self) -> int:
        """How many groups the copy migration itself must copy."""
        return len(self.live) - len(self.level) - len(self.cell_journaled) - len(self.api_journaled)


def environment(topology: Topology) -> dict[str, str]:
    """Return the environment a backfill process of this topology runs with."""
    return {
        **os.environ,
        "SHADOWDB_API_URL": topology.api_url_text,
        "SHADOWDB_PHASE_TTL": "0",
    }


def seed_legacy(topology: Topology, per_cell: Sequence[int] = (23, 17)) -> Legacy:
    """Seed plain legacy groups first in each cell, then the special cases after them."""
    dbs = topology.dbs
    live: dict[str, str] = {}
    for cell_name, count in zip(("cell1", "cell2"), per_cell, strict=True):
        engine = topology.cell_engine(cell_name)
        for i in range(count):
            uuid = seed_cell_group(
                engine,
                name=f"{cell_name}-g{i}",
                project_id=f"p{i % 3}",
                user_id=f"u{i % 5}",
                policies=[POLICIES[i % 4], POLICIES[(i + 1) % 4]][: 1 + i % 2],
                members=[new_uuid() for _ in range(i % 4)],
                created_at=NOW + dt.timedelta(seconds=i),
            )
            live[uuid] = cell_name
    cell1, cell2 = topology.cell_engine("cell1"), topology.cell_engine("cell2")
    deleted = tuple(
        seed_cell_group(cell1, name=f"gone{i}", members=[new_uuid()], deleted=True)
        for i in range(2)
    )
    # A live group with one of its members soft-deleted: that member is not copied.
    kept, dropped = new_uuid(), new_uuid()
    uuid = seed_cell_group(cell2, name="half", members=[kept, dropped])
    live[uuid] = "cell2"
    with cell2.begin() as conn:
        m = models.cell_members
        conn.execute(
            m.update().where(m.c.instance_id == dropped).values(deleted=m.c.id, deleted_at=NOW)
        )
    level = []
    for i in range(3):
        members = [new_uuid()]
        uuid = seed_cell_group(cell1, name=f"level{i}", policies=["affinity"], members=members)
        seed_api_group(dbs.api, uuid=uuid, name=f"level{i}", policies=["affinity"], members=members)
        live[uuid] = "cell1"
        level.append(uuid)
    epoch = dbs.phases.fresh().epoch
    # A cell write whose API copy never arrived: the journal replay owns these.
    cell_journaled = []
    for i in range(4):
        uuid = seed_cell_group(cell1, name=f"cj{i}", members=[new_uuid(), new_uuid()])
        with cell1.begin() as conn:
            CELL.journal_add(conn, uuid, epoch, "tests: API write lost")
        live[uuid] = "cell1"
        cell_journaled.append(uuid)
    # An API write the cell copy has not seen (one member more): replayed API -> cell.
    api_journaled = []
    for i in range(2):
        first, second = new_uuid(), new_uuid()
        uuid = seed_cell_group(cell2, name=f"aj{i}", policies=["affinity"], members=[first])
        seed_api_group(
            dbs.api, uuid=uuid, name=f"aj{i}", policies=["affinity"], members=[first, second]
        )
        with dbs.api.begin() as conn:
            API.journal_add(conn, uuid, epoch, "tests: cell write lost")
        live[uuid] = "cell2"
        api_journaled.append(uuid)
    return Legacy(live, deleted, tuple(level), tuple(cell_journaled), tuple(api_journaled))


def _fields(record: GroupRecord) -> tuple[Any, ...]:
    return (
        record.name,
        record.user_id,
        record.project_id,
        tuple(sorted(record.policies)),
        tuple(sorted(record.members)),
        record.created_at,
        record.updated_at,
    )


def _has_duplicates(values: Sequence[str]) -> bool:
    return len(set(values)) != len(values)


def diff(dbs: Databases) -> list[str]:
    """Compare every group on both sides; return one line per difference (empty: clean).

    Checks what a diff-report checks: a group missing on either side, live in two cells,
    stored twice, or with differing fields, timestamps, policies or members (duplicate
    member or policy rows included).
    """
    problems: list[str] = []
    cell_side: dict[str, tuple[str, GroupRecord]] = {}
    for cell in dbs.cells:
        with reader(cell.engine, cell.label) as conn:
            for record in CELL.list_groups(conn, scope=None):
                if record.uuid in cell_side:
                    problems.append(f"{record.uuid}: live in {cell_side[record.uuid][0]} too")
                cell_side[record.uuid] = (cell.name, record)
    api_side: dict[str, GroupRecord] = {}
    with reader(dbs.api, dbs.api_label) as conn:
        for record in API.list_groups(conn, scope=None):
            if record.uuid in api_side:
                problems.append(f"{record.uuid}: twice in the API database")
            api_side[record.uuid] = record
    for uuid in sorted(cell_side.keys() - api_side.keys()):
        problems.append(f"{uuid}: missing from the API database")
    for uuid in sorted(api_side.keys() - cell_side.keys()):
        problems.append(f"{uuid}: only in the API database")
    for uuid in sorted(cell_side.keys() & api_side.keys()):
        cell_name, cell_copy = cell_side[uuid]
        api_copy = api_side[uuid]
        for side, record in (("api", api_copy), (cell_name, cell_copy)):
            if _has_duplicates(record.members) or _has_duplicates(record.policies):
                problems.append(f"{uuid}: duplicate member or policy rows in {side}")
        if _fields(api_copy) != _fields(cell_copy):
            problems.append(f"{uuid}: {cell_name} {_fields(cell_copy)} != api {_fields(api_copy)}")
    return problems


def pending_journal(dbs: Databases) -> int:
    """Count pending journal entries on every side."""
    total = 0
    for cell in dbs.cells:
        with reader(cell.engine) as conn:
            total += CELL.journal_count(conn)
    with reader(dbs.api) as conn:
        total += API.journal_count(conn)
    return total


def chunks(dbs: Databases) -> list[tuple[int, int, bool]]:
    """Return every backfill chunk as ``(start_id, next_id, done)``, by id."""
    c = models.api_backfill_chunks
    with reader(dbs.api) as conn:
        rows = conn.execute(sa.select(c.c.start_id, c.c.next_id, c.c.done).order_by(c.c.id)).all()
    return [(r.start_id, r.next_id, bool(r.done)) for r in rows]


def run_crashing(
    topology: Topology,
    *backfill_args: str,
    crash_at: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``tests/support/crashing_backfill.py`` to its end (or its SIGKILL) and return it."""
    argv = [PYTHON, str(RUNNER)]
    if crash_at is not None:
        argv += ["--crash-at", crash_at]
    return subprocess.run(
        [*argv, "--", *backfill_args],
        env=environment(topology),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_cli(
    topology: Topology, *argv: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the ``shadowdb`` console script as an operator would."""
    return subprocess.run(
        [SHADOWDB, *argv],
        env=environment(topology),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
