"""A pooled hot-path connection the server closed is read through again, once; an outage
is never hidden.

The hot-path engines skip the pre-ping round trip, so a connection killed while it sat in
the pool is found dead by its first statement: the read runs once more on a new one
(:func:`shadowdb.databases.read_again_once`). A database that is really gone still fails.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from shadowdb import databases
from shadowdb.errors import DatabaseUnreachable
from tests.backends import Server
from tests.conftest import Topology
from tests.proxy import Proxy

SERVERS = [
    pytest.param("mysql", marks=pytest.mark.mysql),
    pytest.param("postgresql", marks=pytest.mark.postgresql),
]


def _kill(server: Server, ident: int) -> None:
    with server.admin.connect() as conn:
        if server.backend == "mysql":
            conn.execute(sa.text(f"KILL {int(ident)}"))
        else:
            conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": ident})


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
    _kill(server, int(ident))
    retried: list[str] = []
    monkeypatch.setattr(
        databases.log, "info", lambda event, **kw: retried.append(event), raising=False
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
