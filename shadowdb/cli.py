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
from typing import Any, NoReturn, TextIO, TypeVar

from shadowdb import __version__, commands, errors, logs, render, urls
from shadowdb.databases import Databases, cell_url, connect
from shadowdb.render import Output as _Output
from shadowdb.render import cells_table as _cells_table
from shadowdb.settings import Settings
from shadowdb.state import Phase

__all__ = ["ExitCode", "main"]

T = TypeVar("T")


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

Handler = Callable[[argparse.Namespace, Settings, _Output], ExitCode]


def _verb(
    call: Callable[[Databases, argparse.Namespace], T],
    text: Callable[[_Output, T], None],
    *,
    code: Callable[[T], ExitCode] = lambda _result: ExitCode.OK,
    create: bool = False,
) -> Handler:
    """Make the handler of a command that calls one library verb and prints what it returns.

    Args:
        call: the verb, given the deployment's databases and the parsed command line.
        text: prints the result as text (``--format json`` prints it as one JSON object).
        code: the exit code the result calls for.
        create: the embedded API database may be created (``db sync``).
    """

    def handler(args: argparse.Namespace, settings: Settings, out: _Output) -> ExitCode:
        with connect(args.api_url, settings=settings, create=create) as dbs:
            result = call(dbs, args)
        if out.json:
            out.emit_json(result)
        else:
            text(out, result)
        return code(result)

    return handler


def _synced(out: _Output, result: commands.SyncResult) -> None:
    for db in result.databases:
        verb = f"upgraded {db.before or 'empty'} -> {db.after}" if db.changed else "up to date"
        out.line(f"{db.database}: {verb}")
    if result.state_created:
        out.line("phase: cell-only (initial)")


_cmd_db_sync = _verb(lambda dbs, args: commands.sync_schema(dbs), _synced, create=True)


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


def _default_set(out: _Output, info: commands.CellInfo) -> None:
    out.line(f"cell {info.name} is the default: new groups' cell copies go there")


_cmd_cell_set_default = _verb(
    lambda dbs, args: commands.set_default_cell(dbs, args.name), _default_set
)
_cmd_cell_list = _verb(lambda dbs, args: commands.list_cells(dbs), _cells_table)
# The whole status prints either way; the exit code tells a script a cell is down.
_cmd_status = _verb(
    lambda dbs, args: commands.status(dbs),
    render.status,
    code=lambda result: ExitCode.OK if result.reachable else ExitCode.OPERATIONAL,
)


def _phase_shown(out: _Output, info: commands.PhaseInfo) -> None:
    out.line(
        f"phase: {info.phase} (epoch {info.epoch}, since {info.changed_at:%Y-%m-%d %H:%M:%S}Z)"
    )
    out.line(f"allowed next: {', '.join(info.allowed_next)}")


_cmd_phase_show = _verb(lambda dbs, args: commands.show_phase(dbs), _phase_shown)


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


_cmd_phase_history = _verb(lambda dbs, args: commands.phase_history(dbs), render.phase_history)


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


def _options(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """Pick the parsed options ``names``: each is the library verb's keyword of that name."""
    return {name: getattr(args, name) for name in names}


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
            given = _options(args, "max_count", "cell", "batch_size", "max_rate", "reverse")
            result = commands.backfill(dbs, **given, on_batch=on_batch, on_start=on_start)
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
                    **_options(args, "cell", "keys_only", "limit", "repair"),
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

#: Each subcommand's help, by the words that call it.
_HELP = {
    "db": "manage database schemas",
    "db sync": "bring the API and every cell database to the latest schema",
    "cell": "register and list cells",
    "cell add": "register a cell database",
    "cell list": "list registered cells",
    "cell remove": "delete a mapping that holds nothing (refused otherwise)",
    "cell set-default": "write new groups' cell copies to this cell",
    "status": "show the phase and the cells",
    "phase": "show, change and list the migration phase",
    "phase show": "show the current phase and epoch",
    "phase set": "move to the next or previous phase, guarded",
    "phase history": "list every phase change, oldest first",
    "backfill": "copy legacy cell groups into the API database (online data migration)",
    "cleanup": "soft-delete the legacy cell copies (api-only, after a clean diff-report)",
    "demo": "run a whole cutover on embedded SQLite under live writers and lookups",
    "diff-report": "compare every cell's groups with the API database's (exit 1 if they differ)",
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
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"shadowdb {__version__}")

    def actions(
        of: _Parser, dest: str, metavar: str = "ACTION"
    ) -> argparse._SubParsersAction[_Parser]:
        return of.add_subparsers(dest=dest, metavar=metavar, required=True, parser_class=_Parser)

    def command(
        within: argparse._SubParsersAction[_Parser], words: str, run: Handler | None = None
    ) -> _Parser:
        """Add the subcommand ``words`` with the common options; ``run`` runs it, if it runs."""
        added = within.add_parser(words.split()[-1], help=_HELP[words], parents=[common])
        if run is not None:
            added.set_defaults(handler=run)
        return added

    sub = actions(parser, "command", "COMMAND")

    db_sub = actions(command(sub, "db"), "db_command")
    command(db_sub, "db sync", _cmd_db_sync).set_defaults(creates_api=True)

    cell_sub = actions(command(sub, "cell"), "cell_command")
    add = command(cell_sub, "cell add", _cmd_cell_add)
    add.add_argument("name", help="cell name")
    add.add_argument("db_url", metavar="DB_URL", help="cell database URL")
    add.add_argument("--default", action="store_true", help="write new groups' cell copies here")
    add.add_argument(
        "--create", action="store_true", help="create the SQLite file if it does not exist"
    )
    command(cell_sub, "cell list", _cmd_cell_list)
    command(cell_sub, "cell remove", _cmd_cell_remove).add_argument("name", help="cell name")
    dflt = command(cell_sub, "cell set-default", _cmd_cell_set_default)
    dflt.add_argument("name", help="cell name (never cell0)")

    command(sub, "status", _cmd_status)

    phase_sub = actions(command(sub, "phase"), "phase_command")
    command(phase_sub, "phase show", _cmd_phase_show)
    pset = command(phase_sub, "phase set", _cmd_phase_set)
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
    command(phase_sub, "phase history", _cmd_phase_history)

    bf = command(sub, "backfill", _cmd_backfill)
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

    cl = command(sub, "cleanup", _cmd_cleanup)
    cl.add_argument("--yes", action="store_true", help="confirm: this retires every cell copy")

    dm = command(sub, "demo", _cmd_demo)
    dm.set_defaults(creates_api=True)
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

    dr = command(sub, "diff-report", _cmd_diff_report)
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
