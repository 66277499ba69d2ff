"""``shadowdb backfill`` through the CLI: Nova's cases 22-37 (nova-behaviour.md, section 6).

shadowdb copies and never deletes (the cell copy is what makes rollback possible), so
where Nova's cases count groups left in the main database, these count what the API
database gained and that the cell copies are untouched.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from shadowdb import models, signals
from shadowdb.cli import ExitCode
from shadowdb.databases import reader
from shadowdb.guards import UnmigratedCellGroups
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.queries import API, CELL
from shadowdb.state import Phase
from tests.conftest import Topology
from tests.support.cli import Cli, Run, table_rows
from tests.support.helpers import (
    NOW,
    dump,
    group_state,
    new_uuid,
    put_in_phase,
    seed_api_group,
    seed_cell_group,
)

MIGRATE = "migrate_instance_groups"
DRAIN = "drain_journals"


@pytest.fixture
def run(topology: Topology) -> Cli:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    return Cli({"SHADOWDB_API_URL": topology.api_url_text, "SHADOWDB_PHASE_TTL": "0"})


def _table(result: Run) -> dict[str, tuple[int, int]]:
    rows = table_rows(result.out)
    assert rows, result.out
    return {r[0]: (int(r[1]), int(r[2])) for r in rows}


def _api_count(topology: Topology) -> int:
    with reader(topology.dbs.api) as conn:
        return API.count(conn)


def dump_rows(engine: sa.Engine, table: sa.Table) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(table)).all())


def test_case_22_budget_then_rest_then_nothing(topology: Topology, run: Cli) -> None:
    seed_api_group(topology.dbs.api)
    cell = topology.cell_engine("cell1")
    uuids = [seed_cell_group(cell, name=f"g{i}") for i in range(3)]
    before = dump(cell, models.cell_metadata)

    first = run("backfill", "--max-count", "2")
    assert first.code == ExitCode.MORE, first.err
    # The budget was spent before drain_journals: its row stays, at zero.
    assert _table(first) == {MIGRATE: (2, 2), DRAIN: (0, 0)}
    assert "not reached within --max-count 2: drain_journals" in first.lines
    assert "2 rows matched query migrate_instance_groups, 2 migrated" in first.lines
    assert _api_count(topology) == 3

    second = run("backfill", "--max-count", "100")
    assert second.code == ExitCode.MORE
    assert _table(second) == {MIGRATE: (1, 1), DRAIN: (0, 0)}
    assert _api_count(topology) == 4

    third = run("backfill", "--max-count", "100")
    assert third.code == ExitCode.OK
    assert _table(third) == {MIGRATE: (0, 0), DRAIN: (0, 0)}
    assert not any("rows matched" in line for line in third.lines)
    # Copy, never delete: the cell database is exactly as it was, but for the backfill's
    # own child map (shadowdb.childmap), which holds exactly the cell's live children.
    after = dump(cell, models.cell_metadata)
    child_map = after.pop("shadowdb_child_map")
    after.pop("shadowdb_child_map_built")
    assert after == {k: v for k, v in before.items() if not k.startswith("shadowdb_child_map")}
    live = [
        (kind, row.id, row.group_id)
        for kind, table in (("p", models.cell_policies), ("m", models.cell_members))
        for row in dump_rows(cell, table)
        if row.deleted == 0
    ]
    assert child_map == sorted(live, key=repr)
    for uuid in uuids:
        assert group_state(topology.dbs.api, "api", uuid) == group_state(cell, "cell", uuid)


def test_case_23_fields_and_timestamps_are_kept(topology: Topology, run: Cli) -> None:
    cell = topology.cell_engine("cell2")
    seed_api_group(topology.dbs.api)  # the API ids run ahead of the cell's
    members = [new_uuid(), new_uuid()]
    uuid = seed_cell_group(
        cell,
        name="keep",
        project_id="p9",
        user_id="u9",
        policies=["soft-anti-affinity"],
        members=members,
    )
    with cell.begin() as conn:
        conn.execute(
            models.cell_groups.update()
            .where(models.cell_groups.c.uuid == uuid)
            .values(updated_at=NOW.replace(hour=9))
        )
    assert run("backfill").code == ExitCode.OK
    with reader(topology.dbs.api) as conn:
        api_copy = API.get(conn, uuid)
    with reader(cell) as conn:
        cell_copy = CELL.get(conn, uuid)
    assert api_copy is not None and cell_copy is not None
    assert (api_copy.name, api_copy.project_id, api_copy.user_id) == ("keep", "p9", "u9")
    assert api_copy.policies == ("soft-anti-affinity",)
    assert api_copy.members == tuple(members)
    assert (api_copy.created_at, api_copy.updated_at) == (NOW, NOW.replace(hour=9))
    # The API row gets an id of its own: ids are never matched across databases.
    assert api_copy.id != cell_copy.id


def test_case_24_group_already_in_both_is_left_alone(topology: Topology, run: Cli) -> None:
    uuid = new_uuid()
    seed_cell_group(topology.cell_engine("cell1"), uuid=uuid, name="same", policies=["affinity"])
    seed_api_group(topology.dbs.api, uuid=uuid, name="same", policies=["affinity"])
    api_before = dump(topology.dbs.api, models.api_metadata)
    result = run("backfill")
    assert result.code == ExitCode.OK
    assert _table(result) == {MIGRATE: (0, 0), DRAIN: (0, 0)}
    after = dump(topology.dbs.api, models.api_metadata)
    assert after["instance_groups"] == api_before["instance_groups"]
    assert after["instance_group_member"] == api_before["instance_group_member"]
    assert run("backfill").code == ExitCode.OK


def test_case_25_and_37_differing_copies_are_reported_not_overwritten(
    topology: Topology, run: Cli
) -> None:
    uuid, extra = new_uuid(), new_uuid()
    seed_cell_group(topology.cell_engine("cell1"), uuid=uuid, name="g", members=[extra])
    seed_api_group(topology.dbs.api, uuid=uuid, name="g", policies=["anti-affinity"])
    api_before = dump(topology.dbs.api, models.api_metadata)
    for _ in range(2):  # reported again on every run until resolved
        result = run("backfill")
        assert result.code == ExitCode.OPERATIONAL
        assert _table(result)[MIGRATE] == (1, 0)
        assert f"conflict: group {uuid} in cell1: api-copy-differs" in result.out
        assert "stuck" in result.out
    after = dump(topology.dbs.api, models.api_metadata)
    assert after["instance_group_member"] == api_before["instance_group_member"]
    # Resolved (the API copy levelled by hand): the next run forgets the conflict.
    with topology.dbs.api.begin() as conn:
        gid = conn.execute(
            sa.select(models.api_groups.c.id).where(models.api_groups.c.uuid == uuid)
        ).scalar_one()
        conn.execute(models.api_members.insert().values(group_id=gid, instance_uuid=extra))
    assert run("backfill").code == ExitCode.OK
    with reader(topology.dbs.api) as conn:
        assert conn.execute(sa.select(models.api_backfill_conflicts)).all() == []


def test_case_25_uuid_live_in_two_cells_is_a_conflict(topology: Topology, run: Cli) -> None:
    uuid = new_uuid()
    seed_cell_group(topology.cell_engine("cell1"), uuid=uuid, name="twin")
    seed_cell_group(topology.cell_engine("cell2"), uuid=uuid, name="twin")
    result = run("backfill")
    assert result.code == ExitCode.OPERATIONAL
    assert "live-in-two-cells" in result.out
    assert group_state(topology.dbs.api, "api", uuid) is None


def test_case_26_soft_deleted_rows_are_neither_copied_nor_counted(
    topology: Topology, run: Cli
) -> None:
    cell = topology.cell_engine("cell1")
    seed_cell_group(cell, name="gone", deleted=True)
    keep, dropped = new_uuid(), new_uuid()
    uuid = seed_cell_group(cell, name="live", members=[keep, dropped], policies=["affinity"])
    with cell.begin() as conn:
        m = models.cell_members
        conn.execute(
            m.update().where(m.c.instance_id == dropped).values(deleted=m.c.id, deleted_at=NOW)
        )
    result = run("backfill")
    assert _table(result) == {MIGRATE: (1, 1), DRAIN: (0, 0)}
    assert _api_count(topology) == 1
    assert group_state(topology.dbs.api, "api", uuid) == (
        "live",
        "u1",
        "p1",
        ("affinity",),
        (keep,),
    )


def test_case_30_no_user_facing_create_events(topology: Topology, run: Cli) -> None:
    seed_cell_group(topology.cell_engine("cell1"))
    created: list[Any] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        created.append(kwargs)

    signals.group_created.connect(receiver)
    try:
        assert run("backfill").code == ExitCode.OK
    finally:
        signals.group_created.disconnect(receiver)
    assert created == []
    assert _api_count(topology) == 1


def test_case_31_completion_check_passes_with_only_soft_deleted_left(
    topology: Topology, run: Cli
) -> None:
    cell = topology.cell_engine("cell1")
    seed_cell_group(cell, name="deleted", deleted=True)
    seed_cell_group(cell, name="live")
    guard = UnmigratedCellGroups()  # the equivalent of Nova's blocker migration 345

    def reasons() -> list[str]:
        state = topology.dbs.phases.fresh()
        return guard.check(topology.dbs, state, Phase.DUAL_WRITE_API_READS)

    assert len(reasons()) == 1 and "1" in reasons()[0]
    assert run("backfill").code == ExitCode.OK
    assert reasons() == []


@pytest.mark.parametrize("value", ["0", "-1", "abc", "1.5"])
def test_case_32_bad_max_count_is_bad_input(topology: Topology, run: Cli, value: str) -> None:
    seed_cell_group(topology.cell_engine("cell1"))
    before = dump(topology.dbs.api, models.api_metadata)
    result = run("backfill", "--max-count", value)
    assert result.code == ExitCode.BAD_INPUT
    assert "--max-count" in result.only_error()
    assert dump(topology.dbs.api, models.api_metadata) == before


def _journal_groups(topology: Topology, n: int) -> list[str]:
    """Create ``n`` groups whose API copies lag, each with a cell journal entry."""
    ctx = RequestContext(topology.dbs, "p1", "u1")
    uuids = []
    for i in range(n):
        g = InstanceGroup(ctx, name=f"j{i}", project_id="p1", user_id="u1")
        g.create()
        uuids.append(g.uuid)
    with topology.dbs.api.begin() as conn:  # the API copies never arrived
        for table in (models.api_policies, models.api_members):
            conn.execute(table.delete())
        conn.execute(models.api_groups.delete().where(models.api_groups.c.uuid.in_(uuids)))
    with topology.cell_engine("cell1").begin() as conn:
        for uuid in uuids:
            CELL.journal_add(conn, uuid, 1, "test: API write lost")
    return uuids


def test_case_33_budget_is_shared_in_order(topology: Topology, run: Cli) -> None:
    journaled = _journal_groups(topology, 8)
    cell = topology.cell_engine("cell2")
    for i in range(4):
        seed_cell_group(cell, name=f"legacy{i}")
    result = run("backfill", "--max-count", "10")
    assert result.code == ExitCode.MORE
    # migrate_instance_groups found the 4 legacy groups (the journaled ones belong to the
    # replay), drain_journals got the 6 left of the budget.
    assert _table(result) == {MIGRATE: (4, 4), DRAIN: (6, 6)}
    spent = run("backfill", "--max-count", "2")
    assert _table(spent) == {MIGRATE: (0, 0), DRAIN: (2, 2)}
    assert run("backfill").code == ExitCode.OK
    for uuid in journaled:
        assert group_state(topology.dbs.api, "api", uuid) == group_state(
            topology.cell_engine("cell1"), "cell", uuid
        )


def test_case_33_spent_budget_skips_later_migrations(topology: Topology, run: Cli) -> None:
    _journal_groups(topology, 1)
    for i in range(3):
        seed_cell_group(topology.cell_engine("cell2"), name=f"legacy{i}")
    result = run("backfill", "--max-count", "3")
    assert _table(result) == {MIGRATE: (3, 3), DRAIN: (0, 0)}
    assert "not reached within --max-count 3: drain_journals" in result.lines


@pytest.mark.slow
def test_case_34_unlimited_runs_batches_until_one_does_nothing(
    topology: Topology, run: Cli
) -> None:
    cell = topology.cell_engine("cell1")
    with cell.begin() as conn:
        rows = [
            {"uuid": new_uuid(), "name": f"b{i}", "project_id": "p1", "deleted": 0}
            for i in range(120)
        ]
        conn.execute(models.cell_groups.insert(), rows)
    batches: list[Any] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        batches.append(kwargs)

    result = run("backfill")
    assert result.code == ExitCode.OK
    assert result.lines[0] == "Running batches of 50 until complete"
    assert [line for line in result.lines if "rows matched" in line] == [
        "50 rows matched query migrate_instance_groups, 50 migrated",
        "50 rows matched query migrate_instance_groups, 50 migrated",
        "20 rows matched query migrate_instance_groups, 20 migrated",
    ]
    assert _table(result) == {MIGRATE: (120, 120), DRAIN: (0, 0)}
    assert _api_count(topology) == 120


def _break_cell(topology: Topology, name: str) -> None:
    """Point a cell mapping at a database that cannot be reached."""
    if topology.backend == "sqlite":
        url = "sqlite:////nonexistent-shadowdb-folder/cell.sqlite"
    else:
        url = topology.cell_urls[name].set(host="127.0.0.1", port=1)
        url = url.render_as_string(hide_password=False)
    with topology.dbs.api.begin() as conn:
        conn.execute(
            models.api_cell_mappings.update()
            .where(models.api_cell_mappings.c.name == name)
            .values(database_connection=url)
        )


def test_case_29_35_failure_reports_partial_progress_and_others_run(
    topology: Topology, run: Cli
) -> None:
    for i in range(3):
        seed_cell_group(topology.cell_engine("cell1"), name=f"ok{i}")
    _break_cell(topology, "cell2")
    unlimited = run("backfill")
    assert unlimited.code == ExitCode.OPERATIONAL
    # The reachable cell was migrated and counted; both migrations ran and reported.
    assert _table(unlimited) == {MIGRATE: (3, 3), DRAIN: (0, 0)}
    assert "Error attempting to run migrate_instance_groups" in unlimited.out
    assert "Error attempting to run drain_journals" in unlimited.out
    assert _api_count(topology) == 3


def test_case_35_max_count_with_progress_is_not_an_error(topology: Topology, run: Cli) -> None:
    for i in range(3):
        seed_cell_group(topology.cell_engine("cell1"), name=f"ok{i}")
    _break_cell(topology, "cell2")
    limited = run("backfill", "--max-count", "2")
    # Something else progressed in the batch: exit 1, not 2 (Nova's rule).
    assert limited.code == ExitCode.MORE
    nothing = run("backfill", "--max-count", "50")
    assert nothing.code == ExitCode.MORE  # one more copied
    last = run("backfill", "--max-count", "50")
    assert last.code == ExitCode.OPERATIONAL  # an error and nothing progressed


def test_case_36_table_is_sorted_with_nova_columns(topology: Topology, run: Cli) -> None:
    seed_cell_group(topology.cell_engine("cell1"))
    result = run("backfill")
    header = next(line for line in result.lines if "Migration" in line)
    assert [h.strip() for h in header.strip().strip("┃").split("┃")] == [
        "Migration",
        "Total Needed",
        "Completed",
    ]
    assert list(_table(result)) == sorted(_table(result))


def test_json_output(topology: Topology, run: Cli) -> None:
    seed_cell_group(topology.cell_engine("cell1"))
    result = run("backfill", "--format", "json")
    data = result.json()
    assert data["outcome"] == "done" and data["exit_code"] == 0
    assert {t["migration"]: (t["found"], t["done"]) for t in data["totals"]} == {
        MIGRATE: (1, 1),
        DRAIN: (0, 0),
    }


def test_refused_outside_the_dual_write_phases(topology: Topology, run: Cli) -> None:
    put_in_phase(topology.dbs, Phase.CELL_ONLY)
    seed_cell_group(topology.cell_engine("cell1"))
    result = run("backfill")
    assert result.code == ExitCode.REFUSED
    assert "cell-only" in result.only_error()
    assert _api_count(topology) == 0


def test_unknown_cell_is_bad_input(topology: Topology, run: Cli) -> None:
    result = run("backfill", "--cell", "nope")
    assert result.code == ExitCode.BAD_INPUT
    assert "nope" in result.only_error()


def test_one_cell_only(topology: Topology, run: Cli) -> None:
    a = seed_cell_group(topology.cell_engine("cell1"))
    b = seed_cell_group(topology.cell_engine("cell2"))
    assert run("backfill", "--cell", "cell2").code == ExitCode.OK
    assert group_state(topology.dbs.api, "api", a) is None
    assert group_state(topology.dbs.api, "api", b) is not None
