"""Galera: every shadowdb write goes through one node, and a write through another is refused.

The fence rests on row locks, which Galera neither replicates nor certifies, so a writer
on a second node could commit under a phase that ``phase set`` through the first has
left (RELIABILITY.md, "Galera: one writer node"). ``db sync`` records the node it runs
through in every database's phase row; every write transaction's first statement, the
locking read of that row, refuses any other node. Runs on the three-node cluster of
``scripts/galera`` (Debian's galera-4), started for this module.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from shadowdb import commands, models
from shadowdb.databases import Databases, connect, reader
from shadowdb.errors import NotTheWriterNode
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.state import read_state
from tests.support.backends import worker_id

ROOT = Path(__file__).resolve().parents[2]
PROVIDER = Path("/usr/lib/galera/libgalera_smm.so")
#: Ports of this worker's own cluster (clear of scripts/galera's default, 13306): a
#: thousand apart per xdist worker, so two workers' clusters never share a port (each
#: node also listens 1261, 1361 and 1461 above its own).
_BASE = 23306 + 1000 * int(worker_id().removeprefix("gw").replace("main", "0"))
PORTS = (_BASE, _BASE + 1, _BASE + 2)

pytestmark = [pytest.mark.slow]


def _url(port: int, database: str = "") -> sa.URL:
    return sa.make_url(f"mysql+pymysql://root@127.0.0.1:{port}/{database}?ssl_disabled=true")


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """The three-node cluster, started for this module and stopped after it."""
    if not PROVIDER.exists():
        reason = "Galera (Debian's galera-4) is not installed"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI requires it)", pytrace=False)
        pytest.skip(reason)
    env = {
        **os.environ,
        "GALERA_DIR": f"/tmp/shadowdb-galera-test-{os.getpid()}",
        "GALERA_BASE_PORT": str(PORTS[0]),
    }
    subprocess.run([ROOT / "scripts" / "galera", "start"], check=True, env=env, capture_output=True)
    try:
        yield
    finally:
        subprocess.run([ROOT / "scripts" / "galera", "stop"], env=env, capture_output=True)


@pytest.fixture
def deployment(cluster: None) -> Iterator[dict[str, str]]:
    """An API database and one cell on the cluster, synced through node 0."""
    names = {r: f"sdbgalera_{os.getpid()}_{worker_id()}_{r}" for r in ("api", "cell1")}
    admin = sa.create_engine(_url(PORTS[0]), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in names.values():
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
            conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    api0 = _url(PORTS[0], names["api"]).render_as_string(hide_password=False)
    with connect(api0) as dbs:
        commands.sync_schema(dbs)
        commands.add_cell(
            dbs, "cell1", _url(PORTS[0], names["cell1"]).render_as_string(hide_password=False)
        )
        commands.sync_schema(dbs)
    try:
        yield names
    finally:
        with admin.connect() as conn:
            for name in names.values():
                conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
        admin.dispose()


def _through(node: int, names: dict[str, str]) -> Databases:
    return connect(_url(PORTS[node], names["api"]).render_as_string(hide_password=False))


def _writer_nodes(dbs: Databases) -> tuple[str, str]:
    with reader(dbs.api) as conn:
        api = conn.scalar(sa.select(models.api_state.c.writer_node))
    with reader(dbs.cell("cell1").engine) as conn:
        cell = conn.scalar(sa.select(models.cell_state.c.writer_node))
    return api, cell


def _create(dbs: Databases, name: str) -> str:
    group = InstanceGroup(RequestContext(dbs, "p1", "u1"), name=name, user_id="u1", project_id="p1")
    group.create()
    return str(group.uuid)


def test_reads_are_causal_and_a_second_node_is_refused_until_db_sync_moves_the_writer(
    deployment: dict[str, str],
) -> None:
    # A node applies replicated writes after the cluster commits them: the reads shadowdb
    # decides by are causal, or a phase set through node0 could go unseen through node1
    # (a `phase set` there would plan from the old phase, a fence read find the old writer).
    for node in range(3):
        with _through(node, deployment) as dbs, reader(dbs.api) as conn:
            assert int(conn.scalar(sa.text("SELECT @@SESSION.wsrep_sync_wait"))) & 1
    with _through(0, deployment) as first, _through(2, deployment) as third:
        for target in ("dual-write-cell-reads", "cell-only") * 5:
            commands.set_phase(first, target, force=True)
            with reader(third.api) as conn:
                assert read_state(conn).phase.value == target
    with _through(0, deployment) as first, _through(1, deployment) as second:
        assert _writer_nodes(first) == ("node0", "node0")
        commands.set_phase(first, "dual-write-cell-reads")
        assert commands.diff_report(first).clean
        commands.set_phase(first, "dual-write-api-reads")
        kept = _create(first, "through node0")
        # The API database (written first in this phase) is reached through node1.
        with pytest.raises(NotTheWriterNode, match=r"node 'node1'.*only through node 'node0'"):
            _create(second, "through node1")
        with reader(first.api) as conn:
            names = set(conn.scalars(sa.select(models.api_groups.c.name)))
        assert names == {"through node0"}  # nothing of the refused write
        # A phase change through the second node is refused the same way.
        assert commands.diff_report(first).clean
        with pytest.raises(NotTheWriterNode):
            commands.set_phase(second, "api-only")
        assert first.phases.fresh().phase.value == "dual-write-api-reads"
        # After a failover, `db sync` through the new node makes it the writer node.
        commands.sync_schema(second)
        assert _writer_nodes(second) == ("node1", "node0")  # the cell is reached via node0
        second.phases.invalidate()
        _create(second, "through node1")
        first.phases.invalidate()
        with pytest.raises(NotTheWriterNode):
            _create(first, "through node0 again")
        assert InstanceGroup.get_by_uuid(RequestContext(second, "p1", "u1"), kept).name == (
            "through node0"
        )
