"""Enqueue each repairable difference in the journal of its authoritative side.

With ``repair`` every differing key the phase has an authority for gets an entry in the
journal of that side: the API journal, or the journal of the cell that holds the group
(the default cell for a group no cell holds). The next ``shadowdb backfill`` replays it,
copying the authoritative state to the other side under the lock. Keys with no
authoritative copy (a uuid live in two cells, orphan rows) are reported and not enqueued.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import structlog

from shadowdb.databases import Databases, reader, writer
from shadowdb.diff.findings import Finding
from shadowdb.diff.readers import Seen
from shadowdb.location import default_cell
from shadowdb.queries import API, CELL
from shadowdb.state import Phase, PhaseState

__all__ = ["enqueue_repairs"]

log = structlog.get_logger(__name__)


def _unrepairable(finding: Finding, seen: Seen | None, phase: Phase) -> str | None:
    """Say why a replay cannot level this key, or None if it can."""
    if finding.authoritative is None or seen is None:
        return "no authoritative copy"
    if finding.authoritative == "cell" and phase is Phase.API_ONLY:
        return (
            "api-only copies nothing from the cells; run `shadowdb phase set "
            "dual-write-api-reads`, then `shadowdb backfill`"
        )
    return None


def enqueue_repairs(
    dbs: Databases, state: PhaseState, findings: list[Finding], seen: Mapping[str, Seen]
) -> tuple[list[Finding], int, int]:
    """Enqueue each repairable key in its authoritative side's journal.

    ``seen`` holds the last re-check of each differing key (:attr:`Differ.observed
    <shadowdb.diff.differ.Differ.observed>`). Returns the findings with what was done
    for each, the keys enqueued and the keys left alone.
    """
    fresh = dbs.phases.fresh()
    by_key: dict[str, list[Finding]] = {}
    for finding in findings:
        by_key.setdefault(finding.key, []).append(finding)
    notes: dict[str, str] = {}
    api_keys: list[str] = []
    cell_keys: dict[str, list[str]] = {}
    for key, group in by_key.items():
        first = group[0]
        why = _unrepairable(first, seen.get(key), state.phase)
        if why is None:
            why = next(
                (
                    w
                    for f in group[1:]
                    if (w := _unrepairable(f, seen.get(key), state.phase)) is not None
                ),
                None,
            )
        if why is None and fresh.epoch != state.epoch:
            why = f"the phase changed during the run (epoch {state.epoch} -> {fresh.epoch})"
        if why is not None:
            notes[key] = f"not enqueued: {why}"
        elif first.authoritative == "api":
            api_keys.append(key)
        else:
            name = first.cells[0] if first.cells else default_cell(dbs, fresh).name
            cell_keys.setdefault(name, []).append(key)
    kinds = {key: ", ".join(f.kind.value for f in group) for key, group in by_key.items()}
    enqueued = 0
    if api_keys:
        with writer(dbs.api, dbs.api_label) as conn:
            other = _journaled_in_cells(dbs, api_keys)
            for key in api_keys:
                if key in other:
                    notes[key] = f"not enqueued: journaled in cell {other[key]}; run backfill first"
                    continue
                API.journal_add(conn, key, state.epoch, f"diff-report: {kinds[key]}")
                notes[key] = "enqueued in the API journal"
                enqueued += 1
    for name, keys in cell_keys.items():
        cell = dbs.cell(name)
        with reader(dbs.api, dbs.api_label) as conn:
            other_api = API.journaled(conn, keys)
        with writer(cell.engine, cell.label) as conn:
            for key in keys:
                if key in other_api:
                    notes[key] = "not enqueued: journaled in the API database; run backfill first"
                    continue
                CELL.journal_add(conn, key, state.epoch, f"diff-report: {kinds[key]}")
                notes[key] = f"enqueued in the journal of cell {name}"
                enqueued += 1
    log.info("diff_repair_enqueued", enqueued=enqueued, keys=len(by_key))
    out = [dataclasses.replace(f, repair=notes.get(f.key)) for f in findings]
    return out, enqueued, len(by_key) - enqueued


def _journaled_in_cells(dbs: Databases, keys: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for cell in dbs.cells:
        with reader(cell.engine, cell.label) as conn:
            for key in CELL.journaled(conn, keys):
                found.setdefault(key, cell.name)
    return found
