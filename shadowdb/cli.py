"""Parse the command line, call one command, render its result, map errors to exit codes.

Human output goes to stdout (rendered by :mod:`shadowdb.render`); logs (structlog) go to
stderr, pretty on a terminal and JSON otherwise. Every failure ends in one line on stderr
(a JSON object with ``--format json``) and an exit code from :class:`ExitCode`;
``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import itertools
import json
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

from shadowdb import __version__, commands, errors, logs, render, urls
from shadowdb.databases import cell_url, connect
from shadowdb.render import Output as _Output
from shadowdb.render import cells_table as _cells_table
from shadowdb.settings import Settings
from shadowdb.state import Phase

__all__ = ["ExitCode", "main"]


class ExitCode(enum.IntEnum):
    """Every exit status shadowdb uses, and nothing else."""

    OK = 0
    #: "more to do" (backfill) or "differences found" (diff-report).
    MORE = 1
    #: a database unreachable, a migration or a write failed.
    OPERATIONAL = 2
    #: refused by a guard (``phase set``, ``cleanup``), or a command run in the wrong phase.
    REFUSED = 3
    #: bad input: usage, malformed URL, unknown cell or phase, invalid value.
    BAD_INPUT = 127
    #: interrupted (Ctrl-C, SIGINT): what was committed stays, the next run resumes.
    INTERRUPTED = 130


class CommandRefused(errors.ShadowDBError):
    """Refuse a command in a phase it does not run in; the message says what it needs."""


#: Which exit code each error class maps to; the first match in order wins.
_ERROR_CODES: tuple[tuple[type[BaseException], ExitCode], ...] = (
    (errors.InvalidInput, ExitCode.BAD_INPUT),
    (errors.CellExists, ExitCode.BAD_INPUT),
    (errors.GuardRefused, ExitCode.REFUSED),
    (CommandRefused, ExitCode.REFUSED),
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
    # The whole status prints either way; the exit code tells a script a cell is down.
    code = ExitCode.OK if result.reachable else ExitCode.OPERATIONAL
    if out.json:
        out.emit_json(result)
        return code
    render.status(out, result)
    return code


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
    render.phase_history(out, entries)
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
    with connect(args.api_url, settings=settings) as dbs:
        progress: render.BackfillProgress | None = None

        def on_start() -> None:
            nonlocal progress
            if not out.json and args.max_count is None:
                out.line(f"Running batches of {args.batch_size} until complete")
            if not out.json and out.terminal:
                total = commands.backfill_remaining(dbs, cell=args.cell, reverse=args.reverse)
                progress = render.BackfillProgress(out, total)

        def on_batch(name: str, step: commands.BackfillStep) -> None:
            if progress is not None:
                # The bar says it all: lines printed under it would scroll it away.
                progress.advance(name, step)
            elif step.found and not out.json:
                out.line(f"{step.found} rows matched query {name}, {step.done} migrated")

        try:
            result = commands.backfill(
                dbs,
                max_count=args.max_count,
                cell=args.cell,
                batch_size=args.batch_size,
                max_rate=args.max_rate,
                reverse=args.reverse,
                on_batch=on_batch,
                on_start=on_start,
            )
        except errors.GuardRefused as err:
            # Say what backfill needs, not which phase it "refuses to enter".
            raise CommandRefused("; ".join(err.reasons)) from err
        finally:
            if progress is not None:
                progress.stop()
        migrations = commands.backfill_migrations(dbs, reverse=args.reverse)
    code = _BACKFILL_EXIT[result.outcome]
    if out.json:
        out.emit_json({**render.jsonable(result), "exit_code": int(code)})
        return code
    if result.outcome == "error" and not any(t.done for t in result.totals):
        # Nothing moved: one line says why (the details are in the log at --debug).
        failed = dict.fromkeys(e.partition(": ")[2] for e in result.errors)
        names = ", ".join(dict.fromkeys(e.partition(": ")[0] for e in result.errors))
        raise errors.OperationalError(f"backfill failed ({names}): {'; '.join(failed)}")
    render.backfill_summary(out, result, migrations)
    return code


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
        bar = out.terminal and (args.output is not None or not out.json)
        with render.DiffProgress(out) if bar else contextlib.nullcontext() as progress:
            try:
                report = commands.diff_report(
                    dbs,
                    cell=args.cell,
                    keys_only=args.keys_only,
                    limit=args.limit,
                    repair=args.repair,
                    progress=progress.update if progress is not None else None,
                )
            except errors.GuardRefused as err:
                raise CommandRefused("; ".join(err.reasons)) from err
        code = ExitCode.OK if report.clean else ExitCode.MORE
        if target.json:
            target.emit_json({**render.jsonable(report), "exit_code": int(code)})
        else:
            render.diff_report(target, report)
    return code


def _cmd_cleanup(args: argparse.Namespace, settings: Settings, out: _Output) -> ExitCode:
    if not args.yes:
        raise errors.InvalidInput(
            "cleanup soft-deletes every cell copy of every group: pass --yes to go ahead"
        )
    with connect(args.api_url, settings=settings) as dbs:
        try:
            result = commands.cleanup(dbs)
        except errors.GuardRefused as err:
            raise CommandRefused("; ".join(err.reasons)) from err
    if out.json:
        out.emit_json(result)
        return ExitCode.OK
    out.table(
        None,
        ("Cell", "Groups", "Policies", "Members"),
        [(c.cell, c.groups, c.policies, c.members) for c in result.cells],
        keep=("Cell",),
    )
    out.line(f"{result.total} cell rows soft-deleted; the API database holds every group.")
    return ExitCode.OK


def _cmd_demo(args: argparse.Namespace, settings: Settings, out: _Output) -> ExitCode:
    import io
    from pathlib import Path

    if args.api_url is not None:
        raise errors.InvalidInput("demo runs on its own embedded databases: drop --api-url")
    # Each step runs as the command line runs it; under --format json only the report shows.
    steps_out: TextIO = io.StringIO() if out.json else out.stream
    extra = ["--debug"] if args.debug else []

    def run(argv: list[str], environ: dict[str, str]) -> int:
        return main([*argv, *extra], stdout=steps_out, environ=environ)

    options = commands.DemoOptions(
        groups=args.groups,
        cells=args.cells,
        data_dir=Path(args.data_dir) if args.data_dir else settings.data_dir,
        writers=args.writers,
    )
    report = commands.demo(options, run, steps_out)
    code = ExitCode.OK if report.ok else ExitCode.MORE
    if out.json:
        out.emit_json({**render.jsonable(report), "ok": report.ok, "exit_code": int(code)})
        return code
    render.demo_report(out, report)
    return code


Handler = Callable[[argparse.Namespace, Settings, _Output], ExitCode]

#: The common options' values when given nowhere on the command line.
_OPTION_DEFAULTS: dict[str, Any] = {
    "api_url": None,
    "config_file": None,
    "format": "text",
    "debug": False,
}


_CUTOVER = """\
  shadowdb db sync                          adopt Nova's tables, add shadowdb's
  shadowdb cell add NAME URL                register each cell (if not yet mapped)
  shadowdb phase set dual-write-cell-reads  every write now reaches both databases
  shadowdb backfill                         copy the legacy groups (resumable)
  shadowdb diff-report                      prove the copies equal
  shadowdb phase set dual-write-api-reads   the API database becomes the authority
  shadowdb diff-report
  shadowdb phase set api-only               the cells are no longer read or written
  shadowdb cleanup --yes                    retire the cell copies"""

_ENVIRONMENT = """\
  SHADOWDB_API_URL       the API database URL (--api-url wins)
  SHADOWDB_CONFIG_FILE   nova.conf files to read, separated by ':' (--config-file wins)
  SHADOWDB_DATA_DIR      folder of the embedded SQLite databases (./shadowdb-data)
  SHADOWDB_PHASE_TTL     seconds a cached phase may serve reads (2)
  SHADOWDB_DIFF_MAX_AGE  seconds a clean diff-report admits a phase change (3600)"""

_EPILOG = f"""\
cutover order:
{_CUTOVER}

