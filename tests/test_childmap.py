"""The backfill's child map (:mod:`shadowdb.childmap`): a batch's cost does not grow with
the deployment, and the map stays exact under live writes, phase changes and crashes.
"""

from __future__ import annotations

import json
import signal
import time
import uuid as uuidlib
from typing import Any

import pytest
import sqlalchemy as sa

from shadowdb import models, signals
from shadowdb.backfill import ForwardCopier, backfill
from shadowdb.databases import Databases, reader
from shadowdb.journals import drain_journals
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.queries import API
from shadowdb.state import Phase
from shadowdb.testing import StatementCounter
from tests.conftest import Topology
from tests.support.backfill import diff, environment, run_crashing, seed_legacy
from tests.support.cli import Cli
from tests.support.helpers import NOW, StatementLog, new_uuid, put_in_phase, seed_cell_group

CHILD_TABLES = ("instance_group_member", "instance_group_policy")


def _seed_many(engine: sa.Engine, first: int, count: int) -> None:
    """Insert ``count`` legacy groups (2 policies, 5 members each), ids from ``first``."""
    g, p, m = models.cell_groups, models.cell_policies, models.cell_members
    ids = range(first, first + count)
    with engine.begin() as conn:
        conn.execute(
            g.insert(),
            [
                {
                    "id": i,
                    "uuid": str(uuidlib.UUID(int=i, version=4)),
                    "name": f"g{i}",
                    "project_id": "p1",
                    "user_id": "u1",
                    "created_at": NOW,
                    "updated_at": NOW,
                    "deleted": 0,
                }
                for i in ids
            ],
        )
        conn.execute(
            p.insert(),
            [
                {"group_id": i, "policy": pol, "created_at": NOW, "deleted": 0}
                for i in ids
                for pol in ("anti-affinity", "soft-affinity")
            ],
        )
        conn.execute(
            m.insert(),
            [
                {
                    "group_id": i,
                    "instance_id": str(uuidlib.UUID(int=i << 16 | k, version=4)),
                    "created_at": NOW,
                    "deleted": 0,
                }
                for i in ids
                for k in range(5)
            ],
        )
    if engine.dialect.name == "postgresql":
        # As autovacuum would: without statistics the planner takes any table for tiny.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for table in ("instance_groups", *CHILD_TABLES):
                conn.exec_driver_sql(f"ANALYZE {table}")


def _built(dbs: Databases, cell: str) -> int | None:
    b = models.cell_child_map_built
    with reader(dbs.cell(cell).engine) as conn:
        return conn.execute(sa.select(b.c.epoch)).scalar()


def _full_scans(engine: sa.Engine, statements: list[tuple[str, Any]]) -> list[str]:
    """Return the plans of ``statements`` that read a Nova child table whole."""
    found: list[str] = []
    with engine.connect() as conn:
        dialect = conn.dialect.name
        for text, params in statements:
            if not text.lstrip().upper().startswith("SELECT"):
                continue
            if not any(t in text for t in CHILD_TABLES):
                continue
            if dialect == "sqlite":
                plan = [r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + text, params)]
                bad = [d for d in plan if any(d.startswith(f"SCAN {t}") for t in CHILD_TABLES)]
            elif dialect == "postgresql":
                plan = [r[0] for r in conn.exec_driver_sql("EXPLAIN " + text, params)]
                bad = [d for d in plan if any(f"Seq Scan on {t}" in d for t in CHILD_TABLES)]
            else:
                rows = conn.exec_driver_sql("EXPLAIN " + text, params).mappings().all()
                plan = [f"{r['table']}: {r['type']}" for r in rows]
                bad = [d for d in plan if any(d == f"{t}: ALL" for t in CHILD_TABLES)]
            if bad:
                found.append(f"{text}\n{plan}")
    return found


def _one_batch(dbs: Databases) -> tuple[dict[str, int], list[str], list[str]]:
    """Run one batch of 50; return statements per engine, the cell's SQL, full scans."""
    engines = {"api": dbs.api, **{c.name: c.engine for c in dbs.cells}}
    with StatementLog(engines) as log, StatementCounter(engines) as counter:
        step = ForwardCopier(dbs, batch_size=50).migrate_instance_groups(50)
    assert (step.found, step.done, step.error) == (50, 50, None)
    cell1 = dbs.cell("cell1").engine
    return counter.counts, log.texts("cell1"), _full_scans(cell1, log.seen["cell1"])


