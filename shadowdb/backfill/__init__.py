"""Copy legacy cell groups into the API database while the cloud keeps writing.

The online data migration, with ``nova-manage db online_data_migrations`` semantics: a
fixed list of migrations, each ``(count) -> (found, done)``, run in batches that share a
``max_count`` budget (:func:`backfill`). The parts:

* :mod:`~shadowdb.backfill.runner`: :func:`backfill`, :func:`remaining` and the list of
  migrations of a run; :mod:`~shadowdb.backfill.results`: what they report;
* :mod:`~shadowdb.backfill.forward`: the forward copy (cells -> API), and why it is safe
  with live traffic; :mod:`~shadowdb.backfill.reverse`: the reverse copy (API -> cells);
* :mod:`~shadowdb.backfill.chunks`: the chunks that make the forward copy resumable and
  parallel; :mod:`~shadowdb.backfill.pacing`: ``--max-rate``;
* :mod:`~shadowdb.backfill.conflicts`: the groups it refuses to copy;
* :mod:`~shadowdb.backfill.backlog`: the live cell groups the API database lacks.
"""

from __future__ import annotations

from shadowdb.backfill.backlog import uncopied, uncopied_among
from shadowdb.backfill.forward import DEFAULT_BATCH, ForwardCopier
from shadowdb.backfill.results import BackfillResult, BatchStep, CopyConflict, MigrationTotal
from shadowdb.backfill.reverse import ReverseCopier
from shadowdb.backfill.runner import Backfiller, backfill, remaining

__all__ = [
    "DEFAULT_BATCH",
    "BackfillResult",
    "Backfiller",
    "BatchStep",
    "CopyConflict",
    "ForwardCopier",
    "MigrationTotal",
    "ReverseCopier",
    "backfill",
    "remaining",
    "uncopied",
    "uncopied_among",
]
