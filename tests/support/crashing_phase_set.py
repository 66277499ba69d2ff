"""Run a phase set in this process and die by SIGKILL at a chosen point.

    python crashing_phase_set.py API_URL TARGET POINT [FORCE]

POINT: ``locked``, ``prepared`` (Switcher hooks), ``committed`` (after the API commit,
before the first cell settles), ``none``. Prints ``reached POINT`` to stdout, flushes, and
waits for a line on stdin before dying, so a test can line writers up behind it.
"""

from __future__ import annotations

import os
import signal
import sys

import structlog

from shadowdb import switcher as switcher_module
from shadowdb.databases import connect
from shadowdb.state import Phase


def main() -> None:
    url, target, point = sys.argv[1], sys.argv[2], sys.argv[3]
    force = len(sys.argv) > 4 and sys.argv[4] == "force"
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))

    def die(step: str) -> None:
        if step == point:
            print(f"reached {step}", flush=True)
            sys.stdin.readline()
            os.kill(os.getpid(), signal.SIGKILL)

    if point == "committed":
        real = switcher_module.settle_cell

        def settle_then_die(dbs, cell, hint=None):  # type: ignore[no-untyped-def]
            die("committed")
            return real(dbs, cell, hint)

        switcher_module.settle_cell = settle_then_die
    dbs = connect(url)
    print("ready", flush=True)
    switcher_module.Switcher(dbs, hook=die).run(Phase(target), force=force, reason="crash")
    print("finished", flush=True)


if __name__ == "__main__":
    main()
