"""diff-report --repair: each repairable difference journaled on its authoritative side,
then replayed by backfill until the system is clean."""

from __future__ import annotations

from typing import Any

import pytest

from shadowdb import commands, diff
from shadowdb.backfill import backfill
from shadowdb.databases import reader
from shadowdb.queries import API, CELL
from shadowdb.state import Phase
from tests.conftest import Topology
from tests.support.diff import (
    Injected,
    inject_everything,
    inject_member_mismatches,
    inject_missing_in_cells,
    inject_policy_mismatch,
    no_sleep,
    reported,
    seed_clean,
)
from tests.support.helpers import put_in_phase


def run(topology: Topology, **kwargs: Any) -> diff.DiffReport:
    kwargs.setdefault("sleep", no_sleep)
    return commands.diff_report(topology.dbs, **kwargs)


REPAIRABLE = (
    "missing-in-api",
    "missing-in-cells",
    "field-mismatch",
    "policy-mismatch",
    "member-mismatch",
)


@pytest.mark.parametrize(
    ("phase", "duplicate_in"),
    [(Phase.DUAL_WRITE_CELL_READS, "api"), (Phase.DUAL_WRITE_API_READS, "cell")],
    ids=["cell-reads", "api-reads"],
)
def test_repair_then_backfill_then_clean(
    topology: Topology, phase: Phase, duplicate_in: str
) -> None:
    put_in_phase(topology.dbs, phase)
    seed_clean(topology, 12)
    found = inject_everything(topology, duplicate_in=duplicate_in)
    report = run(topology, repair=True, chunk_size=4)
    assert reported(report) == found.expected  # a repair run still reports (and exits 1)
    for finding in report.findings:
        if finding.kind.value in REPAIRABLE:
            assert finding.repair is not None and finding.repair.startswith("enqueued"), finding
            side = "API journal" if finding.authoritative == "api" else "journal of cell"
            assert side in finding.repair
        else:
            assert finding.repair == "not enqueued: no authoritative copy"
    unrepaired = {(k, kind) for k, kind in found.expected if kind not in REPAIRABLE}
    assert report.repaired == len({k for k, kind in found.expected if kind in REPAIRABLE})
    result = backfill(topology.dbs, sleep=no_sleep)
    assert result.errors == () and result.conflicts == ()
    after = run(topology, chunk_size=4)
    assert reported(after) == unrepaired


@pytest.mark.parametrize("phase", [Phase.DUAL_WRITE_CELL_READS, Phase.DUAL_WRITE_API_READS])
def test_duplicate_rows_never_block_and_a_repair_levels_the_sets(
    topology: Topology, phase: Phase
) -> None:
    """Legacy duplicate rows on the authoritative side: noted, repairable, then clean."""
    put_in_phase(topology.dbs, phase)
    found = Injected()
    inject_member_mismatches(topology, found, duplicate_in="cell")
    report = run(topology, repair=True)
    assert reported(report) == found.expected
    assert all(f.repair is not None and f.repair.startswith("enqueued") for f in report.findings)
    assert report.repaired == 2 and report.not_repaired == 0
    result = backfill(topology.dbs, sleep=no_sleep)
    assert result.errors == () and result.conflicts == ()
    after = run(topology)
    assert after.clean, after.findings
    # The cell still holds its legacy duplicate rows (nothing rewrites them there in a
    # cell-trusting phase; in dual-write-api-reads the replay wrote the cell copy as the
    # set, so only the group that needed no repair keeps them).
    assert after.rows.legacy_duplicates == (2 if phase is Phase.DUAL_WRITE_CELL_READS else 1)


def test_repair_in_api_reads_enqueues_in_the_api_journal(topology: Topology) -> None:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_API_READS)
    found = Injected()
    inject_policy_mismatch(topology, found)
    inject_missing_in_cells(topology, found)
    run(topology, repair=True)
    with reader(topology.dbs.api) as conn:
        queued = {e.group_uuid for e in API.journal_pending(conn)}
    assert queued == {k for k, _ in found.expected}
    with reader(topology.cell_engine("cell1").connect().engine) as conn:
        assert CELL.journal_pending(conn) == []
