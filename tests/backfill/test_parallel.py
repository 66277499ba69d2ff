"""Two backfill processes at once on one deployment split the work: each group copied once.

Real processes (``tests/support/crashing_backfill.py --wait-for-go``, no crash), released at the
same moment through a start barrier on their stdin, with small batches so that their
claims on the chunks (``FOR UPDATE SKIP LOCKED``) interleave. Server backends only:
SQLite has a single writer, and there the chunks are not claimed.

Exit codes: each process exits 0 once it finds no chunk left to claim, even while the
other still holds the last one. That is ``nova-manage``'s "nothing left that this run can
do": the other process finishes that chunk and its own exit code reports it; re-running
the first could only find the same nothing. Whether the data is all there is what the
phase guard into ``dual-write-api-reads`` checks, by counting, not by exit codes.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
import sqlalchemy as sa

from shadowdb import models
from shadowdb.cli import ExitCode
from shadowdb.databases import reader
from shadowdb.state import Phase
from tests.conftest import Topology
from tests.support.backfill import PYTHON, RUNNER, diff, environment
from tests.support.helpers import NOW, new_uuid, put_in_phase

SERVERS = [
    pytest.param("mysql", marks=pytest.mark.mysql),
    pytest.param("postgresql", marks=pytest.mark.postgresql),
]

GROUPS = 2000
PROCESSES = 2


def _seed_bulk(topology: Topology, per_cell: dict[str, int]) -> set[str]:
    """Insert legacy groups (2 policies, 2 members each) in few statements; return uuids."""
    uuids: set[str] = set()
    g, p, m = models.cell_groups, models.cell_policies, models.cell_members
    for name, count in per_cell.items():
        batch = [new_uuid() for _ in range(count)]
        with topology.cell_engine(name).begin() as conn:
            conn.execute(
                g.insert(),
                [
                    {
                        "uuid": u,
                        "name": f"{name}-{i}",
                        "project_id": f"p{i % 7}",
                        "user_id": f"u{i % 3}",
                        "created_at": NOW,
                        "deleted": 0,
                    }
                    for i, u in enumerate(batch)
                ],
            )
            ids = dict(conn.execute(sa.select(g.c.uuid, g.c.id)).all())
            conn.execute(
                p.insert(),
                [
                    {"group_id": ids[u], "policy": policy, "deleted": 0, "created_at": NOW}
                    for u in batch
                    for policy in ("anti-affinity", "soft-affinity")
                ],
            )
            conn.execute(
                m.insert(),
                [
                    {"group_id": ids[u], "instance_id": new_uuid(), "deleted": 0, "created_at": NOW}
                    for u in batch
                    for _ in range(2)
                ],
            )
        uuids.update(batch)
    return uuids


def _start_together(topology: Topology, *backfill_args: str) -> list[subprocess.Popen[str]]:
    """Start the processes, wait until each is ready, then release them at once."""
    procs = [
        subprocess.Popen(
            [PYTHON, str(RUNNER), "--wait-for-go", "--", *backfill_args],
            env=environment(topology),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()  # communicate() closes it
    return procs


@pytest.mark.slow
@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_two_processes_copy_every_group_exactly_once(topology: Topology) -> None:
    dbs = topology.dbs
    put_in_phase(dbs, Phase.DUAL_WRITE_CELL_READS)
    uuids = _seed_bulk(topology, {"cell1": GROUPS // 2, "cell2": GROUPS // 2})

    procs = _start_together(topology, "--batch-size", "10", "--format", "json")
    ended: list[tuple[int, str, str]] = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            ended.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    results: list[dict[str, Any]] = []
    for code, out, err in ended:
        assert code == ExitCode.OK, (code, out, err)
        assert "deadlock" not in err.lower() and "lock wait timeout" not in err.lower(), err
        data = json.loads(out)
        assert data["errors"] == [] and data["conflicts"] == [], data
        results.append(data)

    copied = [
        next(t for t in data["totals"] if t["migration"] == "migrate_instance_groups")
        for data in results
    ]
    # The processes split the work: each did some, and no group was found or copied by
    # both (a group copied by one is level when the other reaches it).
    assert all(t["done"] > 0 for t in copied), copied
    assert sum(t["done"] for t in copied) == GROUPS, copied
    assert sum(t["found"] for t in copied) == GROUPS, copied

    g = models.api_groups
    with reader(dbs.api) as conn:
        rows = conn.execute(sa.select(g.c.uuid)).scalars().all()
        policies = conn.execute(sa.select(sa.func.count()).select_from(models.api_policies))
        members = conn.execute(sa.select(sa.func.count()).select_from(models.api_members))
        assert (policies.scalar_one(), members.scalar_one()) == (2 * GROUPS, 2 * GROUPS)
    assert len(rows) == len(set(rows)) == GROUPS
    assert set(rows) == uuids
    assert diff(dbs) == []
