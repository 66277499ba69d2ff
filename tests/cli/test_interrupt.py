"""Ctrl-C (SIGINT) during a command: one line on stderr, exit 130, and the next run resumes.

Real processes: ``shadowdb backfill`` interrupted from outside after its first batch, as an
operator's Ctrl-C; and interrupted from inside at a lifecycle point (a ``backfill-step``
receiver sends the process SIGINT while a batch's copies are inserted but not committed),
which is deterministic.
"""

from __future__ import annotations

import json
import signal
import subprocess

import pytest
import sqlalchemy as sa

from shadowdb import models
from shadowdb.cli import ExitCode
from shadowdb.databases import reader
from shadowdb.queries import API
from shadowdb.state import Phase
from tests.conftest import Topology
from tests.support.backfill import PYTHON, SHADOWDB, environment
from tests.support.helpers import group_state, new_uuid, put_in_phase

GROUPS = 100
INTERRUPTED = (
    "shadowdb: error: interrupted: what was committed stays; run the command again to resume"
)

#: Run ``shadowdb backfill ARGS``; SIGINT itself at the second batch's uncommitted copy.
DRIVER = """
import os, signal, sys
from shadowdb import cli, signals

copying = []

def on_step(_sender, **kwargs):
    if kwargs["step"] == "copying":
        copying.append(kwargs["count"])
        if len(copying) == 2:
            os.kill(os.getpid(), signal.SIGINT)

signals.backfill_step.connect(on_step, weak=False)
sys.exit(cli.main(["backfill", *sys.argv[1:]]))
"""


def _seed(topology: Topology) -> list[str]:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    uuids = [new_uuid() for _ in range(GROUPS)]
    with topology.cell_engine("cell1").begin() as conn:
        conn.execute(
            models.cell_groups.insert(),
            [
                {"uuid": u, "name": f"g{i}", "project_id": "p1", "deleted": 0}
                for i, u in enumerate(uuids)
            ],
        )
    return uuids


def _api_count(topology: Topology) -> int:
    with reader(topology.dbs.api) as conn:
        return API.count(conn)


def _resumes(topology: Topology, uuids: list[str]) -> None:
    """A second, uninterrupted run copies the rest, each group exactly as the cell holds it."""
    done = subprocess.run(
        [SHADOWDB, "backfill", "--batch-size", "10"],
        env=environment(topology),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert (done.returncode, done.stderr) == (ExitCode.OK, ""), done.stderr
    assert _api_count(topology) == GROUPS
    cell = topology.cell_engine("cell1")
    for uuid in uuids:
        assert group_state(topology.dbs.api, "api", uuid) == group_state(cell, "cell", uuid)
    with topology.dbs.api.connect() as conn:
        copies = conn.execute(sa.select(sa.func.count()).select_from(models.api_groups)).scalar()
    assert copies == GROUPS  # no copy made twice


def test_sigint_inside_an_uncommitted_batch_exits_130_and_resumes(topology: Topology) -> None:
    uuids = _seed(topology)
    for extra, expected in (([], INTERRUPTED), (["--format", "json"], None)):
        proc = subprocess.run(
            [PYTHON, "-c", DRIVER, "--batch-size", "10", *extra],
            env=environment(topology),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == ExitCode.INTERRUPTED == 130, proc.stderr
        assert "Traceback" not in proc.stderr
        if expected is not None:
            assert proc.stderr == expected + "\n"
        else:
            assert json.loads(proc.stderr) == {
                "error": INTERRUPTED.removeprefix("shadowdb: error: "),
                "exit_code": 130,
            }
            assert proc.stdout == ""
    # Each run committed its first batch; the second, interrupted before its commit, left
    # nothing behind.
    assert _api_count(topology) == 20
    _resumes(topology, uuids)


@pytest.mark.parametrize(
    "backend", [pytest.param("sqlite", marks=pytest.mark.sqlite)], indirect=True
)
def test_ctrl_c_after_the_first_batch_exits_130_and_resumes(topology: Topology) -> None:
    uuids = _seed(topology)
    # Slow enough (--max-rate) that the signal lands mid-run, whatever the machine's load.
    proc = subprocess.Popen(
        [SHADOWDB, "backfill", "--batch-size", "10", "--max-rate", "20"],
        env={**environment(topology), "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "rows matched" in line:
                proc.send_signal(signal.SIGINT)
                break
        out = "".join(seen) + proc.stdout.read()
        err = proc.stderr.read()
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert code == ExitCode.INTERRUPTED, (out, err)
    assert err == INTERRUPTED + "\n"
    assert "10 rows matched query migrate_instance_groups, 10 migrated" in out
    assert 10 <= _api_count(topology) < GROUPS
    _resumes(topology, uuids)


#: Start the console script's entry point with a SIGINT delivered the moment SQLAlchemy
#: starts to load: the seconds before the command line can parse anything.
EARLY = """
import os, signal, sys

class InterruptOnLoad:
    def find_spec(self, name, path=None, target=None):
        if name == "sqlalchemy":
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, InterruptOnLoad())
sys.argv = ["shadowdb", "status"]
from shadowdb.__main__ import run
run()
"""


@pytest.mark.sqlite
def test_ctrl_c_while_the_command_line_loads_is_one_line_and_exit_130() -> None:
    done = subprocess.run(
        [PYTHON, "-c", EARLY], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == ExitCode.INTERRUPTED, done.stderr
    assert done.stderr.splitlines() == ["shadowdb: interrupted while starting; nothing was done"]
    assert done.stdout == ""
