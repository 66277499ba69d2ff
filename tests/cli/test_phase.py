"""``shadowdb phase show|set|history`` through ``cli.main``: output and exit codes."""

from __future__ import annotations

import io
import json
import uuid as uuidlib
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from shadowdb import cli, commands, models
from shadowdb.cli import ExitCode
from shadowdb.state import read_cell_state
from tests.conftest import Topology

#: The CLI builds its own settings: a zero phase TTL leaves a drain wait of the write grace.
ENVIRON = {"USER": "operator", "SHADOWDB_PHASE_TTL": "0"}


def no_sleep(_seconds: float) -> None:
    """Skip the drain wait of phase changes made to set a test up."""


def run(topology: Topology, *argv: str, api_url: str | None = None) -> tuple[int, str, str]:
    """Run the CLI against the topology's API database; return code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(
        [*argv, "--api-url", api_url or topology.api_url_text],
        stdout=out,
        stderr=err,
        environ=dict(ENVIRON),
    )
    return code, out.getvalue(), err.getvalue()


def written(topology: Topology) -> tuple[Any, ...]:
    """Return the stored phase and its history, to prove nothing was written."""
    return (commands.show_phase(topology.dbs), commands.phase_history(topology.dbs))


def add_live_cell_group(topology: Topology, cell: str) -> None:
    with topology.cell_engine(cell).begin() as conn:
        conn.execute(
            models.cell_groups.insert().values(uuid=str(uuidlib.uuid4()), name="g", deleted=0)
        )


def add_cell_journal(topology: Topology, cell: str) -> None:
    """Journal a group whose cell copy differs from its API copy (a real entry)."""
    group = str(uuidlib.uuid4())
    with topology.dbs.api.begin() as conn:
        conn.execute(models.api_groups.insert().values(uuid=group, name="api-side"))
    with topology.cell_engine(cell).begin() as conn:
        conn.execute(models.cell_groups.insert().values(uuid=group, name="cell-side", deleted=0))
        conn.execute(
            models.cell_journal.insert().values(group_uuid=group, created_at=sa.func.now(), epoch=1)
        )


def test_phase_show_text_and_json(topology: Topology) -> None:
    code, out, err = run(topology, "phase", "show")
    assert (code, err) == (ExitCode.OK, "")
    lines = out.splitlines()
    assert lines[0].startswith("phase: cell-only (epoch 0, since ")
    assert lines[1] == "allowed next: dual-write-cell-reads"

    code, out, err = run(topology, "phase", "show", "--format", "json")
    assert (code, err) == (ExitCode.OK, "")
    shown = json.loads(out)
    assert shown["phase"] == "cell-only"
    assert shown["epoch"] == 0
    stored = commands.show_phase(topology.dbs).changed_at
    assert shown["changed_at"] == stored.isoformat()
    assert shown["allowed_next"] == ["dual-write-cell-reads"]


def test_phase_set_moves_every_database_and_history_lists_it(topology: Topology) -> None:
    code, out, err = run(topology, "phase", "set", "dual-write-cell-reads", "--reason", "go")
    assert (code, err) == (ExitCode.OK, "")
    assert out == "phase: cell-only -> dual-write-cell-reads (epoch 1)\n"
    for cell in topology.dbs.cells:  # the fence: each cell holds the new phase
        with cell.engine.connect() as conn:
            state = read_cell_state(conn)
        assert state is not None
        assert (state.phase.value, state.epoch) == ("dual-write-cell-reads", 1)

    code, out, err = run(topology, "phase", "history", "--format", "json")
    assert (code, err) == (ExitCode.OK, "")
    history = json.loads(out)
    assert [(h["epoch"], h["from_phase"], h["to_phase"]) for h in history] == [
        (0, None, "cell-only"),
        (1, "cell-only", "dual-write-cell-reads"),
    ]
    assert history[1]["actor"] == "operator"
    assert history[1]["reason"] == "go"
    assert history[1]["forced"] is False
    assert history[1]["overridden"] == []

    code, out, err = run(topology, "phase", "history")
    assert (code, err) == (ExitCode.OK, "")
    assert "Epoch" in out and "Overridden" in out
    rows = [line for line in out.splitlines() if "cell-only" in line]
    assert len(rows) == 2  # oldest first
    assert "initial state" in rows[0]
    assert "dual-write-cell-reads" in rows[1] and "operator" in rows[1] and "go" in rows[1]


def test_phase_set_refuses_a_skip_with_exit_3_even_forced(topology: Topology) -> None:
    before = written(topology)
    code, out, err = run(topology, "phase", "set", "api-only", "--force")
    assert (code, out) == (ExitCode.REFUSED, "")
    assert err.count("\n") == 1
    assert err.startswith("shadowdb: error: refusing to enter api-only: ")
    assert "cannot move from cell-only to api-only" in err
    assert "allowed next: dual-write-cell-reads" in err
    assert written(topology) == before


def test_phase_set_refuses_the_same_phase(topology: Topology) -> None:
    code, _out, err = run(topology, "phase", "set", "cell-only")
    assert code == ExitCode.REFUSED
    assert err == "shadowdb: error: refusing to enter cell-only: already in cell-only\n"


def test_phase_set_lists_every_failed_guard_on_one_line(topology: Topology) -> None:
    commands.set_phase(topology.dbs, "dual-write-cell-reads")
    add_live_cell_group(topology, "cell1")
    add_live_cell_group(topology, "cell2")
    add_live_cell_group(topology, "cell2")
    add_cell_journal(topology, "cell1")
    add_cell_journal(topology, "cell2")
    before = written(topology)
    code, out, err = run(topology, "phase", "set", "dual-write-api-reads")
    assert (code, out) == (ExitCode.REFUSED, "")
    assert err == (
        "shadowdb: error: refusing to enter dual-write-api-reads: "
        "3 live cell groups not in the API database (cell1: 1, cell2: 2); run backfill; "
        "journal of cell cell1 holds 1 entry (API copies lag); run backfill; "
        "journal of cell cell2 holds 1 entry (API copies lag); run backfill; "
        "no diff-report on record; run `shadowdb diff-report`\n"
    )
    assert written(topology) == before


def test_phase_set_refuses_when_a_cell_is_unreachable(topology: Topology, tmp_path: Path) -> None:
    commands.set_phase(topology.dbs, "dual-write-cell-reads")
    with topology.dbs.api.begin() as conn:
        conn.execute(
            models.api_cell_mappings.insert().values(
                uuid=str(uuidlib.uuid4()),
                name="cell3",
                database_connection=f"sqlite:///{tmp_path}/missing/cell3.sqlite",
            )
        )
    code, _out, err = run(topology, "phase", "set", "dual-write-api-reads")
    assert code == ExitCode.REFUSED
    assert err.count("\n") == 1
    assert err.count("cell cell3 unreachable, not checked") == 2


def test_phase_set_force_overrides_and_is_recorded(topology: Topology) -> None:
    commands.set_phase(topology.dbs, "dual-write-cell-reads")
    add_live_cell_group(topology, "cell1")
    add_cell_journal(topology, "cell2")
    code, out, err = run(
        topology, "phase", "set", "dual-write-api-reads", "--force", "--reason", "ticket 7"
    )
    assert (code, err) == (ExitCode.OK, "")
    assert out.splitlines() == [
        "phase: dual-write-cell-reads -> dual-write-api-reads (epoch 2)",
        "forced over: 1 live cell group not in the API database (cell1: 1); run backfill; "
        "journal of cell cell2 holds 1 entry (API copies lag); run backfill; "
        "no diff-report on record; run `shadowdb diff-report`",
    ]
    code, out, _err = run(topology, "phase", "history", "--format", "json")
    last = json.loads(out)[-1]
    assert last["epoch"] == 2
    assert last["forced"] is True
    assert last["reason"] == "ticket 7"
    assert last["overridden"] == [
        "1 live cell group not in the API database (cell1: 1); run backfill",
        "journal of cell cell2 holds 1 entry (API copies lag); run backfill",
        "no diff-report on record; run `shadowdb diff-report`",
    ]
    code, out, _err = run(topology, "phase", "history")
    assert "ticket 7" in out and "yes" in out


def test_phase_set_dry_run_prints_the_steps_and_changes_nothing(topology: Topology) -> None:
    before = written(topology)
    code, out, err = run(topology, "phase", "set", "dual-write-cell-reads", "--dry-run")
    assert (code, err) == (ExitCode.OK, "")
    lines = out.splitlines()
    assert [line.split(":", 1)[0] for line in lines] == ["preconditions", "record", "announce"]
    assert "cell-only -> dual-write-cell-reads allowed at epoch 0" in lines[0]
    assert "set phase dual-write-cell-reads at epoch 1" in lines[1]
    assert "actor operator" in lines[1]
    assert written(topology) == before

    code, out, err = run(
        topology, "phase", "set", "dual-write-cell-reads", "--dry-run", "--format", "json"
    )
    assert (code, err) == (ExitCode.OK, "")
    change = json.loads(out)
    assert change["dry_run"] is True and change["changed_at"] is None
    assert change["steps"] == lines
    assert written(topology) == before


def test_unknown_phase_exits_127_and_writes_nothing(topology: Topology) -> None:
    before = written(topology)
    code, out, err = run(topology, "phase", "set", "api-first", "--force")
    assert (code, out) == (ExitCode.BAD_INPUT, "")
    assert err.startswith("shadowdb: error: unknown phase 'api-first' (known: cell-only, ")
    assert written(topology) == before


def test_unreachable_api_database_exits_2(topology: Topology, tmp_path: Path) -> None:
    url = {
        "sqlite": f"sqlite:///{tmp_path}/nowhere/api.sqlite",
        "mysql": "mysql+pymysql://root@127.0.0.1:1/nowhere",
        "postgresql": "postgresql+psycopg://postgres@127.0.0.1:1/nowhere",
    }[topology.backend]
    for argv in (
        ("phase", "show"),
        ("phase", "history"),
        ("phase", "set", "dual-write-cell-reads"),
    ):
        code, out, err = run(topology, *argv, api_url=url)
        assert (code, out) == (ExitCode.OPERATIONAL, ""), argv
        assert "unreachable" in err and err.count("\n") == 1, err
