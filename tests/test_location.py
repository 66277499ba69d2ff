"""Where a group's live cell copy is, and which cell a new group goes to."""

from __future__ import annotations

import dataclasses

import pytest

from shadowdb.databases import CELL0_UUID, Databases, connect
from shadowdb.errors import NoDefaultCell
from shadowdb.location import Location, default_cell, locate
from shadowdb.state import PhaseState, read_state
from shadowdb.testing import StatementCounter
from tests.conftest import Topology
from tests.protocol.test_faults import SERVERS
from tests.support.helpers import engines_of, map_cell0, seed_cell_group
from tests.support.proxy import Proxy


def _state(dbs: Databases) -> PhaseState:
    with dbs.api.connect() as conn:
        return read_state(conn)


def test_the_chosen_default_cell_takes_new_groups(topology: Topology) -> None:
    dbs = topology.dbs
    state = _state(dbs)
    assert default_cell(dbs, state).name == "cell1"
    chosen = dataclasses.replace(state, default_cell_uuid=dbs.cell("cell2").uuid)
    assert default_cell(dbs, chosen).name == "cell2"


def test_several_cells_and_no_choice_is_an_error_naming_them(topology: Topology) -> None:
    unset = dataclasses.replace(_state(topology.dbs), default_cell_uuid=None)
    with pytest.raises(NoDefaultCell, match="cell1, cell2") as caught:
        default_cell(topology.dbs, unset)
    assert caught.value.candidates == ("cell1", "cell2")


def test_cell0_is_never_the_default(topology: Topology) -> None:
    map_cell0(topology.dbs, topology.cell_urls["cell2"])
    dbs = connect(topology.api_url_text, settings=topology.settings)
    try:
        assert any(c.is_cell0 for c in dbs.cells)
        state = dataclasses.replace(_state(dbs), default_cell_uuid=CELL0_UUID)
        with pytest.raises(NoDefaultCell) as caught:
            default_cell(dbs, state)
        assert caught.value.candidates == ("cell1", "cell2")
    finally:
        dbs.dispose()


def test_locate_finds_the_cell_holding_the_live_copy(topology: Topology) -> None:
    dbs = topology.dbs
    in_cell2 = seed_cell_group(topology.cell_engine("cell2"))
    in_cell1 = seed_cell_group(topology.cell_engine("cell1"))
    assert locate(dbs, in_cell2) == Location(dbs.cell("cell2"), ())
    assert locate(dbs, in_cell1) == Location(dbs.cell("cell1"), ())


def test_cell0_is_asked_last_and_still_asked(single_cell: Topology) -> None:
    dbs = single_cell.dbs
    in_cell1 = seed_cell_group(single_cell.cell_engine("cell1"))
    in_cell0 = seed_cell_group(single_cell.cell_engine("cell0"))  # an untidy legacy row
    with StatementCounter(engines_of(dbs)) as counter:
        assert locate(dbs, in_cell1) == Location(dbs.cell("cell1"), ())
    assert counter.counts == {"api": 0, "cell0": 0, "cell1": 1}, counter.statements
    assert locate(dbs, in_cell0) == Location(dbs.cell("cell0"), ())


def test_a_deleted_or_unknown_group_is_nowhere(topology: Topology) -> None:
    deleted = seed_cell_group(topology.cell_engine("cell1"), deleted=True)
    assert locate(topology.dbs, deleted) == Location(None, ())
    assert locate(topology.dbs, "no-such-group") == Location(None, ())


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_a_cell_that_cannot_be_asked_is_named_not_skipped(
    topology: Topology, cell_behind_proxy: tuple[Databases, Proxy]
) -> None:
    dbs, proxy = cell_behind_proxy
    in_cell2 = seed_cell_group(topology.cell_engine("cell2"))
    proxy.cut()
    try:
        found = locate(dbs, in_cell2)
        assert found.cell is not None and found.cell.name == "cell2"
        assert [c.name for c in found.unreachable] == ["cell1"]
        nowhere = locate(dbs, "no-such-group")
        assert nowhere.cell is None and [c.name for c in nowhere.unreachable] == ["cell1"]
    finally:
        proxy.restore()
