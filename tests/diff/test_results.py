"""The stored results of diff-report runs, which the phase guards read."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from shadowdb import commands, diff, models
from shadowdb.databases import reader
from shadowdb.state import Phase
from tests.conftest import Topology
from tests.support.diff import (
    Injected,
    inject_policy_mismatch,
    no_sleep,
    seed_pair,
)
from tests.support.helpers import put_in_phase


def run(topology: Topology, **kwargs: Any) -> diff.DiffReport:
    kwargs.setdefault("sleep", no_sleep)
    return commands.diff_report(topology.dbs, **kwargs)


def test_results_are_stored(topology: Topology) -> None:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    seed_pair(topology)
    clean = run(topology)
    with reader(topology.dbs.api) as conn:
        first = diff.last_result(conn)
    assert first is not None
    assert (first.outcome, first.scope, first.phase, first.differences) == (
        "clean",
        "all",
        "dual-write-cell-reads",
        0,
    )
    assert first.started_at == clean.started_at and first.epoch == clean.epoch
    assert first.rows_api == clean.rows.api_hashed and first.rows_cells > 0
    found = Injected()
    inject_policy_mismatch(topology, found)
    run(topology, cell="cell1")
    with reader(topology.dbs.api) as conn:
        second = diff.last_result(conn)
    assert second is not None and second.id > first.id
    assert (second.outcome, second.scope, second.counts) == (
        "differences",
        "cell1",
        {"policy-mismatch": 1},
    )
    with reader(topology.dbs.api) as conn:
        assert (
            conn.execute(
                sa.select(sa.func.count()).select_from(models.api_diff_results)
            ).scalar_one()
            == 2
        )


def test_a_superseding_record_is_known_by_its_reason(topology: Topology) -> None:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    seed_pair(topology)
    run(topology)
    with reader(topology.dbs.api) as conn:
        ran = diff.last_result(conn)
    assert ran is not None and not ran.superseded_by("cells rebuilt")
    state = topology.dbs.phases.fresh()
    with topology.dbs.api.begin() as conn:
        diff.record_superseded(conn, state, "tester", "cells rebuilt")
    with reader(topology.dbs.api) as conn:
        last = diff.last_result(conn)
    assert last is not None and last.id > ran.id
    assert (last.outcome, last.scope, last.cells, last.epoch) == (
        "incomplete",
        "all",
        (),
        state.epoch,
    )
    assert last.superseded_by("cells rebuilt") and not last.superseded_by("something else")
