"""The diff-report command: settle, compare, decide authority, repair, record, report."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import Counter
from collections.abc import Callable

import sqlalchemy as sa
import structlog

from shadowdb import signals
from shadowdb.databases import Databases, writer
from shadowdb.diff.differ import DEFAULT_CHUNK, Differ, Progress
from shadowdb.diff.findings import DiffKind, DiffReport, authority_by_tombstone
from shadowdb.diff.repair import enqueue_repairs
from shadowdb.diff.results import StoredResult, insert_result
from shadowdb.errors import GuardRefused, InvalidInput, OperationalError, ShadowDBError
from shadowdb.failures import one_line
from shadowdb.fence import lagging, settle
from shadowdb.state import Phase, utcnow

__all__ = ["run_diff"]

log = structlog.get_logger(__name__)


def run_diff(
    dbs: Databases,
    *,
    cell: str | None = None,
    keys_only: bool = False,
    limit: int | None = None,
    repair: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> DiffReport:
    """Compare every cell's live groups with the API database's and record the result.

    Differences are re-checked under the writers' lock before they are reported (see
    :mod:`shadowdb.diff`); the result is stored in the API database for ``phase set``'s
    guards.

    Args:
        cell: compare only this cell's groups (such a run admits no phase change).
        keys_only: leave group data out of the findings.
        limit: keep only the first ``limit`` findings (``total`` still counts all).
        repair: enqueue every differing key with an authoritative copy in that side's
            journal, for the next ``shadowdb backfill`` to replay.
        chunk_size: groups per checksum chunk (memory is bounded by it).
        progress: called with (stage, done, total) as the run goes.
        sleep: what the pause between re-checks calls.

    Raises:
        InvalidInput: ``limit`` or ``chunk_size`` below 1, or an unknown cell.
        ScanIncomplete: a database held rows the scan did not account for (recorded
            as an incomplete run).
        OperationalError: a database could not be read (recorded if the API database
            can be written).
    """
    if limit is not None and limit < 1:
        raise InvalidInput("--limit must be a whole number >= 1")
    started = utcnow()
    clock = time.monotonic()
    # A run gates a phase change only if the whole deployment had taken the phase when it
    # began: finish a half-done change first, and say so if a cell still lags.
    settle(dbs)
    differ = Differ(dbs, cell=cell, chunk_size=chunk_size, progress=progress, sleep=sleep)
    if differ.state.phase is Phase.API_ONLY and differ.state.cells_retired:
        # Every API group would be "missing in cells", and --repair would queue them all:
        # nothing here to compare until a reverse backfill rebuilds the cells. Refused
        # before anything is recorded, so cleanup's own record stays the newest.
        raise GuardRefused(
            "diff-report",
            [
                "cleanup retired the cell copies, so there is nothing to compare; to go "
                "back to the cells, run `shadowdb backfill --reverse`, then "
                "`shadowdb diff-report`"
            ],
        )
    scope = differ.only.name if differ.only is not None else "all"
    actor = dbs.settings.actor
    compared = [c.uuid for c in (differ.cells if differ.only is None else (differ.only,))]
    try:
        behind = lagging(dbs, differ.state)
        if behind:
            raise OperationalError(
                "the deployment is not settled in one phase: " + "; ".join(behind)
            )
        try:
            findings, rows = differ.run()
        except sa.exc.SQLAlchemyError as err:
            # A connection killed mid-scan, a transaction the server rolled back: the run
            # is incomplete, and said so as one line (never an unexpected traceback).
            raise OperationalError(f"the comparison was cut short: {one_line(err)}") from err
    except ShadowDBError as err:
        with contextlib.suppress(ShadowDBError, sa.exc.DBAPIError):
            cut_short = StoredResult.incomplete(
                differ.state, scope=scope, actor=actor, started=started, detail=one_line(err)
            )
            _record(dbs, cut_short)
        # The caller reports the error itself (the CLI: one line on stderr); this is the
        # command's canonical line, quiet unless debugging.
        log.info("diff_report", outcome="incomplete", scope=scope, error=one_line(err))
        raise
    findings = authority_by_tombstone(dbs, differ.state.phase, findings)
    counts = dict(Counter(f.kind.value for f in findings))
    unexplained = sum(1 for f in findings if not f.journal_pending)
    never_copied = sum(
        1
        for f in findings
        if not f.journal_pending
        and f.kind is DiffKind.MISSING_IN_API
        and f.authoritative == "cell"
        and differ.state.phase is Phase.API_ONLY
    )
    repaired = not_repaired = 0
    if repair and findings:
        findings, repaired, not_repaired = enqueue_repairs(
            dbs, differ.state, findings, differ.observed
        )
    for finding in findings:
        if finding.group_uuid is not None and finding.kind is not DiffKind.ORPHAN:
            signals.send(
                signals.divergence,
                dbs,
                group_uuid=finding.group_uuid,
                kind=finding.kind.value,
                detail=finding.detail,
            )
    total = len(findings)
    shown = findings[:limit] if limit is not None else findings
    if keys_only:
        shown = [dataclasses.replace(f, api=None, cell=None) for f in shown]
    recorded = _record(
        dbs,
        StoredResult(
            started_at=started,
            finished_at=utcnow(),
            phase=differ.state.phase.value,
            epoch=differ.state.epoch,
            scope=scope,
            outcome="clean" if not findings else "differences",
            differences=total,
            counts=counts,
            repaired=repaired,
            unexplained=unexplained,
            never_copied=never_copied,
            rows_api=rows.api_hashed + rows.api_compared,
            rows_cells=rows.cells_hashed + rows.cells_compared,
            actor=actor,
            detail=None,
            cells=tuple(compared),
        ),
    )
    log.info(
        "diff_report",
        outcome=recorded.outcome,
        scope=scope,
        phase=recorded.phase,
        differences=total,
        counts=counts,
        **dataclasses.asdict(rows),
        repaired=repaired,
        elapsed_ms=int((time.monotonic() - clock) * 1000),
    )
    # The report repeats what was recorded under the same names (the run's times, phase,
    # epoch, scope, counts and repairs).
    reported = {f.name for f in dataclasses.fields(DiffReport)}
    return DiffReport(
        **{k: v for k, v in dataclasses.asdict(recorded).items() if k in reported},
        clean=not findings,
        total=total,
        findings=tuple(shown),
        limit=limit,
        keys_only=keys_only,
        rows=rows,
        not_repaired=not_repaired,
    )


def _record(dbs: Databases, result: StoredResult) -> StoredResult:
    """Record the run in the API database, in a transaction of its own; return it."""
    with writer(dbs.api, dbs.api_label) as conn:
        insert_result(conn, result)
    return result