def test_a_batch_costs_the_same_at_200_and_2000_groups(topology: Topology) -> None:
    """Statements per batch are the same, and none reads a Nova child table whole."""
    dbs = topology.dbs
    cell1 = topology.cell_engine("cell1")
    _seed_many(cell1, 1, 200)
    put_in_phase(dbs, Phase.DUAL_WRITE_CELL_READS)
    _one_batch(dbs)  # builds the map
    assert _built(dbs, "cell1") == dbs.phases.fresh().epoch
    small = _one_batch(dbs)

    _seed_many(cell1, 201, 1800)
    # A new epoch: the map is rebuilt by the next batch (the seeding above is no write
    # of the protocol's, so the map of the old epoch lacks it).
    put_in_phase(dbs, Phase.DUAL_WRITE_API_READS)
    _one_batch(dbs)
    assert _built(dbs, "cell1") == dbs.phases.fresh().epoch
    large = _one_batch(dbs)

    assert small[0] == large[0]
    assert small[1] == large[1]
    assert small[2] == [] and large[2] == []


def _pg_child_reads(engine: sa.Engine) -> dict[str, tuple[int, int]]:
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
        rows = conn.exec_driver_sql(
            "SELECT relname, seq_tup_read, COALESCE(idx_tup_fetch, 0) FROM pg_stat_user_tables"
            " WHERE relname IN ('instance_group_member', 'instance_group_policy')"
        ).all()
    return {r[0]: (int(r[1]), int(r[2])) for r in rows}


@pytest.mark.postgresql
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_on_postgresql_a_batch_reads_no_child_row_by_scan(topology: Topology) -> None:
    """``pg_stat_user_tables``: after the map's one build, batches never scan the children."""
    dbs = topology.dbs
    cell1 = topology.cell_engine("cell1")
    _seed_many(cell1, 1, 2000)
    put_in_phase(dbs, Phase.DUAL_WRITE_CELL_READS)
    _one_batch(dbs)  # builds the map: one scan of each child table
    dbs.cell("cell1").engine.dispose()  # a closing backend flushes its statistics
    before = _pg_child_reads(cell1)
    for _ in range(4):
        _one_batch(dbs)
    dbs.cell("cell1").engine.dispose()
    after = before
    for _ in range(50):  # statistics arrive asynchronously from the closed backends
        after = _pg_child_reads(cell1)
        if after != before:
            break
        time.sleep(0.1)
    scanned = {t: after[t][0] - before[t][0] for t in after}
    fetched = {t: after[t][1] - before[t][1] for t in after}
    assert scanned == dict.fromkeys(CHILD_TABLES, 0)
    # 4 batches of 50 groups: 5 members and 2 policies each, fetched by primary key.
    assert fetched == {"instance_group_member": 1000, "instance_group_policy": 400}


# --------------------------------------------------------------------------- staleness


@pytest.mark.parametrize("phase", [Phase.DUAL_WRITE_CELL_READS, Phase.DUAL_WRITE_API_READS])
def test_writes_after_the_map_was_built_are_neither_lost_nor_conflicts(
    topology: Topology, phase: Phase
) -> None:
    """Members added and removed after the build, before and while the backfill copies."""
    dbs = topology.dbs
    cell1 = topology.cell_engine("cell1")
    members = {i: [new_uuid(), new_uuid()] for i in range(8)}
    uuids = [
        seed_cell_group(cell1, name=f"g{i}", project_id="p1", members=members[i]) for i in range(8)
    ]
    put_in_phase(dbs, phase)
    first = ForwardCopier(dbs, batch_size=2).migrate_instance_groups(2)
    assert (first.found, first.done) == (2, 2)
    assert _built(dbs, "cell1") == dbs.phases.fresh().epoch
    ctx = RequestContext(dbs, "p1", "u1", is_admin=True)

    # After the build, before the batch: a copied group and two not yet copied change.
    InstanceGroup.add_members(ctx, uuids[0], [new_uuid()])
    InstanceGroup.remove_members(ctx, uuids[1], [members[1][0]])
    InstanceGroup.add_members(ctx, uuids[2], [new_uuid()])
    InstanceGroup.remove_members(ctx, uuids[3], [members[3][1]])

    # While the backfill copies: between each batch's scan and its locks, a group of
    # that batch gains a member and loses one.
    raced: list[str] = []

    def race(_sender: Any, step: str, **_: Any) -> None:
        if step == "scanned" and len(raced) < 2:
            uuid = uuids[4 + 2 * len(raced)]
            raced.append(uuid)
            InstanceGroup.add_members(ctx, uuid, [new_uuid()])
            gone = members[uuids.index(uuid)][0]
            InstanceGroup.remove_members(ctx, uuid, [gone])

    signals.backfill_step.connect(race, sender=dbs)
    try:
        result = backfill(dbs, batch_size=2, sleep=lambda _s: None)
    finally:
        signals.backfill_step.disconnect(race, sender=dbs)
    assert len(raced) == 2
    assert result.outcome == "done", result
    assert not _conflicts(dbs)
    drained = drain_journals(dbs)
    assert drained.conflicts == () and drained.errors == ()
    assert diff(dbs) == []


