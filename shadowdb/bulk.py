"""Shape statements that carry many values: chunks, id ranges and driver-level inserts."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = ["MAX_IN_LIST", "BulkInsert", "by_ids", "chunks"]

#: Values per ``IN (...)`` list, the most bound parameters one statement carries: under
#: every backend's bind-parameter limit (SQLite's historic limit is 999). The one place
#: this number lives; every module that cuts a list of uuids or ids uses it.
MAX_IN_LIST = 500


def chunks(values: Sequence[Any], size: int = MAX_IN_LIST) -> Iterable[Sequence[Any]]:
    """Cut ``values`` into slices of at most ``size`` (one statement's worth each)."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


def by_ids(column: sa.Column[Any], ids: Iterable[int]) -> list[sa.ColumnElement[bool]]:
    """Return WHERE clauses, one per statement, that together cover ``column`` in ``ids``.

    Dense ids (a batch of consecutive groups, as the backfill reads them) become one
    ``BETWEEN``: one statement instead of one per :data:`MAX_IN_LIST` ids, and on a table without an
    index on ``column`` one scan instead of several (Nova's child tables have no index on
    ``group_id``: only MySQL's InnoDB adds one for the foreign key). The range may hold
    ids not asked for: callers keep only rows of ``ids``.
    """
    ordered = sorted(set(ids))
    if len(ordered) > 1 and ordered[-1] - ordered[0] < 2 * len(ordered):
        return [column.between(ordered[0], ordered[-1])]
    return [column.in_(chunk) for chunk in chunks(ordered)]


class BulkInsert:
    """An INSERT compiled once per dialect whose rows go to the driver's ``executemany``.

    SQLAlchemy's per-row parameter handling costs about twice the driver's own insert on
    SQLite (``benchmarks/test_backfill_bench.py``), and the backfill inserts tens of
    thousands of rows a second: its rows go to the driver as they are, shaped by a
    function generated once per statement and dialect (as :mod:`dataclasses` generates
    ``__init__``) that builds one tuple (or dict, for named parameter styles) per row and
    applies the column types' bind processors (SQLite's datetime format). Constants
    (the same value in every row) are processed once per call.
    """

    def __init__(self, table: sa.Table, columns: Sequence[str], constants: Sequence[str]) -> None:
        self.table = table
        self.columns = (*columns, *constants)
        self.width = len(columns)
        self._built: dict[tuple[type[Any], str], tuple[str, Callable[..., Any], list[Any]]] = {}

    def _build(self, dialect: sa.Dialect) -> tuple[str, Callable[..., Any], list[Any]]:
        key = (type(dialect), str(dialect.paramstyle))
        built = self._built.get(key)
        if built is None:
            compiled = self.table.insert().compile(dialect=dialect, column_keys=self.columns)
            processors = [
                self.table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
                for name in self.columns
            ]
            names = list(compiled.positiontup or ()) if compiled.positional else self.columns
            namespace: dict[str, Any] = {}
            values = []
            for name in names:
                i = self.columns.index(name)
                if i >= self.width:
                    values.append(f"c[{i - self.width}]")
                elif processors[i] is None:
                    values.append(f"r[{i}]")
                else:
                    namespace[f"p{i}"] = processors[i]
                    values.append(f"p{i}(r[{i}])")
            if compiled.positional:
                body = "(" + "".join(f"{v}, " for v in values) + ")"
            else:
                pairs = zip(names, values, strict=True)
                body = "{" + ", ".join(f"{n!r}: {v}" for n, v in pairs) + "}"
            # Column names come from shadowdb's own models, never from input.
            shape = eval(f"lambda r, c: {body}", namespace)
            built = self._built[key] = (str(compiled), shape, processors[self.width :])
        return built

    def execute(
        self, conn: Connection, rows: Iterable[Sequence[Any]], constants: Sequence[Any] = ()
    ) -> None:
        """Insert ``rows`` (values of the row columns, in order) with ``constants`` appended."""
        sql, shape, processors = self._build(conn.dialect)
        tail = tuple(
            value if proc is None else proc(value)
            for proc, value in zip(processors, constants, strict=True)
        )
        params = [shape(row, tail) for row in rows]
        if params:
            conn.exec_driver_sql(sql, params)
