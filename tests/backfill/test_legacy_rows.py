"""Legacy rows as Nova allowed them, migrated faithfully (issue: real Nova deployments)."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from shadowdb import commands, models
from shadowdb.backfill import backfill
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.state import Phase
from tests.conftest import Topology
from tests.support.helpers import put_in_phase, seed_cell_group


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


@pytest.mark.parametrize("backend", [pytest.param("mysql", marks=pytest.mark.mysql)], indirect=True)
def test_a_name_the_api_charset_cannot_store_is_stuck_alone(topology: Topology) -> None:
    """A utf8mb4 cell, Nova's utf8 API database: one row refused, its batch copied."""
    dbs = topology.dbs
    cell1 = topology.cell_engine("cell1")
    with cell1.begin() as conn:
        conn.execute(sa.text("ALTER TABLE instance_groups CONVERT TO CHARACTER SET utf8mb4"))
    try:
        fine = [seed_cell_group(cell1, name=f"plain {i}") for i in range(3)]
        rocket = seed_cell_group(cell1, name="rocket \U0001f680")
        put_in_phase(dbs, Phase.DUAL_WRITE_CELL_READS)
        result = backfill(dbs, batch_size=50)
        assert sum(t.done for t in result.totals) == 3
        (stuck,) = result.conflicts
        assert (stuck.group_uuid, stuck.kind) == (rocket, "cannot-copy")
        assert "Incorrect string value" in stuck.detail
        with dbs.api.connect() as conn:
            g = models.api_groups
            copied = set(conn.scalars(sa.select(g.c.uuid)))
        assert copied == set(fine)
    finally:
        with cell1.begin() as conn:
            for table in (models.cell_members, models.cell_policies, models.cell_groups):
                conn.execute(table.delete())
            conn.execute(sa.text("ALTER TABLE instance_groups CONVERT TO CHARACTER SET utf8"))
