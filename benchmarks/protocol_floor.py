"""Record a shadowdb write's statements and transactions, and replay them through the driver.

The write benchmark's **protocol floor**: the exact statements a real shadowdb write sent
(its :class:`~shadowdb.testing.StatementCounter` log, with the transactions around them),
replayed through the bare driver (sqlite3, PyMySQL, psycopg) on connections held open, with
the same transactions, the same commits and rollbacks, on the same databases, in the same
order. What the replay costs is what the protocol itself costs (the fence, the group lock,
the journal, the second database and its commit); what shadowdb costs above it is its
implementation (SQLAlchemy, the pool and its checkout pings, Python).

A recorded write is turned into a :class:`Script` whose parameters name the values that
differ from one write to the next (the group's uuid, the member uuids, the ids the
databases assigned to the group and to journal entries) as :class:`Slot` markers, filled
afresh at each replay. Integer ids are recognised by value, so the deployment's id counters
start far above every small constant a statement carries (phase row id 1, epochs, limits):
:func:`spread_ids`.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Iterable
from typing import Any

import psycopg
import pymysql
import sqlalchemy as sa
from sqlalchemy import event

from shadowdb import urls
from shadowdb.testing import StatementCounter

#: Where each database's id counters start (see :func:`spread_ids`): group ids, then
#: journal entry ids, far apart and far above any constant a statement carries.
GROUP_IDS = 1_000_000
JOURNAL_IDS = 5_000_000

#: The statements whose result is an id later statements name.
_MAKES = {"INSERT INTO instance_groups ": "group", "INSERT INTO shadowdb_journal ": "journal"}


@dataclasses.dataclass(frozen=True)
class Slot:
    """A parameter filled at each replay: ``uuid``, ``member<n>`` or ``<kind><n>@<database>``."""

    key: str


@dataclasses.dataclass(frozen=True)
class Step:
    """One thing a recorded write did on one database.

    Attributes:
        database: the engine name (``api``, a cell's name).
        slot: which of the database's transactions (0, 1, ...: several may be open at once),
            or -1 for the autocommit hot-path read engine.
        action: ``execute``, ``commit`` or ``rollback``.
        sql: the statement as the driver received it.
        params: its parameters, with :class:`Slot` markers.
        many: sent with ``executemany``.
        makes: the key of the id its result carries (``group0@api``), else ``None``.
        rowcount: the driver's row count when recorded (checked at each replay).
    """

    database: str
    slot: int
    action: str
    sql: str = ""
    params: Any = None
    many: bool = False
    makes: str | None = None
    rowcount: int = -1


@dataclasses.dataclass(frozen=True)
class Script:
    """A recorded write: its steps, and the ids the recorded write made, by slot key."""

    steps: tuple[Step, ...]
    made: dict[str, int] = dataclasses.field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, int]]:
        """Return per database: statements, transactions committed and rolled back."""
        out: dict[str, dict[str, int]] = {}
        for step in self.steps:
            row = out.setdefault(step.database, {"statements": 0, "commits": 0, "rollbacks": 0})
            key = {"execute": "statements", "commit": "commits", "rollback": "rollbacks"}
            row[key[step.action]] += 1
        return out

    def listing(self) -> list[str]:
        """Return one line per step: database, transaction, what was sent (shortened)."""
        lines = []
        for step in self.steps:
            where = f"{step.database}[{'ac' if step.slot < 0 else step.slot}]"
            what = step.action.upper() if step.action != "execute" else _short(step.sql)
            lines.append(f"{where} {what}")
        return lines


def _short(sql: str) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= 110 else text[:107] + "..."


class TransactionLog(StatementCounter):
    """A :class:`StatementCounter` that also keeps each statement's transaction and result.

    Besides what the counter keeps, it records which connection sent each statement
    (so that interleaved transactions on one database stay apart), every commit and
    rollback, the driver's row count and the id an INSERT of a group or a journal
    entry produced. Statements of the hot-path read engines (autocommit) reach the
    counter through their main engine and are marked as such.
    """

    def __init__(self, engines: dict[str, sa.Engine], read_engines: Iterable[sa.Engine]) -> None:
        super().__init__(engines)
        self._named = engines
        self._read_engines = list(read_engines)
        self.events: list[dict[str, Any]] = []
        self._hooks: list[tuple[sa.Engine, str, Any]] = []

    def __enter__(self) -> TransactionLog:
        super().__enter__()
        for name, engine in self._named.items():
            self._hook(engine, "before_cursor_execute", self._before(name, engine))
            self._hook(engine, "after_cursor_execute", self._after)
            for action in ("commit", "rollback"):
                self._hook(engine, action, self._ended(name, action))
        for engine in self._read_engines:  # their statements reach the main engines' hooks
            self._hook(engine, "after_cursor_execute", self._after)
        return self

    def __exit__(self, *exc: Any) -> None:
        for engine, name, hook in self._hooks:
            event.remove(engine, name, hook)
        self._hooks.clear()
        super().__exit__(*exc)

    def _hook(self, engine: sa.Engine, name: str, hook: Any) -> None:
        event.listen(engine, name, hook)
        self._hooks.append((engine, name, hook))

    def _before(self, name: str, engine: sa.Engine) -> Any:
        def hook(conn: Any, cursor: Any, sql: str, params: Any, _ctx: Any, many: bool) -> None:
            self.events.append(
                {
                    "database": name,
                    "conn": None if conn.engine is not engine else id(conn),
                    "action": "execute",
                    "sql": sql,
                    "params": params,
                    "many": many,
                    "cursor": cursor,
                    "rowcount": -1,
                    "made": None,
                }
            )

        return hook

    def _after(self, _conn: Any, cursor: Any, sql: str, *_rest: Any) -> None:
        found = next((e for e in reversed(self.events) if e.get("cursor") is cursor), None)
        if found is None:
            return
        found["rowcount"] = cursor.rowcount
        if any(sql.startswith(prefix) for prefix in _MAKES):
            found["made"] = _peek_id(cursor, sql)

    def _ended(self, name: str, action: str) -> Any:
        def hook(conn: Any) -> None:
            self.events.append({"database": name, "conn": id(conn), "action": action})

        return hook


def _peek_id(cursor: Any, sql: str) -> int:
    """Return the id an INSERT produced, without taking its row from the caller."""
    if "RETURNING" not in sql:
        return int(cursor.lastrowid)
    result = cursor.pgresult  # psycopg: the RETURNING row is held client-side
    return int(result.get_value(0, 0))


def script(log: TransactionLog, uuids: dict[str, str], known: dict[str, int]) -> Script:
    """Turn a recorded write into a replayable script.

    Args:
        log: the write's log.
        uuids: each uuid the write carried, by the slot key that replaces it.
        known: the ids assigned before the write (a group created earlier) by key
            (``<kind><n>@<database>``); the ids the write itself produces are keyed so.
    """
    ids: dict[tuple[str, int], str] = {}
    for key, value in known.items():
        ids[(key.partition("@")[2], value)] = key
    by_uuid = {value: key for key, value in uuids.items()}
    open_slots: dict[tuple[str, int], int] = {}
    steps = []
    made: dict[str, int] = {}
    for entry in log.events:
        database = entry["database"]
        if entry["conn"] is None:
            slot = -1
        else:
            taken = {s for (d, _), s in open_slots.items() if d == database}
            slot = open_slots.setdefault(
                (database, entry["conn"]), min(set(range(len(taken) + 1)) - taken)
            )
        if entry["action"] != "execute":
            open_slots.pop((database, entry["conn"]), None)
            steps.append(Step(database, slot, entry["action"]))
            continue

        def mark(value: Any, _db: str = database) -> Any:
            if isinstance(value, str) and value in by_uuid:
                return Slot(by_uuid[value])
            if isinstance(value, int) and not isinstance(value, bool) and (_db, value) in ids:
                return Slot(ids[(_db, value)])
            return value

        makes = None
        if entry["made"] is not None:
            kind = next(k for p, k in _MAKES.items() if entry["sql"].startswith(p))
            n = sum(
                1 for key in ids.values() if key.startswith(kind) and key.endswith(f"@{database}")
            )
            makes = f"{kind}{n}@{database}"
        steps.append(
            Step(
                database,
                slot,
                "execute",
                entry["sql"],
                _walk(entry["params"], mark),
                entry["many"],
                makes,
                entry["rowcount"],
            )
        )
        if makes is not None:
            ids[(database, entry["made"])] = makes
            made[makes] = entry["made"]
    return Script(tuple(steps), made)


def _walk(params: Any, fn: Any) -> Any:
    if isinstance(params, dict):
        return {k: _walk(v, fn) for k, v in params.items()}
    if isinstance(params, (list, tuple)):
        return type(params)(_walk(v, fn) for v in params)
    return fn(params)


def _fill(params: Any, values: dict[str, Any]) -> Any:
    if isinstance(params, Slot):
        return values[params.key]
    if isinstance(params, dict):
        return {k: _fill(v, values) for k, v in params.items()}
    if isinstance(params, (list, tuple)):
        return type(params)(_fill(v, values) for v in params)
    return params


class Replayer:
    """Replay scripts through the bare driver on connections held open, per database.

    Each database gets one autocommit connection (the hot-path reads) and as many
    transactional ones as a script holds open at once, set up as shadowdb's engines set
    up theirs (SQLite in WAL with its transactions begun by hand; MariaDB in utf8mb4 at
    READ COMMITTED, row counts of matched rows; PostgreSQL as it comes).
    """

    def __init__(self, urls_by_name: dict[str, str]) -> None:
        self._urls = {name: sa.make_url(url) for name, url in urls_by_name.items()}
        self._conns: dict[tuple[str, int], Any] = {}

    def _conn(self, database: str, slot: int) -> Any:
        conn = self._conns.get((database, slot))
        if conn is None:
            conn = self._conns[(database, slot)] = _open(self._urls[database], slot < 0)
        return conn

    def replay(self, recorded: Script, values: dict[str, Any]) -> list[int]:
        """Run ``recorded`` with ``values`` in its slots; add the ids it made to ``values``.

        Returns the row count of each statement, to be compared (outside any timing) with
        the recorded ones by :func:`check_rowcounts`.
        """
        counts = []
        for step in recorded.steps:
            conn = self._conn(step.database, step.slot)
            if step.action == "commit":
                conn.commit()
                continue
            if step.action == "rollback":
                conn.rollback()
                continue
            cur = conn.cursor()
            params = _fill(step.params, values)
            if step.many:
                cur.executemany(step.sql, params)
            else:
                cur.execute(step.sql, params)
            if step.makes is not None:
                values[step.makes] = (
                    cur.fetchone()[0] if "RETURNING" in step.sql else int(cur.lastrowid)
                )
            if cur.description is not None:
                cur.fetchall()
            counts.append(cur.rowcount)
            cur.close()
        return counts

    def close(self) -> None:
        """Close every connection (rolling back whatever a failed replay left open)."""
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()


def check_rowcounts(recorded: Script, counts: list[int]) -> None:
    """Assert a replay's statements touched as many rows as the recorded write's did."""
    expected = [s.rowcount for s in recorded.steps if s.action == "execute"]
    wrong = [
        (n, s, got, want)
        for n, (s, got, want) in enumerate(
            zip([s for s in recorded.steps if s.action == "execute"], counts, expected, strict=True)
        )
        if got != want
    ]
    assert not wrong, "replay differs from the recorded write: " + "; ".join(
        f"#{n} {_short(s.sql)}: {got} rows, recorded {want}" for n, s, got, want in wrong
    )


def _open(url: sa.URL, autocommit: bool) -> Any:
    backend = urls.backend_of(url)
    if backend == "sqlite":
        conn = sqlite3.connect(url.database or "", isolation_level=None, timeout=30)
        for pragma in ("journal_mode=WAL", "busy_timeout=30000", "foreign_keys=OFF"):
            conn.execute(f"PRAGMA {pragma}")
        return conn
    if backend == "mysql":
        conn = pymysql.connect(
            host=url.host, port=url.port or 3306, user=url.username, password=url.password or "",
            database=url.database, charset="utf8mb4", autocommit=autocommit,
            client_flag=pymysql.constants.CLIENT.FOUND_ROWS,  # as SQLAlchemy connects
        )  # fmt: skip
        with conn.cursor() as cur:
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        return conn
    return psycopg.connect(
        host=url.host, port=url.port or 5432, user=url.username, password=url.password or "",
        dbname=url.database, autocommit=autocommit,
    )  # fmt: skip


def spread_ids(backend: str, engines: dict[str, sa.Engine]) -> None:
    """Start each database's group and journal ids at :data:`GROUP_IDS`, :data:`JOURNAL_IDS`.

    ``engines``: by name, ``api`` the API database's. SQLite takes the next rowid after
    the largest, so it gets a placeholder row at each start, out of every benchmark's
    way: an API group of a project no request names, a soft-deleted cell group, a
    journal entry of a uuid no write names.
    """
    for name, engine in engines.items():
        with engine.begin() as conn:
            for table, start in (("instance_groups", GROUP_IDS), ("shadowdb_journal", JOURNAL_IDS)):
                if backend == "mysql":
                    conn.exec_driver_sql(f"ALTER TABLE {table} AUTO_INCREMENT = {start}")
                elif backend == "postgresql":
                    conn.exec_driver_sql(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), {start})"
                    )
                else:
                    placeholder = _PLACEHOLDER[(table, name == "api")]
                    conn.execute(sa.text(placeholder), {"id": start - 1})


_PLACEHOLDER = {
    ("instance_groups", True): "INSERT INTO instance_groups (id, uuid, project_id, user_id, name)"
    " VALUES (:id, 'bench-id-start', 'bench-nobody', 'bench-nobody', 'id start')",
    ("instance_groups", False): "INSERT INTO instance_groups (id, uuid, project_id, user_id, name,"
    " deleted) VALUES (:id, 'bench-id-start', 'bench-nobody', 'bench-nobody', 'id start', :id)",
    ("shadowdb_journal", True): "INSERT INTO shadowdb_journal (id, group_uuid, created_at, epoch)"
    " VALUES (:id, 'bench-id-start', CURRENT_TIMESTAMP, 0)",
}
_PLACEHOLDER[("shadowdb_journal", False)] = _PLACEHOLDER[("shadowdb_journal", True)]
