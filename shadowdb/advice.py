"""Work out the next command of a cutover from where it stands (``shadowdb status``).

The README's cutover order, as the guards enforce it::

    cell add -> phase set dual-write-cell-reads -> backfill -> diff-report
    -> phase set dual-write-api-reads -> (backfill) -> diff-report
    -> phase set api-only -> cleanup --yes

:func:`advise` reads a :class:`~shadowdb.status.Status` and names the one command to
run next, or says why none can run. The rules, first match wins:

1. no cell besides cell0: ``cell add``;
2. a cell that cannot be reached: nothing (every phase change, backfill, diff-report
   and cleanup needs every cell); a cell not synced: ``db sync``;
3. ``cell-only``: ``phase set dual-write-cell-reads``;
4. in both dual-write phases: groups backfill cannot copy (a uuid live in two cells, a
   row the API database refuses) or a group journaled on both sides need an operator;
   a backlog or a pending journal entry: ``backfill`` (it copies and drains the
   journals), or ``diff-report --repair`` for a backlog behind backfill's checkpoints;
   an API copy backfill would not overwrite: ``diff-report --repair``; then
   the newest diff-report: missing, incomplete, partial, from another epoch or too old:
   ``diff-report``; unclean: ``diff-report --repair`` if a replay can level every
   difference, ``diff-report`` again after a replayed repair, an operator otherwise;
   clean and current: ``phase set`` the next phase;
5. ``api-only``: nothing once ``cleanup`` completed; ``cleanup --yes`` once its guard
   admits it; else what its guard lacks.

An advised ``phase set`` or ``cleanup`` is checked against the guard the command itself
runs (:meth:`~shadowdb.switcher.Switcher.check`, :func:`shadowdb.cleanup.refusals`), so
the advice never names a command its guard refuses: a refusal the rules did not foresee
is reported as the reason, with no command.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from shadowdb import cleanup, diff
from shadowdb.databases import Databases, reader
from shadowdb.errors import GuardRefused, OperationalError
from shadowdb.state import Phase, read_state
from shadowdb.switcher import Switcher

if TYPE_CHECKING:
    from shadowdb.status import LastDiff, Status

__all__ = ["Advice", "advise"]

#: Difference kinds a replay of the authoritative copy levels (``diff-report --repair``).
REPAIRABLE = frozenset(
    {"missing-in-api", "missing-in-cells", "field-mismatch", "policy-mismatch", "member-mismatch"}
)
#: Backfill conflicts ``diff-report --repair`` resolves (the authoritative copy replayed).
REPAIRABLE_CONFLICTS = frozenset({"api-copy-differs", "deleted-in-api"})

_BACKFILL = "shadowdb backfill"
_DIFF = "shadowdb diff-report"
_REPAIR = "shadowdb diff-report --repair"
_CLEANUP = "shadowdb cleanup --yes"


@dataclasses.dataclass(frozen=True)
class Advice:
    """The command to run next, or ``None``, and why."""

    next_step: str | None
    reason: str


def _phase_set(phase: Phase) -> str:
    return f"shadowdb phase set {phase.value}"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def advise(dbs: Databases, status: Status) -> Advice:
    """Return the next command for the deployment ``status`` describes, or why none."""
    cells = status.health
    if not cells:
        return Advice(
            "shadowdb cell add NAME URL",
            "no cell besides cell0 is registered: register each cell database "
            "(then `shadowdb db sync`); no phase can change before",
        )
    down = [h for h in cells if not h.reachable]
    if down:
        which = "; ".join(f"cell {h.name}: {h.error}" for h in down)
        return Advice(
            None,
            f"cannot reach {which}. Phase changes, backfill, diff-report and cleanup all "
            "need every cell: bring its database back (or correct its URL, "
            "`shadowdb cell list`), then run `shadowdb status` again",
        )
    unsynced = [h.name for h in cells if not h.synced]
    if unsynced:
        return Advice(
            "shadowdb db sync",
            f"cell {', '.join(unsynced)} has no shadowdb tables yet (or older ones): "
            "db sync adds them and gives the cell the phase row every write checks",
        )
    phase = Phase(status.phase)
    if phase is Phase.CELL_ONLY:
        return _confirm_phase_set(
            dbs,
            Phase.DUAL_WRITE_CELL_READS,
            "the groups live in the cells only: start writing every group to both databases",
        )
    if phase is Phase.API_ONLY:
        return _api_only(dbs, status)
    return _dual_write(dbs, status, phase)


def _dual_write(dbs: Databases, status: Status, phase: Phase) -> Advice:
    cells = status.health
    stuck = {k: n for k, n in status.conflicts.items() if k not in REPAIRABLE_CONFLICTS}
    if stuck:
        kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(stuck.items()))
        return Advice(
            None,
            f"backfill cannot copy {_plural(sum(stuck.values()), 'group')} ({kinds}; "
            "`shadowdb backfill` lists them): settle each by hand (a group live in two "
            "cells keeps one live copy; a row the API database refuses is corrected in "
            "its cell), then run `shadowdb backfill`",
        )
    if status.journal_conflicts:
        return Advice(
            None,
            f"{_plural(status.journal_conflicts, 'group')} journaled on both sides: the "
            "copies changed independently and shadowdb never picks one silently; decide "
            "which copy is right, delete the other side's journal entries, then run "
            "`shadowdb backfill`",
        )
    backlog = sum(h.backlog or 0 for h in cells)
    journal = sum(h.journal or 0 for h in cells) + status.api_journal
    reachable = sum(h.backlog or 0 for h in cells if h.unscanned)
    if reachable or journal:
        parts = []
        if reachable:
            per_cell = ", ".join(f"{h.name}: {h.backlog}" for h in cells if h.backlog)
            parts.append(
                f"{_plural(backlog, 'live cell group')} not in the API database ({per_cell})"
            )
        if journal:
            parts.append(f"{journal} journal {'entry' if journal == 1 else 'entries'} pending")
        return Advice(_BACKFILL, "; ".join(parts) + ": backfill copies them and drains journals")
    last = status.diff
    if backlog:
        looked = last is not None and last.current and not last.clean and not last.repaired
        if looked and last is not None and set(last.counts) - REPAIRABLE:
            # The diff-report has looked and could enqueue nothing for some (a group live
            # in two cells): advising it again would go round for ever.
            return _unclean(last, _next_forward(phase))
        per_cell = ", ".join(f"{h.name}: {h.backlog}" for h in cells if h.backlog)
        return Advice(
            _REPAIR,
            f"{_plural(backlog, 'live cell group')} not in the API database ({per_cell}) "
            "where backfill has already scanned (written to the cell outside shadowdb): "
            f"--repair enqueues them, then `{_BACKFILL}` copies them",
        )
    if status.conflicts:
        kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(status.conflicts.items()))
        if last is not None and last.current and (last.clean or last.repaired):
            # Repaired (or level) since: backfill re-examines its conflicts and drops them.
            return Advice(
                _BACKFILL,
                f"backfill recorded {_plural(sum(status.conflicts.values()), 'conflict')} "
                f"({kinds}) that the last diff-report repaired or found level: backfill "
                "re-examines them",
            )
        return Advice(
            _REPAIR,
            f"backfill left {_plural(sum(status.conflicts.values()), 'group')} whose API "
            f"copy it may not overwrite ({kinds}): --repair enqueues the authoritative "
            "copy for the next backfill",
        )
    target = _next_forward(phase)
    stale = _stale(status, last)
    if stale is not None:
        return Advice(_DIFF, f"{stale}; {_phase_set(target)} needs a clean, recent one")
    assert last is not None
    if not last.clean:
        return _unclean(last, target)
    return _confirm_phase_set(
        dbs,
        target,
        f"every group is copied, no journal entry is pending and the diff-report of "
        f"{_ago(last)} is clean",
    )


def _next_forward(phase: Phase) -> Phase:
    """Return the phase a dual-write phase moves forward to."""
    return Phase.DUAL_WRITE_API_READS if phase is Phase.DUAL_WRITE_CELL_READS else Phase.API_ONLY


def _stale(status: Status, last: LastDiff | None) -> str | None:
    """Say why the newest diff-report says nothing about now, or None if it does."""
    if last is None:
        return "no diff-report on record"
    if last.outcome == "incomplete":
        return f"the diff-report of {_ago(last)} did not complete"
    if not last.current:
        return (
            f"the phase changed since the last diff-report (epoch {last.epoch} in "
            f"{last.phase}, now {status.epoch})"
        )
    if last.scope != "all":
        return f"the last diff-report compared cell {last.scope} only"
    if not last.recent:
        return f"the last diff-report is {_ago(last)}, older than diff_max_age"
    if last.clean and last.blockers:
        return "; ".join(last.blockers)  # a cell registered since it ran
    return None


def _ago(last: LastDiff) -> str:
    seconds = last.age_seconds
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def _unclean(last: LastDiff, target: Phase) -> Advice:
    kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(last.counts.items()))
    found = f"the diff-report of {_ago(last)} found {_plural(last.differences, 'difference')}"
    if last.repaired:
        return Advice(
            _DIFF,
            f"{found} ({kinds}) and enqueued them; backfill has replayed them: check again",
        )
    manual = sorted(set(last.counts) - REPAIRABLE)
    if manual:
        return Advice(
            None,
            f"{found} ({kinds}); {', '.join(manual)} have no authoritative copy to replay: "
            "settle them by hand (`shadowdb diff-report` lists them; a group live in two "
            "cells keeps one live copy, an orphan row is deleted), then run "
            f"`{_DIFF}` again",
        )
    return Advice(
        _REPAIR,
        f"{found} ({kinds}): --repair enqueues the authoritative copies, then "
        f"`{_BACKFILL}` replays them, before {_phase_set(target)}",
    )


def _api_only(dbs: Databases, status: Status) -> Advice:
    with reader(dbs.api, dbs.api_label) as conn:
        state = read_state(conn)
        last = diff.last_result(conn)
    if cleanup.completed(state, last):
        return Advice(
            None,
            "the cutover is complete: the API database alone holds every group and the "
            "cell copies are retired; nothing left to run",
        )
    try:
        refused = cleanup.refusals(dbs)
    except OperationalError as err:
        return Advice(None, f"cleanup's guard could not run: {err}")
    if not refused:
        return Advice(
            _CLEANUP,
            "api-only, and the newest diff-report vouches for every cell: retire the cell "
            "copies (the last step; leaving api-only afterwards needs `backfill --reverse`)",
        )
    journal = sum(h.journal or 0 for h in status.health)
    if journal:
        return Advice(
            None,
            f"the cell journals hold {journal} entries (cell writes the API database lacks), "
            "which api-only never replays: " + "; ".join(refused),
        )
    diff_last = status.diff
    if diff_last is None or diff_last.outcome == "incomplete" or diff_last.scope != "all":
        return Advice(_DIFF, "; ".join(refused))
    if diff_last.unexplained and diff_last.unexplained > 0:
        if diff_last.repaired:
            return Advice(_DIFF, "the last diff-report enqueued its differences: check again")
        backlog = sum(h.backlog or 0 for h in status.health)
        if backlog:
            # Cell groups the API database never had (a cell registered in api-only):
            # the phase before copies them, and its guard admits exactly these.
            return _confirm_phase_set(
                dbs,
                Phase.DUAL_WRITE_API_READS,
                f"{_plural(backlog, 'live cell group')} the API database never had: go back "
                "one phase, where backfill copies them",
            )
        return Advice(
            _REPAIR,
            "the newest diff-report found differences no API journal entry explains: "
            "--repair enqueues the API copies",
        )
    return Advice(_DIFF, "; ".join(refused))


def _confirm_phase_set(dbs: Databases, target: Phase, why: str) -> Advice:
    """Advise ``phase set target`` if its guards admit it now; else say what they lack."""
    try:
        Switcher(dbs).check(target)
    except GuardRefused as err:
        return Advice(None, f"{_phase_set(target)} is refused: " + "; ".join(err.reasons))
    except OperationalError as err:
        return Advice(None, f"the guards of {_phase_set(target)} could not run: {err}")
    return Advice(_phase_set(target), why)
