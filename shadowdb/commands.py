"""Offer every shadowdb operation as a plain function (alembic's ``command.py``).

Each command takes a :class:`~shadowdb.databases.Databases` (or settings) and returns a
frozen result dataclass. Commands never print and never exit: ``shadowdb.cli`` renders
their results and maps their errors to exit codes. Tests call these directly.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sqlite3
import uuid as uuidlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa
import structlog

from shadowdb import advice, bookkeeping, diff, novaconf, schema, urls
from shadowdb import backfill as backfilling
from shadowdb import cleanup as cleaning
from shadowdb import demo as demoing
from shadowdb import status as standing
from shadowdb.bookkeeping import HistoryEntry
from shadowdb.databases import (
    CELL0_UUID,
    Cell,
    Databases,
    cell_url,
    create_engine,
    database_errors,
    database_identity,
    galera_node,
    reader,
    writer,
)
from shadowdb.errors import (
    CellExists,
    CellInUse,
    DatabaseUnreachable,
    InvalidInput,
    SchemaError,
)
from shadowdb.fence import settle
from shadowdb.guards import allowed_next
from shadowdb.models import (
    api_state,
    cell_state,
)
from shadowdb.queries import CELL
from shadowdb.state import Phase, initialise_state, read_state
from shadowdb.status import CellHealth, CellInfo, LastDiff, Status
from shadowdb.switcher import Switcher

__all__ = [
    "DEFAULT_BATCH",
    "BackfillResult",
    "BackfillStep",
    "CellHealth",
    "CellInfo",
    "CleanupResult",
    "DatabaseSync",
    "DemoOptions",
    "DemoReport",
    "DiffKind",
    "DiffReport",
    "HistoryEntry",
    "LastDiff",
    "PhaseChange",
    "PhaseInfo",
    "Status",
    "SyncResult",
    "add_cell",
    "backfill",
    "backfill_migrations",
    "backfill_remaining",
    "cleanup",
    "demo",
    "diff_report",
    "list_cells",
    "phase_history",
    "remove_cell",
    "set_default_cell",
    "set_phase",
    "show_phase",
    "status",
    "sync_schema",
]

log = structlog.get_logger(__name__)

#: Records per batch of a backfill run without ``--max-count`` (Nova's 50).
DEFAULT_BATCH = backfilling.DEFAULT_BATCH
BackfillResult = backfilling.BackfillResult
DiffKind = diff.DiffKind
DiffReport = diff.DiffReport
BackfillStep = backfilling.BatchStep
CleanupResult = cleaning.CleanupResult
DemoOptions = demoing.DemoOptions
DemoReport = demoing.DemoReport


@dataclasses.dataclass(frozen=True)
class DatabaseSync:
    """What ``db sync`` did to one database."""

    database: str
    tree: str
    before: str | None
    after: str

    @property
    def changed(self) -> bool:
        """True if the database moved to a new revision."""
        return self.before != self.after


@dataclasses.dataclass(frozen=True)
class SyncResult:
    """What ``db sync`` did, database by database (API first)."""

    databases: tuple[DatabaseSync, ...]
    state_created: bool


def _sync_one(engine: sa.Engine, tree: str, label: str) -> DatabaseSync:
    with database_errors(label):
        with engine.connect() as conn:
            before = schema.current_revision(conn, tree)
        head = schema.head_revision(tree)
        if before != head:
            try:
                schema.upgrade(engine, tree)
            except sa.exc.DBAPIError:
                raise
            except Exception as err:
                raise SchemaError(label, f"migration failed: {err}") from err
    log.info("schema_synced", database=label, tree=tree, before=before, after=head)
    return DatabaseSync(label, tree, before, head)


def sync_schema(dbs: Databases) -> SyncResult:
    """Bring the API database and every cell database to the latest schema.

    Nova's tables are adopted as they are (created only where missing); shadowdb's own
    tables are added. A fresh deployment starts in phase ``cell-only``. Idempotent.
    """
    results = [_sync_one(dbs.api, "api", dbs.api_label)]
    with writer(dbs.api, dbs.api_label) as conn:
        created = initialise_state(conn, dbs.settings.actor)
    cells = dbs.refresh_cells()
    for cell in cells:
        results.append(_sync_one(cell.engine, "cell", cell.label))
    _record_writer_nodes(dbs, cells)
    # Every cell takes the API database's phase row (the fence) before anything writes it.
    settle(dbs, cells)
    _record_writer_nodes(dbs, cells)  # the cells whose phase row settle just created
    return SyncResult(tuple(results), created)


def _record_writer_nodes(dbs: Databases, cells: Sequence[Cell]) -> None:
    """On Galera, make the node this ``db sync`` runs through the one shadowdb writes through.

    Each database's phase row records it; every write transaction's locking read of that
    row refuses another node (:func:`shadowdb.state.check_writer_node`). Off Galera this
    writes nothing.
    """
    targets = [
        (dbs.api, dbs.api_label, api_state),
        *((c.engine, c.label, cell_state) for c in cells),
    ]
    for engine, label, table in targets:
        if urls.backend_of(engine.url) != "mysql":
            continue
        with writer(engine, label) as conn:
            node = galera_node(conn)
            if node is None:
                continue
            if bookkeeping.write_writer_node(conn, table, node):
                log.warning("galera_writer_node", database=label, node=node)


def _identity_of(url: sa.URL, label: str, dbs: Databases) -> tuple[Any, ...]:
    """Connect to ``url`` and return what its server says it is (``database_identity``)."""
    engine = create_engine(url, dbs.settings, must_exist=True)
    try:
        with reader(engine, label) as conn:
            return database_identity(conn)
    finally:
        engine.dispose()


def _refuse_known_database(identity: tuple[Any, ...], dbs: Databases, name: str) -> None:
    """Refuse the API database itself, or a database registered under another name."""
    with reader(dbs.api, dbs.api_label) as conn:
        if database_identity(conn) == identity:
            raise InvalidInput(
                f"cell {name}: that is the API database; a cell needs its own database"
            )
    for cell in dbs.refresh_cells():
        try:
            with reader(cell.engine, cell.label) as conn:
                theirs = database_identity(conn)
        except DatabaseUnreachable:
            continue  # it cannot be this one: this one answered
        if theirs == identity:
            raise InvalidInput(
                f"cell {name}: that database is already registered as cell {cell.name}"
            )


def add_cell(
    dbs: Databases, name: str, url: str, *, default: bool = False, create: bool = False
) -> CellInfo:
    """Register a cell in ``cell_mappings`` (as ``nova-manage cell_v2 create_cell``).

    The URL is stored as given (a relative SQLite path made absolute), never rewritten.

    Args:
        name: unique cell name.
        url: the cell database URL.
        default: make it the cell where new groups' cell copies are written.
        create: create the (SQLite) database file if it does not exist.

    Raises:
        InvalidInput: empty or over-long name, a malformed URL, the API database itself,
            a database already registered under another name, cell0 as the default.
        CellExists: a cell with that name is already registered.
        DatabaseUnreachable: the cell database cannot be reached, or its SQLite file does
            not exist (without ``create``).
    """
    name = name.strip()
    if not name or len(name) > 255:
        raise InvalidInput("cell name must be 1 to 255 characters")
    parsed = cell_url(url, dbs.settings, name)
    label = f"cell {name} ({urls.mask(parsed)})"
    stored = url.strip()
    with reader(dbs.api, dbs.api_label) as conn:
        read_state(conn)  # refuses an unsynced API database
        taken = bookkeeping.cell_mapping_named(conn, name)
    if taken is not None:
        raise CellExists(name)
    if urls.backend_of(parsed) == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise InvalidInput("a cell database cannot be in memory")
        path = Path(parsed.database or "").resolve()
        if not path.parent.is_dir():
            raise DatabaseUnreachable(label, f"folder {path.parent} does not exist")
        if not path.exists() and not create:
            raise DatabaseUnreachable(
                label, f"no such file {path} (pass --create to make an empty one)"
            )
        if (
            not novaconf.is_template(stored)
            and not Path(sa.engine.make_url(stored).database or "").is_absolute()
        ):
            # Relative to where the command ran: stored absolute, or it means nothing later.
            parsed = parsed.set(database=str(path))
            stored = parsed.render_as_string(hide_password=False)
    new_file = Path(parsed.database or "")
    if urls.backend_of(parsed) == "sqlite" and create and not new_file.exists():
        _refuse_known_database(("sqlite", str(new_file.resolve())), dbs, name)
        sqlite3.connect(new_file).close()  # an empty database, for `db sync` to build
    else:
        identity = _identity_of(parsed, label, dbs)
        _refuse_known_database(identity, dbs, name)
    cell_uuid = str(uuidlib.uuid4())
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    with writer(dbs.api, dbs.api_label) as conn:
        # Serialise cell registrations on the state row, then look again: two concurrent
        # `cell add` of one name must not both pass (cell_mappings has no unique name).
        read_state(conn, for_update=True)
        if bookkeeping.cell_mapping_named(conn, name) is not None:
            raise CellExists(name)
        bookkeeping.insert_cell_mapping(
            conn, uuid=cell_uuid, name=name, database_connection=stored, now=now
        )
        if default:
            bookkeeping.write_default_cell(conn, cell_uuid)
    for cell in dbs.refresh_cells():
        if cell.uuid == cell_uuid:
            # A synced cell takes the phase row now; an unsynced one at `db sync`
            # (settle reports, never raises, what a cell cannot take).
            settle(dbs, [cell])
    log.info("cell_added", cell=name, url=urls.mask(parsed), default=default)
    infos = list_cells(dbs)
    return next(info for info in infos if info.uuid == cell_uuid)


def list_cells(dbs: Databases) -> list[CellInfo]:
    """List the registered cells, oldest first, passwords masked."""
    return standing.cell_infos(dbs)


def remove_cell(dbs: Databases, name: str) -> None:
    """Delete the ``cell_mappings`` row of a cell that holds nothing (a mistaken mapping).

    Raises:
        UnknownCell: no cell of that name is registered.
        CellInUse: the cell holds live groups or journal entries, instances are mapped
            to it, it is the chosen default, or it cannot be reached to prove it empty.
    """
    dbs.refresh_cells()
    cell = dbs.cell(name)
    reasons: list[str] = []
    try:
        with reader(cell.engine, cell.label) as conn:
            g = CELL.groups
            # A database never synced holds no group table, and so no group.
            live = sa.inspect(conn).has_table(g.name) and conn.scalar(
                sa.select(sa.func.count()).select_from(g).where(g.c.deleted == 0)
            )
            if live:
                reasons.append(f"it holds {live} live group(s)")
            try:
                pending = CELL.journal_count(conn)
            except sa.exc.DBAPIError:
                pending = 0  # never synced by shadowdb: no journal
            if pending:
                reasons.append(f"its journal holds {pending} entr(y/ies)")
    except DatabaseUnreachable as err:
        reasons.append(f"it cannot be reached to show it is empty ({err})")
    with writer(dbs.api, dbs.api_label) as conn:
        state = read_state(conn, for_update=True)
        mapped = bookkeeping.instances_mapped_to(conn, cell.id)
        if mapped:
            reasons.append(f"{mapped} instance(s) are mapped to it")
        if state.default_cell_uuid == cell.uuid:
            reasons.append("it is the default cell: choose another with `cell set-default`")
        if reasons:
            raise CellInUse(name, reasons)
        bookkeeping.delete_cell_mapping(conn, cell.id)
    dbs.refresh_cells()
    log.info("cell_removed", cell=name, uuid=cell.uuid)


def set_default_cell(dbs: Databases, name: str) -> CellInfo:
    """Make ``name`` the cell where new groups' cell copies are written.

    Raises:
        UnknownCell: no cell of that name is registered.
        InvalidInput: the cell is cell0, which never holds groups.
    """
    dbs.refresh_cells()
    cell = dbs.cell(name)
    if cell.is_cell0:
        raise InvalidInput(
            f"cell {name} is cell0 ({CELL0_UUID}): Nova never looks for groups there; "
            "choose another cell"
        )
    with writer(dbs.api, dbs.api_label) as conn:
        read_state(conn, for_update=True)
        bookkeeping.write_default_cell(conn, cell.uuid)
    log.info("default_cell_set", cell=name, uuid=cell.uuid)
    return next(info for info in list_cells(dbs) if info.uuid == cell.uuid)


def status(dbs: Databases) -> Status:
    """Report where the cutover stands and the command to run next.

    Reads the phase, each cell's backlog, journal and conflicts, the API journal and the
    newest diff-report (:mod:`shadowdb.status`), then works out the next step from the
    guards (:mod:`shadowdb.advice`). Finishes a half-done phase change on the way, as
    every command does.
    """
    result = standing.gather(dbs)
    found = advice.advise(dbs, result)
    return dataclasses.replace(result, next_step=found.next_step, reason=found.reason)


# --------------------------------------------------------------------------- phase


@dataclasses.dataclass(frozen=True)
class PhaseInfo:
    """The current phase as stored in the API database (never from a cache).

    Attributes:
        phase: the phase's name.
        epoch: bumped on every change.
        changed_at: when the phase was last set (UTC).
        allowed_next: the phases ``phase set`` may move to from here.
    """

    phase: str
    epoch: int
    changed_at: dt.datetime
    allowed_next: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class PhaseChange:
    """What ``phase set`` did, or with ``dry_run`` would do.

    Attributes:
        from_phase: the phase left.
        to_phase: the phase entered.
        epoch: the epoch recorded with ``to_phase`` (on a dry run, the one it would get).
        changed_at: when it was recorded; ``None`` on a dry run.
        forced: ``force`` was asked for.
        overridden: the guard reasons ``force`` overrode.
        reason: the operator's reason.
        steps: the switcher's steps, one line each, in execution order.
        dry_run: nothing was changed.
        left: what the catch-up could not replay (run ``backfill``), one line each.
    """

    from_phase: str
    to_phase: str
    epoch: int
    changed_at: dt.datetime | None
    forced: bool
    overridden: tuple[str, ...]
    reason: str | None
    steps: tuple[str, ...]
    dry_run: bool
    left: tuple[str, ...] = ()


def show_phase(dbs: Databases) -> PhaseInfo:
    """Report the current phase, its epoch and where it may move next."""
    with reader(dbs.api, dbs.api_label) as conn:
        state = read_state(conn)
    nxt = tuple(p.value for p in allowed_next(state.phase))
    return PhaseInfo(state.phase.value, state.epoch, state.changed_at, nxt)


def set_phase(
    dbs: Databases,
    target: str,
    *,
    reason: str | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> PhaseChange:
    """Move the deployment to phase ``target`` through the guarded switcher.

    Returns once the change is recorded in every database and announced: from then on
    no write of the old phase can commit anywhere (:mod:`shadowdb.fence`). With
    ``dry_run`` the preconditions are evaluated and the steps returned, nothing else.

    Args:
        target: the phase's name.
        reason: why, recorded in the history.
        force: override failed guards (recorded); never a move the table forbids.
        dry_run: change nothing, return the steps.

    Raises:
        UnknownPhase: ``target`` names no phase (nothing is read or written).
        GuardRefused: the move is not allowed, a guard failed without ``force``, or
            another change won the race; ``.reasons`` lists every reason.
    """
    phase = Phase.parse(target)
    switcher = Switcher(dbs)
    steps = switcher.plan(phase, force=force, reason=reason)
    t = steps[0].transition
    switched = None if dry_run else switcher.execute(steps)
    return PhaseChange(
        from_phase=t.from_phase.value,
        to_phase=t.to_phase.value,
        epoch=t.new_epoch,
        forced=t.forced,
        overridden=t.overridden,
        reason=t.reason,
        steps=tuple(str(step) for step in steps),
        dry_run=dry_run,
        changed_at=None if switched is None else switched.changed_at,
        left=() if switched is None else switched.catch_up,
    )


def phase_history(dbs: Databases) -> list[HistoryEntry]:
    """List every recorded phase change, oldest first."""
    with reader(dbs.api, dbs.api_label) as conn:
        return bookkeeping.read_phase_history(conn)


# --------------------------------------------------------------------------- diff report


#: Compare every cell's live groups with the API database's and record the result: the
#: library verb is the diff package's own (:func:`shadowdb.diff.run_diff`).
diff_report = diff.run_diff


# --------------------------------------------------------------------------- backfill, cleanup


#: Copy legacy cell groups into the API database (or back, ``reverse``): the library
#: verb is the backfill package's own (``nova-manage db online_data_migrations`` semantics,
#: resumable from its checkpoints after any interruption).
backfill = backfilling.backfill


def backfill_migrations(dbs: Databases, *, reverse: bool = False) -> tuple[str, ...]:
    """Name the migrations a backfill runs, in the order they run."""
    return tuple(name for name, _ in backfilling.Backfiller(dbs, reverse=reverse).migrations)


def backfill_remaining(dbs: Databases, *, cell: str | None = None, reverse: bool = False) -> int:
    """Count exactly what a backfill has left to copy (a progress bar's total)."""
    return backfilling.remaining(dbs, cell, reverse=reverse)


def cleanup(dbs: Databases) -> CleanupResult:
    """Soft-delete the legacy cell copies (see :func:`shadowdb.cleanup.cleanup`)."""
    return cleaning.cleanup(dbs)


def demo(
    options: DemoOptions, run: Callable[[list[str], dict[str, str]], int], out: TextIO
) -> DemoReport:
    """Run a whole cutover under live traffic on embedded databases (``shadowdb demo``).

    Each step is ``run`` with its argv and environment, as the command line runs it; the
    steps' output goes to ``out``.
    """
    return demoing.run_demo(options, run, out)
