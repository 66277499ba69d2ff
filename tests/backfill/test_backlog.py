"""The backlog: live cell groups the API database lacks, tombstoned leftovers aside."""

from __future__ import annotations

import pytest

from shadowdb import models
from shadowdb.backfill import backlog
from shadowdb.backfill.backlog import live_pages, uncopied, uncopied_among
from shadowdb.databases import reader, writer
from shadowdb.queries import CELL
from shadowdb.state import utcnow
from tests.conftest import Topology
from tests.support.helpers import new_uuid, seed_api_group, seed_cell_group


def _tombstone(topology: Topology, uuid: str) -> None:
    with writer(topology.dbs.api) as conn:
        conn.execute(models.api_tombstones.insert().values(uuid=uuid, epoch=1, deleted_at=utcnow()))


def test_uncopied_among_applies_the_tombstone_rule(topology: Topology) -> None:
    held = seed_api_group(topology.dbs.api)
    buried, lacking = new_uuid(), new_uuid()
    _tombstone(topology, buried)
    with reader(topology.dbs.api) as conn:
        assert uncopied_among(conn, [held, buried, lacking]) == {lacking}
        assert uncopied_among(conn, []) == set()


@pytest.fixture
def cell1(topology: Topology) -> dict[str, str]:
    """cell1: two groups to copy, one copied, one deleted, one the API database deleted."""
    engine = topology.cell_engine("cell1")
    made = {name: seed_cell_group(engine, name=name) for name in ("a", "copied", "b")}
    seed_api_group(topology.dbs.api, uuid=made["copied"])
    made["gone"] = seed_cell_group(engine, name="gone", deleted=True)
    made["buried"] = seed_cell_group(engine, name="buried")
    _tombstone(topology, made["buried"])
    return made


def test_pages_list_every_live_group_in_id_order_and_what_the_api_lacks(
    topology: Topology, cell1: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backlog, "PAGE", 2)
    pages = list(live_pages(topology.dbs, topology.dbs.cell("cell1")))
    assert [len(p.rows) for p in pages] == [2, 2]
    ids = [row_id for p in pages for row_id, _ in p.rows]
    assert ids == sorted(ids)
    assert [uuid for p in pages for _, uuid in p.rows] == [
        cell1["a"],
        cell1["copied"],
        cell1["b"],
        cell1["buried"],
    ]
    assert set().union(*(p.lacking for p in pages)) == {cell1["a"], cell1["b"]}


def test_pages_start_after_an_id(topology: Topology, cell1: dict[str, str]) -> None:
    cell = topology.dbs.cell("cell1")
    (first, *_), *_ = [p.rows for p in live_pages(topology.dbs, cell)]
    after = list(live_pages(topology.dbs, cell, after=first[0]))
    assert cell1["a"] not in {uuid for p in after for _, uuid in p.rows}
    assert list(live_pages(topology.dbs, cell, after=10**9)) == []


def test_the_reverse_copy_counts_tombstoned_groups_as_lacking(
    topology: Topology, cell1: dict[str, str]
) -> None:
    cell = topology.dbs.cell("cell1")
    (page,) = live_pages(topology.dbs, cell, include_tombstoned=True)
    assert page.lacking == {cell1["a"], cell1["b"], cell1["buried"]}


def test_a_journaled_group_is_a_write_in_flight_not_backlog(
    topology: Topology, cell1: dict[str, str]
) -> None:
    cell = topology.dbs.cell("cell1")
    with writer(cell.engine) as conn:
        CELL.journal_add(conn, cell1["a"], 0)
    (page,) = live_pages(topology.dbs, cell, skip_journaled=True)
    assert page.lacking == {cell1["b"]}
    assert cell1["a"] in {uuid for _, uuid in page.rows}
    (unskipped,) = live_pages(topology.dbs, cell)
    assert unskipped.lacking == {cell1["a"], cell1["b"]}
    assert uncopied(topology.dbs, cell) == 1


@pytest.mark.usefixtures("cell1")
def test_uncopied_counts_each_cells_backlog(topology: Topology) -> None:
    seed_cell_group(topology.cell_engine("cell2"))
    assert uncopied(topology.dbs, topology.dbs.cell("cell1")) == 2
    assert uncopied(topology.dbs, topology.dbs.cell("cell2")) == 1
