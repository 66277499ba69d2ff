"""Parse the command line, call one command, render its result, map errors to exit codes.

Human output goes to stdout; logs (structlog) go to stderr, pretty on a terminal and JSON
otherwise. Every failure ends in one line on stderr and an exit code from
:class:`ExitCode`; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import enum
import json
import logging
import os
import sys
import time
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any, NoReturn, TextIO

import structlog
from rich.console import Console
from rich.table import Table

from shadowdb import commands, errors, novaconf, urls
from shadowdb.databases import Databases, cell_url, connect
from shadowdb.diff import DiffKind, DiffReport
from shadowdb.phase import Phase
from shadowdb.settings import Settings

__all__ = ["ExitCode", "main", "main_entry"]


class ExitCode(enum.IntEnum):
    """Every exit status shadowdb uses, and nothing else."""

    OK = 0
    #: "more to do" (backfill) or "differences found" (diff-report).
    MORE = 1
    #: a database unreachable, a migration or a write failed.
    OPERATIONAL = 2
    #: refused by a guard (``phase set``, ``cleanup``).
    REFUSED = 3
    #: bad input: usage, malformed URL, unknown cell or phase, invalid value.
    BAD_INPUT = 127


#: Which exit code each error class maps to; the first match in order wins.
_ERROR_CODES: tuple[tuple[type[BaseException], ExitCode], ...] = (
    (errors.InvalidInput, ExitCode.BAD_INPUT),
    (errors.CellExists, ExitCode.BAD_INPUT),
    (errors.GuardRefused, ExitCode.REFUSED),
    (errors.OperationalError, ExitCode.OPERATIONAL),
    (errors.ShadowDBError, ExitCode.OPERATIONAL),
)


class UsageError(errors.InvalidInput):
    """Reject a command line argparse cannot make sense of."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # "shadowdb: error: cell add: ..." rather than repeating the program's name.
        where = self.prog.removeprefix("shadowdb").strip()
        raise UsageError(f"{where}: {message}" if where else message)


