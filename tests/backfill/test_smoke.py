from __future__ import annotations

from shadowdb.backfill import backfill
from shadowdb.state import Phase
from tests.conftest import Topology
from tests.support.helpers import (
    group_state,
    new_uuid,
    put_in_phase,
    seed_api_group,
    seed_cell_group,
)


def test_nova_case_22_counts(topology: Topology) -> None:
    dbs = topology.dbs
    seed_api_group(dbs.api)
    cell = topology.cell_engine("cell1")
    uuids = [seed_cell_group(cell, name=f"g{i}", members=[new_uuid()]) for i in range(3)]
    put_in_phase(dbs, Phase.DUAL_WRITE_CELL_READS)
    r = backfill(dbs, max_count=2, sleep=lambda s: None)
    # The budget was spent by the first migration: the drain did not run.
    assert [(t.migration, t.found, t.done) for t in r.totals] == [
        ("migrate_instance_groups", 2, 2),
    ]
    assert r.outcome == "more"
    r = backfill(dbs, max_count=100, sleep=lambda s: None)
    assert [(t.found, t.done) for t in r.totals if t.migration == "migrate_instance_groups"] == [
        (1, 1)
    ]
    r = backfill(dbs, max_count=100, sleep=lambda s: None)
    assert r.outcome == "done"
    assert all((t.found, t.done) == (0, 0) for t in r.totals)
    for u in uuids:
        assert group_state(dbs.api, "api", u) == group_state(cell, "cell", u)