def _conflicts(dbs: Databases) -> list[Any]:
    c = models.api_backfill_conflicts
    with reader(dbs.api) as conn:
        return list(conn.execute(sa.select(c)).all())


def test_a_map_of_an_earlier_epoch_is_rebuilt(topology: Topology) -> None:
    """Built in a dual-write phase, back to cell-only, writes there, forward again."""
    dbs = topology.dbs
    cell1 = topology.cell_engine("cell1")
    kept, dropped = new_uuid(), new_uuid()
    uuids = [seed_cell_group(cell1, name=f"g{i}", members=[kept, dropped]) for i in range(4)]
    put_in_phase(dbs, Phase.DUAL_WRITE_CELL_READS)
    first = ForwardCopier(dbs, batch_size=1).migrate_instance_groups(1)
    assert (first.found, first.done) == (1, 1)
    built = _built(dbs, "cell1")

    put_in_phase(dbs, Phase.CELL_ONLY)
    ctx = RequestContext(dbs, "p1", "u1", is_admin=True)
    added = new_uuid()
    InstanceGroup.add_members(ctx, uuids[2], [added])
    InstanceGroup.remove_members(ctx, uuids[3], [dropped])
    put_in_phase(dbs, Phase.DUAL_WRITE_CELL_READS)

    result = backfill(dbs, batch_size=1, sleep=lambda _s: None)
    assert result.outcome == "done", result
    assert built is not None and _built(dbs, "cell1") == dbs.phases.fresh().epoch > built
    assert diff(dbs) == []
    with reader(dbs.api) as conn:
        copies = {r.uuid: set(r.members) for r in API.get_many(conn, uuids[2:])}
    assert copies == {uuids[2]: {kept, dropped, added}, uuids[3]: {kept}}


def test_kill_9_during_the_map_build_then_resume_converges(topology: Topology) -> None:
    """Killed with the map built but not committed (the first batch's locks): none stays."""
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    seed_legacy(topology)
    crashed = run_crashing(topology, "--batch-size", "5", crash_at="locked:1")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    line = next(x for x in crashed.stderr.splitlines() if x.startswith("crash-events: "))
    steps = [e[0] for e in json.loads(line.removeprefix("crash-events: "))]
    # Killed in the first batch that locked anything (an empty chunk may come first).
    assert steps[-1] == "locked" and "locked" not in steps[:-1] and "copied" not in steps
    dbs = topology.dbs
    assert _built(dbs, "cell1") is None and _built(dbs, "cell2") is None
    with reader(topology.cell_engine("cell1")) as conn:
        assert (
            conn.execute(sa.select(sa.func.count()).select_from(models.cell_child_map)).scalar()
            == 0
        )

    resumed = Cli(environment(topology))("backfill", "--batch-size", "5", "--format", "json")
    assert resumed.code == 0, (resumed.out, resumed.err)
    assert resumed.json()["conflicts"] == []
    epoch = dbs.phases.fresh().epoch
    assert _built(dbs, "cell1") == epoch and _built(dbs, "cell2") == epoch
    assert diff(dbs) == []
