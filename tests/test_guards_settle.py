"""Guards tell a write in flight from a real leftover (settled over the write grace)."""

from __future__ import annotations

import threading

import sqlalchemy as sa

from shadowdb import models
from shadowdb.phase import Phase
from shadowdb.queries import API, CELL
from shadowdb.switcher import ApiJournalEmpty, CellJournalsEmpty, UnmigratedCellGroups
from tests.conftest import Topology
from tests.helpers import put_in_phase, seed_api_group, seed_cell_group


def _later(delay: float, action: object) -> threading.Timer:
    timer = threading.Timer(delay, action)  # type: ignore[arg-type]
    timer.start()
    return timer


def test_an_outbox_entry_that_clears_within_the_grace_is_a_write_in_flight(
    topology: Topology,
) -> None:
    dbs = topology.dbs
    put_in_phase(dbs, Phase.DUAL_WRITE_API_READS)
    state = dbs.phases.fresh()
    with dbs.api.begin() as conn:
        entry = API.journal_add(conn, "00000000-0000-4000-8000-000000000001", state.epoch)

    def clear() -> None:
        with dbs.api.begin() as conn:
            conn.execute(models.api_journal.delete().where(models.api_journal.c.id == entry))

    timer = _later(dbs.settings.write_grace / 5, clear)
    try:
        assert ApiJournalEmpty().check(dbs, state, Phase.API_ONLY) == []
    finally:
        timer.join()


def test_a_lasting_journal_entry_refuses(topology: Topology) -> None:
    dbs = topology.dbs
    put_in_phase(dbs, Phase.DUAL_WRITE_CELL_READS)
    state = dbs.phases.fresh()
    with topology.cell_engine("cell2").begin() as conn:
        CELL.journal_add(conn, "00000000-0000-4000-8000-000000000002", state.epoch, "lost")
    reasons = CellJournalsEmpty().check(dbs, state, Phase.DUAL_WRITE_API_READS)
    assert reasons == ["journal of cell cell2 holds 1 entry (API copies lag); run backfill"]
    with dbs.api.begin() as conn:
        API.journal_add(conn, "00000000-0000-4000-8000-000000000003", state.epoch)
    assert len(ApiJournalEmpty().check(dbs, state, Phase.API_ONLY)) == 1


def test_a_group_whose_api_copy_lands_within_the_grace_is_not_unmigrated(
    topology: Topology,
) -> None:
    dbs = topology.dbs
    put_in_phase(dbs, Phase.DUAL_WRITE_CELL_READS)
    state = dbs.phases.fresh()
    landing = seed_cell_group(topology.cell_engine("cell1"), name="landing")
    stays = seed_cell_group(topology.cell_engine("cell1"), name="stays")
    timer = _later(dbs.settings.write_grace / 5, lambda: seed_api_group(dbs.api, uuid=landing))
    try:
        reasons = UnmigratedCellGroups().check(dbs, state, Phase.DUAL_WRITE_API_READS)
    finally:
        timer.join()
    assert reasons == ["1 live cell group not in the API database (cell1: 1); run backfill"]
    with dbs.api.connect() as conn:
        copied = set(conn.scalars(sa.select(models.api_groups.c.uuid)))
    assert landing in copied and stays not in copied