def _configure_logging(debug: bool, stream: TextIO) -> None:
    level = logging.DEBUG if debug else logging.WARNING
    renderer: Any
    if stream.isatty():
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _mask_passwords,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def _mask_passwords(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = urls.mask_text(value)
    return event


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return value


class _Output:
    """Render results on stdout as text (rich) or JSON."""

    def __init__(self, fmt: str, stream: TextIO) -> None:
        self.fmt = fmt
        self.stream = stream
        # Off a terminal nothing is cut to 80 columns: the output may be parsed.
        width = None if stream.isatty() else 400
        self.console = Console(file=stream, highlight=False, soft_wrap=True, width=width)

    @property
    def json(self) -> bool:
        return self.fmt == "json"

    def emit_json(self, value: Any) -> None:
        self.stream.write(json.dumps(_jsonable(value), indent=2, sort_keys=True) + "\n")

    def line(self, text: str = "") -> None:
        self.console.print(text, markup=False)

    def table(
        self, title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*("" if v is None else str(v) for v in row))
        if not self.stream.isatty():
            # Nor is any cell cut with "…", however wide the table: it may be parsed too.
            wide = self.console.options.update_width(1_000_000)
            natural = self.console.measure(table, options=wide).maximum
            self.console.width = max(self.console.width, natural)
        self.console.print(table)


# --------------------------------------------------------------------------- commands


def _cmd_db_sync(args: argparse.Namespace, settings: Settings, out: _Output) -> ExitCode:
    with connect(args.api_url, settings=settings, create=True) as dbs:
        result = commands.sync_schema(dbs)
    if out.json:
        out.emit_json(result)
        return ExitCode.OK
    for db in result.databases:
        verb = f"upgraded {db.before or 'empty'} -> {db.after}" if db.changed else "up to date"
        out.line(f"{db.database}: {verb}")
    if result.state_created:
        out.line("phase: cell-only (initial)")
    return ExitCode.OK


def _cmd_cell_add(args: argparse.Namespace, settings: Settings, out: _Output) -> ExitCode:
    # Bad input is refused before any database is opened.
    cell_url(args.db_url, settings, args.name)
    with connect(args.api_url, settings=settings) as dbs:
        info = commands.add_cell(
            dbs, args.name, args.db_url, default=args.default, create=args.create
        )
    if out.json:
        out.emit_json(info)
    else:
        out.line(
            f"cell {info.name} added: {info.uuid} {info.url}"
            + (" (default)" if info.default else "")
        )
    return ExitCode.OK


def _cmd_cell_remove(args: argparse.Namespace, settings: Settings, out: _Output) -> ExitCode:
    with connect(args.api_url, settings=settings) as dbs:
        commands.remove_cell(dbs, args.name)
    out.line(f"cell {args.name} removed from cell_mappings")
    return ExitCode.OK


def _cmd_cell_set_default(args: argparse.Namespace, settings: Settings, out: _Output) -> ExitCode:
    with connect(args.api_url, settings=settings) as dbs:
        info = commands.set_default_cell(dbs, args.name)
    if out.json:
        out.emit_json(info)
    else:
        out.line(f"cell {info.name} is the default: new groups' cell copies go there")
    return ExitCode.OK


def _cells_table(out: _Output, cells: Sequence[commands.CellInfo]) -> None:
    out.table(
        None,
        ("Name", "UUID", "Database", "Default"),
        [(c.name, c.uuid, c.url, "yes" if c.default else "") for c in cells],
    )


def _cmd_cell_list(args: argparse.Namespace, settings: Settings, out: _Output) -> ExitCode:
    with connect(args.api_url, settings=settings) as dbs:
        cells = commands.list_cells(dbs)
    if out.json:
        out.emit_json(cells)
    else:
        _cells_table(out, cells)
    return ExitCode.OK


def _cmd_status(args: argparse.Namespace, settings: Settings, out: _Output) -> ExitCode:
    with connect(args.api_url, settings=settings) as dbs:
        result = commands.status(dbs)
    if out.json:
        out.emit_json(result)
        return ExitCode.OK
    out.line(
        f"phase: {result.phase} (epoch {result.epoch}, "
        f"since {result.changed_at:%Y-%m-%d %H:%M:%S}Z)"
    )
    _cells_table(out, result.cells)
    if result.health:
        out.table(
            None,
            ("Cell", "Reachable", "Not in the API database", "Journal"),
            [
                (h.name, "yes", str(h.backlog), str(h.journal))
                if h.reachable
                else (h.name, f"no: {h.error}", "?", "?")
                for h in result.health
            ],
        )
    return ExitCode.OK


def _cmd_phase_show(args: argparse.Namespace, settings: Settings, out: _Output) -> ExitCode:
    with connect(args.api_url, settings=settings) as dbs:
        info = commands.show_phase(dbs)
    if out.json:
        out.emit_json(info)
        return ExitCode.OK
    out.line(
        f"phase: {info.phase} (epoch {info.epoch}, since {info.changed_at:%Y-%m-%d %H:%M:%S}Z)"
    )
    out.line(f"allowed next: {', '.join(info.allowed_next)}")
    return ExitCode.OK


def _cmd_phase_set(args: argparse.Namespace, settings: Settings, out: _Output) -> ExitCode:
    Phase.parse(args.phase)  # an unknown phase is refused before any database is opened
    with connect(args.api_url, settings=settings) as dbs:
        change = commands.set_phase(
            dbs, args.phase, reason=args.reason, force=args.force, dry_run=args.dry_run
        )
    if out.json:
        out.emit_json(change)
    elif change.dry_run:
        for step in change.steps:
            out.line(step)
    else:
        out.line(f"phase: {change.from_phase} -> {change.to_phase} (epoch {change.epoch})")
        if change.overridden:
            out.line("forced over: " + "; ".join(change.overridden))
    return ExitCode.OK


def _cmd_phase_history(args: argparse.Namespace, settings: Settings, out: _Output) -> ExitCode:
    with connect(args.api_url, settings=settings) as dbs:
        entries = commands.phase_history(dbs)
    if out.json:
        out.emit_json(entries)
        return ExitCode.OK
    out.table(
        None,
        ("Epoch", "From", "To", "Changed at (UTC)", "Actor", "Reason", "Forced", "Overridden"),
        [
            (
                e.epoch,
                e.from_phase,
                e.to_phase,
                f"{e.changed_at:%Y-%m-%d %H:%M:%S}",
                e.actor,
                e.reason,
                "yes" if e.forced else "",
                "; ".join(e.overridden),
            )
            for e in entries
        ],
    )
    return ExitCode.OK


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a number > 0")
    return value


#: How a backfill outcome ends the process (nova-manage's codes, plus "stuck").
_BACKFILL_EXIT = {
    "done": ExitCode.OK,
    "more": ExitCode.MORE,
    "error": ExitCode.OPERATIONAL,
    "stuck": ExitCode.OPERATIONAL,
}


def _cmd_backfill(args: argparse.Namespace, settings: Settings, out: _Output) -> ExitCode:
    from shadowdb import backfill as backfill_mod

    with connect(args.api_url, settings=settings) as dbs:
        progress: _BackfillProgress | None = None

        def on_start() -> None:
            nonlocal progress
            if not out.json and args.max_count is None:
                out.line(f"Running batches of {args.batch_size} until complete")
            if not out.json and out.stream.isatty():
                progress = _BackfillProgress(out, dbs, args)

        def on_batch(name: str, step: backfill_mod.BatchStep) -> None:
            if progress is not None:
                progress.advance(name, step)
            if out.json:
                return
            if step.found:
                out.line(f"{step.found} rows matched query {name}, {step.done} migrated")
            if step.error:
                out.line(f"Error attempting to run {name}: {step.error}")

        try:
            result = backfill_mod.backfill(
                dbs,
                max_count=args.max_count,
                cell=args.cell,
                batch_size=args.batch_size,
                max_rate=args.max_rate,
                reverse=args.reverse,
                on_batch=on_batch,
                on_start=on_start,
            )
        finally:
            if progress is not None:
                progress.stop()
    code = _BACKFILL_EXIT[result.outcome]
    if out.json:
        out.emit_json({**_jsonable(result), "exit_code": int(code)})
        return code
    out.table(
        None,
        ("Migration", "Total Needed", "Completed"),
        [(t.migration, t.found, t.done) for t in result.totals],
    )
    for conflict in result.conflicts:
        out.line(
            f"conflict: group {conflict.group_uuid} in {conflict.cell}: "
            f"{conflict.kind} ({conflict.detail}); not copied"
        )
    if result.stuck:
        out.line(
            "Some records were found but could not be migrated (stuck): "
            + ", ".join(result.stuck)
            + ". Resolve the conflicts above, then run backfill again."
        )
    elif result.outcome == "error":
        out.line("Some migrations failed unexpectedly. Check the errors above and the logs.")
    elif result.outcome == "more":
        out.line("More work may remain: run backfill again.")
    return code


class _BackfillProgress:
    """Show a progress bar with rate and ETA, from an exact count of what is left."""

    def __init__(self, out: _Output, dbs: Databases, args: argparse.Namespace) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        total = commands.remaining_work(dbs, cell=args.cell, reverse=args.reverse)
        self._progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=out.console,
        )
        self._task = self._progress.add_task("groups", total=total, rate="")
        self._started = time.monotonic()
        self._done = 0
        self._progress.start()

    def advance(self, name: str, step: Any) -> None:
        """Count the groups a migration call completed."""
        if name.endswith("instance_groups") and step.done:
            self._done += step.done
            elapsed = max(1e-6, time.monotonic() - self._started)
            rate = f"{self._done / elapsed:,.0f} groups/s"
            self._progress.update(self._task, advance=step.done, rate=rate)

    def stop(self) -> None:
        """Leave the bar at its final state."""
        self._progress.stop()


