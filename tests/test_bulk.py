"""Statements that carry many values: chunks, id ranges and driver-level inserts, per backend."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from shadowdb import models
from shadowdb.bulk import MAX_IN_LIST, BulkInsert, by_ids, chunks
from tests.conftest import Topology

WHEN = dt.datetime(2026, 1, 2, 3, 4, 5)


def test_chunks_cut_a_list_in_order_into_slices_of_at_most_the_size() -> None:
    assert list(chunks([1, 2, 3, 4, 5], 2)) == [[1, 2], [3, 4], [5]]
    assert list(chunks([], 2)) == []
    cut = list(chunks(list(range(2 * MAX_IN_LIST + 1))))
    assert [len(c) for c in cut] == [MAX_IN_LIST, MAX_IN_LIST, 1]
    assert [v for c in cut for v in c] == list(range(2 * MAX_IN_LIST + 1))


def test_max_in_list_stays_under_sqlites_historic_bind_limit() -> None:
    assert 0 < MAX_IN_LIST < 999


def _sql(clause: sa.ColumnElement[bool]) -> str:
    return str(clause.compile(compile_kwargs={"literal_binds": True}))


def test_dense_ids_become_one_range() -> None:
    column = models.cell_policies.c.group_id
    clauses = by_ids(column, [7, 3, 5, 4, 3, 9, *range(10, 2000)])
    assert [_sql(c) for c in clauses] == ["instance_group_policy.group_id BETWEEN 3 AND 1999"]


def test_sparse_ids_become_in_lists_of_at_most_max_in_list() -> None:
    column = models.cell_policies.c.group_id
    ids = [i * 10 for i in range(MAX_IN_LIST + 1)]
    clauses = by_ids(column, reversed(ids))
    assert len(clauses) == 2
    assert all(" IN " in _sql(c) for c in clauses)
    assert _sql(clauses[1]) == f"instance_group_policy.group_id IN ({ids[-1]})"


def test_one_id_is_an_in_list() -> None:
    (clause,) = by_ids(models.cell_policies.c.group_id, [42])
    assert _sql(clause) == "instance_group_policy.group_id IN (42)"


@pytest.fixture
def cell(topology: Topology) -> Iterator[sa.Engine]:
    yield topology.cell_engine("cell1")


GROUPS = BulkInsert(
    models.cell_groups, ("uuid", "name", "user_id", "project_id"), ("created_at", "deleted")
)


def _groups(engine: sa.Engine) -> list[tuple[object, ...]]:
    t = models.cell_groups
    with engine.connect() as conn:
        query = sa.select(
            t.c.uuid, t.c.name, t.c.user_id, t.c.project_id, t.c.created_at, t.c.deleted
        )
        return [tuple(r) for r in conn.execute(query.order_by(t.c.uuid))]


def test_bulk_insert_writes_every_row_with_its_constants(cell: sa.Engine) -> None:
    rows = [(f"uuid-{i:04}", f"group {i}", "u1", f"p{i % 3}") for i in range(1200)]
    with cell.begin() as conn:
        GROUPS.execute(conn, rows, (WHEN, 0))
    assert _groups(cell) == [(*row, WHEN, 0) for row in rows]


def test_bulk_insert_of_no_rows_writes_nothing(cell: sa.Engine) -> None:
    with cell.begin() as conn:
        GROUPS.execute(conn, [], (WHEN, 0))
    assert _groups(cell) == []


def test_bulk_insert_applies_bind_processors_to_row_columns(cell: sa.Engine) -> None:
    policies = BulkInsert(models.cell_policies, ("group_id", "policy", "created_at"), ("deleted",))
    with cell.begin() as conn:
        conn.execute(models.cell_groups.insert().values(uuid="g", deleted=0))
        gid = conn.scalar(sa.select(models.cell_groups.c.id))
        policies.execute(
            conn,
            [(gid, "affinity", WHEN), (gid, "anti-affinity", WHEN + dt.timedelta(days=1))],
            (0,),
        )
    t = models.cell_policies
    with cell.connect() as conn:
        got = conn.execute(sa.select(t.c.policy, t.c.created_at).order_by(t.c.policy)).all()
    assert [tuple(r) for r in got] == [
        ("affinity", WHEN),
        ("anti-affinity", WHEN + dt.timedelta(days=1)),
    ]


def test_one_bulk_insert_serves_several_dialects(cell: sa.Engine) -> None:
    # The statement is compiled per dialect: an SQLite database in between must not
    # leave its parameter style behind for the backend's next call.
    other = sa.create_engine("sqlite+pysqlite://")
    models.cell_metadata.create_all(other)
    try:
        for n, engine in enumerate((cell, other, cell)):
            with engine.begin() as conn:
                GROUPS.execute(conn, [(f"uuid-{n}", "n", "u", "p")], (WHEN, 0))
        assert [g[0] for g in _groups(cell)] == ["uuid-0", "uuid-2"]
        assert _groups(other) == [("uuid-1", "n", "u", "p", WHEN, 0)]
    finally:
        other.dispose()
