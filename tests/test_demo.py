"""The README's main job: ``shadowdb demo`` runs the cutover to the end on embedded SQLite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _demo(cwd: Path, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWDB_")}
    return subprocess.run(
        [sys.executable, "-m", "shadowdb", "demo", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.sqlite
def test_demo_cutover_completes_with_every_write_accounted_for(tmp_path: Path) -> None:
    done = _demo(tmp_path, "--groups", "60", "--writers", "2")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for step in (
        "$ shadowdb phase set dual-write-cell-reads",
        "$ shadowdb backfill",
        "$ shadowdb diff-report",
        "$ shadowdb phase set api-only",
        "$ shadowdb cleanup --yes",
    ):
        assert step in out
    assert "phase: api-only (epoch 3" in out
    # The report: each phase with its time, what moved, the final diff, the writes checked.
    for phase in ("cell-only", "dual-write-cell-reads", "dual-write-api-reads", "api-only"):
        assert any(line.strip("│ ").startswith(phase) for line in out.splitlines())
    assert "rows moved by backfill: " in out
    assert "fallback reads (dual-write-api-reads): " in out
    assert "shadow-write failures (journaled): " in out
    assert "final diff-report: clean" in out
    summary = next(line for line in out.splitlines() if line.startswith("Live traffic:"))
    assert " 0 errors;" in summary and "0 missing or stale" in summary
    assert out.rstrip().endswith("every acknowledged write is accounted for")
    # It ran on the embedded default, in the working directory, and marked it as its own.
    assert (tmp_path / "shadowdb-data" / "api.sqlite").exists()
    assert (tmp_path / "shadowdb-data" / ".shadowdb-demo").exists()
    # A second run resets its own folder.
    again = _demo(tmp_path, "--groups", "10")
    assert again.returncode == 0, again.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.sqlite
def test_demo_report_as_json_in_a_folder_of_its_own(tmp_path: Path) -> None:
    folder = tmp_path / "elsewhere"
    done = _demo(
        tmp_path, "--groups", "30", "--cells", "3", "--data-dir", str(folder), "--format", "json"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["ok"] is True and report["exit_code"] == 0
    assert [p["phase"] for p in report["phases"]] == [
        "cell-only",
        "dual-write-cell-reads",
        "dual-write-api-reads",
        "api-only",
    ]
    assert report["missing"] == 0 and report["error_count"] == 0
    assert report["final_diff"] == "clean"
    assert report["rows_moved"] >= 1 and report["checked"] >= 30
    assert {p.name for p in folder.glob("cell*.sqlite")} == {
        "cell1.sqlite",
        "cell2.sqlite",
        "cell3.sqlite",
    }
    assert not (tmp_path / "shadowdb-data").exists()


@pytest.mark.sqlite
def test_demo_refuses_a_data_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "shadowdb-data").mkdir()
    (tmp_path / "shadowdb-data" / "api.sqlite").write_text("not the demo's")
    done = _demo(tmp_path, timeout=60)
    assert done.returncode == 127
    assert "was not made by the demo" in done.stderr
    assert (tmp_path / "shadowdb-data" / "api.sqlite").read_text() == "not the demo's"


@pytest.mark.sqlite
def test_scripts_demo_runs_shadowdb_demo_quietly(tmp_path: Path) -> None:
    # The README's command: set-up says nothing when there is nothing to install.
    (tmp_path / "shadowdb-data").mkdir()
    done = subprocess.run(
        [str(ROOT / "scripts" / "demo"), "--groups", "5"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 127
    assert done.stdout == ""
    assert done.stderr == (
        "shadowdb: error: shadowdb-data/ exists and was not made by the demo; "
        "run it elsewhere (--data-dir)\n"
    )


#: Run the demo with a SIGINT delivered inside one of its steps, the backfill, as it copies.
INTERRUPT_IN_A_STEP = """
import os, signal, sys
from shadowdb import signals
from shadowdb.__main__ import run

def on_step(_sender, **kwargs):
    if kwargs.get("step") == "copied":
        os.kill(os.getpid(), signal.SIGINT)

signals.backfill_step.connect(on_step, weak=False)
sys.argv = ["shadowdb", "demo", "--groups", "60"]
run()
"""


@pytest.mark.slow
@pytest.mark.sqlite
def test_ctrl_c_during_a_demo_step_is_one_line_and_exit_130(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWDB_")}
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPT_IN_A_STEP],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert "$ shadowdb backfill" in done.stdout  # interrupted inside that step
    assert done.returncode == 130, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "interrupted" in done.stderr, done.stderr
