"""Announce what shadowdb does, as blinker signals (observe, never control).

All signals live in one :class:`blinker.Namespace`. The sender is always the
:class:`~shadowdb.databases.Databases` the event happened on (so a receiver can
``connect(receiver, sender=dbs)`` to one deployment). Each signal is declared with the
keyword arguments its receivers get, which are also its ``__doc__``.
"""

from __future__ import annotations

from typing import Any

import structlog
from blinker import NamedSignal, Namespace

log = structlog.get_logger(__name__)

__all__ = [
    "backfill_progress",
    "backfill_step",
    "divergence",
    "fallback_read",
    "group_created",
    "group_deleted",
    "group_members_added",
    "group_members_removed",
    "group_updated",
    "journal_replayed",
    "phase_changed",
    "send",
    "shadow_write_failed",
    "signals",
]

signals = Namespace()


def _signal(name: str, *arguments: str) -> NamedSignal:
    """Declare the signal ``name``, whose receivers get the keyword ``arguments``."""
    return signals.signal(name, doc=f"Receivers get the keyword arguments {', '.join(arguments)}.")


#: ``phase`` is the phase's value string; ``fields`` a dict of the stored fields.
group_created = _signal("group-created", "group_uuid", "phase", "fields")
#: ``fields``: a dict of the changed fields only.
group_updated = _signal("group-updated", "group_uuid", "phase", "fields")
group_deleted = _signal("group-deleted", "group_uuid", "phase")
#: ``instance_uuids``: a list of the uuids newly added (or removed).
group_members_added = _signal("group-members-added", "group_uuid", "phase", "instance_uuids")
group_members_removed = _signal("group-members-removed", "group_uuid", "phase", "instance_uuids")
#: ``forced``: a bool.
phase_changed = _signal(
    "phase-changed", "from_phase", "to_phase", "epoch", "forced", "reason", "actor"
)
#: ``what``: the kind of lookup (``"uuid"``, ``"name"`` or ``"instance"``); ``key``: the
#: uuid, name or instance uuid looked up; ``cell``: the name of the cell that answered,
#: or ``None``.
fallback_read = _signal("fallback-read", "what", "key", "cell")
#: ``database``: the label of the database that failed; ``error``: one-line text;
#: ``journal``: ``"api"`` or ``"cell"``, where it was recorded.
shadow_write_failed = _signal(
    "shadow-write-failed", "group_uuid", "phase", "database", "error", "journal"
)
#: ``journal``: ``"api"`` or ``"cell"``; ``entries``: the rows cleared.
journal_replayed = _signal("journal-replayed", "group_uuid", "journal", "entries")
divergence = _signal("divergence", "group_uuid", "kind", "detail")
#: Totals of this call so far.
backfill_progress = _signal("backfill-progress", "migration", "found", "done", "batch")
#: Lifecycle points of one batch, in order, for observers (and crash tests) in ``step``:
#: ``"scanned"`` (the chunk's next rows read, nothing locked yet), ``"locked"`` (their
#: cell rows locked, nothing written), ``"copying"`` (the copies inserted into the API
#: database under those locks, not yet committed), ``"copied"`` (the copies committed to
#: the API database, the chunk's checkpoint not yet moved), ``"checkpointed"`` (the
#: checkpoint committed).
backfill_step = _signal("backfill-step", "step", "cell", "count")


def send(signal: NamedSignal, sender: Any, **kwargs: Any) -> None:
    """Send ``signal``; a receiver that raises is logged and ignored.

    Signals observe, never control: every send site calls this, after the work it
    announces has committed, so no receiver can roll a write back or turn an
    acknowledged one into an error.
    """
    try:
        signal.send(sender, **kwargs)
    except Exception:
        log.exception("signal_receiver_failed", signal=signal.name)
