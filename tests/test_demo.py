"""The README's main job: the demo cutover runs to the end on the embedded default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.sqlite
def test_demo_cutover_completes_with_every_write_accounted_for(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWDB_")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
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
    summary = next(line for line in out.splitlines() if line.startswith("Live traffic:"))
    assert " 0 errors;" in summary and "0 missing or stale" in summary
    # It ran on the embedded default, in the working directory, and marked it as its own.
    assert (tmp_path / "shadowdb-data" / "api.sqlite").exists()
    assert (tmp_path / "shadowdb-data" / ".shadowdb-demo").exists()


@pytest.mark.sqlite
def test_demo_refuses_a_data_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "shadowdb-data").mkdir()
    (tmp_path / "shadowdb-data" / "api.sqlite").write_text("not the demo's")
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "was not made by the demo" in done.stderr
    assert (tmp_path / "shadowdb-data" / "api.sqlite").read_text() == "not the demo's"
