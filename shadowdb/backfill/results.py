"""What the backfill's migrations report, call by call and for a whole run."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

__all__ = ["BackfillResult", "BatchStep", "CopyConflict", "Migration", "MigrationTotal"]


@dataclasses.dataclass(frozen=True)
class BatchStep:
    """What one call of one migration did (partial progress survives an error)."""

    found: int
    done: int
    error: str | None = None


#: One migration: given a budget, do up to that much and say what it did.
Migration = Callable[[int], BatchStep]


@dataclasses.dataclass(frozen=True)
class MigrationTotal:
    """One row of the summary table: totals across every batch of a run."""

    migration: str
    found: int
    done: int


@dataclasses.dataclass(frozen=True)
class CopyConflict:
    """A group the backfill refused to copy, and why."""

    group_uuid: str
    cell: str
    kind: str
    detail: str


@dataclasses.dataclass(frozen=True)
class BackfillResult:
    """What a backfill run did, and how it should end.

    ``outcome`` follows ``nova-manage``: ``"done"`` (nothing left that can be done),
    ``"more"`` (``max_count`` was given and the batch completed something: run again) or
    ``"error"`` (a migration raised, and the run was unlimited or nothing else
    progressed); beyond Nova, ``"stuck"`` when records were found that cannot be migrated.
    """

    totals: tuple[MigrationTotal, ...]
    batches: int
    errors: tuple[str, ...]
    conflicts: tuple[CopyConflict, ...]
    stuck: tuple[str, ...]
    outcome: str
    max_count: int | None