def _cmd_diff_report(args: argparse.Namespace, settings: Settings, out: _Output) -> ExitCode:
    target = out
    with contextlib.ExitStack() as stack:
        if args.output is not None:
            try:
                handle = stack.enter_context(open(args.output, "w", encoding="utf-8"))
            except OSError as err:
                raise errors.InvalidInput(f"cannot write --output {args.output}: {err}") from err
            target = _Output(out.fmt, handle)
        dbs = stack.enter_context(connect(args.api_url, settings=settings))
        # A bar only on a terminal, and never mixed into JSON on it.
        bar = out.stream.isatty() and (args.output is not None or not out.json)
        with _DiffProgress(out) if bar else contextlib.nullcontext() as progress:
            report = commands.diff_report(
                dbs,
                cell=args.cell,
                keys_only=args.keys_only,
                limit=args.limit,
                repair=args.repair,
                progress=progress.update if progress is not None else None,
            )
        code = ExitCode.OK if report.clean else ExitCode.MORE
        if target.json:
            target.emit_json({**_jsonable(report), "exit_code": int(code)})
        else:
            _render_diff(target, report)
    return code


def _render_diff(out: _Output, report: DiffReport) -> None:
    scope = "every cell" if report.scope == "all" else f"cell {report.scope}"
    where = f"phase {report.phase}, epoch {report.epoch}, {scope}"
    rows = report.rows
    if report.clean:
        out.line(f"clean: the API database and {scope} hold the same groups ({where})")
    else:
        kinds = ", ".join(
            f"{kind.value}: {report.counts[kind.value]}"
            for kind in DiffKind
            if kind.value in report.counts
        )
        out.line(f"{report.total} differing keys ({kinds}) ({where})")
        columns = ["Kind", "Key", "Authoritative", "Cells", "Detail"]
        if not report.keys_only:
            columns += ["API", "Cell"]
        if report.repaired or report.not_repaired:
            columns.append("Repair")
        table_rows = []
        for f in report.findings:
            row: list[Any] = [
                f.kind.value,
                f.key,
                f.authoritative or "none",
                ", ".join(f.cells),
                f.detail,
            ]
            if not report.keys_only:
                row += [_compact(f.api), _compact(f.cell)]
            if report.repaired or report.not_repaired:
                row.append(f.repair)
            table_rows.append(row)
        out.table(None, columns, table_rows)
        if len(report.findings) < report.total:
            out.line(f"showing the first {len(report.findings)} of {report.total} (--limit)")
    out.line(
        f"rows checksummed: API {rows.api_hashed}, cells {rows.cells_hashed}; "
        f"compared row by row: API {rows.api_compared}, cells {rows.cells_compared}; "
        f"chunks differing: {rows.chunks_differing} of {rows.chunks}; "
        f"re-checked: {rows.rechecked} ({rows.cleared} were writes in flight)"
    )
    if rows.legacy_duplicates:
        out.line(
            f"legacy duplicates: {rows.legacy_duplicates} groups hold duplicate live policy "
            "or member rows (Nova allowed them); compared as sets, not a difference"
        )
    if report.repaired or report.not_repaired:
        out.line(
            f"repair: {report.repaired} keys enqueued in their authoritative journal, "
            f"{report.not_repaired} left; run `shadowdb backfill` to replay them, then "
            "diff-report again"
        )


