"""Run ``shadowdb backfill`` in this process; optionally die by SIGKILL at a lifecycle point.

Run as a script with the venv's python, the API database URL in ``SHADOWDB_API_URL``::

    python tests/support/crashing_backfill.py [--crash-at STEP:N] [--wait-for-go] \
        -- [backfill options]

``--crash-at STEP:N``: at the Nth occurrence of STEP the process sends itself SIGKILL, so
nothing runs after it: no rollback, no ``finally``, no connection closed politely, as
with a power cut or the OOM killer. STEP is a ``backfill-step`` value (``scanned``,
``locked``, ``copying``, ``copied``, ``checkpointed``) or ``journal-replayed`` (a group's
journal replayed, during the drain). The hooks are blinker receivers on
:mod:`shadowdb.signals`: deterministic, no sleeps.

``--wait-for-go``: once everything is imported, print ``ready`` on stdout and wait for a
line on stdin before starting, so that a test can start several processes at the same
moment.

Just before the kill, one line ``crash-events: [...]`` goes to stderr: every lifecycle
point this process passed, in order, as ``[step, count, where]`` (the signal's count:
groups, or journal entries cleared; where: the cell, or the journal replayed, ``"cell"``
or ``"api"``), so that a test can tell exactly what was committed before the crash.

The exit code is the command's own (``shadowdb.cli.main``); the command's stdout follows
the ``ready`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

from shadowdb import cli, signals

#: The ``backfill-step`` values a crash can be hooked on.
STEPS = ("scanned", "locked", "copying", "copied", "checkpointed")
#: The drain's lifecycle point: one group's journal replayed.
REPLAYED = "journal-replayed"


class Crasher:
    """Record lifecycle points and SIGKILL this process at the Nth occurrence of one."""

    def __init__(self, step: str, nth: int) -> None:
        self.step = step
        self.nth = nth
        self.seen = 0
        self.events: list[tuple[str, int, str]] = []

    def _passed(self, step: str, count: int, where: str) -> None:
        self.events.append((step, count, where))
        if step != self.step:
            return
        self.seen += 1
        if self.seen == self.nth:
            sys.stdout.flush()
            sys.stderr.write(f"crash-events: {json.dumps(self.events)}\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def on_step(self, _sender: Any, **kwargs: Any) -> None:
        self._passed(kwargs["step"], kwargs["count"], kwargs["cell"])

    def on_replayed(self, _sender: Any, **kwargs: Any) -> None:
        self._passed(REPLAYED, kwargs["entries"], kwargs["journal"])

    def connect(self) -> None:
        # Strong references: blinker would otherwise drop these bound methods.
        signals.backfill_step.connect(self.on_step, weak=False)
        signals.journal_replayed.connect(self.on_replayed, weak=False)


def _crash_spec(text: str) -> tuple[str, int]:
    step, _, nth = text.rpartition(":")
    if step not in (*STEPS, REPLAYED) or not nth.isdigit() or int(nth) < 1:
        raise argparse.ArgumentTypeError(f"expected STEP:N with STEP in {(*STEPS, REPLAYED)}")
    return step, int(nth)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="crashing_backfill")
    parser.add_argument("--crash-at", type=_crash_spec, default=None, metavar="STEP:N")
    parser.add_argument("--wait-for-go", action="store_true")
    parser.add_argument("backfill_args", nargs="*")
    args = parser.parse_args(argv)
    if args.crash_at is not None:
        Crasher(*args.crash_at).connect()
    if args.wait_for_go:
        print("ready", flush=True)
        sys.stdin.readline()
    return cli.main(["backfill", *args.backfill_args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
