"""Keep the names the rest of shadowdb imported from here before the split.

What lived here now lives in modules named for their roles: :mod:`shadowdb.journals`
(outbox entries, replay, drain), :mod:`shadowdb.location` (which cell holds a group),
:mod:`shadowdb.locks` (a group's fenced write transactions), :mod:`shadowdb.failures`
(failed database calls in one line), :mod:`shadowdb.transactions` (units of work) and
:func:`shadowdb.writes.copy_group`. Import from those.
"""

from __future__ import annotations

from shadowdb.failures import DB_FAILURES, one_line
from shadowdb.journals import (
    OUTBOX,
    DrainResult,
    announce_conflict,
    drain_journals,
    note_entry,
    replay,
)
from shadowdb.location import Location, default_cell, locate
from shadowdb.locks import api_transaction, cell_transaction
from shadowdb.transactions import commit, transaction
from shadowdb.writes import copy_group

__all__ = [
    "DB_FAILURES",
    "OUTBOX",
    "DrainResult",
    "Location",
    "announce_conflict",
    "api_transaction",
    "cell_transaction",
    "commit",
    "copy_group",
    "default_cell",
    "drain_journals",
    "locate",
    "note_entry",
    "one_line",
    "replay",
    "transaction",
]
