"""``shadowdb diff-report`` through ``cli.main``: reports, formats, exit codes, repair."""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from shadowdb import models
from shadowdb.cli import ExitCode
from shadowdb.diff import Differ
from shadowdb.settings import Settings
from shadowdb.state import Phase
from tests.conftest import Topology
from tests.support.cli import Cli, Run
from tests.support.diff import Injected, inject_everything, seed_clean, seed_pair
from tests.support.helpers import put_in_phase, seed_cell_group

REPAIRABLE = {
    "missing-in-api",
    "missing-in-cells",
    "field-mismatch",
    "policy-mismatch",
    "member-mismatch",
}


@pytest.fixture(autouse=True)
def short_write_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give the CLI's settings the tests' write grace: re-checks pause one write apart."""
    built = Settings.from_environ.__func__  # type: ignore[attr-defined]

    def from_environ(cls: type[Settings], environ: Any, **overrides: Any) -> Settings:
        return dataclasses.replace(built(cls, environ, **overrides), write_grace=0.05)

    monkeypatch.setattr(Settings, "from_environ", classmethod(from_environ))


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    saved = structlog.get_config()
    yield Cli({"SHADOWDB_DATA_DIR": str(tmp_path / "data"), "SHADOWDB_PHASE_TTL": "0"})
    structlog.configure(**saved)  # the CLI configured logging for its own stderr


def diff(cli: Cli, topology: Topology, *argv: str) -> Run:
    return cli("diff-report", "--api-url", topology.api_url_text, *argv)


def test_clean_exits_0(cli: Cli, topology: Topology) -> None:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    seed_clean(topology, 6)
    run = diff(cli, topology)
    assert (run.code, run.err) == (ExitCode.OK, "")
    assert run.lines[0] == (
        "clean: the API database and every cell hold the same groups "
        "(phase dual-write-cell-reads, epoch 1, every cell)"
    )
    assert run.lines[1].startswith("rows checksummed: API ")
    run = diff(cli, topology, "--format", "json")
    report = run.json()
    assert (run.code, report["clean"], report["total"], report["exit_code"]) == (0, True, 0, 0)
    assert report["rows"]["api_hashed"] == report["rows"]["cells_hashed"] > 0


def test_differences_exit_1_and_name_every_key(cli: Cli, topology: Topology) -> None:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    found = inject_everything(topology)
    run = diff(cli, topology, "--format", "json")
    assert (run.code, run.err) == (ExitCode.MORE, "")
    report = run.json()
    assert report["exit_code"] == 1 and report["clean"] is False
    assert {(f["key"], f["kind"]) for f in report["findings"]} == found.expected
    assert report["counts"] == {kind: len(keys) for kind, keys in found.keys.items()}
    missing = next(f for f in report["findings"] if f["kind"] == "missing-in-api")
    assert missing["api"] is None and missing["cell"]["policies"] == ["anti-affinity"]
    assert missing["authoritative"] == "cell" and missing["repair"] is None

    text = diff(cli, topology)
    assert text.code == ExitCode.MORE
    assert text.lines[0].startswith(f"{len(found.expected)} differing keys (missing-in-api: 1, ")
    for key, kind in found.expected:
        line = next(line for line in text.lines if key in line)
        assert kind in line


def test_keys_only_and_limit(cli: Cli, topology: Topology) -> None:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    found = inject_everything(topology)
    run = diff(cli, topology, "--keys-only", "--limit", "2", "--format", "json")
    assert run.code == ExitCode.MORE
    report = run.json()
    assert report["total"] == len(found.expected) and len(report["findings"]) == 2
    assert all(f["api"] is None and f["cell"] is None for f in report["findings"])
    text = diff(cli, topology, "--keys-only", "--limit", "2")
    assert f"showing the first 2 of {len(found.expected)} (--limit)" in text.out
    header = next(line for line in text.lines if "Kind" in line)
    assert "API" not in header.replace("Authoritative", "")


def test_output_file(cli: Cli, topology: Topology, tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    seed_pair(topology)
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    run = diff(cli, topology, "--format", "json", "--output", str(target))
    assert (run.code, run.out, run.err) == (ExitCode.OK, "", "")
    assert json.loads(target.read_text())["clean"] is True


def test_repair_then_backfill_then_clean(cli: Cli, topology: Topology) -> None:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_API_READS)
    found = inject_everything(topology, duplicate_in="cell")
    run = diff(cli, topology, "--repair", "--keys-only")
    assert run.code == ExitCode.MORE  # differences were found, even if enqueued
    repairable = {k for k, kind in found.expected if kind in REPAIRABLE}
    assert f"repair: {len(repairable)} keys enqueued" in run.out
    backfill = cli("backfill", "--api-url", topology.api_url_text, "--format", "json")
    assert backfill.code == ExitCode.OK, backfill.out + backfill.err
    after = diff(cli, topology, "--format", "json").json()
    assert {(f["key"], f["kind"]) for f in after["findings"]} == {
        (k, kind) for k, kind in found.expected if kind not in REPAIRABLE
    }


def test_short_scan_exits_2(cli: Cli, topology: Topology, monkeypatch: pytest.MonkeyPatch) -> None:
    seed_clean(topology, 4)
    monkeypatch.setattr(Differ, "_checked_chunks", lambda self, chunks: {})
    run = diff(cli, topology)
    assert run.code == ExitCode.OPERATIONAL
    assert "the diff scan accounted for 0 instance_groups rows" in run.only_error()


def test_unreachable_cell_exits_2(cli: Cli, topology: Topology, tmp_path: Path) -> None:
    with topology.dbs.api.begin() as conn:
        conn.execute(
            models.api_cell_mappings.insert().values(
                uuid="00000000-0000-4000-8000-000000000003",
                name="cell3",
                database_connection=f"sqlite:///{tmp_path}/nowhere/cell3.sqlite",
            )
        )
    run = diff(cli, topology)
    assert run.code == ExitCode.OPERATIONAL
    assert "cell cell3 unreachable" in run.only_error()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--limit", "0"), "'0' must be >= 1"),
        (("--cell", "cell9"), "unknown cell 'cell9'"),
        (("--output", "/nonexistent/dir/report.txt"), "cannot write --output"),
    ],
    ids=["limit", "cell", "output"],
)
def test_bad_input_exits_127(
    cli: Cli, topology: Topology, argv: tuple[str, ...], message: str
) -> None:
    run = diff(cli, topology, *argv)
    assert run.code == ExitCode.BAD_INPUT
    assert message in run.only_error()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal(
    topology: Topology, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shadowdb import cli as cli_mod
    from shadowdb import render

    seed_cell_group(topology.cell_engine("cell1"))
    saved = structlog.get_config()
    stages: list[str] = []
    real = render.DiffProgress.update

    def spy(self: object, stage: str, done: int, total: int) -> None:
        stages.append(stage)
        real(self, stage, done, total)  # type: ignore[arg-type]

    monkeypatch.setattr(render.DiffProgress, "update", spy)
    try:
        target = tmp_path / "report.json"
        out, err = _Terminal(), io.StringIO()
        code = cli_mod.main(
            [
                "diff-report",
                "--api-url",
                topology.api_url_text,
                "--format",
                "json",
                "--output",
                str(target),
            ],
            stdout=out,
            stderr=err,
            environ={"SHADOWDB_PHASE_TTL": "0"},
        )
        assert code == ExitCode.MORE, err.getvalue()
        assert json.loads(target.read_text())["total"] == 1
        assert {"checksums", "compare", "recheck"} <= set(stages)
        stages.clear()
        plain = io.StringIO()
        code = cli_mod.main(
            ["diff-report", "--api-url", topology.api_url_text, "--format", "json"],
            stdout=plain,
            stderr=err,
            environ={"SHADOWDB_PHASE_TTL": "0"},
        )
        assert code == ExitCode.MORE and stages == []
        assert json.loads(plain.getvalue())["total"] == 1
    finally:
        structlog.configure(**saved)


def test_one_cell(cli: Cli, topology: Topology) -> None:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    found = Injected()
    uuid = seed_cell_group(topology.cell_engine("cell2"))
    found.add(uuid, "missing-in-api")
    run = diff(cli, topology, "--cell", "cell1")
    assert run.code == ExitCode.OK and "cell cell1" in run.lines[0]
    run = diff(cli, topology, "--cell", "cell2", "--format", "json")
    assert run.code == ExitCode.MORE
    assert [(f["key"], f["kind"]) for f in run.json()["findings"]] == [(uuid, "missing-in-api")]


def test_phase_set_uses_the_stored_result(cli: Cli, topology: Topology) -> None:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    group = seed_pair(topology)
    api = ("--api-url", topology.api_url_text)
    with topology.dbs.api.begin() as conn:
        conn.execute(
            models.api_groups.update().where(models.api_groups.c.uuid == group).values(name="x")
        )
    assert diff(cli, topology).code == ExitCode.MORE
    refused = cli("phase", "set", "dual-write-api-reads", *api)
    assert refused.code == ExitCode.REFUSED
    assert "found 1 difference (field-mismatch: 1)" in refused.only_error()
    assert diff(cli, topology, "--repair").code == ExitCode.MORE
    assert cli("backfill", *api).code == ExitCode.OK
    assert diff(cli, topology).code == ExitCode.OK
    moved = cli("phase", "set", "dual-write-api-reads", *api)
    assert moved.code == ExitCode.OK, moved.err
    assert moved.out.startswith("phase: dual-write-cell-reads -> dual-write-api-reads")
