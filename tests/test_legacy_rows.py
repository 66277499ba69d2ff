"""Legacy rows as Nova allowed them, migrated faithfully (issue: real Nova deployments)."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from shadowdb import commands, models
from shadowdb.backfill import backfill
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.phase import Phase
from tests.conftest import Topology
from tests.helpers import put_in_phase, seed_cell_group


def _stamps(engine: sa.Engine, table: sa.Table, uuid: str) -> tuple[object, object]:
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(table.c.created_at, table.c.updated_at).where(table.c.uuid == uuid)
        ).one()
    return row.created_at, row.updated_at


def test_a_null_created_at_stays_null_and_the_diff_is_clean(topology: Topology) -> None:
    dbs = topology.dbs
    cell1 = topology.cell_engine("cell1")
    group = seed_cell_group(cell1, name="no birthday", created_at=None)  # type: ignore[arg-type]
    put_in_phase(dbs, Phase.DUAL_WRITE_CELL_READS)
    result = backfill(dbs)
    assert sum(t.done for t in result.totals) == 1
    assert _stamps(dbs.api, models.api_groups, group)[0] is None
    assert commands.diff_report(dbs).clean


def test_create_keeps_the_timestamps_it_is_given(topology: Topology) -> None:
    dbs = topology.dbs
    put_in_phase(dbs, Phase.DUAL_WRITE_CELL_READS)
    born = dt.datetime(2019, 5, 4, 3, 2, 1)
    touched = dt.datetime(2020, 1, 2, 3, 4, 5)
    g = InstanceGroup(
        RequestContext(dbs, "p1", "u1"),
        name="kept",
        user_id="u1",
        project_id="p1",
        created_at=born,
        updated_at=touched,
    )
    g.create()
    assert _stamps(topology.cell_engine("cell1"), models.cell_groups, g.uuid) == (born, touched)
    assert _stamps(dbs.api, models.api_groups, g.uuid) == (born, touched)
    assert commands.diff_report(dbs).clean
