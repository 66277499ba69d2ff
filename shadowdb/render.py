"""Render command results for the command line: text tables (rich) or JSON, progress bars.

Only :mod:`shadowdb.cli` uses this module. On a terminal, tables fit its width: a value
the operator acts on (a uuid, a cell name) is never cut, the others wrap, and bulky group
data is left to ``--format json``. Off a terminal nothing is cut or wrapped: the output
may be parsed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from shadowdb import commands
from shadowdb.commands import DiffKind, DiffReport

__all__ = [
    "BackfillProgress",
    "DiffProgress",
    "Output",
    "backfill_summary",
    "cells_table",
    "demo_report",
    "diff_report",
    "jsonable",
    "status",
]


#: A uuid's length: the widest value a table keeps on one line.
_UUID_WIDTH = 36


def jsonable(value: Any) -> Any:
    """Turn a result (dataclasses, enums, datetimes) into plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return value


class Output:
    """Render results on one stream as text (rich) or JSON."""

    def __init__(self, fmt: str, stream: TextIO) -> None:
        self.fmt = fmt
        self.stream = stream
        self.terminal = stream.isatty()
        # Off a terminal nothing is cut to 80 columns: the output may be parsed.
        width = None if self.terminal else 400
        self.console = Console(file=stream, highlight=False, soft_wrap=True, width=width)

    @property
    def json(self) -> bool:
        return self.fmt == "json"

    def emit_json(self, value: Any) -> None:
        self.stream.write(json.dumps(jsonable(value), indent=2, sort_keys=True) + "\n")

    def line(self, text: str = "") -> None:
        self.console.print(text, markup=False)

    def table(
        self,
        title: str | None,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        *,
        keep: Sequence[str] = (),
    ) -> None:
        """Print a table; on a terminal the ``keep`` columns are never wrapped or cut."""
        cells = [["" if v is None else str(v) for v in row] for row in rows]
        natural = [max((len(r[i]) for r in cells), default=0) for i in range(len(columns))]
        natural = [max(n, len(c)) for n, c in zip(natural, columns, strict=True)]
        # A value the operator acts on (a uuid, a cell name) stays on one line up to a
        # uuid's length, so that it can be copied whole; the other columns share what is
        # left of the terminal, and their values wrap (fold): nothing is cut with "…".
        kept = {i: min(natural[i], _UUID_WIDTH) for i, c in enumerate(columns) if c in keep}
        caps = _share(
            self.console.width - 3 * len(columns) - 1 - sum(kept.values()),
            {i: n for i, n in enumerate(natural) if i not in kept},
        )
        table = Table(title=title, title_justify="left")
        for i, column in enumerate(columns):
            if i in kept:
                table.add_column(column, overflow="fold", min_width=kept[i])
            elif self.terminal and kept:
                table.add_column(column, overflow="fold", max_width=caps[i])
            else:
                table.add_column(column, overflow="fold")
        for row in cells:
            table.add_row(*row)
        if not self.terminal:
            # Nor is any cell cut with "…", however wide the table: it may be parsed too.
            wide = self.console.options.update_width(1_000_000)
            whole = self.console.measure(table, options=wide).maximum
            self.console.width = max(self.console.width, whole)
        self.console.print(table)


