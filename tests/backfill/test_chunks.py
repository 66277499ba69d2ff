"""The forward copy's chunks: planned once over each cell's ids, claimed one at a time."""

from __future__ import annotations

import itertools

import pytest
import sqlalchemy as sa

from shadowdb.backfill import chunks as chunks_module
from shadowdb.backfill.chunks import Chunks
from shadowdb.bookkeeping import Chunk
from shadowdb.databases import Cell, Databases
from shadowdb.queries import CELL
from tests.conftest import Topology
from tests.protocol.test_faults import SERVERS
from tests.support.helpers import seed_cell_group
from tests.support.proxy import Proxy


def _never_down(cell: Cell, err: BaseException) -> None:
    raise AssertionError(f"{cell.name} reported unreachable: {err}")


def _drain(planner: Chunks, cells: list[Cell]) -> list[Chunk]:
    """Claim every pending chunk of ``cells`` in turn, marking each done."""
    seen: list[Chunk] = []
    while True:
        with planner.claim(cells) as claim:
            if claim is None:
                return seen
            seen.append(claim.chunk)
            claim.checkpoint(claim.chunk.end_id + 1, done=True)


def _seed(topology: Topology, cell: str, count: int) -> int:
    """Seed ``count`` groups in ``cell``; return the highest group id there (ids are not
    reset between tests on a server)."""
    engine = topology.cell_engine(cell)
    for i in range(count):
        seed_cell_group(engine, name=f"g{i}")
    with engine.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.max(CELL.groups.c.id))) or 0)


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(chunks_module, "CHUNK_IDS", 2)
    return 2


def test_the_plan_covers_every_cells_ids_in_chunks(topology: Topology, small_chunks: int) -> None:
    dbs = topology.dbs
    top = _seed(topology, "cell1", 5)
    _seed(topology, "cell2", 1)
    planner = Chunks(dbs, dbs.cells, _never_down)
    planner.plan()
    cell1 = _drain(planner, [dbs.cell("cell1")])
    spans = [(c.start_id, c.end_id) for c in cell1]
    # From id 1 to the highest, without a gap or an overlap, CHUNK_IDS ids each.
    assert spans[0][0] == 1 and spans[-1][0] <= top <= spans[-1][1]
    assert all(end - start + 1 == small_chunks for start, end in spans)
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(spans))
    assert [c.next_id for c in cell1] == [s for s, _ in spans]  # nothing scanned yet
    assert {c.cell_uuid for c in cell1} == {dbs.cell("cell1").uuid}
    assert _drain(planner, [dbs.cell("cell2")]) != []


def test_a_cell_without_groups_has_no_chunk(topology: Topology) -> None:
    dbs = topology.dbs
    planner = Chunks(dbs, dbs.cells, _never_down)
    planner.plan()
    with planner.claim(list(dbs.cells)) as claim:
        assert claim is None


def test_a_later_plan_adds_only_the_ids_beyond_the_last_chunk(
    topology: Topology, small_chunks: int
) -> None:
    dbs = topology.dbs
    cell1 = dbs.cell("cell1")
    top = _seed(topology, "cell1", 2)
    first = Chunks(dbs, [cell1], _never_down)
    first.plan()
    later = _seed(topology, "cell1", 4)
    first.plan()  # once per run: the new ids wait for the next one
    planned = _drain(first, [cell1])
    assert top <= planned[-1].end_id < later
    second = Chunks(dbs, [cell1], _never_down)
    second.plan()
    added = _drain(second, [cell1])
    assert added[0].start_id == planned[-1].end_id + 1
    assert added[-1].start_id <= later <= added[-1].end_id


def test_a_batch_that_raises_leaves_its_chunk_where_it_was(
    topology: Topology, small_chunks: int
) -> None:
    dbs = topology.dbs
    cell1 = dbs.cell("cell1")
    _seed(topology, "cell1", 4)
    planner = Chunks(dbs, [cell1], _never_down)
    planner.plan()
    with planner.claim([cell1]) as claim:
        assert claim is not None
        claim.checkpoint(2, done=False)  # half scanned
    with pytest.raises(RuntimeError), planner.claim([cell1]) as claim:
        assert claim is not None and claim.chunk.next_id == 2
        raise RuntimeError("the batch failed")
    with planner.claim([cell1]) as claim:
        assert claim is not None and (claim.chunk.start_id, claim.chunk.next_id) == (1, 2)


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_a_chunk_another_process_holds_is_skipped(
    topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    dbs = topology.dbs
    cell1 = dbs.cell("cell1")
    top = _seed(topology, "cell1", 4)
    monkeypatch.setattr(chunks_module, "CHUNK_IDS", (top + 1) // 2)  # two chunks
    planner = Chunks(dbs, [cell1], _never_down)
    planner.plan()
    with planner.claim([cell1]) as held, planner.claim([cell1]) as other:
        assert held is not None and other is not None
        assert held.chunk.id != other.chunk.id
        with planner.claim([cell1]) as none_left:
            assert none_left is None


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_an_unreachable_cell_is_reported_and_the_others_planned(
    topology: Topology, cell_behind_proxy: tuple[Databases, Proxy]
) -> None:
    dbs, proxy = cell_behind_proxy
    _seed(topology, "cell2", 1)
    down: list[str] = []
    planner = Chunks(dbs, dbs.cells, lambda cell, _err: down.append(cell.name))
    proxy.cut()
    try:
        planner.plan()
    finally:
        proxy.restore()
    assert down == ["cell1"]
    assert len(_drain(planner, [dbs.cell("cell2")])) == 1
