"""``shadowdb status``: where the cutover stands, and a next step the guards accept.

Each test follows the advice: it reads ``next_step``, runs that very command through the
command line and checks it succeeded, in every phase and after each kind of problem.
"""

from __future__ import annotations

import io
import json
import shlex
from collections.abc import Sequence

import pytest
import sqlalchemy as sa
import structlog

from shadowdb import cli, commands, models
from shadowdb.databases import connect, reader, writer
from shadowdb.errors import DatabaseUnreachable, GuardRefused
from shadowdb.guards import TRANSITIONS
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.queries import API
from shadowdb.state import read_state, utcnow
from shadowdb.testing import write_legacy_cells
from tests.conftest import FreshDatabases, Topology
from tests.support.helpers import new_uuid, seed_api_group, seed_cell_group
from tests.support.proxy import proxied

SERVERS = [
    pytest.param("mysql", marks=pytest.mark.mysql),
    pytest.param("postgresql", marks=pytest.mark.postgresql),
]

#: Exit codes that mean "the command ran": diff-report exits 1 when it finds differences.
_RAN = {"diff-report": (0, 1)}


def _status(topology: Topology) -> commands.Status:
    with connect(topology.api_url_text, settings=topology.settings) as dbs:
        return commands.status(dbs)


def _cli(argv: Sequence[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    saved = structlog.get_config()
    try:
        code = cli.main(list(argv), stdout=out, stderr=err, environ={"SHADOWDB_PHASE_TTL": "0"})
    finally:
        structlog.configure(**saved)  # the command line configured logging for its stderr
    return code, out.getvalue(), err.getvalue()


def _run(topology: Topology, step: str) -> int:
    """Run an advised command as the operator would, and require that it ran."""
    words = shlex.split(step)
    assert words[0] == "shadowdb"
    code, out, err = _cli([*words[1:], "--api-url", topology.api_url_text])
    assert code in _RAN.get(words[1], (0,)), f"{step} exited {code}: {err}{out[-2000:]}"
    return code


def _follow(topology: Topology, expected: Sequence[str | None]) -> commands.Status:
    """Check each advised step is the expected one, run it, and return the status after."""
    for step in expected:
        found = _status(topology)
        assert found.next_step == step, found.reason
        assert found.reason
        if step is None:
            return found
        _run(topology, step)
    return _status(topology)


def _legacy(topology: Topology) -> None:
    write_legacy_cells(topology.dbs, groups=6, seed=3)


# --------------------------------------------------------------------------- no cells


def test_no_cells_advises_cell_add(fresh: FreshDatabases) -> None:
    api = fresh.api_url.render_as_string(hide_password=False)
    with connect(api, create=True) as dbs:
        commands.sync_schema(dbs)
        found = commands.status(dbs)
    assert found.health == ()
    assert found.next_step == "shadowdb cell add NAME URL"
    assert "no cell besides cell0" in found.reason


def test_every_phase_change_of_a_deployment_with_no_cells_is_refused(
    fresh: FreshDatabases,
) -> None:
    # Cells can leave a deployment in any phase (`cell remove` of empty mappings): from
    # every phase, every move the table allows is refused, --force or not.
    api = fresh.api_url.render_as_string(hide_password=False)
    with connect(api, create=True) as dbs:
        commands.sync_schema(dbs)
        for epoch, (frm, to) in enumerate(TRANSITIONS, start=1):
            with writer(dbs.api) as conn:
                conn.execute(models.api_state.update().values(phase=frm.value, epoch=epoch))
            for force in (False, True):
                with pytest.raises(GuardRefused) as refused:
                    commands.set_phase(dbs, to.value, force=force)
                assert any("no cell besides cell0" in r for r in refused.value.reasons)
            with reader(dbs.api) as conn:
                assert (read_state(conn).phase, read_state(conn).epoch) == (frm, epoch)


# --------------------------------------------------------------------------- the walk


def test_following_next_step_walks_the_whole_cutover(topology: Topology) -> None:
    _legacy(topology)
    start = _status(topology)
    assert start.phase == "cell-only"
    assert {h.name for h in start.health} == {"cell1", "cell2"}
    assert all(h.reachable and h.backlog and h.journal == 0 for h in start.health)
    assert start.diff is None
    done = _follow(
        topology,
        [
            "shadowdb phase set dual-write-cell-reads",
            "shadowdb backfill",
            "shadowdb diff-report",
            "shadowdb phase set dual-write-api-reads",
            "shadowdb diff-report",
            "shadowdb phase set api-only",
            "shadowdb cleanup --yes",
            None,
        ],
    )
    assert done.phase == "api-only" and done.cells_retired
    assert "cutover is complete" in done.reason


def test_the_last_diff_report_and_whether_it_gates(topology: Topology) -> None:
    _legacy(topology)
    _follow(topology, ["shadowdb phase set dual-write-cell-reads", "shadowdb backfill"])
    _run(topology, "shadowdb diff-report")
    last = _status(topology).diff
    assert last is not None
    assert (last.outcome, last.clean, last.current, last.recent, last.gates) == (
        "clean",
        True,
        True,
        True,
        True,
    )
    assert last.blockers == () and last.phase == "dual-write-cell-reads" and last.scope == "all"
    # A run of one cell gates nothing: diff-report (of every cell) is advised.
    _run(topology, "shadowdb diff-report --cell cell1")
    found = _status(topology)
    assert found.diff is not None and not found.diff.gates
    assert found.next_step == "shadowdb diff-report"
    assert "cell cell1 only" in found.reason


# --------------------------------------------------------------------------- problems


def test_a_backlog_in_dual_write_api_reads_advises_backfill(topology: Topology) -> None:
    _legacy(topology)
    _follow(
        topology,
        [
            "shadowdb phase set dual-write-cell-reads",
            "shadowdb backfill",
            "shadowdb diff-report",
            "shadowdb phase set dual-write-api-reads",
        ],
    )
    # A legacy group beyond every id backfill has scanned (a cell filled further):
    # backfill copies it.
    with topology.cell_engine("cell2").begin() as conn:
        g = models.cell_groups
        top = conn.scalar(sa.select(sa.func.max(g.c.id))) or 0
        conn.execute(
            g.insert().values(
                id=top + 5000,
                uuid=new_uuid(),
                name="arrived-late",
                project_id="p1",
                user_id="u1",
                created_at=utcnow(),
                deleted=0,
            )
        )
    found = _status(topology)
    assert {h.name: h.backlog for h in found.health} == {"cell1": 0, "cell2": 1}
    assert found.next_step == "shadowdb backfill"
    assert "1 live cell group not in the API database (cell2: 1)" in found.reason
    _follow(topology, ["shadowdb backfill", "shadowdb diff-report", "shadowdb phase set api-only"])


def test_a_group_behind_backfills_checkpoints_advises_repair(topology: Topology) -> None:
    _legacy(topology)
    _follow(topology, ["shadowdb phase set dual-write-cell-reads", "shadowdb backfill"])
    # Written into the cell outside shadowdb, inside an id range backfill has finished.
    seed_cell_group(topology.cell_engine("cell1"), name="behind")
    found = _status(topology)
    assert {h.name: h.backlog for h in found.health} == {"cell1": 1, "cell2": 0}
    assert found.next_step == "shadowdb diff-report --repair"
    after = _follow(
        topology,
        ["shadowdb diff-report --repair", "shadowdb backfill", "shadowdb diff-report"],
    )
    assert after.next_step == "shadowdb phase set dual-write-api-reads"
    assert all(h.backlog == 0 for h in after.health)


def test_a_pending_journal_advises_backfill(topology: Topology) -> None:
    _legacy(topology)
    _follow(topology, ["shadowdb phase set dual-write-cell-reads", "shadowdb backfill"])
    # A cell write whose API half failed: the cell copy moved, its journal entry records it.
    uuid = _live_cell_uuid(topology, "cell1")
    with topology.cell_engine("cell1").begin() as conn:
        g = models.cell_groups
        conn.execute(g.update().where(g.c.uuid == uuid).values(name="renamed-in-cell"))
        conn.execute(
            models.cell_journal.insert().values(
                group_uuid=uuid, created_at=utcnow(), epoch=1, error="API database unreachable"
            )
        )
    found = _status(topology)
    assert {h.name: h.journal for h in found.health} == {"cell1": 1, "cell2": 0}
    assert found.next_step == "shadowdb backfill"
    assert "1 journal entry pending" in found.reason
    after = _follow(topology, ["shadowdb backfill", "shadowdb diff-report"])
    assert after.next_step == "shadowdb phase set dual-write-api-reads"
    with reader(topology.dbs.api) as conn:
        record = API.get(conn, uuid)
    assert record is not None and record.name == "renamed-in-cell"


def test_an_unclean_diff_advises_repair_then_backfill_then_diff(topology: Topology) -> None:
    _legacy(topology)
    _follow(topology, ["shadowdb phase set dual-write-cell-reads", "shadowdb backfill"])
    # An API copy that drifted outside any journal (a hand edit): only a diff sees it.
    uuid = _live_cell_uuid(topology, "cell2")
    with topology.dbs.api.begin() as conn:
        g = models.api_groups
        conn.execute(g.update().where(g.c.uuid == uuid).values(name="edited-by-hand"))
    assert _run(topology, "shadowdb diff-report") == 1
    found = _status(topology)
    assert found.diff is not None and found.diff.outcome == "differences"
    assert found.diff.counts == {"field-mismatch": 1} and not found.diff.gates
    after = _follow(
        topology,
        ["shadowdb diff-report --repair", "shadowdb backfill", "shadowdb diff-report"],
    )
    assert after.next_step == "shadowdb phase set dual-write-api-reads"
    _run(topology, after.next_step)


def test_an_api_copy_backfill_may_not_overwrite_advises_repair(topology: Topology) -> None:
    _legacy(topology)
    _follow(topology, ["shadowdb phase set dual-write-cell-reads"])
    # An API copy that differs from its cell copy before backfill ever saw it.
    uuid = _live_cell_uuid(topology, "cell1")
    seed_api_group(topology.dbs.api, uuid=uuid, name="not-the-cell-copy")
    found = _status(topology)
    assert found.next_step == "shadowdb backfill"
    code, _out, _err = _cli(["backfill", "--api-url", topology.api_url_text])
    assert code == 2  # stuck: the conflict is reported, never overwritten
    found = _status(topology)
    assert found.conflicts == {"api-copy-differs": 1}
    assert {h.name: h.conflicts for h in found.health} == {"cell1": 1, "cell2": 0}
    after = _follow(
        topology,
        ["shadowdb diff-report --repair", "shadowdb backfill", "shadowdb diff-report"],
    )
    assert after.conflicts == {}
    assert after.next_step == "shadowdb phase set dual-write-api-reads"
    with reader(topology.dbs.api) as conn:
        record = API.get(conn, uuid)
    assert record is not None and record.name != "not-the-cell-copy"


def test_differences_without_an_authoritative_copy_need_an_operator(topology: Topology) -> None:
    _legacy(topology)
    _follow(topology, ["shadowdb phase set dual-write-cell-reads", "shadowdb backfill"])
    twin = _live_cell_uuid(topology, "cell1")
    seed_cell_group(topology.cell_engine("cell2"), uuid=twin, name="twin")
    # Backfill would refuse the twin again: the advice is no command, and says why.
    _run(topology, "shadowdb diff-report")
    found = _status(topology)
    assert found.next_step is None
    assert "live-in-two-cells" in found.reason and "by hand" in found.reason


def test_a_new_group_live_in_two_cells_needs_an_operator_not_a_loop(topology: Topology) -> None:
    _legacy(topology)
    _follow(topology, ["shadowdb phase set dual-write-cell-reads", "shadowdb backfill"])
    # Written into both cells outside shadowdb, where backfill has already scanned.
    twin = new_uuid()
    for cell in ("cell1", "cell2"):
        seed_cell_group(topology.cell_engine(cell), uuid=twin, name="twin")
    # The diff-report looks, can enqueue no copy for it, and says so: no command after.
    found = _follow(topology, ["shadowdb diff-report --repair", None])
    assert "live-in-two-cells" in found.reason and "by hand" in found.reason


def test_a_stale_diff_advises_diff_report(topology: Topology) -> None:
    _legacy(topology)
    _follow(
        topology,
        ["shadowdb phase set dual-write-cell-reads", "shadowdb backfill", "shadowdb diff-report"],
    )
    with topology.dbs.api.begin() as conn:
        t = models.api_diff_results
        conn.execute(t.update().values(started_at=utcnow().replace(year=utcnow().year - 1)))
    found = _status(topology)
    assert found.diff is not None and not found.diff.recent and not found.diff.gates
    assert found.next_step == "shadowdb diff-report"
    assert "older than diff_max_age" in found.reason
    _follow(topology, ["shadowdb diff-report", "shadowdb phase set dual-write-api-reads"])


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_a_cell_unreachable_advises_nothing_and_says_why(topology: Topology) -> None:
    _legacy(topology)
    _follow(topology, ["shadowdb phase set dual-write-cell-reads", "shadowdb backfill"])
    with proxied(topology.cell_urls["cell2"]) as proxy:
        via = proxy.url_for(topology.cell_urls["cell2"]).render_as_string(hide_password=False)
        with topology.dbs.api.begin() as conn:
            m = models.api_cell_mappings
            conn.execute(m.update().where(m.c.name == "cell2").values(database_connection=via))
        assert _status(topology).next_step == "shadowdb diff-report"
        proxy.cut()
        found = _status(topology)
        down = {h.name: h for h in found.health}["cell2"]
        assert not down.reachable and down.error and down.backlog is None
        assert found.next_step is None
        assert "cannot reach cell cell2" in found.reason and "every cell" in found.reason
        # Indeed nothing gets through: the diff-report and the phase change need cell2.
        code, _out, _err = _cli(["diff-report", "--api-url", topology.api_url_text])
        assert code == 2
        with (
            connect(topology.api_url_text, settings=topology.settings) as dbs,
            pytest.raises((GuardRefused, DatabaseUnreachable)),
        ):
            commands.set_phase(dbs, "dual-write-api-reads")
        proxy.restore()
        assert _status(topology).next_step == "shadowdb diff-report"


@pytest.mark.sqlite
def test_status_shows_a_cell_whose_sqlite_file_is_missing_and_exits_2(
    topology: Topology,
) -> None:
    _legacy(topology)
    path = topology.settings.data_dir / "gone.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    with connect(topology.api_url_text, settings=topology.settings) as dbs:
        commands.add_cell(dbs, "gone", f"sqlite:///{path}", create=True)
    commands.sync_schema(topology.dbs)
    path.unlink()
    code, out, err = _cli(["status", "--api-url", topology.api_url_text])
    assert code == cli.ExitCode.OPERATIONAL, err
    assert "gone" in out and "no: " in out and "next step: none" in out
    assert "cannot reach cell gone" in out
    code, out, err = _cli(["status", "--format", "json", "--api-url", topology.api_url_text])
    assert code == cli.ExitCode.OPERATIONAL, err
    health = {h["name"]: h for h in json.loads(out)["health"]}
    assert not health["gone"]["reachable"] and health["cell1"]["reachable"]
    assert not path.exists()


@pytest.mark.sqlite
def test_a_cell_not_synced_advises_db_sync(topology: Topology) -> None:
    path = topology.settings.data_dir / "late.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    with connect(topology.api_url_text, settings=topology.settings) as dbs:
        commands.add_cell(dbs, "late", f"sqlite:///{path}", create=True)
    found = _status(topology)
    assert found.next_step == "shadowdb db sync"
    assert "cell late" in found.reason
    _follow(topology, ["shadowdb db sync", "shadowdb phase set dual-write-cell-reads"])


def test_api_only_with_a_group_the_api_database_never_had(topology: Topology) -> None:
    _legacy(topology)
    _follow(
        topology,
        [
            "shadowdb phase set dual-write-cell-reads",
            "shadowdb backfill",
            "shadowdb diff-report",
            "shadowdb phase set dual-write-api-reads",
            "shadowdb diff-report",
            "shadowdb phase set api-only",
        ],
    )
    # A group the API database never had, behind backfill's checkpoints.
    seed_cell_group(topology.cell_engine("cell1"), name="never-copied")
    assert _run(topology, "shadowdb diff-report") == 1
    after = _follow(
        topology,
        [
            "shadowdb phase set dual-write-api-reads",
            "shadowdb diff-report --repair",
            "shadowdb backfill",
            "shadowdb diff-report",
            "shadowdb phase set api-only",
            "shadowdb cleanup --yes",
        ],
    )
    assert after.next_step is None and after.cells_retired


def test_every_phase_has_a_next_step_through_the_objects(topology: Topology) -> None:
    # Live writes through the object API in each phase leave nothing the advice misses.
    ctx = RequestContext(topology.dbs, "p1", "u1")
    expected = [
        "shadowdb phase set dual-write-cell-reads",
        "shadowdb backfill",  # the groups written in cell-only
        "shadowdb diff-report",  # those written since reached both databases
        "shadowdb phase set dual-write-api-reads",
        "shadowdb diff-report",
        "shadowdb phase set api-only",
        "shadowdb cleanup --yes",
    ]
    for step in expected:
        group = InstanceGroup(ctx, name="g", project_id="p1", user_id="u1", policies=["affinity"])
        group.create()
        InstanceGroup.add_members(ctx, group.uuid, [new_uuid()])
        topology.dbs.phases.invalidate()
        found = _status(topology)
        assert found.next_step == step, found.reason
        _run(topology, step)


# --------------------------------------------------------------------------- output


def test_status_text_and_json_show_the_next_step(topology: Topology) -> None:
    _legacy(topology)
    code, out, err = _cli(["status", "--api-url", topology.api_url_text])
    assert code == 0, err
    assert "next step: shadowdb phase set dual-write-cell-reads" in out
    assert "why: the groups live in the cells only" in out
    assert "last diff-report: none" in out
    code, out, err = _cli(["status", "--format", "json", "--api-url", topology.api_url_text])
    assert code == 0, err
    data = json.loads(out)
    assert data["next_step"] == "shadowdb phase set dual-write-cell-reads"
    assert data["reason"].startswith("the groups live in the cells only")
    assert data["phase"] == "cell-only" and data["diff"] is None
    assert data["api_database"] == topology.dbs.api_label.removeprefix("API database ")
    assert {h["name"] for h in data["health"]} == {"cell1", "cell2"}
    assert {"backlog", "journal", "conflicts", "reachable"} <= set(data["health"][0])


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_status_masks_the_api_password(topology: Topology) -> None:
    url = topology.api_url.set(password="s3cret-pw")
    code, out, err = _cli(["status", "--format", "json", "--api-url", url.render_as_string(False)])
    # The server may refuse the password; whatever happens, it is never shown.
    assert "s3cret-pw" not in out + err
    if code == 0:
        assert "***" in json.loads(out)["api_database"]


def _live_cell_uuid(topology: Topology, cell: str) -> str:
    g = models.cell_groups
    with topology.cell_engine(cell).connect() as conn:
        return str(
            conn.execute(sa.select(g.c.uuid).where(g.c.deleted == 0).order_by(g.c.id)).scalar()
        )
