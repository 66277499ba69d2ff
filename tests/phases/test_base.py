"""What the phases share: lookups in the API database and the cells, lists, scope, targets."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from shadowdb import signals
from shadowdb.errors import GroupExists, GroupNotFound
from shadowdb.phases.base import (
    Lookup,
    check_scope,
    find_cell_copy,
    find_in_api,
    find_in_api_with_phase,
    find_in_cells,
    list_cells,
    merge,
    shadow_failed,
    target_cell,
)
from shadowdb.queries import GroupRecord, Scope
from shadowdb.state import Phase
from shadowdb.testing import StatementCounter
from tests.conftest import Topology
from tests.support.helpers import NOW, engines_of, new_uuid, seed_api_group, seed_cell_group

ADMIN = Scope(None)


def _record(uuid: str, name: str = "g", project: str = "p1") -> GroupRecord:
    return GroupRecord(1, uuid, name, "u1", project, (), (), NOW, None)


def test_a_lookup_that_finds_nothing_names_what_it_looked_for() -> None:
    assert Lookup("uuid", "g1").not_found().group_uuid == "g1"
    assert "web" in str(Lookup("name", "web").not_found())
    assert "i1" in str(Lookup("instance", "i1").not_found())
    assert all(
        isinstance(Lookup(kind, "k").not_found(), GroupNotFound)  # type: ignore[arg-type]
        for kind in ("uuid", "name", "instance")
    )


def test_a_uuid_or_member_lookup_stops_at_the_cell_that_answers(topology: Topology) -> None:
    member = new_uuid()
    uuid = seed_cell_group(topology.cell_engine("cell2"), members=(member,))
    for lookup in (Lookup("uuid", uuid), Lookup("instance", member)):
        found = find_in_cells(topology.dbs, lookup, ADMIN)
        assert found is not None
        record, cell = found
        assert (record.uuid, cell.name) == (uuid, "cell2")
    assert find_in_cells(topology.dbs, Lookup("uuid", new_uuid()), ADMIN) is None


def test_cell0_is_asked_last_and_still_asked(single_cell: Topology) -> None:
    dbs = single_cell.dbs
    member = new_uuid()
    uuid = seed_cell_group(single_cell.cell_engine("cell1"), members=(member,))
    in_cell0 = seed_cell_group(single_cell.cell_engine("cell0"))  # an untidy legacy row
    with StatementCounter(engines_of(dbs)) as counter:
        for lookup in (Lookup("uuid", uuid), Lookup("instance", member)):
            found = find_in_cells(dbs, lookup, ADMIN)
            assert found is not None and (found[0].uuid, found[1].name) == (uuid, "cell1")
    assert counter.counts.get("cell0", 0) == 0, counter.statements
    found = find_in_cells(dbs, Lookup("uuid", in_cell0), ADMIN)
    assert found is not None and found[1].name == "cell0"


def test_a_twin_in_cell0_is_listed_as_a_lookup_finds_it(single_cell: Topology) -> None:
    dbs = single_cell.dbs
    twin = seed_cell_group(single_cell.cell_engine("cell0"), name="in cell0")
    seed_cell_group(single_cell.cell_engine("cell1"), uuid=twin, name="in cell1")
    found = find_in_cells(dbs, Lookup("uuid", twin), ADMIN)
    assert found is not None and found[1].name == "cell1"
    assert [(r.uuid, r.name) for r in list_cells(dbs, ADMIN)] == [(twin, "in cell1")]


def test_a_name_lookup_takes_the_oldest_match_of_every_cell(topology: Topology) -> None:
    seed_cell_group(topology.cell_engine("cell1"), name="web", created_at=NOW)
    older = seed_cell_group(
        topology.cell_engine("cell2"), name="web", created_at=NOW - dt.timedelta(days=1)
    )
    found = find_in_cells(topology.dbs, Lookup("name", "web"), ADMIN)
    assert found is not None and (found[0].uuid, found[1].name) == (older, "cell2")
    assert find_cell_copy(topology.dbs, Lookup("name", "web"), ADMIN).uuid == older


def test_find_cell_copy_raises_the_lookups_own_error(topology: Topology) -> None:
    with pytest.raises(GroupNotFound) as caught:
        find_cell_copy(topology.dbs, Lookup("instance", "nobody"), ADMIN)
    assert "nobody" in str(caught.value)


def test_the_api_lookup_brings_the_phase_unless_by_name(topology: Topology) -> None:
    member = new_uuid()
    uuid = seed_api_group(topology.dbs.api, name="web", members=(member,))
    for lookup in (Lookup("uuid", uuid), Lookup("instance", member)):
        record, state = find_in_api_with_phase(topology.dbs, lookup, ADMIN)
        assert record is not None and record.uuid == uuid
        assert state is not None and state.phase is Phase.CELL_ONLY
    record, state = find_in_api_with_phase(topology.dbs, Lookup("name", "web"), ADMIN)
    assert record is not None and record.uuid == uuid and state is None
    found = find_in_api(topology.dbs, Lookup("name", "web"), Scope("p2"))
    assert found is None  # another project's group


def test_cells_are_listed_one_copy_per_uuid_and_a_twin_is_announced(topology: Topology) -> None:
    dbs = topology.dbs
    twin = seed_cell_group(topology.cell_engine("cell1"), name="in cell1")
    seed_cell_group(topology.cell_engine("cell2"), uuid=twin, name="in cell2")
    other = seed_cell_group(topology.cell_engine("cell2"), name="other")
    announced: list[dict[str, Any]] = []
    with signals.divergence.connected_to(lambda _, **kw: announced.append(kw), sender=dbs):
        listed = list_cells(dbs, ADMIN)
    assert [(r.uuid, r.name) for r in listed] == [(twin, "in cell1"), (other, "other")]
    assert [(a["group_uuid"], a["kind"]) for a in announced] == [(twin, "live-in-two-cells")]


def test_merge_keeps_the_first_lists_copy(topology: Topology) -> None:
    api = [_record("a", "api copy"), _record("b")]
    cells = [_record("a", "cell copy"), _record("c")]
    announced: list[object] = []
    with signals.divergence.connected_to(lambda _, **kw: announced.append(kw)):
        merged = merge(api, cells, topology.dbs)
    assert [(r.uuid, r.name) for r in merged] == [("a", "api copy"), ("b", "g"), ("c", "g")]
    assert announced == []  # an API copy and a cell copy are no divergence


def test_check_scope_hides_another_projects_copy() -> None:
    record = _record("g1", project="p1")
    assert check_scope(record, Scope("p1")) is record
    assert check_scope(record, Scope("p2")) is None
    assert check_scope(record, ADMIN) is record
    assert check_scope(record, None) is record
    assert check_scope(None, Scope("p1")) is None


def test_a_write_targets_the_groups_cell_or_the_default_for_a_new_one(
    topology: Topology,
) -> None:
    dbs = topology.dbs
    state = dbs.phases.fresh()
    held = seed_cell_group(topology.cell_engine("cell2"))
    assert target_cell(dbs, state, held, create=False).name == "cell2"
    assert target_cell(dbs, state, new_uuid(), create=True).name == "cell1"
    with pytest.raises(GroupExists):
        target_cell(dbs, state, held, create=True)


def test_a_failed_second_write_is_announced(topology: Topology) -> None:
    dbs = topology.dbs
    got: list[dict[str, Any]] = []
    with signals.shadow_write_failed.connected_to(lambda _, **kw: got.append(kw), sender=dbs):
        shadow_failed(
            dbs,
            dbs.phases.fresh(),
            "g1",
            "API database",
            RuntimeError("lost mysql://nova:hunter2@db/nova"),
            "cell",
        )
    assert got == [
        {
            "group_uuid": "g1",
            "phase": "cell-only",
            "database": "API database",
            "error": "RuntimeError: lost mysql://nova:***@db/nova",
            "journal": "cell",
        }
    ]
