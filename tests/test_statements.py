"""The hot path's fixed statements, built once per side, run as they are on every backend."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from shadowdb import models
from shadowdb.packed import PACKING_BACKENDS, unpack
from shadowdb.statements import GROUP_ROW, JOURNAL_ROW, SideTables, Statements, build_statements
from tests.conftest import Topology
from tests.support.helpers import NOW as WHEN
from tests.support.helpers import new_uuid, seed_api_group, seed_cell_group

CELL = build_statements(
    SideTables(models.cell_groups, models.cell_policies, models.cell_members, models.cell_journal),
    "instance_id",
    soft_delete=True,
)
API = build_statements(
    SideTables(models.api_groups, models.api_policies, models.api_members, models.api_journal),
    "instance_uuid",
    soft_delete=False,
)


def _id(engine: sa.Engine, table: sa.Table, uuid: str) -> int:
    with engine.connect() as conn:
        found = conn.scalar(sa.select(table.c.id).where(table.c.uuid == uuid))
    assert found is not None
    return int(found)


def _run(engine: sa.Engine, stmt: Any, **params: Any) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(stmt, params)]


@pytest.fixture
def cell(topology: Topology) -> sa.Engine:
    return topology.cell_engine("cell1")


def test_by_uuid_and_by_member_find_only_live_groups(cell: sa.Engine) -> None:
    live = seed_cell_group(cell, name="live", members=("i1",))
    seed_cell_group(cell, name="gone", members=("i2",), deleted=True)
    rows = _run(cell, CELL.by_uuid, key=live)
    assert [(r[1], r[2]) for r in rows] == [(live, "live")]
    assert [r[1] for r in _run(cell, CELL.by_member, key="i1")] == [live]
    assert _run(cell, CELL.by_member, key="i2") == []


def test_by_member_takes_one_row_the_first_live_member(cell: sa.Engine) -> None:
    first = seed_cell_group(cell, members=("i1",))
    seed_cell_group(cell, members=("i1",))
    assert [r[1] for r in _run(cell, CELL.by_member, key="i1")] == [first]


def test_the_api_lookups_carry_the_phase_row_hit_or_miss(topology: Topology) -> None:
    api = topology.dbs.read_engine(topology.dbs.api)  # the hot path's (no from-linting)
    group = seed_api_group(topology.dbs.api, members=("i1",))
    for stmt, key in ((API.by_uuid_with_state, group), (API.by_member_with_state, "i1")):
        with api.connect() as conn:
            hit = conn.execute(stmt, {"key": key}).one()
            miss = conn.execute(stmt, {"key": new_uuid()}).one()
        assert (hit.phase, hit.epoch, hit.uuid) == ("cell-only", 0, group)
        assert hit.default_cell_uuid == topology.dbs.cell("cell1").uuid
        assert (miss.phase, miss.id, miss.uuid) == ("cell-only", None, None)


def test_children_lists_live_policies_then_members_in_row_order(cell: sa.Engine) -> None:
    group = seed_cell_group(cell, policies=("b", "a"), members=("i2", "i1", "i3"))
    gid = _id(cell, models.cell_groups, group)
    with cell.begin() as conn:
        m = models.cell_members
        conn.execute(m.update().where(m.c.instance_id == "i1").values(deleted=m.c.id))
    rows = _run(cell, CELL.children, group_id=gid)
    assert [(int(kind), value) for kind, _, value in rows] == [
        (0, "b"),
        (0, "a"),
        (1, "i2"),
        (1, "i3"),
    ]


@pytest.mark.parametrize("backend", [pytest.param("mysql", marks=pytest.mark.mysql)], indirect=True)
def test_children_packed_gives_the_same_lists_on_mariadb(topology: Topology) -> None:
    assert topology.backend in PACKING_BACKENDS  # lists are packed there only
    api = topology.dbs.api
    group = seed_api_group(api, policies=("affinity",), members=("i2", "i1"))
    rows = _run(api, API.children_packed, group_id=_id(api, models.api_groups, group))
    lists = {int(kind): unpack(packed, count, "list", "api") for kind, packed, count in rows}
    assert lists == {0: ["affinity"], 1: ["i2", "i1"]}


def _journal(engine: sa.Engine, group: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            models.cell_journal.insert().values(group_uuid=group, epoch=0, created_at=WHEN)
        )


def _locked_read(engine: sa.Engine, statements: Statements, uuid: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(statements.locked_read, {"uuid": uuid}))


def test_the_writers_read_returns_everything_kind_by_kind(cell: sa.Engine) -> None:
    group = seed_cell_group(cell, name="web", policies=("affinity",), members=("i2", "i1"))
    _journal(cell, group)
    rows = _locked_read(cell, CELL, group)
    assert [(int(r.kind), r.value) for r in rows[:-1]] == [
        (0, "affinity"),
        (1, "i2"),
        (1, "i1"),
        (JOURNAL_ROW, None),
    ]
    last = rows[-1]
    assert (int(last.kind), last.uuid, last.name) == (GROUP_ROW, group, "web")


def test_the_writers_read_of_a_group_without_a_live_row_sees_its_journal_only(
    cell: sa.Engine,
) -> None:
    gone = seed_cell_group(cell, policies=("affinity",), deleted=True)
    _journal(cell, gone)
    assert [int(r.kind) for r in _locked_read(cell, CELL, gone)] == [JOURNAL_ROW]
    assert _locked_read(cell, CELL, new_uuid()) == []
