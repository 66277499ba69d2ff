"""The backfill's progress bar: drawn on a real terminal, never into a pipe.

``shadowdb backfill`` runs as a real process, once with its stdout on a pseudo-terminal
(Python's :mod:`pty`), once on a pipe. The database is irrelevant to what is drawn, so
SQLite only.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from shadowdb.cli import ExitCode
from shadowdb.state import Phase
from tests.conftest import Topology
from tests.support.backfill import SHADOWDB, environment
from tests.support.cli import run_on_terminal, table_rows, terminal_env
from tests.support.helpers import put_in_phase, seed_cell_group

pytestmark = pytest.mark.parametrize(
    "backend", [pytest.param("sqlite", marks=pytest.mark.sqlite)], indirect=True
)

GROUPS = 10


#: CSI and OSC escape sequences (colours, cursor moves, hiding the cursor).
@pytest.fixture
def seeded(topology: Topology) -> Topology:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    for i in range(GROUPS):
        seed_cell_group(topology.cell_engine("cell1" if i % 2 else "cell2"), name=f"g{i}")
    return topology


def _terminal_env(topology: Topology) -> dict[str, str]:
    return terminal_env(environment(topology), columns=120)


def test_progress_bar_on_a_terminal(seeded: Topology) -> None:
    code, text, err = run_on_terminal([SHADOWDB, "backfill"], _terminal_env(seeded))
    assert code == ExitCode.OK, text + err
    bar = [line for line in re.split(r"[\r\n]", text) if line.lstrip().startswith("groups")]
    assert bar, text
    # The bar's total is the exact count left, and it ends complete, with a rate.
    assert f"{GROUPS}/{GROUPS}" in bar[-1]
    assert "groups/s" in bar[-1]
    assert "━" in bar[-1]
    # The table follows on the terminal too.
    assert "migrate_instance_groups" in text


def test_no_progress_bar_into_a_pipe(seeded: Topology) -> None:
    proc = subprocess.run(
        [SHADOWDB, "backfill"],
        env=_terminal_env(seeded),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == ExitCode.OK, proc.stderr
    assert "\x1b" not in proc.stdout and "\r" not in proc.stdout
    assert f"{GROUPS}/{GROUPS}" not in proc.stdout and "groups/s" not in proc.stdout
    # Only what nova-manage prints: the batches, then the table.
    lines = proc.stdout.splitlines()
    assert lines[0] == "Running batches of 50 until complete"
    assert lines[1] == f"{GROUPS} rows matched query migrate_instance_groups, {GROUPS} migrated"
    assert all(line[:1] in "┏┃┡│└" for line in lines[2:]), lines
    assert {row[0]: row[1:] for row in table_rows(proc.stdout)} == {
        "drain_journals": ["0", "0"],
        "migrate_instance_groups": [str(GROUPS), str(GROUPS)],
    }