def _compact(value: Any) -> str:
    return "" if value is None else json.dumps(value, sort_keys=True)


class _DiffProgress:
    """Show one progress bar per stage of a diff (checksums, compare, recheck)."""

    def __init__(self, out: _Output) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=out.console,
            transient=True,
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> _DiffProgress:
        self._progress.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._progress.stop()

    def update(self, stage: str, done: int, total: int) -> None:
        """Move the bar of ``stage`` to ``done`` of ``total``."""
        task = self._tasks.get(stage)
        if task is None:
            task = self._tasks[stage] = self._progress.add_task(stage, total=total)
        self._progress.update(task, completed=done, total=total)


def _cmd_cleanup(args: argparse.Namespace, settings: Settings, out: _Output) -> ExitCode:
    from shadowdb.cleanup import cleanup

    if not args.yes:
        raise errors.InvalidInput(
            "cleanup soft-deletes every cell copy of every group: pass --yes to go ahead"
        )
    with connect(args.api_url, settings=settings) as dbs:
        result = cleanup(dbs)
    if out.json:
        out.emit_json(result)
        return ExitCode.OK
    out.table(
        None,
        ("Cell", "Groups", "Policies", "Members"),
        [(c.cell, c.groups, c.policies, c.members) for c in result.cells],
    )
    out.line(f"{result.total} cell rows soft-deleted; the API database holds every group.")
    return ExitCode.OK


Handler = Callable[[argparse.Namespace, Settings, _Output], ExitCode]

#: The common options' values when given nowhere on the command line.
_OPTION_DEFAULTS: dict[str, Any] = {
    "api_url": None,
    "config_file": None,
    "format": "text",
    "debug": False,
}