def _share(width: int, wants: dict[int, int]) -> dict[int, int]:
    """Split ``width`` columns among ``wants`` (index -> natural width), narrowest first.

    A column that needs less than an even share takes only what it needs; the rest go to
    the wider ones. Every column gets at least 4.
    """
    caps: dict[int, int] = {}
    left = width
    for n, i in enumerate(sorted(wants, key=wants.__getitem__)):
        caps[i] = max(4, min(wants[i], left // (len(wants) - n)))
        left -= caps[i]
    return caps


def cells_table(out: Output, cells: Sequence[commands.CellInfo]) -> None:
    """Print the registered cells."""
    out.table(
        None,
        ("Name", "UUID", "Database", "Default"),
        [(c.name, c.uuid, c.url, "yes" if c.default else "") for c in cells],
        keep=("UUID",),
    )


def backfill_summary(
    out: Output,
    result: commands.BackfillResult,
    migrations: Sequence[str],
) -> None:
    """Print the totals of a backfill run, one row per migration, then what went wrong.

    The rows are sorted as Nova sorts them; a migration the ``--max-count`` budget did
    not reach keeps its row, at zero.
    """
    totals = {t.migration: (t.found, t.done) for t in result.totals}
    names = sorted({*migrations, *totals})
    out.table(
        None,
        ("Migration", "Total Needed", "Completed"),
        [(name, *totals.get(name, (0, 0))) for name in names],
        keep=("Migration",),
    )
    skipped = [name for name in migrations if name not in totals]
    if skipped:
        out.line(f"not reached within --max-count {result.max_count}: {', '.join(skipped)}")
    for error in dict.fromkeys(result.errors):  # one line per distinct failure, masked
        name, _, detail = error.partition(": ")
        out.line(f"Error attempting to run {name}: {detail}")
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


class BackfillProgress:
    """Show a progress bar with rate and ETA, from an exact count of what is left."""

    def __init__(self, out: Output, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

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

    def advance(self, name: str, step: commands.BackfillStep) -> None:
        """Count the groups a migration call completed."""
        if name.endswith("instance_groups") and step.done:
            self._done += step.done
            elapsed = max(1e-6, time.monotonic() - self._started)
            rate = f"{self._done / elapsed:,.0f} groups/s"
            self._progress.update(self._task, advance=step.done, rate=rate)

    def stop(self) -> None:
        """Leave the bar at its final state."""
        self._progress.stop()


class DiffProgress:
    """Show one progress bar per stage of a diff (checksums, compare, recheck)."""

    def __init__(self, out: Output) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            console=out.console,
            transient=True,
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> DiffProgress:
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


def _compact(value: Any) -> str:
    return "" if value is None else json.dumps(value, sort_keys=True)


def diff_report(out: Output, report: DiffReport) -> None:
    """Print a diff report: a summary line, the differing keys, the row counts."""
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
        _diff_table(out, report)
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


def _diff_table(out: Output, report: DiffReport) -> None:
    # On a terminal the group data (a JSON object per side) would squeeze the key out of
    # sight: it is left to --format json there.
    data = not report.keys_only and not out.terminal
    repair = bool(report.repaired or report.not_repaired)
    columns = ["Kind", "Key", "Authoritative", "Cells", "Detail"]
    columns += ["API", "Cell"] if data else []
    columns += ["Repair"] if repair else []
    fields: list[Callable[[Any], Any]] = [
        lambda f: f.kind.value,
        lambda f: f.key,
        lambda f: f.authoritative or "none",
        lambda f: ", ".join(f.cells),
        lambda f: f.detail,
    ]
    fields += [lambda f: _compact(f.api), lambda f: _compact(f.cell)] if data else []
    fields += [lambda f: f.repair] if repair else []
    rows = [[field(f) for field in fields] for f in report.findings]
    out.table(None, columns, rows, keep=("Key",))
    if out.terminal and not report.keys_only:
        out.line("each side's group data: diff-report --format json (or --output FILE)")


def status(out: Output, result: commands.Status) -> None:
    """Print where the cutover stands and the next step (``shadowdb status``)."""
    out.line(
        f"phase: {result.phase} (epoch {result.epoch}, "
        f"since {result.changed_at:%Y-%m-%d %H:%M:%S}Z)"
        + (", cell copies retired" if result.cells_retired else "")
    )
    cells_table(out, result.cells)
    if result.health:
        out.table(
            None,
            ("Cell", "Reachable", "Not in the API database", "Journal", "Conflicts"),
            [
                (h.name, "yes", str(h.backlog), str(h.journal), str(h.conflicts))
                if h.reachable and h.synced
                else (h.name, f"yes, not synced: {h.error}", "?", "?", str(h.conflicts))
                if h.reachable
                else (h.name, f"no: {h.error}", "?", "?", str(h.conflicts))
                for h in result.health
            ],
        )
    out.line(f"API database: {result.api_database}")
    out.line(
        f"API journal: {result.api_journal}; groups journaled on both sides: "
        f"{result.journal_conflicts}"
    )
    last = result.diff
    if last is None:
        out.line("last diff-report: none")
    else:
        found = (
            "clean"
            if last.clean
            else f"incomplete ({last.detail or 'no detail'})"
            if last.outcome == "incomplete"
            else f"{last.differences} differences ("
            + ", ".join(f"{k}: {n}" for k, n in sorted(last.counts.items()))
            + ")"
        )
        out.line(
            f"last diff-report: {found}, started {last.started_at:%Y-%m-%d %H:%M:%S}Z "
            f"({last.age_seconds}s ago) in {last.phase} at epoch {last.epoch}, "
            f"scope {last.scope}; "
            + ("admits the phase change" if last.gates else "admits no phase change: ")
            + "; ".join(last.blockers)
        )
    out.line(f"next step: {result.next_step or 'none'}")
    out.line(f"why: {result.reason}")


def demo_report(out: Output, report: commands.DemoReport) -> None:
    """Print what ``shadowdb demo`` did, phase by phase, and whether it accounted for all."""
    out.line()
    out.table(
        "Cutover under live traffic",
        ("Phase", "Time"),
        [(p.phase, f"{p.seconds:.1f}s") for p in report.phases],
    )
    out.line(f"rows moved by backfill: {report.rows_moved}")
    out.line(f"fallback reads (dual-write-api-reads): {report.fallback_reads}")
    out.line(f"shadow-write failures (journaled): {report.shadow_write_failures}")
    out.line(f"final diff-report: {report.final_diff} ({report.final_differences} differing keys)")
    out.line(
        f"Live traffic: {report.writes} acknowledged writes, {report.lookups} scheduler "
        f"lookups, {report.error_count} errors; {report.checked} groups checked in the API "
        f"database: {report.missing} missing or stale."
    )
    for error in report.errors:
        out.line(f"  error: {error}")
    out.line("every acknowledged write is accounted for" if report.ok else "demo FAILED")


_HISTORY = ("Epoch", "From", "To", "Changed at (UTC)", "Actor", "Reason", "Forced", "Overridden")


def phase_history(out: Output, entries: Sequence[commands.HistoryEntry]) -> None:
    """Print the phase history: a table where it fits, else one block per change.

    A phase name is the value an operator reads and types back: on a terminal too narrow
    for the table (eight columns, two of them phase names, do not fit 80), each change
    is a few lines of words, never a name broken across lines.
    """
    rows = [
        (
            str(e.epoch),
            e.from_phase or "",
            e.to_phase,
            f"{e.changed_at:%Y-%m-%d %H:%M:%S}",
            e.actor or "",
            e.reason or "",
            "yes" if e.forced else "",
            "; ".join(e.overridden),
        )
        for e in entries
    ]
    wide = sum(max(len(h), *(len(r[i]) for r in rows)) + 3 for i, h in enumerate(_HISTORY))
    if not out.terminal or wide + 1 <= out.console.width:
        out.table(None, _HISTORY, rows)
        return
    for epoch, frm, to, when, actor, reason, forced, overridden in rows:
        detail = f"  by {actor or '?'}" + (f": {reason}" if reason else "")
        if forced:
            detail += f" (forced; overridden: {overridden})" if overridden else " (forced)"
        for text in (f"epoch {epoch}, {when} UTC", f"  {frm or '(none)'} -> {to}", detail):
            # Wrapped by rich at spaces, within the terminal's width.
            out.console.print(text, markup=False, soft_wrap=False)
