"""Answer the scheduler's question: on which hosts do a group's instances run?

Which cells are asked depends on the deployment's topology (:func:`targets`). cell0
(uuid ``00000000-0000-0000-0000-000000000000``) is never asked: its instances are the
ones that never got a host (Nova's conductor skips it too when it gathers hosts). Of the
other cells:

* **one** (most deployments): it is asked directly, with no routing statement;
* **two** (up to :data:`SCATTER_UP_TO`): both are asked, concurrently, with the whole
  member list. A member not in a cell costs that cell one probe of its ``uuid`` index
  that finds nothing, which measured cheaper than routing every member through
  ``instance_mappings`` first (one probe of that index plus a read of its ``cell_id``
  per member, on the API database, before any cell can be asked);
* **more**: the members are routed through ``instance_mappings`` (members without a
  mapping, or mapped to no known cell, are asked of every cell), so each cell probes
  only its own members, whatever the number of cells.

Each cell answers with **one** statement selecting only the distinct, non-null ``host``
of its live instances among the members it is asked about, and cells are asked
concurrently. A cell that fails is an error the caller sees, or, with ``allow_partial``,
an explicit and logged partial answer: never a silent skip.

The cells are the process's list (:attr:`shadowdb.databases.Databases.cells`, read from
``cell_mappings`` at first use and on :meth:`~shadowdb.databases.Databases.refresh_cells`),
as Nova's scheduler keeps its cell mappings until it is restarted or sent SIGHUP: without
routing, a cell registered since is not seen (routing refreshes the list when it meets an
unknown cell id).

The member list travels as **one bound value**, whatever its size, in the form each
backend plans best (``BENCHMARKS.md``, "get_hosts hot path", has the measurements):

* SQLite: a JSON array read by ``json_each``, joined to ``instances`` with the array as
  the outer loop (``CROSS JOIN`` fixes that order in SQLite), so every member is one
  probe of the ``uuid`` index, whatever the statistics say. (A plain ``IN`` list lets
  the planner pick another index: without Nova's ``(uuid, deleted)`` index it walked
  ``instances_deleted_created_at_idx`` over nearly every row, a thousand times slower.)
* MariaDB/MySQL: a JSON array read by ``JSON_TABLE``, joined first
  (``STRAIGHT_JOIN``): one probe of ``uniq_instances0uuid`` per member. The array is
  written into the statement as a hex literal (:class:`shadowdb.packed.Hex`), so
  PyMySQL escapes nothing, where it would escape thousands of values, or one long
  string character by character.
* PostgreSQL: ``uuid = ANY(:array)``, a (bitmap) index scan on ``uniq_instances0uuid``
  unless the list is a large share of the table.

No statement ever carries more than one bound value per member list, so there is no
999-variable limit to chunk around and one statement per database touched. On
MariaDB/MySQL the answers come back packed too (:mod:`shadowdb.packed`): the routing
and the hosts each as one row holding the whole list in one value, because PyMySQL's
decoding of a row per member cost as much as the lookups themselves.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from shadowdb.databases import Cell, Databases, read_again_once, reader
from shadowdb.errors import CellUnavailable, ShadowDBError
from shadowdb.packed import (
    PACKING_BACKENDS,
    PAIR_SEPARATOR,
    Hex,
    bind,
    concat_sql,
    pair_sql,
    unpack,
)

__all__ = ["SCATTER_UP_TO", "Hosts", "count_members_by_user", "hosts_of", "route", "targets"]

log = structlog.get_logger(__name__)

_LIVE = "i.deleted = 0 AND (i.vm_state <> 'soft-delete' OR i.vm_state IS NULL)"


class Hosts(list[str]):
    """The hosts of a group, sorted; ``failed_cells`` names the cells that did not answer.

    ``failed_cells`` is only ever non-empty when the caller asked for a partial answer.
    """

    failed_cells: tuple[str, ...] = ()

    @property
    def partial(self) -> bool:
        """True if some cell did not answer."""
        return bool(self.failed_cells)


# --------------------------------------------------------------------------- statements
#
# Built once, per backend. ``:uuids`` is the member list as shadowdb.packed.bind() shapes it.


def _statements(source: str, match: str, *, packed: bool = False) -> dict[str, sa.TextClause]:
    """Build the hosts, count and routing statements over one member-list form.

    ``source`` is the FROM clause with ``{table}`` where the searched table goes;
    ``match`` the condition tying ``{column}`` to the member list. ``packed`` statements
    return one row ``(v, n)``, a :func:`~shadowdb.packed.concat_sql` list: of hosts, or
    for the routing of ``cell_id`` 0x1F ``instance_uuid`` pairs (one row rather than a
    row per cell: grouping by cell cost the server more than splitting costs Python).
    """
    instances = source.format(table="instances i")
    on_uuid = match.format(column="i.uuid")
    hosts_of = concat_sql("i.host", distinct=True) if packed else "DISTINCT i.host"
    hosts = f"SELECT {hosts_of} FROM {instances} WHERE {on_uuid} AND {_LIVE} AND i.host IS NOT NULL"
    count = f"SELECT count(*) FROM {instances} WHERE {on_uuid} AND {_LIVE} AND i.user_id = :user_id"
    mappings = source.format(table="instance_mappings m")
    on_member = match.format(column="m.instance_uuid")
    if packed:
        pair = pair_sql("m.cell_id", "m.instance_uuid")
        route = f"SELECT {concat_sql(pair)} FROM {mappings} WHERE {on_member}"
    else:
        route = f"SELECT m.instance_uuid, m.cell_id FROM {mappings} WHERE {on_member}"
    scoped = " AND i.project_id = :project_id"
    return {
        "hosts": sa.text(hosts),
        "hosts_scoped": sa.text(hosts + scoped),
        "count": sa.text(count),
        "count_scoped": sa.text(count + scoped),
        "route": sa.text(route),
    }


_STATEMENTS: dict[str, dict[str, sa.TextClause]] = {
    # json_each's "value" column; CROSS JOIN keeps the member list as the outer loop.
    "sqlite": _statements("json_each(:uuids) AS w CROSS JOIN {table}", "{column} = w.value"),
    # STRAIGHT_JOIN keeps the member list first. The column is declared in the tables'
    # charset (Nova's utf8): a utf8mb4 column would make the comparison convert the
    # indexed side and lose the index.
    #
    # The list is written into the statement as a hex literal (shadowdb.packed.Hex):
    # PyMySQL escapes a bound string character by character in Python, 3 ms for a
    # 1,000-member list, against 0.05 ms to hex it; hex digits need no escaping at all.
    "mysql": {
        name: stmt.bindparams(sa.bindparam("uuids", type_=Hex(), literal_execute=True))
        for name, stmt in _statements(
            "JSON_TABLE(CONVERT(:uuids USING utf8mb4), '$[*]' COLUMNS (uuid VARCHAR(36)"
            " CHARACTER SET utf8mb3 PATH '$')) AS w STRAIGHT_JOIN {table}",
            "{column} = w.uuid",
            packed=True,
        ).items()
    },
    "postgresql": {
        name: stmt.bindparams(sa.bindparam("uuids", type_=postgresql.ARRAY(sa.String)))
        for name, stmt in _statements("{table}", "{column} = ANY(:uuids)").items()
    },
}
_STATEMENTS["mariadb"] = _STATEMENTS["mysql"]


def _backend(conn: Connection) -> str:
    return conn.dialect.name


# --------------------------------------------------------------------------- routing


def route(dbs: Databases, members: Sequence[str]) -> dict[Cell, list[str]]:
    """Group ``members`` by the cell ``instance_mappings`` puts them in (one statement).

    Members with no mapping, or a mapping to no known cell, go to every cell. If the API
    database cannot be asked, every member goes to every cell (complete, only slower)
    and a warning says so.
    """
    try:
        with reader(dbs.api_fast, dbs.api_label) as conn:
            backend = _backend(conn)
            stmt = _STATEMENTS[backend]["route"]
            rows = conn.execute(stmt, {"uuids": bind(backend, members)}).all()
            # Grouped by cell id (an int): hashing Cell objects per member would cost
            # more than the query on large groups.
            by_id: dict[int | None, list[str]] = {}
            if backend in PACKING_BACKENDS:
                ((packed, count),) = rows
                for pair in unpack(packed, count, "routed members", dbs.api_label):
                    cell_id, _, uuid = pair.partition(PAIR_SEPARATOR)
                    by_id.setdefault(int(cell_id) if cell_id else None, []).append(uuid)
            else:
                for uuid, cell_id in rows:
                    by_id.setdefault(cell_id, []).append(uuid)
    except ShadowDBError as err:
        log.warning("routing_unavailable", error=str(err), members=len(members))
        return {cell: list(members) for cell in dbs.cells}
    known = {cell.id: cell for cell in dbs.cells}
    if any(c is not None and c not in known for c in by_id):
        # A cell registered after our list was read: read the list again, once.
        known = {cell.id: cell for cell in dbs.refresh_cells()}
    # Members mapped to no cell (a NULL cell_id) or to a cell we do not know, and
    # members with no mapping at all, may be in any cell.
    everywhere = [u for c in list(by_id) if c not in known for u in by_id.pop(c)]
    if sum(len(uuids) for uuids in by_id.values()) + len(everywhere) < len(members):
        mapped = {u for uuids in by_id.values() for u in uuids}.union(everywhere)
        everywhere.extend(u for u in members if u not in mapped)
    routed = {known[cell_id]: uuids for cell_id, uuids in by_id.items() if cell_id is not None}
    if everywhere:
        for cell in dbs.cells:
            routed.setdefault(cell, []).extend(everywhere)
    return routed


# --------------------------------------------------------------------------- topology

#: Ask every cell (cell0 aside) directly when there are at most this many; route the
#: members through ``instance_mappings`` when there are more. Between two cells, asking
#: both concurrently beat routing first, through shadowdb and through the raw drivers
#: (``benchmarks/test_hot_path.py``, two-cells topology: ``api-only`` against
#: ``api-only-routed``, the ``-scatter`` floors against the ``-route`` ones, at 100 and
#: 1,000 members). Each further cell asked costs a probe per member that routing would
#: spare it, so from three cells on the members are routed (a choice by that reasoning:
#: the benchmark's data set has two cells).
SCATTER_UP_TO = 2


def targets(dbs: Databases, members: Sequence[str]) -> dict[Cell, list[str]]:
    """Return the cells to ask about ``members``, each with the members to ask it about.

    cell0 is never among them. With at most :data:`SCATTER_UP_TO` other cells, every one
    of them gets every member and nothing is read to decide so; with more, the members
    are routed (:func:`route`: one statement on the API database).
    """
    cells = [cell for cell in dbs.cells if not cell.is_cell0]
    if len(cells) <= SCATTER_UP_TO:
        return {cell: list(members) for cell in cells}
    return {cell: uuids for cell, uuids in route(dbs, members).items() if not cell.is_cell0}


# --------------------------------------------------------------------------- scatter-gather

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    """Return the process-wide pool that asks cells concurrently (made on first use)."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="shadowdb-cells")
    return _pool