def _build_parser() -> _Parser:
    # Options may come before or after each subcommand, so no parser has defaults for them
    # (a subparser's default would overwrite a value given before it): see _OPTION_DEFAULTS.
    common = _Parser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument(
        "--api-url",
        metavar="URL",
        help="API database URL (default: $SHADOWDB_API_URL, else shadowdb-data/api.sqlite)",
    )
    common.add_argument(
        "--config-file",
        metavar="PATH",
        action="append",
        help=(
            "a nova.conf to read [api_database] connection (the API URL) and [database] "
            "connection (what templated cell URLs are filled from) from; repeatable, later "
            "files win (default: $SHADOWDB_CONFIG_FILE, paths separated by ':')"
        ),
    )
    common.add_argument("--format", choices=("text", "json"), help="output format")
    common.add_argument("--debug", action="store_true", help="log debug events and show tracebacks")

    parser = _Parser(
        prog="shadowdb",
        description="Move Nova instance groups from cell databases to the API database.",
        parents=[common],
    )
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )

    db = sub.add_parser("db", help="manage database schemas", parents=[common])
    db_sub = db.add_subparsers(
        dest="db_command", metavar="ACTION", required=True, parser_class=_Parser
    )
    sync = db_sub.add_parser(
        "sync", help="bring the API and every cell database to the latest schema", parents=[common]
    )
    sync.set_defaults(handler=_cmd_db_sync)

    cell = sub.add_parser("cell", help="register and list cells", parents=[common])
    cell_sub = cell.add_subparsers(
        dest="cell_command", metavar="ACTION", required=True, parser_class=_Parser
    )
    add = cell_sub.add_parser("add", help="register a cell database", parents=[common])
    add.add_argument("name", help="cell name")
    add.add_argument("db_url", metavar="DB_URL", help="cell database URL")
    add.add_argument("--default", action="store_true", help="write new groups' cell copies here")
    add.add_argument(
        "--create", action="store_true", help="create the SQLite file if it does not exist"
    )
    add.set_defaults(handler=_cmd_cell_add)
    lst = cell_sub.add_parser("list", help="list registered cells", parents=[common])
    lst.set_defaults(handler=_cmd_cell_list)
    rm = cell_sub.add_parser(
        "remove", help="delete a mapping that holds nothing (refused otherwise)", parents=[common]
    )
    rm.add_argument("name", help="cell name")
    rm.set_defaults(handler=_cmd_cell_remove)
    dflt = cell_sub.add_parser(
        "set-default", help="write new groups' cell copies to this cell", parents=[common]
    )
    dflt.add_argument("name", help="cell name (never cell0)")
    dflt.set_defaults(handler=_cmd_cell_set_default)

    st = sub.add_parser("status", help="show the phase and the cells", parents=[common])
    st.set_defaults(handler=_cmd_status)

    phase = sub.add_parser(
        "phase", help="show, change and list the migration phase", parents=[common]
    )
    phase_sub = phase.add_subparsers(
        dest="phase_command", metavar="ACTION", required=True, parser_class=_Parser
    )
    show = phase_sub.add_parser("show", help="show the current phase and epoch", parents=[common])
    show.set_defaults(handler=_cmd_phase_show)
    pset = phase_sub.add_parser(
        "set", help="move to the next or previous phase, guarded", parents=[common]
    )
    pset.add_argument(
        "phase", metavar="PHASE", help="the phase to enter: " + ", ".join(p.value for p in Phase)
    )
    pset.add_argument("--reason", metavar="TEXT", default=None, help="why, kept in the history")
    pset.add_argument(
        "--force", action="store_true", help="override failed guards (recorded in the history)"
    )
    pset.add_argument(
        "--dry-run", action="store_true", help="print the steps without changing anything"
    )
    pset.set_defaults(handler=_cmd_phase_set)
    hist = phase_sub.add_parser(
        "history", help="list every phase change, oldest first", parents=[common]
    )
    hist.set_defaults(handler=_cmd_phase_history)

    bf = sub.add_parser(
        "backfill",
        help="copy legacy cell groups into the API database (online data migration)",
        parents=[common],
    )
    bf.add_argument(
        "--max-count",
        type=_positive_int,
        default=None,
        metavar="N",
        help="run one batch migrating at most N records (default: batches until complete)",
    )
    bf.add_argument("--cell", default=None, metavar="NAME", help="only this cell")
    bf.add_argument(
        "--batch-size", type=_positive_int, default=50, metavar="N", help="records per batch"
    )
    bf.add_argument(
        "--max-rate",
        type=_positive_float,
        default=None,
        metavar="ROWS_PER_S",
        help="copy at most this many groups per second",
    )
    bf.add_argument("--reverse", action="store_true", help="copy API -> cell (to leave api-only)")
    bf.set_defaults(handler=_cmd_backfill)

    cl = sub.add_parser(
        "cleanup",
        help="soft-delete the legacy cell copies (api-only, after a clean diff-report)",
        parents=[common],
    )
    cl.add_argument("--yes", action="store_true", help="confirm: this retires every cell copy")
    cl.set_defaults(handler=_cmd_cleanup)

    dr = sub.add_parser(
        "diff-report",
        help="compare every cell's groups with the API database's (exit 1 if they differ)",
        parents=[common],
    )
    dr.add_argument("--cell", default=None, metavar="NAME", help="only this cell's groups")
    dr.add_argument(
        "--output", default=None, metavar="FILE", help="write the report to FILE, not stdout"
    )
    dr.add_argument(
        "--keys-only", action="store_true", help="list the differing keys without group data"
    )
    dr.add_argument(
        "--limit",
        type=_positive_int,
        default=None,
        metavar="N",
        help="show the first N differences (the total is still counted)",
    )
    dr.add_argument(
        "--repair",
        action="store_true",
        help="enqueue each differing key in its authoritative side's journal for backfill",
    )
    dr.set_defaults(handler=_cmd_diff_report)
    return parser


