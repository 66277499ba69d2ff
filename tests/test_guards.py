"""Journal guards count exactly: moot entries (copies level) pass, real ones refuse."""

from __future__ import annotations

import sqlalchemy as sa

from shadowdb import models
from shadowdb.guards import ApiJournalEmpty, CellJournalsEmpty
from shadowdb.queries import API, CELL
from shadowdb.state import Phase
from tests.conftest import Topology
from tests.support.helpers import put_in_phase, seed_api_group, seed_cell_group

G1 = "00000000-0000-4000-8000-000000000001"
G2 = "00000000-0000-4000-8000-000000000002"


def test_an_outbox_entry_whose_copies_are_level_is_moot(topology: Topology) -> None:
    dbs = topology.dbs
    put_in_phase(dbs, Phase.DUAL_WRITE_API_READS)
    state = dbs.phases.fresh()
    seed_cell_group(topology.cell_engine("cell1"), uuid=G1, name="same", policies=("affinity",))
    seed_api_group(dbs.api, uuid=G1, name="same")
    with dbs.api.begin() as conn:
        API.journal_add(conn, G1, state.epoch)
    assert ApiJournalEmpty().check(dbs, state, Phase.API_ONLY) == []


def test_an_entry_whose_copies_differ_refuses(topology: Topology) -> None:
    dbs = topology.dbs
    put_in_phase(dbs, Phase.DUAL_WRITE_CELL_READS)
    state = dbs.phases.fresh()
    seed_cell_group(topology.cell_engine("cell2"), uuid=G2, name="renamed")
    seed_api_group(dbs.api, uuid=G2, name="old")
    with topology.cell_engine("cell2").begin() as conn:
        CELL.journal_add(conn, G2, state.epoch, "lost")
    reasons = CellJournalsEmpty().check(dbs, state, Phase.DUAL_WRITE_API_READS)
    assert reasons == ["journal of cell cell2 holds 1 entry (API copies lag); run backfill"]
    with dbs.api.begin() as conn:
        API.journal_add(conn, G2, state.epoch)
    assert len(ApiJournalEmpty().check(dbs, state, Phase.API_ONLY)) == 1


def test_the_locked_check_deletes_moot_entries_and_keeps_real_ones(topology: Topology) -> None:
    dbs = topology.dbs
    put_in_phase(dbs, Phase.DUAL_WRITE_API_READS)
    state = dbs.phases.fresh()
    cell = dbs.cell("cell1")
    seed_cell_group(cell.engine, uuid=G1, name="same", policies=("affinity",))
    seed_api_group(dbs.api, uuid=G1, name="same")
    seed_cell_group(cell.engine, uuid=G2, name="stale")
    seed_api_group(dbs.api, uuid=G2, name="new")
    with dbs.api.begin() as conn:
        API.journal_add(conn, G1, state.epoch)
        API.journal_add(conn, G2, state.epoch)
    with dbs.api.begin() as aconn, cell.engine.begin() as cconn:
        reasons = ApiJournalEmpty().check_locked(aconn, [(cell, cconn)])
    assert reasons == ["API journal holds 1 entry (cell copies lag); run backfill"]
    with dbs.api.connect() as conn:
        left = set(conn.scalars(sa.select(models.api_journal.c.group_uuid)))
    assert left == {G2}