def _scatter(
    dbs: Databases, routed: dict[Cell, list[str]], ask: Callable[[Connection, list[str]], Any]
) -> tuple[list[Any], list[tuple[Cell, str]]]:
    """Run ``ask`` on every routed cell, concurrently; return answers and failures."""

    def one(cell: Cell) -> tuple[Any, str | None]:
        try:
            engine = dbs.read_engine(cell.engine)
            return read_again_once(engine, cell.label, lambda c: ask(c, routed[cell])), None
        except (ShadowDBError, sa.exc.DBAPIError) as err:
            return None, (str(err).splitlines() or [type(err).__name__])[0]

    cells = list(routed)
    if not cells:
        return [], []
    outcomes = [one(cells[0])] if len(cells) == 1 else list(_executor().map(one, cells))
    answers: list[Any] = []
    failed: list[tuple[Cell, str]] = []
    for cell, (answer, error) in zip(cells, outcomes, strict=True):
        if error is None:
            answers.append(answer)
        else:
            failed.append((cell, error))
            log.warning("cell_unavailable", cell=cell.name, error=error)
    return answers, failed


def hosts_of(
    dbs: Databases,
    members: Sequence[str],
    *,
    exclude: Iterable[str] | None = None,
    project_id: str | None = None,
    allow_partial: bool = False,
) -> Hosts:
    """Return the distinct hosts of the live instances among ``members``, sorted.

    Args:
        dbs: the deployment's databases.
        members: the group's member instance uuids.
        exclude: uuids dropped before any query.
        project_id: restrict to one project's instances (non-admin callers).
        allow_partial: answer with the cells that did answer instead of raising.

    Raises:
        CellUnavailable: a cell failed and ``allow_partial`` is false.
    """
    skip = set(exclude) if exclude else ()
    # Sorted, the probes walk each uuid index in order: when the buffer pool cannot hold
    # the working set, that reads each index page once (BENCHMARKS.md: 12-35% faster at
    # 5,000 members with a 128 MiB pool; neutral when everything is cached).
    wanted = sorted({u for u in members if u not in skip})
    if not wanted:
        return Hosts()
    name = "hosts" if project_id is None else "hosts_scoped"

    def ask(conn: Connection, uuids: list[str]) -> list[str]:
        backend = _backend(conn)
        params: dict[str, Any] = {"uuids": bind(backend, uuids)}
        if project_id is not None:
            params["project_id"] = project_id
        result = conn.execute(_STATEMENTS[backend][name], params)
        if backend in PACKING_BACKENDS:
            packed, count = result.one()
            return unpack(packed, count, "hosts", "cell")
        return [row[0] for row in result.all()]

    answers, failed = _scatter(dbs, targets(dbs, wanted), ask)
    found: set[str] = set()
    for hosts in answers:
        found.update(hosts)
    if failed and not allow_partial:
        raise CellUnavailable([c.name for c, _ in failed], failed[0][1])
    result = Hosts(sorted(found))
    if failed:
        result.failed_cells = tuple(c.name for c, _ in failed)
        log.warning("partial_hosts", failed_cells=list(result.failed_cells), hosts=len(found))
    return result


def count_members_by_user(
    dbs: Databases,
    members: Sequence[str],
    user_id: str,
    *,
    project_id: str | None = None,
) -> int:
    """Count the live instances among ``members`` that belong to ``user_id``.

    Args:
        dbs: the deployment's databases.
        members: the group's member instance uuids.
        user_id: whose instances to count.
        project_id: restrict to one project's instances (non-admin callers).

    Raises:
        CellUnavailable: a cell that may hold members could not be asked (a count
            cannot be partial: it feeds a quota check).
    """
    wanted = sorted(set(members))
    if not wanted:
        return 0
    name = "count" if project_id is None else "count_scoped"

    def ask(conn: Connection, uuids: list[str]) -> int:
        backend = _backend(conn)
        params: dict[str, Any] = {"uuids": bind(backend, uuids), "user_id": user_id}
        if project_id is not None:
            params["project_id"] = project_id
        return int(conn.execute(_STATEMENTS[backend][name], params).scalar_one())

    answers, failed = _scatter(dbs, targets(dbs, wanted), ask)
    if failed:
        raise CellUnavailable([c.name for c, _ in failed], failed[0][1])
    return sum(answers)
