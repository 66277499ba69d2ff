"""The fence: each database's phase row pins a write to the epoch it was planned under."""

from __future__ import annotations

import dataclasses

import pytest

from shadowdb import models
from shadowdb.databases import Cell, Databases, writer
from shadowdb.fence import (
    CellBehind,
    CellsChanged,
    EpochChanged,
    check_cells,
    describe_row,
    lagging,
    pin_api,
    pin_cell,
    prepare_cell,
    settle,
    settle_cell,
    settled_at,
)
from shadowdb.state import Phase, PhaseState, read_cell_state, read_state, utcnow
from tests.conftest import Topology
from tests.protocol.test_faults import SERVERS
from tests.support.helpers import new_uuid
from tests.support.proxy import Proxy

CR = Phase.DUAL_WRITE_CELL_READS


def _api(dbs: Databases) -> PhaseState:
    with dbs.api.connect() as conn:
        return read_state(conn)


def _cell(cell: Cell) -> PhaseState | None:
    with cell.engine.connect() as conn:
        return read_cell_state(conn)


def _move_api(dbs: Databases, phase: Phase) -> PhaseState:
    """Move the API database's row alone, as a phase set that stopped after its commit."""
    with writer(dbs.api) as conn:
        epoch = read_state(conn).epoch + 1
        conn.execute(models.api_state.update().values(phase=phase.value, epoch=epoch))
    return _api(dbs)


def _set_cell(cell: Cell, **values: object) -> None:
    with cell.engine.begin() as conn:
        conn.execute(models.cell_state.update().values(**values))


def test_a_write_planned_at_the_cells_epoch_is_pinned(topology: Topology) -> None:
    cell = topology.dbs.cell("cell1")
    plan = _api(topology.dbs)
    with writer(cell.engine) as conn:
        found = pin_cell(conn, cell, plan)
    assert (found.phase, found.epoch) == (plan.phase, plan.epoch)
    with writer(topology.dbs.api) as conn:
        assert pin_api(conn, plan).epoch == plan.epoch


def test_a_cell_past_the_plan_tells_the_phase_to_plan_on(topology: Topology) -> None:
    cell = topology.dbs.cell("cell1")
    plan = _api(topology.dbs)
    _set_cell(cell, phase=CR.value, epoch=plan.epoch + 1)
    with writer(cell.engine) as conn, pytest.raises(EpochChanged) as caught:
        pin_cell(conn, cell, plan)
    assert caught.value.planned == plan
    assert (caught.value.found.phase, caught.value.found.epoch) == (CR, plan.epoch + 1)
    # A cell's row holds no default cell: the plan's is kept.
    assert caught.value.found.default_cell_uuid == plan.default_cell_uuid
    assert (
        str(caught.value)
        == "phase moved from cell-only (epoch 0) to dual-write-cell-reads (epoch 1)"
    )


def test_the_api_database_at_another_epoch_refuses_the_write(topology: Topology) -> None:
    plan = _api(topology.dbs)
    moved = _move_api(topology.dbs, CR)
    with writer(topology.dbs.api) as conn, pytest.raises(EpochChanged) as caught:
        pin_api(conn, plan)
    assert caught.value.found == moved


def test_a_cell_behind_the_plan_or_prepared_must_be_settled_first(topology: Topology) -> None:
    cell = topology.dbs.cell("cell1")
    plan = _move_api(topology.dbs, CR)
    with (
        writer(cell.engine) as conn,
        pytest.raises(CellBehind, match="cell cell1 is at epoch 0, the plan at epoch 1"),
    ):
        pin_cell(conn, cell, plan)
    _set_cell(cell, phase=CR.value, epoch=plan.epoch, next_epoch=plan.epoch + 1)
    with writer(cell.engine) as conn, pytest.raises(CellBehind, match="epoch 2 prepared") as caught:
        pin_cell(conn, cell, plan)
    assert caught.value.cell == cell and caught.value.found is not None
    with cell.engine.begin() as conn:
        conn.execute(models.cell_state.delete())
    with writer(cell.engine) as conn, pytest.raises(CellBehind, match="no phase row"):
        pin_cell(conn, cell, plan)


