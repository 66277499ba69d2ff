"""What is left to copy: :func:`shadowdb.backfill.remaining` and the shared backlog scan."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from shadowdb import commands, models
from shadowdb.backfill import backfill, backlog, remaining, uncopied
from shadowdb.databases import reader, writer
from shadowdb.errors import InvalidInput
from shadowdb.state import Phase, utcnow
from tests.conftest import Topology
from tests.support.helpers import put_in_phase, seed_api_group, seed_cell_group


def _no_sleep(_seconds: float) -> None:
    pass


def _tombstone(topology: Topology, uuid: str) -> None:
    with writer(topology.dbs.api) as conn:
        conn.execute(models.api_tombstones.insert().values(uuid=uuid, epoch=1, deleted_at=utcnow()))


@pytest.fixture
def seeded(topology: Topology) -> Topology:
    """cell1: three groups to copy, one copied, one deleted; cell2: two to copy."""
    cell1, cell2 = topology.cell_engine("cell1"), topology.cell_engine("cell2")
    for i in range(3):
        seed_cell_group(cell1, name=f"a{i}")
    copied = seed_cell_group(cell1, name="copied")
    seed_api_group(topology.dbs.api, uuid=copied, name="copied", policies=("anti-affinity",))
    seed_cell_group(cell1, name="gone", deleted=True)
    for i in range(2):
        seed_cell_group(cell2, name=f"b{i}")
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    return topology


def test_remaining_counts_live_cell_groups_the_api_lacks(seeded: Topology) -> None:
    dbs = seeded.dbs
    assert remaining(dbs) == 5
    assert remaining(dbs, "cell1") == 3
    assert remaining(dbs, "cell2") == 2
    assert commands.backfill_remaining(dbs) == 5
    assert commands.backfill_remaining(dbs, cell="cell2") == 2
    backfill(dbs, sleep=_no_sleep)
    assert remaining(dbs) == 0


def test_remaining_pages_through_a_cell(seeded: Topology, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backlog, "PAGE", 2)
    assert remaining(seeded.dbs, "cell1") == 3
    assert uncopied(seeded.dbs, seeded.dbs.cell("cell1")) == 3


def test_remaining_leaves_out_the_leftovers_of_groups_the_api_deleted(seeded: Topology) -> None:
    # A tombstoned group's cell copy is never copied (a deleted-in-api conflict): the
    # progress bar's total counts only what the run can complete.
    dbs = seeded.dbs
    leftover = seed_cell_group(seeded.cell_engine("cell2"), name="leftover")
    _tombstone(seeded, leftover)
    assert remaining(dbs) == 5
    assert uncopied(dbs, dbs.cell("cell2")) == 2
    result = backfill(dbs, sleep=_no_sleep)
    assert [(c.group_uuid, c.kind) for c in result.conflicts] == [(leftover, "deleted-in-api")]
    assert remaining(dbs) == 0


def test_remaining_reverse_counts_what_the_cells_lack(topology: Topology) -> None:
    dbs = topology.dbs
    put_in_phase(dbs, Phase.API_ONLY)
    seed_api_group(dbs.api, name="only-in-api")
    level = seed_cell_group(topology.cell_engine("cell1"), name="level")
    seed_api_group(dbs.api, uuid=level, name="level", policies=("anti-affinity",))
    orphan = seed_cell_group(topology.cell_engine("cell2"), name="orphan")
    _tombstone(topology, orphan)
    assert remaining(dbs, reverse=True) == 2
    assert commands.backfill_remaining(dbs, cell="cell1", reverse=True) == 2
    backfill(dbs, reverse=True, sleep=_no_sleep)
    assert remaining(dbs, reverse=True) == 0
    with reader(topology.cell_engine("cell2")) as conn:
        g = models.cell_groups
        assert conn.scalar(sa.select(g.c.deleted).where(g.c.uuid == orphan)) != 0


def test_remaining_of_an_unknown_cell_is_refused(topology: Topology) -> None:
    with pytest.raises(InvalidInput):
        remaining(topology.dbs, "nowhere")
