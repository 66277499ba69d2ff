"""Every command of the README and the runbook works as written.

Each document is walked in order on a fresh SQLite deployment in a temporary folder:
every line of an ``sh`` block runs as a real ``shadowdb`` process and must end with the
exit code the line declares (``# exits 1 ...``; 0 otherwise), every ``python`` block
runs as a script. Blocks marked ``<!-- illustrative -->`` are counted and not run
(:mod:`tests.support.docs`). The README builds its own deployment; the runbook is run
on one made here as Nova leaves it (cell0 mapped by uuid, two cells holding legacy
groups), since it is about a cloud that already has one.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

import shadowdb
from shadowdb import cli
from shadowdb.testing import write_legacy_cells
from tests.support.cli import Cli
from tests.support.docs import Block, Command, blocks, commands

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RUNBOOK = ROOT / "docs" / "runbook.md"
BIN = Path(sys.executable).parent
CELL0_UUID = "00000000-0000-0000-0000-000000000000"

pytestmark = pytest.mark.sqlite


def _environ(folder: Path) -> dict[str, str]:
    """The environment of every command: the temporary deployment, nothing inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWDB_")}
    env["SHADOWDB_API_URL"] = f"sqlite:///{folder / 'shadowdb-data' / 'api.sqlite'}"
    return env


def _run(argv: list[str], folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=folder,
        env=_environ(folder),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _failure(what: str, done: subprocess.CompletedProcess[str], wanted: int) -> str:
    return (
        f"{what}: exit {done.returncode}, the document says {wanted}\n"
        f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
    )


def _walk(document: Path, folder: Path) -> tuple[list[str], list[str]]:
    """Run the document's blocks in order; return where the run and the skipped ones are."""
    ran: list[str] = []
    skipped: list[str] = []
    for block in blocks(document):
        if block.lang not in ("sh", "python"):
            continue
        if block.illustrative:
            skipped.append(block.where)
            continue
        _run_block(block, folder)
        ran.append(block.where)
    return ran, skipped


def _run_block(block: Block, folder: Path) -> None:
    if block.lang == "python":
        done = _run([sys.executable, "-c", block.text], folder)
        assert done.returncode == 0, _failure(f"python block at {block.where}", done, 0)
        return
    for command in commands(block):
        done = _run([str(BIN / "shadowdb"), *command.args], folder)
        where = f"{block.path.name}:{command.line} `{command.text}`"
        assert done.returncode == command.exit_code, _failure(where, done, command.exit_code)


def _parses(command: Command) -> bool:
    """Tell whether the command names an existing subcommand (its ``--help`` exits 0).

    Nothing runs; options after the subcommand are not checked (``--help`` comes first).
    """
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = cli.main([*command.args, "--help"], stdout=out, stderr=out, environ={})
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
    return code == 0


def _expected(document: Path) -> tuple[list[str], list[str]]:
    runnable = [b for b in blocks(document) if b.lang in ("sh", "python")]
    return (
        [b.where for b in runnable if not b.illustrative],
        [b.where for b in runnable if b.illustrative],
    )


def _nova_deployment(folder: Path) -> None:
    """Make what the runbook starts from: a Nova cloud before the cutover."""
    data = folder / "shadowdb-data"
    cli = Cli(_environ(folder))
    cli.ok("db", "sync")
    for name in ("cell1", "cell2"):
        cli.ok("cell", "add", name, f"sqlite:///{data / name}.sqlite", "--create")
    # cell0 as `nova-manage cell_v2 map_cell0` maps it: by its fixed uuid.
    (data / "cell0.sqlite").touch()
    engine = sa.create_engine(f"sqlite:///{data / 'api.sqlite'}", poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO cell_mappings (uuid, name, database_connection, transport_url)"
                " VALUES (:uuid, 'cell0', :url, 'none:///')"
            ),
            {"uuid": CELL0_UUID, "url": f"sqlite:///{data / 'cell0.sqlite'}"},
        )
    engine.dispose()
    cli.ok("cell", "set-default", "cell1")
    cli.ok("db", "sync")
    with shadowdb.connect(f"sqlite:///{data / 'api.sqlite'}") as dbs:
        written = write_legacy_cells(dbs, groups=30, seed=7)
    assert {g.cell for g in written} == {"cell1", "cell2"}


def test_every_readme_command_works_as_written(tmp_path: Path) -> None:
    ran, skipped = _walk(README, tmp_path)
    assert (ran, skipped) == _expected(README)
    assert len(ran) >= 5 and len(skipped) >= 1, (ran, skipped)


def test_every_runbook_command_works_as_written(tmp_path: Path) -> None:
    _nova_deployment(tmp_path)
    ran, skipped = _walk(RUNBOOK, tmp_path)
    assert (ran, skipped) == _expected(RUNBOOK)
    assert len(ran) >= 5 and len(skipped) >= 1, (ran, skipped)


@pytest.mark.parametrize("document", [README, RUNBOOK], ids=["README", "runbook"])
def test_the_shadowdb_commands_of_illustrative_blocks_exist(document: Path) -> None:
    illustrative = [b for b in blocks(document) if b.lang == "sh" and b.illustrative]
    lines = [(b.where, c) for b in illustrative for c in commands(b, only_shadowdb=True)]
    assert lines, "no shadowdb command in an illustrative block"
    unknown = [f"{where}: {c.text}" for where, c in lines if not _parses(c)]
    assert not unknown, unknown


def test_the_block_reader_takes_markers_exit_codes_and_refuses_other_lines(
    tmp_path: Path,
) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "text\n\n```sh\nshadowdb status\nshadowdb backfill --max-count 5   # exits 1 if more\n"
        "shadowdb phase set api-only --reason 'not # exits 3'\n```\n\n"
        "<!-- illustrative -->\n```sh\nmysqldump nova_api > api.sql\n```\n\n"
        "```ini\n[database]\n```\n",
        encoding="utf-8",
    )
    found = blocks(doc)
    assert [(b.lang, b.illustrative, b.line) for b in found] == [
        ("sh", False, 3),
        ("sh", True, 10),
        ("ini", False, 14),
    ]
    assert [(c.args, c.exit_code) for c in commands(found[0])] == [
        (("status",), 0),
        (("backfill", "--max-count", "5"), 1),
        (("phase", "set", "api-only", "--reason", "not # exits 3"), 0),
    ]
    with pytest.raises(ValueError, match="one shadowdb command"):
        commands(found[1])
    doc.write_text("```bash\nshadowdb status\n```\n", encoding="utf-8")
    with pytest.raises(ValueError, match="a fence must name"):
        blocks(doc)