def test_a_write_planned_with_stale_cells_is_refused(topology: Topology) -> None:
    dbs = topology.dbs
    with writer(dbs.api) as conn:
        check_cells(conn, dbs)  # the cells this process knows
        conn.execute(models.api_cell_mappings.insert().values(uuid=new_uuid(), name="cell9"))
        with pytest.raises(CellsChanged) as caught:
            check_cells(conn, dbs)
    assert len(caught.value.current) == len(caught.value.known) + 1


def test_settle_cell_brings_a_lagging_cell_to_the_api_epoch(topology: Topology) -> None:
    cell = topology.dbs.cell("cell2")
    moved = _move_api(topology.dbs, CR)
    assert settle_cell(topology.dbs, cell) is True
    found = _cell(cell)
    assert found is not None and (found.phase, found.epoch, found.next_epoch) == (CR, 1, None)
    assert settle_cell(topology.dbs, cell) is False  # nothing left to do
    assert settle_cell(topology.dbs, cell, hint=moved) is False


def test_settle_cell_clears_a_change_the_api_database_never_took(topology: Topology) -> None:
    cell = topology.dbs.cell("cell1")
    with writer(cell.engine) as conn:
        read_cell_state(conn, for_update=True)
        prepare_cell(conn, 1)
    before = _cell(cell)
    assert before is not None and before.next_epoch == 1
    # A hint does not let a prepared cell be left alone: only the API row tells.
    assert settle_cell(topology.dbs, cell, hint=_api(topology.dbs)) is True
    found = _cell(cell)
    assert found is not None and (found.phase, found.epoch, found.next_epoch) == (
        Phase.CELL_ONLY,
        0,
        None,
    )


def test_settle_cell_gives_a_cell_without_a_row_the_api_phase(topology: Topology) -> None:
    cell = topology.dbs.cell("cell1")
    _move_api(topology.dbs, CR)
    with cell.engine.begin() as conn:
        conn.execute(models.cell_state.delete())
    assert settle_cell(topology.dbs, cell) is True
    found = _cell(cell)
    assert found is not None and (found.phase, found.epoch) == (CR, 1)


def test_settle_cell_never_moves_a_row_backwards(topology: Topology) -> None:
    cell = topology.dbs.cell("cell1")
    _set_cell(cell, phase=CR.value, epoch=5)
    assert settle_cell(topology.dbs, cell) is False
    found = _cell(cell)
    assert found is not None and found.epoch == 5


def test_settle_brings_every_cell_and_lagging_reports_those_left(topology: Topology) -> None:
    dbs = topology.dbs
    moved = _move_api(dbs, CR)
    assert lagging(dbs, moved) == [
        f"cell {name} is at epoch 0, the API database at epoch 1 (run `shadowdb status` to "
        "settle it)"
        for name in ("cell1", "cell2")
    ]
    state, problems = settle(dbs)
    assert (state, problems) == (moved, [])
    assert lagging(dbs, moved) == []
    assert all(settled_at(_cell(c), 1) for c in dbs.cells)


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_a_cell_that_cannot_be_reached_is_a_problem_not_a_skip(
    topology: Topology, cell_behind_proxy: tuple[Databases, Proxy]
) -> None:
    dbs, proxy = cell_behind_proxy
    moved = _move_api(topology.dbs, CR)
    proxy.cut()
    try:
        _, problems = settle(dbs, dbs.cells)
        assert len(problems) == 1 and problems[0].startswith("cell cell1: ")
        (line,) = lagging(dbs, moved)
        assert line.startswith("cell cell1: unreachable (")
    finally:
        proxy.restore()
    assert settled_at(_cell(topology.dbs.cell("cell2")), moved.epoch)


def test_a_row_is_settled_only_at_the_epoch_with_nothing_prepared() -> None:
    at = PhaseState(CR, 3, utcnow(), None)
    assert settled_at(at, 3)
    assert not settled_at(at, 4)
    assert not settled_at(dataclasses.replace(at, next_epoch=4), 3)
    assert not settled_at(None, 0)
    assert describe_row(at) == "epoch 3"
    assert describe_row(dataclasses.replace(at, next_epoch=4)) == "epoch 3 with epoch 4 prepared"
    assert describe_row(None) == "no phase row"
