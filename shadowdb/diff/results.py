"""The stored results of diff-report runs (``shadowdb_diff_results``), which the guards read.

Every read and write of the table goes through here: the phase guards
(:mod:`shadowdb.switcher`) and ``cleanup`` ask :func:`last_result`, and ``cleanup``
records a result that supersedes every earlier run (:func:`record_superseded`). Like
every query function, these take a ``Connection`` and never commit or open one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shadowdb.diff.findings import RowCounts
from shadowdb.models import api_diff_results
from shadowdb.state import PhaseState, utcnow

__all__ = ["CLEANED_UP", "StoredResult", "insert_result", "last_result", "record_superseded"]

#: What ``cleanup`` records as the result superseding every earlier run.
CLEANED_UP = "cleanup retired the cell copies"


@dataclasses.dataclass(frozen=True)
class StoredResult:
    """A diff-report run as recorded in ``shadowdb_diff_results``."""

    id: int
    started_at: dt.datetime
    finished_at: dt.datetime
    phase: str
    epoch: int
    scope: str
    outcome: str
    differences: int
    counts: dict[str, int]
    rows_api: int
    rows_cells: int
    repaired: int
    actor: str
    detail: str | None
    #: The uuids of the cells the run compared (empty for runs recorded before shadowdb
    #: kept them: such a run gates nothing).
    cells: tuple[str, ...] = ()
    #: Differences no pending journal entry explained (None: not recorded).
    unexplained: int | None = None
    #: Of those, in ``api-only``: cell groups the API database never had, with no
    #: deletion on record (a cell registered late). ``dual-write-api-reads`` copies them.
    never_copied: int | None = None

    def superseded_by(self, why: str) -> bool:
        """Say whether this is the result :func:`record_superseded` recorded for ``why``."""
        return (self.detail or "").startswith(why)


def last_result(conn: Connection) -> StoredResult | None:
    """Return the newest recorded diff-report run, if any."""
    t = api_diff_results
    row = conn.execute(sa.select(t).order_by(t.c.id.desc()).limit(1)).first()
    if row is None:
        return None
    return StoredResult(
        id=row.id,
        started_at=row.started_at,
        finished_at=row.finished_at,
        phase=row.phase,
        epoch=row.epoch,
        scope=row.scope,
        outcome=row.outcome,
        differences=row.differences,
        counts=json.loads(row.counts) if row.counts else {},
        rows_api=row.rows_api,
        rows_cells=row.rows_cells,
        repaired=row.repaired,
        actor=row.actor,
        detail=row.detail,
        cells=tuple(c for c in (row.cells or "").split(",") if c),
        unexplained=row.unexplained,
        never_copied=row.never_copied,
    )


def insert_result(
    conn: Connection,
    *,
    started: dt.datetime,
    finished: dt.datetime,
    state: PhaseState,
    scope: str,
    outcome: str,
    counts: dict[str, int],
    rows: RowCounts,
    repaired: int,
    actor: str,
    detail: str | None,
    cells: Sequence[str],
    unexplained: int | None,
    never_copied: int | None,
) -> None:
    """Record one run on ``conn`` (the caller commits)."""
    conn.execute(
        api_diff_results.insert().values(
            started_at=started,
            finished_at=finished,
            phase=state.phase.value,
            epoch=state.epoch,
            scope=scope,
            outcome=outcome,
            differences=sum(counts.values()),
            counts=json.dumps(counts, sort_keys=True),
            rows_api=rows.api_hashed + rows.api_compared,
            rows_cells=rows.cells_hashed + rows.cells_compared,
            repaired=repaired,
            actor=actor,
            detail=detail,
            cells=",".join(cells),
            unexplained=unexplained,
            never_copied=never_copied,
        )
    )


def record_superseded(conn: Connection, state: PhaseState, actor: str, why: str) -> None:
    """Record, on ``conn``, a result that supersedes every earlier run and gates nothing.

    For a step that changes what the last run compared (``cleanup``): the newest result
    is then incomplete, so ``phase set`` and ``cleanup`` wait for a new run.
    """
    now = utcnow()
    insert_result(
        conn,
        started=now,
        finished=now,
        state=state,
        scope="all",
        outcome="incomplete",
        counts={},
        rows=RowCounts(),
        repaired=0,
        actor=actor,
        detail=f"{why}; run `shadowdb diff-report` before the next move",
        cells=(),
        unexplained=None,
        never_copied=None,
    )
