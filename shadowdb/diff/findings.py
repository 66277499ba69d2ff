"""What a diff-report run finds: the kinds of difference, each finding, what was read.

Also which side the phase trusts for each finding (:func:`authority`, refined by the API
database's tombstones in :func:`authority_by_tombstone`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Sequence
from typing import Any

from shadowdb.databases import Databases, reader
from shadowdb.diff.checksums import Copy
from shadowdb.diff.readers import Orphan, Seen
from shadowdb.queries import API, COMPARED_FIELDS
from shadowdb.state import Phase

__all__ = [
    "DiffKind",
    "DiffReport",
    "Finding",
    "RowCounts",
    "authority",
    "authority_by_tombstone",
    "classify",
    "finding_of",
    "orphan_finding",
]


class DiffKind(enum.Enum):
    """The kinds of difference, in the order reports list them."""

    MISSING_IN_API = "missing-in-api"
    MISSING_IN_CELLS = "missing-in-cells"
    FIELD_MISMATCH = "field-mismatch"
    POLICY_MISMATCH = "policy-mismatch"
    MEMBER_MISMATCH = "member-mismatch"
    LIVE_IN_TWO_CELLS = "live-in-two-cells"
    ORPHAN = "orphan"

    @property
    def order(self) -> int:
        """Position in reports."""
        return list(DiffKind).index(self)


def authority(phase: Phase, kind: DiffKind) -> str | None:
    """Return the side ``phase`` trusts for a difference of ``kind``: "api", "cell" or None."""
    if kind in (DiffKind.LIVE_IN_TWO_CELLS, DiffKind.ORPHAN):
        return None
    if phase in (Phase.CELL_ONLY, Phase.DUAL_WRITE_CELL_READS):
        return "cell"
    if phase is Phase.DUAL_WRITE_API_READS and kind is DiffKind.MISSING_IN_API:
        # The phase's writers adopt a cell copy the API database lacks: it is the group.
        return "cell"
    return "api"


@dataclasses.dataclass(frozen=True)
class Finding:
    """One differing key.

    Attributes:
        kind: what differs.
        key: the group uuid, or ``<database>:<table>:<row id>`` for an orphan row.
        group_uuid: the group concerned (for an orphan, its deleted group's uuid if known).
        authoritative: the side the phase trusts ("api" or "cell"), None if neither.
        cells: the cells holding a live copy.
        api: the API side's values (``None`` if absent or with ``keys_only``).
        cell: the cell side's values (per cell name for ``live-in-two-cells``).
        detail: one readable line.
        journal_pending: journal entries were still pending at the last re-check.
        repair: what ``repair`` did for this key (``None`` without ``repair``).
    """

    kind: DiffKind
    key: str
    group_uuid: str | None
    authoritative: str | None
    cells: tuple[str, ...]
    api: dict[str, Any] | None
    cell: dict[str, Any] | None
    detail: str
    journal_pending: bool = False
    repair: str | None = None


@dataclasses.dataclass(frozen=True)
class RowCounts:
    """How much a run read, side by side.

    Attributes:
        api_hashed: API rows checksummed (groups, policies, members, orphans).
        cells_hashed: cell rows checksummed, every cell together.
        api_compared: API rows read row by row (chunks that differed, re-checks excluded).
        cells_compared: cell rows read row by row.
        chunks: chunks of the key space.
        chunks_differing: chunks whose checksums differed.
        rechecked: keys re-checked under the lock.
        cleared: re-checked keys that turned out level (writes in flight).
        legacy_duplicates: groups read row by row whose copies hold duplicate live policy
            or member rows (compared as sets: noted, not a difference).
    """

    api_hashed: int = 0
    cells_hashed: int = 0
    api_compared: int = 0
    cells_compared: int = 0
    chunks: int = 0
    chunks_differing: int = 0
    rechecked: int = 0
    cleared: int = 0
    legacy_duplicates: int = 0


@dataclasses.dataclass(frozen=True)
class DiffReport:
    """What a diff-report run found.

    Attributes:
        started_at: when the run started (UTC).
        finished_at: when it finished.
        phase: the phase at the start.
        epoch: the phase epoch at the start.
        scope: "all", or the one cell compared.
        clean: no difference at all.
        total: differing keys found (every one, whatever ``limit``).
        counts: differing keys per kind.
        findings: the differing keys, by kind then key (the first ``limit`` if given).
        limit: the ``limit`` asked for.
        keys_only: values were left out.
        rows: how much was read.
        repaired: keys enqueued for repair.
        not_repaired: differing keys ``repair`` left alone (no authoritative copy).
    """

    started_at: dt.datetime
    finished_at: dt.datetime
    phase: str
    epoch: int
    scope: str
    clean: bool
    total: int
    counts: dict[str, int]
    findings: tuple[Finding, ...]
    limit: int | None
    keys_only: bool
    rows: RowCounts
    repaired: int
    not_repaired: int


def classify(phase: Phase, api: Copy | None, cells: Sequence[tuple[str, Copy]]) -> list[DiffKind]:
    """Return what differs, in ``phase``, between the API copy and the cell copies of one key."""
    if len(cells) > 1:
        return [DiffKind.LIVE_IN_TWO_CELLS]
    cell = cells[0][1] if cells else None
    if api is None and cell is None:
        return []
    if api is None:
        return [DiffKind.MISSING_IN_API]
    if cell is None:
        # cell-only does not write the API database: its copies there are leftovers.
        return [] if phase is Phase.CELL_ONLY else [DiffKind.MISSING_IN_CELLS]
    kinds = []
    if any(getattr(api, f) != getattr(cell, f) for f in COMPARED_FIELDS):
        kinds.append(DiffKind.FIELD_MISMATCH)
    if api.policies != cell.policies:
        kinds.append(DiffKind.POLICY_MISMATCH)
    if api.members != cell.members:
        kinds.append(DiffKind.MEMBER_MISMATCH)
    return kinds


def finding_of(phase: Phase, uuid: str, kind: DiffKind, seen: Seen) -> Finding:
    """Return the finding of one differing key, as last seen by its re-check."""
    api = seen.api
    cell = seen.cells[0][1] if seen.cells else None
    names = tuple(name for name, _ in seen.cells)
    api_values: dict[str, Any] | None = api.values() if api else None
    cell_values: dict[str, Any] | None = cell.values() if cell else None
    if kind is DiffKind.MISSING_IN_API:
        detail = f"live in cell {names[0]}, not in the API database"
    elif kind is DiffKind.MISSING_IN_CELLS:
        detail = "in the API database, live in no cell"
    elif kind is DiffKind.LIVE_IN_TWO_CELLS:
        detail = f"live in cells {', '.join(names)}"
        cell_values = {name: copy.values() for name, copy in seen.cells}
    else:
        assert api is not None and cell is not None
        if kind is DiffKind.FIELD_MISMATCH:
            fields = [f for f in COMPARED_FIELDS if getattr(api, f) != getattr(cell, f)]
            detail = f"{', '.join(fields)} differ{'s' if len(fields) == 1 else ''}"
            keep = set(fields)
        else:
            what = "policies" if kind is DiffKind.POLICY_MISMATCH else "members"
            detail = f"{what} differ"
            keep = {what}
        api_values = {k: v for k, v in api.values().items() if k in keep}
        cell_values = {k: v for k, v in cell.values().items() if k in keep}
    if seen.journaled:
        detail += f"; journal entries pending ({', '.join(seen.journaled)})"
    return Finding(
        kind=kind,
        key=uuid,
        group_uuid=uuid,
        authoritative=authority(phase, kind),
        cells=names,
        api=api_values,
        cell=cell_values,
        detail=detail,
        journal_pending=bool(seen.journaled),
    )


def orphan_finding(orphan: Orphan) -> Finding:
    """Return the finding of one orphan row: reported, never authoritative."""
    side = "API database" if orphan.database == "api" else f"cell {orphan.database}"
    whose = f"deleted group {orphan.group_uuid}" if orphan.group_uuid else "no such group"
    values = {
        "table": orphan.table,
        "id": orphan.row_id,
        "group_id": orphan.group_id,
        "value": orphan.value,
    }
    return Finding(
        kind=DiffKind.ORPHAN,
        key=f"{orphan.database}:{orphan.table}:{orphan.row_id}",
        group_uuid=orphan.group_uuid,
        authoritative=None,
        cells=() if orphan.database == "api" else (orphan.database,),
        api=values if orphan.database == "api" else None,
        cell=None if orphan.database == "api" else values,
        detail=(
            f"{orphan.table} row {orphan.row_id} in the {side} points at group "
            f"id {orphan.group_id} ({whose})"
        ),
    )


def authority_by_tombstone(dbs: Databases, phase: Phase, findings: list[Finding]) -> list[Finding]:
    """Decide, by its tombstone, who holds a group live in a cell and absent from the API.

    Every deletion from the API database leaves a tombstone in its transaction, so the
    absence of a copy there means "deleted" only with one. ``dual-write-api-reads``
    trusts such a cell copy (not migrated yet) unless the uuid is tombstoned: then the
    group was deleted there, and the cell copy is a leftover to retire, never a group to
    bring back. ``api-only`` trusts the API database, except for a copy it never had (no
    tombstone): a cell registered after the cutover, for instance, whose groups must be
    copied, never retired.
    """
    keys = [f.key for f in findings if f.kind is DiffKind.MISSING_IN_API]
    if not keys or phase not in (Phase.DUAL_WRITE_API_READS, Phase.API_ONLY):
        return findings
    with reader(dbs.api, dbs.api_label) as conn:
        buried = API.tombstoned(conn, keys)
    out = []
    for f in findings:
        if f.kind is DiffKind.MISSING_IN_API and f.key in buried:
            f = dataclasses.replace(
                f, authoritative="api", detail=f"{f.detail} (deleted in the API database)"
            )
        elif f.kind is DiffKind.MISSING_IN_API and phase is Phase.API_ONLY:
            f = dataclasses.replace(
                f,
                authoritative="cell",
                detail=f"{f.detail} (never copied there: no deletion on record)",
            )
        out.append(f)
    return out
