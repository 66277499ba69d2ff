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
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shadowdb.models import api_diff_results
from shadowdb.state import PhaseState, utcnow

__all__ = [
    "CLEANED_UP",
    "RunSummary",
    "StoredResult",
    "insert_result",
    "last_result",
    "record_superseded",
]

#: What ``cleanup`` records as the result superseding every earlier run.
CLEANED_UP = "cleanup retired the cell copies"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSummary:
    """What a diff-report run found, as ``status`` shows it too.

    Attributes:
        started_at: when it began (UTC).
        finished_at: when it ended (UTC).
        phase: the phase it ran in.
        epoch: the epoch it ran at.
        scope: ``all``, or the one cell it compared.
        outcome: ``clean``, ``differences`` or ``incomplete``.
        differences: how many keys differed.
        counts: differing keys per kind.
        repaired: keys its ``--repair`` enqueued for backfill.
        unexplained: differences no pending journal entry explained (None: not recorded).
    """

    started_at: dt.datetime
    finished_at: dt.datetime
    phase: str
    epoch: int
    scope: str
    outcome: str
    differences: int
    counts: dict[str, int]
    repaired: int
    unexplained: int | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class StoredResult(RunSummary):
    """A diff-report run as recorded in ``shadowdb_diff_results``: a column per field.

    ``counts`` is stored as a JSON object and ``cells`` as a comma-separated list.
    """

    rows_api: int
    rows_cells: int
    actor: str
    detail: str | None
    #: The uuids of the cells the run compared (empty for runs recorded before shadowdb
    #: kept them: such a run gates nothing).
    cells: tuple[str, ...] = ()
    #: Of the unexplained differences, in ``api-only``: cell groups the API database
    #: never had, with no deletion on record (a cell registered late).
    #: ``dual-write-api-reads`` copies them. None: not recorded.
    never_copied: int | None = None
    #: The row's id, once recorded.
    id: int | None = None

    @classmethod
    def incomplete(
        cls, state: PhaseState, *, scope: str, actor: str, started: dt.datetime, detail: str
    ) -> StoredResult:
        """Describe a run that vouches for nothing: cut short, or superseded by a later step."""
        return cls(
            started_at=started,
            finished_at=utcnow(),
            phase=state.phase.value,
            epoch=state.epoch,
            scope=scope,
            outcome="incomplete",
            differences=0,
            counts={},
            repaired=0,
            rows_api=0,
            rows_cells=0,
            actor=actor,
            detail=detail,
        )

    @classmethod
    def from_row(cls, row: Any) -> StoredResult:
        """Read one ``shadowdb_diff_results`` row."""
        columns = {f.name: getattr(row, f.name) for f in dataclasses.fields(cls)}
        counts = json.loads(row.counts) if row.counts else {}
        cells = tuple(c for c in (row.cells or "").split(",") if c)
        return cls(**{**columns, "counts": counts, "cells": cells})

    def to_row(self) -> dict[str, Any]:
        """Return the ``shadowdb_diff_results`` row that records this run (its id aside)."""
        columns = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del columns["id"]  # the database numbers the runs
        counts = json.dumps(self.counts, sort_keys=True)
        return {**columns, "counts": counts, "cells": ",".join(self.cells)}

    def superseded_by(self, why: str) -> bool:
        """Say whether this is the result :func:`record_superseded` recorded for ``why``."""
        return (self.detail or "").startswith(why)


def last_result(conn: Connection) -> StoredResult | None:
    """Return the newest recorded diff-report run, if any."""
    t = api_diff_results
    row = conn.execute(sa.select(t).order_by(t.c.id.desc()).limit(1)).first()
    return None if row is None else StoredResult.from_row(row)


def insert_result(conn: Connection, result: StoredResult) -> None:
    """Record one run on ``conn`` (the caller commits)."""
    conn.execute(api_diff_results.insert().values(result.to_row()))


def record_superseded(conn: Connection, state: PhaseState, actor: str, why: str) -> None:
    """Record, on ``conn``, a result that supersedes every earlier run and gates nothing.

    For a step that changes what the last run compared (``cleanup``): the newest result
    is then incomplete, so ``phase set`` and ``cleanup`` wait for a new run.
    """
    detail = f"{why}; run `shadowdb diff-report` before the next move"
    started = utcnow()
    insert_result(
        conn,
        StoredResult.incomplete(state, scope="all", actor=actor, started=started, detail=detail),
    )
