"""``shadowdb cleanup --yes``: retire the cell copies, only when it is safe."""

from __future__ import annotations

import sqlalchemy as sa

from shadowdb import commands, models
from shadowdb.backfill import backfill
from shadowdb.cli import ExitCode
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.state import Phase
from tests.conftest import Topology
from tests.support.cli import Cli
from tests.support.helpers import dump, group_state, new_uuid, put_in_phase, seed_cell_group


def _migrated(topology: Topology) -> list[str]:
    """Legacy groups, backfilled, in api-only with a clean diff-report on record."""
    uuids = [
        seed_cell_group(topology.cell_engine("cell1"), members=[new_uuid(), new_uuid()]),
        seed_cell_group(topology.cell_engine("cell2"), policies=["affinity", "soft-affinity"]),
    ]
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    assert backfill(topology.dbs, sleep=lambda _s: None).outcome == "done"
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_API_READS)
    report = commands.diff_report(topology.dbs, sleep=lambda _s: None)
    assert report.clean
    put_in_phase(topology.dbs, Phase.API_ONLY)
    return uuids


def _cli(topology: Topology) -> Cli:
    return Cli({"SHADOWDB_API_URL": topology.api_url_text})


def test_cleanup_soft_deletes_every_cell_copy(topology: Topology) -> None:
    uuids = _migrated(topology)
    api_before = dump(topology.dbs.api, models.api_metadata)
    run = _cli(topology)("cleanup", "--yes")
    assert run.code == ExitCode.OK, run.err
    assert "7 cell rows soft-deleted" in run.out  # 2 groups, 3 policies, 2 members
    for name in ("cell1", "cell2"):
        with topology.cell_engine(name).connect() as conn:
            for table in (models.cell_groups, models.cell_policies, models.cell_members):
                rows = conn.execute(sa.select(table.c.id, table.c.deleted, table.c.deleted_at))
                for row in rows:
                    assert row.deleted == row.id and row.deleted_at is not None
    for uuid in uuids:
        assert group_state(topology.dbs.api, "api", uuid) is not None
    after = dump(topology.dbs.api, models.api_metadata)
    assert after["instance_groups"] == api_before["instance_groups"]
    again = _cli(topology)("cleanup", "--yes", "--format", "json")
    assert again.code == ExitCode.OK
    assert all(c["groups"] == 0 for c in again.json()["cells"])


def test_cleanup_is_refused_outside_api_only(topology: Topology) -> None:
    _migrated(topology)
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_API_READS)
    before = dump(topology.cell_engine("cell1"), models.cell_metadata)
    run = _cli(topology)("cleanup", "--yes")
    assert run.code == ExitCode.REFUSED
    assert "api-only" in run.only_error()
    assert dump(topology.cell_engine("cell1"), models.cell_metadata) == before


def test_cleanup_is_refused_without_a_clean_diff(topology: Topology) -> None:
    seed_cell_group(topology.cell_engine("cell1"))
    put_in_phase(topology.dbs, Phase.API_ONLY)
    before = dump(topology.cell_engine("cell1"), models.cell_metadata)
    run = _cli(topology)("cleanup", "--yes")
    assert run.code == ExitCode.REFUSED
    assert "diff-report" in run.only_error()
    assert dump(topology.cell_engine("cell1"), models.cell_metadata) == before


def test_cleanup_accepts_the_gating_diff_despite_api_only_writes(topology: Topology) -> None:
    uuids = _migrated(topology)
    ctx = RequestContext(topology.dbs, "p1", "u1", is_admin=True)
    group = InstanceGroup.get_by_uuid(ctx, uuids[0])
    group.name = "written in api-only"
    group.save()  # the cell copy now lags: expected, and no reason to keep it
    assert _cli(topology)("cleanup", "--yes").code == ExitCode.OK


def test_cleanup_refuses_a_diff_older_than_the_gating_one(topology: Topology) -> None:
    seed_cell_group(topology.cell_engine("cell1"))
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    assert backfill(topology.dbs, sleep=lambda _s: None).outcome == "done"
    assert commands.diff_report(topology.dbs, sleep=lambda _s: None).clean
    # Two moves later (the last one forced past its guards) that clean run proves nothing.
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_API_READS)
    put_in_phase(topology.dbs, Phase.API_ONLY)
    run = _cli(topology)("cleanup", "--yes")
    assert run.code == ExitCode.REFUSED
    assert "before the move into api-only" in run.only_error()


def test_cleanup_needs_yes(topology: Topology) -> None:
    _migrated(topology)
    before = dump(topology.cell_engine("cell1"), models.cell_metadata)
    run = _cli(topology)("cleanup")
    assert run.code == ExitCode.BAD_INPUT
    assert "--yes" in run.only_error()
    assert dump(topology.cell_engine("cell1"), models.cell_metadata) == before


def test_phase_set_after_cleanup_names_cleanup_and_the_rebuild_not_a_diff_report(
    topology: Topology,
) -> None:
    _migrated(topology)
    assert _cli(topology)("cleanup", "--yes").code == ExitCode.OK
    run = _cli(topology)("phase", "set", "dual-write-api-reads")
    assert run.code == ExitCode.REFUSED, run.err
    assert "cleanup retired the cell copies at " in run.err
    assert "run `shadowdb backfill --reverse`, then `shadowdb diff-report`" in run.err
    assert "did not complete" not in run.err


def test_leaving_api_only_after_cleanup_recreates_cell_copies(topology: Topology) -> None:
    uuids = _migrated(topology)
    assert _cli(topology)("cleanup", "--yes").code == ExitCode.OK
    result = backfill(topology.dbs, reverse=True, sleep=lambda _s: None)
    assert result.outcome == "done"
    for uuid in uuids:
        cell = group_state(topology.cell_engine("cell1"), "cell", uuid)
        assert cell == group_state(topology.dbs.api, "api", uuid)


def test_after_cleanup_a_diff_report_is_refused_and_status_says_the_cutover_is_complete(
    topology: Topology,
) -> None:
    _migrated(topology)
    cli = _cli(topology)
    assert cli("cleanup", "--yes").code == ExitCode.OK
    api_before = dump(topology.dbs.api, models.api_metadata)
    # Every API group would be "missing in cells" and --repair would queue them all.
    for argv in (("diff-report",), ("diff-report", "--repair")):
        run = cli(*argv)
        assert run.code == ExitCode.REFUSED
        assert "`shadowdb backfill --reverse`" in run.only_error()
    assert dump(topology.dbs.api, models.api_metadata) == api_before  # nothing recorded
    status = commands.status(topology.dbs)
    assert status.next_step is None
    assert "cutover is complete" in status.reason
