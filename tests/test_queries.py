"""One interface over both kinds of database: each read of a side, on API and cell, per backend."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from shadowdb import models
from shadowdb.bulk import MAX_IN_LIST
from shadowdb.queries import API, CELL, Scope, Side
from shadowdb.state import utcnow
from tests.conftest import Topology
from tests.support.helpers import NOW, new_uuid, seed_api_group, seed_cell_group

Seed = Callable[..., str]


@pytest.fixture(params=["api", "cell"])
def side(request: pytest.FixtureRequest, topology: Topology) -> tuple[Side, sa.Engine, Seed]:
    """A side, its database and a function that seeds a live group in it."""
    if request.param == "api":
        engine = topology.dbs.api
        return API, engine, lambda **kw: seed_api_group(engine, **kw)
    engine = topology.cell_engine("cell1")
    return CELL, engine, lambda **kw: seed_cell_group(engine, **kw)


def _ids(engine: sa.Engine, side: Side, uuids: list[str]) -> list[int]:
    g = side.groups
    with engine.connect() as conn:
        found = dict(conn.execute(sa.select(g.c.uuid, g.c.id).where(g.c.uuid.in_(uuids))).all())
    return [found[u] for u in uuids]


def test_get_loads_a_group_within_scope(side: tuple[Side, sa.Engine, Seed]) -> None:
    s, engine, seed = side
    group = seed(name="web", project_id="p1", policies=("affinity",), members=("i1", "i2"))
    with engine.connect() as conn:
        found = s.get(conn, group)
        assert found is not None
        assert (found.uuid, found.name, found.project_id) == (group, "web", "p1")
        assert (sorted(found.policies), sorted(found.members)) == (["affinity"], ["i1", "i2"])
        assert s.get(conn, group, scope=Scope("p1")) == found
        assert s.get(conn, group, scope=Scope("p2")) is None
        assert s.get(conn, new_uuid()) is None


def test_get_many_returns_the_live_groups_in_id_order(side: tuple[Side, sa.Engine, Seed]) -> None:
    s, engine, seed = side
    groups = [seed(name=f"g{i}") for i in range(3)]
    with engine.connect() as conn:
        found = s.get_many(conn, [groups[2], new_uuid(), groups[0]])
    assert [g.uuid for g in found] == [groups[0], groups[2]]


def test_get_many_reads_more_uuids_than_one_statement_carries(
    side: tuple[Side, sa.Engine, Seed],
) -> None:
    s, engine, seed = side
    group = seed()
    asked = [new_uuid() for _ in range(MAX_IN_LIST + 10)] + [group]
    with engine.connect() as conn:
        assert [g.uuid for g in s.get_many(conn, asked)] == [group]
        assert s.present(conn, asked) == {group}


def test_by_name_takes_the_oldest_and_undated_last(side: tuple[Side, sa.Engine, Seed]) -> None:
    s, engine, seed = side
    undated = seed(name="web")
    with engine.begin() as conn:
        g = s.groups
        conn.execute(g.update().where(g.c.uuid == undated).values(created_at=None))
    seed(name="web", created_at=NOW + dt.timedelta(days=1))
    older = seed(name="web", created_at=NOW)
    seed(name="web", created_at=NOW - dt.timedelta(days=1), project_id="p2")
    with engine.connect() as conn:
        found = s.by_name(conn, "web", scope=Scope("p1"))
        assert found is not None and found.uuid == older
        assert s.by_name(conn, "nothing", scope=None) is None


def test_uuid_by_member_takes_the_first_live_member_row(
    side: tuple[Side, sa.Engine, Seed],
) -> None:
    s, engine, seed = side
    first = seed(members=("i1",))
    seed(members=("i1", "i2"))
    with engine.connect() as conn:
        assert s.uuid_by_member(conn, "i1") == first
        assert s.uuid_by_member(conn, "i3") is None


def test_listing_and_counting_see_live_groups_in_scope(
    side: tuple[Side, sa.Engine, Seed],
) -> None:
    s, engine, seed = side
    mine = [seed(project_id="p1", user_id="u1"), seed(project_id="p1", user_id="u2")]
    theirs = seed(project_id="p2")
    with engine.connect() as conn:
        assert [g.uuid for g in s.list_groups(conn, scope=Scope("p1"))] == mine
        assert len(s.list_groups(conn, scope=None)) == 3
        assert s.uuids(conn) == {*mine, theirs}
        assert s.uuids(conn, scope=Scope("p2")) == {theirs}
        assert s.count(conn) == 3
        assert s.count(conn, project_id="p1") == 2
        assert s.count(conn, project_id="p1", user_id="u2") == 1


def test_soft_deleted_cell_groups_are_not_live(topology: Topology) -> None:
    engine = topology.cell_engine("cell1")
    gone = seed_cell_group(engine, members=("i1",), deleted=True)
    with engine.connect() as conn:
        assert CELL.get(conn, gone) is None
        assert CELL.uuids(conn) == set()
        assert CELL.count(conn) == 0
        assert CELL.present(conn, [gone]) == set()
        assert CELL.uuid_by_member(conn, "i1") is None


def test_lock_many_returns_only_the_ids_asked_for(side: tuple[Side, sa.Engine, Seed]) -> None:
    s, engine, seed = side
    groups = [seed(name=f"g{i}") for i in range(5)]
    ids = _ids(engine, s, groups)
    with engine.begin() as conn:
        # Dense ids: one range, which holds groups 1 and 3 too; they are not returned.
        locked = s.lock_many(conn, [ids[4], ids[0], ids[2]])
    assert [g.uuid for g in locked] == [groups[0], groups[2], groups[4]]


def test_only_the_api_database_keeps_tombstones(topology: Topology) -> None:
    buried, alive = new_uuid(), new_uuid()
    with topology.dbs.api.begin() as conn:
        conn.execute(
            models.api_tombstones.insert().values(uuid=buried, epoch=1, deleted_at=utcnow())
        )
        assert API.tombstoned(conn, [buried, alive, buried]) == {buried}
    with topology.cell_engine("cell1").connect() as conn:
        assert CELL.tombstoned(conn, [buried]) == set()