def _fail(code: ExitCode, message: str, stderr: TextIO) -> ExitCode:
    # One line: a driver error's SQL and parameters stay out (--debug shows them, masked).
    first = (message.strip().splitlines() or [""])[0]
    stderr.write(f"shadowdb: error: {urls.mask_text(first)}\n")
    return code


def _settings(args: argparse.Namespace, environ: dict[str, str]) -> Settings:
    """Build the process settings: the command line, then nova.conf, then the environment.

    The API URL is the first of ``--api-url``, ``[api_database] connection`` of the
    ``--config-file`` files, ``$SHADOWDB_API_URL``, that of the ``$SHADOWDB_CONFIG_FILE``
    files, and the embedded SQLite file.
    """
    files: list[str] = list(args.config_file or [])
    from_command_line = bool(files)
    if not files and environ.get("SHADOWDB_CONFIG_FILE"):
        files = [p for p in environ["SHADOWDB_CONFIG_FILE"].split(os.pathsep) if p]
    conf = novaconf.read_config_files(files) if files else None
    api_url = args.api_url
    if (
        conf is not None
        and api_url is None
        and (from_command_line or not environ.get("SHADOWDB_API_URL"))
    ):
        api_url = conf.api_connection
    try:
        return Settings.from_environ(
            environ,
            api_url=api_url,
            cell_url_default=conf.database_connection if conf else None,
            config_files=conf.files if conf else None,
        )
    except ValueError as err:
        raise errors.InvalidInput(f"bad setting in the environment: {err}") from err


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    environ: dict[str, str] | None = None,
) -> int:
    """Run the shadowdb command line and return its exit code."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    environ = dict(os.environ if environ is None else environ)
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = _build_parser()
        args = parser.parse_args(argv, namespace=argparse.Namespace(**_OPTION_DEFAULTS))
        _configure_logging(args.debug, stderr)
        settings = _settings(args, environ)
        out = _Output(args.format, stdout)
        handler: Handler = args.handler
        return int(handler(args, settings, out))
    except Exception as err:  # the one place errors become exit codes
        if debug:
            import traceback

            # Chained driver errors may quote a URL or SQL parameters: mask them too.
            stderr.write(urls.mask_text(traceback.format_exc()))
        for cls, code in _ERROR_CODES:
            if isinstance(err, cls):
                return int(_fail(code, str(err), stderr))
        return int(_fail(ExitCode.OPERATIONAL, f"unexpected {type(err).__name__}: {err}", stderr))


def main_entry() -> None:
    """Run :func:`main` as the ``shadowdb`` console script."""
    sys.exit(main())
