"""The hot-path lookups: a group by uuid or member, at most two statements, on every backend."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from shadowdb import models
from shadowdb.databases import writer
from shadowdb.errors import SchemaError
from shadowdb.lookups import find, find_with_phase
from shadowdb.queries import API, CELL, Scope
from shadowdb.state import Phase
from shadowdb.testing import StatementCounter
from tests.conftest import Topology
from tests.support.helpers import new_uuid, put_in_phase, seed_api_group, seed_cell_group

ADMIN = Scope(None)


def test_a_group_is_found_by_uuid_with_its_lists_in_row_order(topology: Topology) -> None:
    engine = topology.cell_engine("cell1")
    group = seed_cell_group(
        engine, name="web", policies=("anti-affinity",), members=("i3", "i1", "i2")
    )
    with engine.connect() as conn:
        found = find(conn, CELL, "uuid", group, ADMIN)
    assert found is not None
    assert (found.uuid, found.name, found.policies, found.members) == (
        group,
        "web",
        ("anti-affinity",),
        ("i3", "i1", "i2"),
    )


def test_a_member_finds_its_group_on_both_sides(topology: Topology) -> None:
    cell = topology.cell_engine("cell1")
    in_cell = seed_cell_group(cell, members=("i1",))
    in_api = seed_api_group(topology.dbs.api, members=("i2", "i3"))
    with cell.connect() as conn:
        found = find(conn, CELL, "instance", "i1", ADMIN)
        assert found is not None and found.uuid == in_cell
        assert find(conn, CELL, "instance", "i2", ADMIN) is None
    with topology.dbs.api.connect() as conn:
        found = find(conn, API, "instance", "i3", ADMIN)
        assert found is not None and (found.uuid, found.members) == (in_api, ("i2", "i3"))


def test_the_first_live_member_row_decides(topology: Topology) -> None:
    engine = topology.cell_engine("cell1")
    first = seed_cell_group(engine, name="first", members=("i1",), project_id="p1")
    seed_cell_group(engine, name="second", members=("i1",), project_id="p2")
    with engine.connect() as conn:
        found = find(conn, CELL, "instance", "i1", ADMIN)
        assert found is not None and found.uuid == first
        # Another project's caller is not shown the other group instead: Nova's answer.
        assert find(conn, CELL, "instance", "i1", Scope("p2")) is None


def test_deleted_rows_are_not_found(topology: Topology) -> None:
    engine = topology.cell_engine("cell1")
    gone = seed_cell_group(engine, members=("i1",), deleted=True)
    kept = seed_cell_group(engine, policies=("affinity",), members=("i2", "i3"))
    with engine.begin() as conn:
        m = models.cell_members
        conn.execute(m.update().where(m.c.instance_id == "i3").values(deleted=m.c.id))
    with engine.connect() as conn:
        assert find(conn, CELL, "uuid", gone, ADMIN) is None
        assert find(conn, CELL, "instance", "i1", ADMIN) is None
        assert find(conn, CELL, "instance", "i3", ADMIN) is None
        found = find(conn, CELL, "uuid", kept, ADMIN)
        assert found is not None and found.members == ("i2",)


def test_a_caller_of_another_project_is_not_shown_the_group(topology: Topology) -> None:
    group = seed_api_group(topology.dbs.api, project_id="p1")
    with topology.dbs.api.connect() as conn:
        assert find(conn, API, "uuid", group, Scope("p2")) is None
        found = find(conn, API, "uuid", group, Scope("p1"))
        assert found is not None and found.project_id == "p1"


def test_a_group_costs_two_statements_and_a_miss_one(topology: Topology) -> None:
    group = seed_cell_group(topology.cell_engine("cell1"), members=("i1", "i2"))
    engine = topology.dbs.read_engine(topology.cell_engine("cell1"))  # the hot path's
    with engine.connect() as conn:
        with StatementCounter({"cell": engine}) as hit:
            find(conn, CELL, "instance", "i2", ADMIN)
        with StatementCounter({"cell": engine}) as miss:
            find(conn, CELL, "instance", "not-in-a-group", ADMIN)
        with StatementCounter({"cell": engine}) as by_uuid:
            find(conn, CELL, "uuid", group, ADMIN)
    assert (hit.counts["cell"], miss.counts["cell"], by_uuid.counts["cell"]) == (2, 1, 2)


@pytest.mark.parametrize("kind", ["uuid", "instance"])
def test_the_phase_comes_with_the_api_lookup(topology: Topology, kind: str) -> None:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_API_READS)
    group = seed_api_group(topology.dbs.api, members=("i1",), policies=("affinity",))
    key = group if kind == "uuid" else "i1"
    engine = topology.dbs.read_engine(topology.dbs.api)  # the hot path's
    with engine.connect() as conn, StatementCounter({"api": engine}) as counted:
        found, state = find_with_phase(conn, kind, key, ADMIN)  # type: ignore[arg-type]
        missing, same = find_with_phase(conn, kind, new_uuid(), ADMIN)  # type: ignore[arg-type]
    assert found is not None and (found.uuid, found.members) == (group, ("i1",))
    assert (state.phase, state.epoch) == (Phase.DUAL_WRITE_API_READS, 1)
    assert state.default_cell_uuid == topology.dbs.cell("cell1").uuid
    assert missing is None and same == state
    assert counted.counts["api"] == 3  # the hit's two, the miss's one


def test_an_api_database_without_its_phase_row_is_a_schema_error(topology: Topology) -> None:
    with writer(topology.dbs.api) as conn:
        conn.execute(models.api_state.delete())
    with topology.dbs.api.connect() as conn, pytest.raises(SchemaError, match="not synced"):
        find_with_phase(conn, "uuid", new_uuid(), ADMIN)
    with topology.dbs.api.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(models.api_state)) == 0
