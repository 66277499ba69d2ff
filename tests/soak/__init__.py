"""The soak: many writer processes, a driver walking the cutover forward and back, faults.

* :mod:`tests.soak.writer` is one writer **process**: random operations through the
  object API (create, rename, add and remove members, destroy, read), each logged before
  it starts and after it ends, with its outcome: acknowledged, failed (nothing written),
  or unknown (it may have committed: the process died, or the database went away).
* :mod:`tests.soak.harness` builds a deployment on one backend (legacy cells as Nova
  left them), starts the writers, walks the phases through the real ``shadowdb phase
  set`` guards (never ``--force``), runs backfills and diff-reports, and injects faults:
  SIGKILL of writers and backfills, server-side connection kills, a writer cut off from
  the API database behind a TCP proxy. It ends in ``api-only`` with ``cleanup``.
* :mod:`tests.soak.checker` replays the logs into the set of final states each group
  may be in, and compares every database with it: lost writes, resurrected groups,
  reads of a group after its destroy was acknowledged, duplicate rows, journals left
  over, the final diff-report.

``scripts/soak`` runs it; ``tests/system/test_soak.py`` runs a short version in the suite.
"""