environment:
{_ENVIRONMENT}

exit codes:
  0    success; for backfill, nothing left to do
  1    more to do (backfill) or differences found (diff-report)
  2    operational: a database unreachable (status prints first), a write failed
  3    refused by a guard, or the command does not run in this phase
  127  bad input: usage, malformed URL, unknown cell or phase, bad value
  130  interrupted (Ctrl-C): what was committed stays; run it again to resume"""


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
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"shadowdb {__version__}")
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
    sync.set_defaults(handler=_cmd_db_sync, creates_api=True)

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
        "--batch-size",
        type=_positive_int,
        default=commands.DEFAULT_BATCH,
        metavar="N",
        help="records per batch (default: %(default)s)",
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

    dm = sub.add_parser(
        "demo",
        help="run a whole cutover on embedded SQLite under live writers and lookups",
        parents=[common],
    )
    dm.add_argument(
        "--groups", type=_positive_int, default=400, metavar="N", help="legacy groups in all"
    )
    dm.add_argument("--cells", type=_positive_int, default=2, metavar="K", help="cell databases")
    dm.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="folder for its databases (default: $SHADOWDB_DATA_DIR, else ./shadowdb-data); "
        "reset if an earlier demo made it, refused otherwise",
    )
    dm.add_argument("--writers", type=_positive_int, default=1, metavar="W", help="writer threads")
    dm.set_defaults(handler=_cmd_demo, creates_api=True)

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


def _fail(code: ExitCode, message: str, stderr: TextIO, as_json: bool) -> int:
    # One line: a driver error's SQL and parameters stay out (--debug shows them, masked).
    first = urls.mask_text((message.strip().splitlines() or [""])[0])
    if as_json:
        stderr.write(json.dumps({"error": first, "exit_code": int(code)}) + "\n")
    else:
        stderr.write(f"shadowdb: error: {first}\n")
    return int(code)


def _wants_json(argv: Sequence[str]) -> bool:
    """Tell whether ``--format json`` is on a command line that may not parse."""
    pairs = itertools.pairwise(argv)
    return "--format=json" in argv or any(a == "--format" and b == "json" for a, b in pairs)


def _refuse_missing_default(args: argparse.Namespace, settings: Settings) -> None:
    """Refuse the embedded API database before it exists, unless the command creates it.

    Without a URL, commands fall back to ``<data_dir>/api.sqlite``: when that file does
    not exist yet, the likeliest cause is a forgotten ``SHADOWDB_API_URL``, and a cutover
    run on an empty deployment would look clean.
    """
    if args.api_url is not None or settings.api_url is not None:
        return
    if getattr(args, "creates_api", False) or getattr(args, "create", False):
        return  # db sync creates it; cell add --create says why it needs db sync first
    path = settings.data_dir / "api.sqlite"
    if not path.exists():
        raise errors.InvalidInput(
            f"no API database: SHADOWDB_API_URL is not set and {path.resolve()} does not "
            "exist; set SHADOWDB_API_URL (or --api-url), or run `shadowdb db sync` to "
            "create the embedded one"
        )


def _settings(args: argparse.Namespace, environ: dict[str, str]) -> Settings:
    if args.api_url is not None and not args.api_url.strip():
        raise errors.InvalidInput("--api-url is empty: give the API database URL")
    try:
        return Settings.from_command_line(environ, args.api_url, args.config_file or [])
    except ValueError as err:
        # A nova.conf names itself ("config file ..."); anything else is a variable.
        where = "" if str(err).startswith("config file") else "bad setting in the environment: "
        raise errors.InvalidInput(f"{where}{err}") from err


#: How many commands this thread is running inside another (``shadowdb demo`` runs each
#: step through :func:`main`).
_nested = threading.local()


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
    as_json = _wants_json(argv)
    parser = _build_parser()
    if not argv:
        stderr.write(parser.format_help())
        return int(ExitCode.BAD_INPUT)
    try:
        try:
            with contextlib.redirect_stdout(stdout):  # --help and --version
                args = parser.parse_args(argv, namespace=argparse.Namespace(**_OPTION_DEFAULTS))
        except SystemExit as done:
            return int(done.code or 0)
        logs.configure_cli(args.debug, stderr)
        settings = _settings(args, environ)
        _refuse_missing_default(args, settings)
        out = _Output(args.format, stdout)
        handler: Handler = args.handler
        _nested.depth = getattr(_nested, "depth", 0) + 1
        try:
            return int(handler(args, settings, out))
        finally:
            _nested.depth -= 1
    except KeyboardInterrupt:
        if getattr(_nested, "depth", 0):
            # A command run by another (the demo's steps): the outer one says it, once.
            raise
        # Every unit of work is a transaction or a checkpoint: the next run resumes.
        message = "interrupted: what was committed stays; run the command again to resume"
        return _fail(ExitCode.INTERRUPTED, message, stderr, as_json)
    except Exception as err:  # the one place errors become exit codes
        if debug:
            import traceback

            # Chained driver errors may quote a URL or SQL parameters: mask them too.
            stderr.write(urls.mask_text(traceback.format_exc()))
        for cls, code in _ERROR_CODES:
            if isinstance(err, cls):
                return _fail(code, str(err), stderr, as_json)
        message = f"unexpected {type(err).__name__}: {err}"
        return _fail(ExitCode.OPERATIONAL, message, stderr, as_json)
