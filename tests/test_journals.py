"""The journals: an entry records a group whose other copy may lag; a replay levels it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from shadowdb import models, signals
from shadowdb.databases import Databases, reader, writer
from shadowdb.errors import OperationalError
from shadowdb.journals import DrainResult, drain_journals, note_entry, replay
from shadowdb.queries import API, CELL
from shadowdb.state import Phase
from tests.conftest import Topology
from tests.support.helpers import group_state, put_in_phase, seed_api_group, seed_cell_group


@pytest.fixture
def dbs(topology: Topology) -> Databases:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    return topology.dbs


@pytest.fixture
def replayed(dbs: Databases) -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    with signals.journal_replayed.connected_to(lambda _, **kw: seen.append(kw), sender=dbs):
        yield seen


def _cell_entry(dbs: Databases, group: str, cell: str = "cell1") -> int:
    with writer(dbs.cell(cell).engine) as conn:
        return CELL.journal_add(conn, group, dbs.phases.fresh().epoch)


def _api_entry(dbs: Databases, group: str) -> int:
    with writer(dbs.api) as conn:
        return API.journal_add(conn, group, dbs.phases.fresh().epoch)


def _pending(dbs: Databases) -> dict[str, list[str]]:
    out = {}
    for label, engine, side in [
        ("api", dbs.api, API),
        *((c.name, c.engine, CELL) for c in dbs.cells),
    ]:
        with reader(engine) as conn:
            out[label] = [e.group_uuid for e in side.journal_pending(conn)]
    return out


def test_a_cell_entry_copies_the_cell_copy_to_the_api_database(
    dbs: Databases, replayed: list[dict[str, Any]]
) -> None:
    cell = dbs.cell("cell2")
    group = seed_cell_group(cell.engine, name="web", members=("i1", "i2"))
    _cell_entry(dbs, group, "cell2")
    _cell_entry(dbs, group, "cell2")
    assert drain_journals(dbs) == DrainResult(found=1, done=1, conflicts=(), errors=())
    assert group_state(dbs.api, "api", group) == group_state(cell.engine, "cell", group)
    assert _pending(dbs) == {"api": [], "cell1": [], "cell2": []}
    assert replayed == [{"group_uuid": group, "journal": "cell", "entries": 2}]


def test_an_api_entry_copies_the_api_copy_to_its_cell(
    dbs: Databases, replayed: list[dict[str, Any]]
) -> None:
    group = seed_api_group(dbs.api, name="db", policies=("affinity",))
    _api_entry(dbs, group)
    assert drain_journals(dbs).done == 1
    # No cell held it: the default cell takes it.
    assert group_state(dbs.cell("cell1").engine, "cell", group) == group_state(
        dbs.api, "api", group
    )
    assert _pending(dbs)["api"] == []
    assert replayed == [{"group_uuid": group, "journal": "api", "entries": 1}]


def test_the_current_state_is_copied_whatever_the_entries_say(dbs: Databases) -> None:
    cell = dbs.cell("cell1")
    group = seed_cell_group(cell.engine, name="new name")
    seed_api_group(dbs.api, uuid=group, name="old name", policies=("anti-affinity",))
    _cell_entry(dbs, group)
    drain_journals(dbs)
    state = group_state(dbs.api, "api", group)
    assert state is not None and state[0] == "new name"


def test_a_replay_clears_only_the_entries_it_saw(dbs: Databases) -> None:
    cell = dbs.cell("cell1")
    group = seed_cell_group(cell.engine)
    seen = _cell_entry(dbs, group)
    _cell_entry(dbs, group)  # written after the drain listed the journal
    assert replay(dbs, group, cell, [seen]) == "done"
    assert _pending(dbs)["cell1"] == [group]


def test_a_group_journaled_on_both_sides_is_a_conflict_left_alone(dbs: Databases) -> None:
    cell = dbs.cell("cell1")
    group = seed_cell_group(cell.engine, name="cell side")
    seed_api_group(dbs.api, uuid=group, name="api side")
    _cell_entry(dbs, group)
    _api_entry(dbs, group)
    diverged: list[dict[str, Any]] = []
    with signals.divergence.connected_to(lambda _, **kw: diverged.append(kw), sender=dbs):
        result = drain_journals(dbs)
    assert (result.found, result.done, result.conflicts) == (2, 0, (group, group))
    assert [d["kind"] for d in diverged] == ["journal-conflict", "journal-conflict"]
    assert _pending(dbs) == {"api": [group], "cell1": [group], "cell2": []}
    state = group_state(dbs.api, "api", group)
    assert state is not None and state[0] == "api side"


def test_limit_replays_that_many_groups(dbs: Databases) -> None:
    cell = dbs.cell("cell1")
    groups = [seed_cell_group(cell.engine, name=f"g{i}") for i in range(3)]
    for group in groups:
        _cell_entry(dbs, group)
    first = drain_journals(dbs, limit=2)
    assert (first.found, first.done) == (2, 2)
    assert len(_pending(dbs)["cell1"]) == 1
    assert drain_journals(dbs) == DrainResult(found=1, done=1, conflicts=(), errors=())


def test_a_phase_change_in_flight_leaves_the_entry_for_the_next_run(dbs: Databases) -> None:
    cell = dbs.cell("cell1")
    group = seed_cell_group(cell.engine)
    _cell_entry(dbs, group)
    with writer(dbs.api) as conn:  # the API database moved on, the cells not yet
        conn.execute(models.api_state.update().values(epoch=models.api_state.c.epoch + 1))
    result = drain_journals(dbs)
    assert (result.found, result.done) == (1, 0)
    assert len(result.errors) == 1 and result.errors[0].endswith("; run again")
    assert _pending(dbs)["cell1"] == [group]


def test_note_entry_records_why_an_entry_stays(dbs: Databases) -> None:
    cell = dbs.cell("cell1")
    group = seed_cell_group(cell.engine)
    entry = _cell_entry(dbs, group)
    err = OperationalError("API database: lost mysql://nova:hunter2@db/nova\nmore")
    note_entry(cell.engine, cell.label, CELL, group, entry, err)
    with reader(cell.engine) as conn:
        (found,) = CELL.journal_pending(conn)
    assert found.id == entry
    assert found.error == "OperationalError: API database: lost mysql://nova:***@db/nova"
