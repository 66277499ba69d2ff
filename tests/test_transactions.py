"""A pooled hot-path connection the server closed is read through again, once; an outage
is never hidden.

The hot-path engines skip the pre-ping round trip, so a connection killed while it sat in
the pool is found dead by its first statement: the read runs once more on a new one
(:func:`shadowdb.transactions.read_again_once`). A database that is really gone still fails.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from shadowdb import transactions
from shadowdb.errors import DatabaseUnreachable
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.state import Phase
from tests.conftest import Topology
from tests.support.backends import Server
from tests.support.diff import seed_pair
from tests.support.helpers import map_instance, new_uuid, put_in_phase, seed_instance
from tests.support.proxy import Proxy

SERVERS = [
    pytest.param("mysql", marks=pytest.mark.mysql),
    pytest.param("postgresql", marks=pytest.mark.postgresql),
]


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_a_phase_read_on_a_killed_pooled_connection_is_read_again(
    topology: Topology, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    dbs = topology.dbs
    dbs.phases.fresh()  # one pooled connection on the hot-path engine
    engine = dbs.api_fast
    assert engine.pool.checkedin() == 1
    with engine.connect() as conn:  # the same pooled connection, asked who it is
        ident = conn.scalar(
            sa.text(
                "SELECT CONNECTION_ID()" if server.backend == "mysql" else "SELECT pg_backend_pid()"
            )
        )
    server.kill_connection(int(ident))
    retried: list[str] = []
    monkeypatch.setattr(
        transactions.log, "info", lambda event, **kw: retried.append(event), raising=False
    )
    state = dbs.phases.fresh()
    assert state.phase.value == "cell-only"
    assert retried == ["read_retried"]


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_a_database_that_is_gone_is_still_an_outage(
    api_behind_proxy: tuple[object, Proxy],
) -> None:
    dbs, proxy = api_behind_proxy
    dbs.phases.fresh()  # type: ignore[attr-defined]
    proxy.cut()
    try:
        with pytest.raises(DatabaseUnreachable):
            dbs.phases.fresh()  # type: ignore[attr-defined]
    finally:
        proxy.restore()


def _pooled_id(engine: sa.Engine, backend: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.scalar(
                sa.text(
                    "SELECT CONNECTION_ID()" if backend == "mysql" else "SELECT pg_backend_pid()"
                )
            )
        )


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_the_hot_path_reads_through_killed_pooled_connections(
    topology: Topology, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lookup by uuid and a get_hosts, each after its pooled connection was killed."""
    dbs = topology.dbs
    put_in_phase(dbs, Phase.DUAL_WRITE_API_READS)
    instance = new_uuid()
    seed_instance(topology.cell_engine("cell1"), instance, host="compute-7")
    map_instance(dbs, instance, "cell1")
    uuid = seed_pair(topology, members=[instance])
    ctx = RequestContext(dbs, "p1", "u1")
    group = InstanceGroup.get_by_uuid(ctx, uuid)
    assert set(group.get_hosts()) == {"compute-7"}  # every read engine has a pooled connection
    cell_fast = dbs.read_engine(topology.cell_engine("cell1"))
    for engine in (dbs.api_fast, cell_fast):
        assert engine.pool.checkedin() >= 1
    server.kill_connection(_pooled_id(dbs.api_fast, server.backend))
    server.kill_connection(_pooled_id(cell_fast, server.backend))
    retried: list[str] = []
    monkeypatch.setattr(
        transactions.log, "info", lambda event, **kw: retried.append(event), raising=False
    )
    dbs.phases.observe(dbs.phases.get())  # keep the phase read out of it: cached
    again = InstanceGroup.get_by_uuid(ctx, uuid)
    assert set(again.get_hosts()) == {"compute-7"}
    assert retried.count("read_retried") >= 2  # the group's lookup and the cell's hosts
