"""``cleanup`` against the rollback it gives up: a concurrent ``backfill --reverse``, a
partial rebuild, and a reader whose cached phase lags behind ``api-only``.

Each test is an attack that once succeeded: a destroyed group served again after its
tombstone was purged while the cells were being rebuilt; acknowledged groups unreadable
after a move back admitted on a diff-report older than the rebuild; a destroyed group
listed by a reader still caching ``dual-write-api-reads`` while cleanup ran.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import sqlalchemy as sa

from shadowdb import cleanup as cleanup_mod
from shadowdb import commands, models
from shadowdb.backfill import backfill
from shadowdb.cleanup import cleanup
from shadowdb.databases import Cell, Databases, connect, reader
from shadowdb.errors import GroupNotFound, GuardRefused
from shadowdb.objects import InstanceGroup, InstanceGroupList, RequestContext
from shadowdb.phases import dual_write_api_reads as ar
from shadowdb.state import PhaseState
from tests.conftest import Topology
from tests.support.helpers import cutover_through, seed_cell_group


def _no_sleep(_s: float) -> None:
    return None


def _count(engine: sa.Engine, table: sa.Table, *where: Any) -> int:
    with reader(engine) as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(table).where(*where)))


def test_a_reverse_backfill_during_cleanup_keeps_every_tombstone(
    topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    dbs = topology.dbs
    victim = seed_cell_group(topology.cell_engine("cell1"), name="victim")
    seed_cell_group(topology.cell_engine("cell2"), name="other")
    cutover_through(dbs)
    other = connect(topology.api_url_text, settings=topology.settings)
    real = cleanup_mod._retire_groups

    def retire_then_race(dbs_: Databases, cell: Cell, state: PhaseState) -> Any:
        out = real(dbs_, cell, state)
        if cell.name == "cell2":
            # A second operator rebuilds the cells, then a tenant destroys a group.
            backfill(other, reverse=True, sleep=_no_sleep)
            InstanceGroup.get_by_uuid(RequestContext(other, "p1", "u1"), victim).destroy()
        return out

    monkeypatch.setattr(cleanup_mod, "_retire_groups", retire_then_race)
    try:
        with pytest.raises(GuardRefused, match="rebuilt the cell copies while cleanup ran"):
            cleanup(dbs)
    finally:
        other.dispose()
    monkeypatch.undo()
    t = models.api_tombstones
    assert _count(dbs.api, t, t.c.uuid == victim) == 1  # its deletion is still on record
    report = commands.diff_report(dbs)
    finding = next(f for f in report.findings if f.key == victim)
    assert finding.authoritative == "api" and "deleted in the API database" in finding.detail
    assert finding.journal_pending  # the destroy's API journal entry: the move back replays it
    commands.set_phase(dbs, "dual-write-api-reads")
    dbs.phases.invalidate()
    with pytest.raises(GroupNotFound):
        InstanceGroup.get_by_uuid(RequestContext(dbs, "p1", "u1"), victim)
    backfill(dbs, sleep=_no_sleep)
    g, c = models.api_groups, models.cell_groups
    assert _count(dbs.api, g, g.c.uuid == victim) == 0
    cell1 = topology.cell_engine("cell1")
    assert _count(cell1, c, c.c.uuid == victim, c.c.deleted == 0) == 0
    assert commands.diff_report(dbs).clean


def test_leaving_api_only_after_cleanup_needs_a_diff_of_the_rebuilt_cells(
    topology: Topology,
) -> None:
    dbs = topology.dbs
    uuids = [seed_cell_group(topology.cell_engine("cell1"), name=f"g{i}") for i in range(5)]
    cutover_through(dbs)
    assert cleanup(dbs).kept == 0
    backfill(dbs, reverse=True, max_count=1, sleep=_no_sleep)  # a partial rebuild
    with pytest.raises(GuardRefused, match="diff-report"):
        commands.set_phase(dbs, "dual-write-api-reads")
    report = commands.diff_report(dbs)
    assert not report.clean  # the cells lack four groups
    with pytest.raises(GuardRefused):
        commands.set_phase(dbs, "dual-write-api-reads")
    backfill(dbs, reverse=True, sleep=_no_sleep)  # the whole rebuild
    assert commands.diff_report(dbs).clean
    commands.set_phase(dbs, "dual-write-api-reads")
    assert commands.diff_report(dbs).clean
    commands.set_phase(dbs, "dual-write-cell-reads")
    dbs.phases.invalidate()
    ctx = RequestContext(dbs, "p1", "u1")
    assert [InstanceGroup.get_by_uuid(ctx, u).name for u in uuids] == [f"g{i}" for i in range(5)]


def test_a_lagging_reader_never_lists_a_group_destroyed_in_api_only(
    topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    dbs = topology.dbs
    victim = seed_cell_group(topology.cell_engine("cell1"), name="victim")
    cutover_through(dbs, "dual-write-api-reads")
    lagging = connect(
        topology.api_url_text, settings=dataclasses.replace(topology.settings, phase_ttl=60.0)
    )
    try:
        rctx = RequestContext(lagging, "p1", "u1")
        assert victim in {g.uuid for g in InstanceGroupList.get_by_project_id(rctx, "p1")}
        commands.set_phase(dbs, "api-only")
        InstanceGroup.get_by_uuid(RequestContext(dbs, "p1", "u1"), victim).destroy()
        real = ar.list_cells

        def scan_then_cleanup(dbs_: Databases, scope: Any) -> Any:
            out = real(dbs_, scope)
            commands.diff_report(dbs)  # explained: the API journal holds the destroy
            cleanup(dbs)  # the operator's cleanup, between the scan and the tombstones
            return out

        monkeypatch.setattr(ar, "list_cells", scan_then_cleanup)
        listed = {g.uuid for g in InstanceGroupList.get_by_project_id(rctx, "p1")}
        assert victim not in listed
    finally:
        lagging.dispose()
