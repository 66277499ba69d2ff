"""kill -9 a real backfill process at lifecycle points of a batch, then resume it.

The process (``tests/support/crashing_backfill.py``) runs ``shadowdb backfill`` and sends itself
SIGKILL at the Nth occurrence of a lifecycle point (a blinker signal, never a sleep):
cell rows locked; copies inserted but not committed; copies committed but the chunk's
checkpoint not moved; a checkpoint committed; a journal replayed mid-drain. Nothing of
the process survives: not its open transactions, not its claims. Then ``shadowdb
backfill`` resumes until it exits 0, and (DESIGN.md section 3, invariants 3 and 5):

* every live legacy group is in the API database exactly once, with identical data, and
  no soft-deleted group is; a diff of every group on both sides is clean;
* exactly what the crashed process committed stayed, and the resume copied exactly the
  rest: nothing twice, nothing lost;
* the cell databases' groups are untouched (copy, never delete);
* a second run reports ``(0, 0)`` for every migration;
* live writes between the crash and the resume (deletes, members added, a new group)
  are neither undone nor resurrected.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
from typing import Any

import pytest
import sqlalchemy as sa

from shadowdb import models
from shadowdb.cli import ExitCode
from shadowdb.databases import reader
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.queries import API
from shadowdb.state import Phase
from tests.conftest import Topology
from tests.support.backfill import (
    Legacy,
    chunks,
    diff,
    environment,
    pending_journal,
    run_cli,
    run_crashing,
    seed_legacy,
)
from tests.support.cli import Cli
from tests.support.helpers import dump, group_rows, group_state, new_uuid, put_in_phase

MIGRATE = "migrate_instance_groups"
DRAIN = "drain_journals"
BATCH = ("--batch-size", "5")


@pytest.fixture
def legacy(topology: Topology) -> Legacy:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    return seed_legacy(topology)


def _api_groups(topology: Topology) -> int:
    with reader(topology.dbs.api) as conn:
        return API.count(conn)


def _cell_groups(topology: Topology) -> dict[str, Any]:
    return {
        name: dump(topology.cell_engine(name), models.cell_metadata)["instance_groups"]
        for name in ("cell1", "cell2")
    }


def _events(crashed: subprocess.CompletedProcess[str]) -> list[tuple[str, int, str]]:
    """Return the lifecycle points the killed process passed (see crashing_backfill.py)."""
    assert crashed.returncode == -signal.SIGKILL, (
        f"expected death by SIGKILL, got {crashed.returncode}\n"
        f"stdout: {crashed.stdout}\nstderr: {crashed.stderr}"
    )
    line = next(x for x in crashed.stderr.splitlines() if x.startswith("crash-events: "))
    return [tuple(e) for e in json.loads(line.removeprefix("crash-events: "))]


def _committed_before(events: list[tuple[str, int, str]]) -> tuple[int, int, int]:
    """Return (groups copied, API copies created by replays, journal entries cleared)."""
    copied = sum(count for step, count, _ in events if step == "copied")
    replays = [(count, where) for step, count, where in events if step == "journal-replayed"]
    return copied, sum(1 for _, where in replays if where == "cell"), sum(c for c, _ in replays)


def _totals(data: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {t["migration"]: (t["found"], t["done"]) for t in data["totals"]}


def _assert_converged(topology: Topology, legacy: Legacy, cells_before: dict[str, Any]) -> None:
    dbs = topology.dbs
    assert diff(dbs) == []
    for uuid, cell_name in legacy.live.items():
        assert len(group_rows(dbs.api, "api", uuid)) == 1, uuid
        cell_copy = group_state(topology.cell_engine(cell_name), "cell", uuid)
        assert cell_copy is not None
        assert group_state(dbs.api, "api", uuid) == cell_copy
    for uuid in legacy.deleted:
        assert group_rows(dbs.api, "api", uuid) == []
    assert _api_groups(topology) == len(legacy.live)
    assert pending_journal(dbs) == 0
    assert chunks(dbs) and all(done for _, _, done in chunks(dbs))
    # Copy, never delete: no cell group was deleted, resurrected or rewritten.
    assert _cell_groups(topology) == cells_before
    # Nova's idempotence: the next run finds nothing to do.
    again = Cli(environment(topology))("backfill", "--format", "json")
    assert again.code == ExitCode.OK, again.err
    assert _totals(again.json()) == {MIGRATE: (0, 0), DRAIN: (0, 0)}


# Cell rows locked with nothing written is the first crash of the chained test below.
POINTS = [
    pytest.param("copying:1", id="first-copy-inserted-not-committed"),
    pytest.param("copied:1", id="first-copy-committed-before-its-checkpoint"),
    pytest.param("checkpointed:3", id="after-the-third-checkpoint"),
    pytest.param("journal-replayed:2", id="mid-drain-cell-journal"),
    pytest.param("journal-replayed:5", id="mid-drain-api-journal"),
]


@pytest.mark.parametrize("crash_at", POINTS)
def test_kill_9_then_resume_converges(topology: Topology, legacy: Legacy, crash_at: str) -> None:
    dbs = topology.dbs
    cells_before = _cell_groups(topology)
    api_before = _api_groups(topology)
    journal_before = pending_journal(dbs)

    events = _events(run_crashing(topology, *BATCH, crash_at=crash_at))
    step = crash_at.partition(":")[0]
    assert events[-1][0] == step
    copied, replayed_into_api, cleared = _committed_before(events)
    # What the killed process committed stayed; what it had not committed is gone.
    assert _api_groups(topology) == api_before + copied + replayed_into_api
    assert pending_journal(dbs) == journal_before - cleared
    if not any(s == "checkpointed" for s, _, _ in events):
        assert all(next_id == start and not done for start, next_id, done in chunks(dbs))
    if step == "journal-replayed":
        assert copied == legacy.to_copy  # the drain comes once the copy is done

    resumed = Cli(environment(topology))("backfill", *BATCH, "--format", "json")
    assert resumed.code == ExitCode.OK, (resumed.out, resumed.err)
    data = resumed.json()
    assert data["errors"] == [] and data["conflicts"] == []
    # Nothing copied twice, nothing skipped: the resume did exactly the rest.
    assert _totals(data)[MIGRATE] == (legacy.to_copy - copied,) * 2
    left = journal_before - cleared  # one entry per journaled group
    assert _totals(data)[DRAIN] == (left, left)
    _assert_converged(topology, legacy, cells_before)


def _uuid_named(topology: Topology, cell: str, name: str) -> str:
    g = models.cell_groups
    with reader(topology.cell_engine(cell)) as conn:
        return str(conn.execute(sa.select(g.c.uuid).where(g.c.name == name)).scalar_one())


def test_live_writes_between_the_crash_and_the_resume(topology: Topology, legacy: Legacy) -> None:
    """Groups copied before the kill change under live writes; the resume keeps the writes.

    The crash leaves copies whose checkpoint never moved: the resume scans them again.
    It must not bring back a group deleted meanwhile, nor undo a member added meanwhile.
    """
    dbs = topology.dbs
    events = _events(run_crashing(topology, *BATCH, crash_at="copied:1"))
    copied = _committed_before(events)[0]
    ctx = RequestContext(dbs, "p0", "u0", is_admin=True)
    gone_copied = _uuid_named(topology, "cell1", "cell1-g0")  # copied before the crash
    gone_pending = _uuid_named(topology, "cell1", "cell1-g10")  # not copied yet
    grown = _uuid_named(topology, "cell1", "cell1-g1")
    for uuid in (gone_copied, gone_pending):
        InstanceGroup.get_by_uuid(ctx, uuid).destroy()
    new_member = new_uuid()
    InstanceGroup.add_members(ctx, grown, [new_member])
    created = InstanceGroup(ctx, name="born-after-the-crash", project_id="p0", user_id="u0")
    created.create()
    cells_before = _cell_groups(topology)

    resumed = Cli(environment(topology))("backfill", *BATCH, "--format", "json")
    assert resumed.code == ExitCode.OK, (resumed.out, resumed.err)
    # The deleted group that had not been copied is simply not found any more.
    assert _totals(resumed.json())[MIGRATE][1] == legacy.to_copy - copied - 1
    assert group_rows(dbs.api, "api", gone_copied) == []
    assert group_rows(dbs.api, "api", gone_pending) == []
    grown_copy = group_state(dbs.api, "api", grown)
    assert grown_copy is not None and new_member in grown_copy[4]
    live = {u: c for u, c in legacy.live.items() if u not in (gone_copied, gone_pending)}
    live[created.uuid] = "cell1"
    after = dataclasses.replace(
        legacy, live=live, deleted=(*legacy.deleted, gone_copied, gone_pending)
    )
    _assert_converged(topology, after, cells_before)


@pytest.mark.slow
def test_crash_after_crash_then_the_cli_resumes(topology: Topology, legacy: Legacy) -> None:
    """Crash at one point after another, each run resuming the last, then finish."""
    cells_before = _cell_groups(topology)
    copied_total = 0
    for crash_at in ("locked:2", "copied:2", "copying:2", "checkpointed:2", "journal-replayed:3"):
        events = _events(run_crashing(topology, *BATCH, crash_at=crash_at))
        copied_total += _committed_before(events)[0]
    finished = run_cli(topology, "backfill", *BATCH, "--format", "json")
    assert finished.returncode == ExitCode.OK, finished.stderr
    data = json.loads(finished.stdout)
    assert copied_total + _totals(data)[MIGRATE][1] == legacy.to_copy
    _assert_converged(topology, legacy, cells_before)
