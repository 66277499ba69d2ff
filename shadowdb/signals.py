"""Announce what shadowdb does, as blinker signals (observe, never control).

All signals live in one :class:`blinker.Namespace`. The sender is always the
:class:`~shadowdb.databases.Databases` the event happened on (so a receiver can
``connect(receiver, sender=dbs)`` to one deployment). Keyword arguments per signal:

``group-created``
    ``group_uuid``, ``phase`` (value string), ``fields`` (dict of the stored fields).
``group-updated``
    ``group_uuid``, ``phase``, ``fields`` (dict of the changed fields only).
``group-deleted``
    ``group_uuid``, ``phase``.
``group-members-added``
    ``group_uuid``, ``phase``, ``instance_uuids`` (list, the uuids newly added).
``group-members-removed``
    ``group_uuid``, ``phase``, ``instance_uuids``.
``phase-changed``
    ``from_phase``, ``to_phase``, ``epoch``, ``forced`` (bool), ``reason``, ``actor``.
``fallback-read``
    ``what`` (the kind of lookup: ``"uuid"``, ``"name"`` or ``"instance"``), ``key`` (the
    uuid, name or instance uuid looked up), ``cell`` (name of the cell that answered, or
    ``None``).
``shadow-write-failed``
    ``group_uuid``, ``phase``, ``database`` (label of the database that failed),
    ``error`` (one-line text), ``journal`` (``"api"`` or ``"cell"``: where it was recorded).
``journal-replayed``
    ``group_uuid``, ``journal`` (``"api"`` or ``"cell"``), ``entries`` (rows cleared).
``divergence``
    ``group_uuid``, ``kind``, ``detail``.
``backfill-progress``
    ``migration``, ``found``, ``done``, ``batch`` (totals of this call so far).
``backfill-step``
    ``step``, ``cell``, ``count``: lifecycle points of one batch, in order, for observers
    (and crash tests): ``"scanned"`` (the chunk's next rows read, nothing locked yet),
    ``"locked"`` (their cell rows locked, nothing written), ``"copying"`` (the copies
    inserted into the API database under those locks, not yet committed), ``"copied"``
    (the copies committed to the API database, the chunk's checkpoint not yet moved),
    ``"checkpointed"`` (the checkpoint committed).
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

group_created = signals.signal("group-created")
group_updated = signals.signal("group-updated")
group_deleted = signals.signal("group-deleted")
group_members_added = signals.signal("group-members-added")
group_members_removed = signals.signal("group-members-removed")
phase_changed = signals.signal("phase-changed")
fallback_read = signals.signal("fallback-read")
shadow_write_failed = signals.signal("shadow-write-failed")
journal_replayed = signals.signal("journal-replayed")
divergence = signals.signal("divergence")
backfill_progress = signals.signal("backfill-progress")
backfill_step = signals.signal("backfill-step")


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
