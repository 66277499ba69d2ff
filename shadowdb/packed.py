"""Lists that travel as one value: the hot path's member lists, out and back.

A member list goes **to** the database as one value (:func:`bind`): a JSON array for
SQLite and MariaDB/MySQL, an array for PostgreSQL, so no statement ever carries a bound
value per member (no 999-variable limit, no per-value escaping). On MariaDB/MySQL the
JSON text is written into the statement as a hex literal (:class:`Hex`), which PyMySQL
does not have to escape.

On MariaDB/MySQL lists also come **back** as one value. PyMySQL decodes every result row
in Python, one packet at a time, and a row costs it more than the server spends finding
it (``BENCHMARKS.md``, "get_hosts hot path": a group's 1,000 members took 15 ms as rows,
4 ms as one value). So the statements that would return a row per member or per host
return one ``GROUP_CONCAT`` of the values, each followed by the ASCII record separator
(0x1E), with their count beside it (:func:`concat_sql`), and :func:`unpack` checks
both: a list cut short (``group_concat_max_len`` or ``max_allowed_packet`` too small)
loses its final terminator or whole values, and a value holding the terminator (no
uuid, host or policy does) splits in two: either way an error, never a wrong answer.
SQLite's and psycopg's rows are decoded in C; those backends keep a row per value.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.types import UserDefinedType

from shadowdb.errors import OperationalError

__all__ = [
    "GROUP_CONCAT_MAX_LEN",
    "PACKING_BACKENDS",
    "PAIR_SEPARATOR",
    "TERMINATOR",
    "Hex",
    "bind",
    "concat_sql",
    "pair_sql",
    "unpack",
]

#: Dialects whose statements return lists packed in one value.
PACKING_BACKENDS = frozenset({"mysql", "mariadb"})

#: What follows every value in a :func:`concat_sql` list: the ASCII record separator.
TERMINATOR = "\x1e"

#: What joins the two halves of a :func:`pair_sql` value: the ASCII unit separator.
PAIR_SEPARATOR = "\x1f"

#: ``group_concat_max_len`` set on every MariaDB/MySQL connection (4 GiB, the 32-bit
#: maximum): the server default (1 MiB on MariaDB, 1 KiB on MySQL) holds 28,000
#: members on MariaDB and 27 on MySQL.
GROUP_CONCAT_MAX_LEN = 4294967295


def bind(backend: str, values: Sequence[str]) -> Any:
    """Shape a list as the backend's statements take it (one bound value)."""
    if backend == "postgresql":
        return list(values)
    return json.dumps(list(values))


class Hex(UserDefinedType[str]):
    """A string written into the statement as a hex literal, ``X'...'`` (MariaDB/MySQL).

    For a bind parameter with ``literal_execute=True``: the statement stays built once
    (SQLAlchemy writes the literal in at execution), nothing is escaped (``bytes.hex``
    runs in C, while PyMySQL escapes a bound string character by character in Python)
    and hex digits cannot end the literal early, whatever the value holds. The
    statement reads it back as text with ``CONVERT(:name USING utf8mb4)``.
    """

    cache_ok = True

    def get_col_spec(self, **_: Any) -> str:
        return "BLOB"

    def literal_processor(self, dialect: Dialect) -> Callable[[str], str]:
        def process(value: str) -> str:
            return f"X'{value.encode('utf-8').hex()}'"

        return process


def concat_sql(expr: str, *, order_by: str = "", distinct: bool = False) -> str:
    """Return MariaDB/MySQL SQL for ``expr`` over the rows as one value, then its count.

    Two select-list items: ``v``, the non-null values each followed by
    :data:`TERMINATOR` (NULL over no rows), and ``n``, how many went in. (Not a JSON
    array: ``JSON_QUOTE`` on every value cost 20-50% more, and MySQL's
    ``JSON_ARRAYAGG`` takes neither ``DISTINCT`` nor ``ORDER BY``.)
    """
    unique = "DISTINCT " if distinct else ""
    order = f" ORDER BY {order_by}" if order_by else ""
    return (
        f"GROUP_CONCAT({unique}CONCAT({expr}, 0x1e){order} SEPARATOR '') AS v,"
        f" COUNT({unique}{expr}) AS n"
    )


def pair_sql(first: str, second: str) -> str:
    """Return MariaDB/MySQL SQL joining two values by :data:`PAIR_SEPARATOR`.

    A NULL ``first`` becomes the empty string, so the pair is never NULL (and never
    dropped from a :func:`concat_sql` list while its count keeps it).
    """
    return f"CONCAT(IFNULL({first}, ''), 0x1f, {second})"


def unpack(value: str | None, count: int, what: str, database: str) -> list[str]:
    """Split a :func:`concat_sql` value, checking it holds ``count`` whole values.

    Raises:
        OperationalError: the value was cut short, or a value held the terminator.
    """
    if value is None:
        values: list[str] = []
    elif value.endswith(TERMINATOR):
        values = value[:-1].split(TERMINATOR)
    else:
        values = []  # cut short inside a value
    if len(values) != count:
        raise OperationalError(
            f"{database}: a list of {count} {what} came back cut short or malformed; raise"
            " the server's group_concat_max_len and max_allowed_packet"
        )
    return values
