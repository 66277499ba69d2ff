"""get_hosts and count_members_by_user: what they answer, what they ask, how they fail."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from shadowdb import commands, models
from shadowdb import hosts as hosts_mod
from shadowdb.databases import connect, create_engine
from shadowdb.errors import CellUnavailable, GroupNotFound, OperationalError
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.state import Phase
from shadowdb.testing import StatementCounter
from tests.conftest import Topology
from tests.support.backends import Server
from tests.support.helpers import (
    NOW,
    engines_of,
    map_instance,
    new_uuid,
    put_in_phase,
    seed_api_group,
    seed_cell_group,
    seed_instance,
)


def _group_in(topology: Topology, phase: Phase, members: Sequence[str]) -> str:
    """Create a group with ``members`` where ``phase`` reads it from (both sides if dual)."""
    put_in_phase(topology.dbs, phase)
    uuid = new_uuid()
    if phase is not Phase.API_ONLY:
        seed_cell_group(topology.cell_engine("cell1"), uuid=uuid, name="g", members=members)
    if phase is not Phase.CELL_ONLY:
        seed_api_group(topology.dbs.api, uuid=uuid, name="g", members=members)
    return uuid


def _bulk(topology: Topology, cell: str, rows: Sequence[tuple[str, str | None]]) -> None:
    """Insert (uuid, host) live instances into ``cell`` and map them, in two statements."""
    dbs = topology.dbs
    with topology.cell_engine(cell).begin() as conn:
        conn.execute(
            models.cell_instances.insert(),
            [
                {
                    "uuid": u,
                    "host": h,
                    "project_id": "p1",
                    "user_id": "u1",
                    "vm_state": "active",
                    "deleted": 0,
                    "created_at": NOW,
                }
                for u, h in rows
            ],
        )
    with dbs.api.begin() as conn:
        conn.execute(
            models.api_instance_mappings.insert(),
            [
                {"instance_uuid": u, "cell_id": dbs.cell(cell).id, "project_id": "p1"}
                for u, _ in rows
            ],
        )


def _seed(topology: Topology, cell: str, host: str | None, **kwargs: object) -> str:
    uuid = new_uuid()
    seed_instance(topology.cell_engine(cell), uuid, host=host, **kwargs)  # type: ignore[arg-type]
    map_instance(topology.dbs, uuid, cell, str(kwargs.get("project_id", "p1")))
    return uuid


def _unreachable(topology: Topology, name: str) -> None:
    """Aim cell ``name``'s engine at a database that cannot be reached."""
    dbs = topology.dbs
    if topology.backend == "sqlite":
        url = sa.make_url(f"sqlite:///{topology.settings.data_dir}/missing/folder/cell.sqlite")
    else:
        driver = "mysql+pymysql" if topology.backend == "mysql" else "postgresql+psycopg"
        url = sa.make_url(f"{driver}://nobody@127.0.0.1:1/nowhere")
    bad = create_engine(url, topology.settings)
    dbs._cells = tuple(
        dataclasses.replace(c, engine=bad) if c.name == name else c for c in dbs.cells
    )


@pytest.fixture
def routed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Route members even between two cells, as deployments of three or more cells do."""
    monkeypatch.setattr(hosts_mod, "SCATTER_UP_TO", 1)


def _third_cell(topology: Topology, server: Server, tmp_path: Path) -> Iterator[str]:
    """Register a third cell, ``cell3``, behind ``topology.dbs``'s back; yield its name."""
    assert [c.name for c in topology.dbs.cells] == ["cell1", "cell2"]  # read before cell3
    if server.backend == "sqlite":
        url = sa.URL.create("sqlite+pysqlite", database=str(tmp_path / "cell3.sqlite"))
    else:
        name = f"{topology.cell_urls['cell1'].database}_cell3"
        url = server.create(name)
    with connect(topology.api_url_text, settings=topology.settings) as other:
        commands.add_cell(other, "cell3", url.render_as_string(hide_password=False), create=True)
        commands.sync_schema(other)
    try:
        yield "cell3"
    finally:
        if server.backend != "sqlite":
            topology.dbs.dispose()
            server.drop(str(url.database))


@pytest.fixture
def third_cell(topology: Topology, server: Server, tmp_path: Path) -> Iterator[str]:
    """A third cell registered after ``topology.dbs`` read its list of cells."""
    yield from _third_cell(topology, server, tmp_path)


# --------------------------------------------------------------------------- topologies


@pytest.mark.parametrize("phase", list(Phase))
def test_one_cell_besides_cell0_is_asked_directly(single_cell: Topology, phase: Phase) -> None:
    topology = single_cell
    dbs = topology.dbs
    live = [_seed(topology, "cell1", "h1"), _seed(topology, "cell1", "h2")]
    gone = _seed(topology, "cell1", "h3", deleted=True)
    failed = _seed(topology, "cell0", None)  # never scheduled: cell0, no host
    unmapped = new_uuid()
    seed_instance(topology.cell_engine("cell1"), unmapped, host="h4")
    members = [*live, gone, failed, unmapped]
    uuid = _group_in(topology, phase, members)
    ctx = RequestContext(dbs, "p1", "u1")
    group = InstanceGroup.get_by_uuid(ctx, uuid)
    with StatementCounter(engines_of(dbs)) as counter:
        assert group.get_hosts() == ["h1", "h2", "h4"]
        assert group.count_members_by_user("u1") == 3
    # No routing statement, cell0 never asked: one statement on cell1 per question.
    assert counter.counts == {"api": 0, "cell0": 0, "cell1": 2}, counter.statements
    assert not [s for _, s in counter.statements if "instance_mappings" in s]


def test_a_cell_registered_while_the_process_runs_is_asked_after_the_next_phase_read(
    single_cell: Topology, server: Server, tmp_path: Path
) -> None:
    """With one cell no routing runs, so the periodic phase read is what reveals a new
    cell: its statement carries a fingerprint of ``cell_mappings``."""
    topology = single_cell
    dbs = topology.dbs
    a = _seed(topology, "cell1", "h1")
    b = new_uuid()  # to boot in a cell not registered yet
    ctx = RequestContext(dbs, "p1", "u1")
    group = InstanceGroup.get_by_uuid(ctx, _group_in(topology, Phase.API_ONLY, [a, b]))
    assert group.get_hosts() == ["h1"]
    if server.backend == "sqlite":
        url = sa.URL.create("sqlite+pysqlite", database=str(tmp_path / "late.sqlite"))
    else:
        url = server.create(f"{topology.cell_urls['cell1'].database}_late")
    try:
        with connect(topology.api_url_text, settings=topology.settings) as other:
            commands.add_cell(other, "late", url.render_as_string(hide_password=False), create=True)
            commands.sync_schema(other)
            seed_instance(other.cell("late").engine, b, host="h9")
        assert [c.name for c in dbs.cells] == ["cell0", "cell1"]  # not read again yet
        dbs.phases.fresh()  # the periodic read, as when the phase cache expires
        assert group.get_hosts() == ["h1", "h9"]
        assert [c.name for c in dbs.cells] == ["cell0", "cell1", "late"]
    finally:
        if server.backend != "sqlite":
            dbs.dispose()
            server.drop(str(url.database))


def test_a_deployment_of_cell0_alone_asks_nothing(single_cell: Topology) -> None:
    dbs = single_cell.dbs
    dbs._cells = tuple(c for c in dbs.cells if c.is_cell0)
    member = _seed(single_cell, "cell0", None)
    with StatementCounter(engines_of(dbs)) as counter:
        assert hosts_mod.hosts_of(dbs, [member]) == []
    assert counter.total() == 0, counter.statements


def test_two_cells_are_both_asked_without_routing(topology: Topology) -> None:
    a = _seed(topology, "cell1", "h1")
    b = _seed(topology, "cell1", "h2")
    unmapped = new_uuid()
    seed_instance(topology.cell_engine("cell2"), unmapped, host="h3")
    ctx = RequestContext(topology.dbs, "p1", "u1")
    group = InstanceGroup.get_by_uuid(ctx, _group_in(topology, Phase.API_ONLY, [a, b, unmapped]))
    with StatementCounter(engines_of(topology.dbs)) as counter:
        assert group.get_hosts() == ["h1", "h2", "h3"]
    # Both cells asked about every member, even the one holding none of the mapped ones.
    assert counter.counts == {"api": 0, "cell1": 1, "cell2": 1}, counter.statements
    assert hosts_mod.targets(topology.dbs, [a]) == {c: [a] for c in topology.dbs.cells}


def test_three_cells_are_routed(topology: Topology, third_cell: str) -> None:
    dbs = topology.dbs
    dbs.refresh_cells()
    a = _seed(topology, "cell1", "h1")
    c = _seed(topology, third_cell, "h3")
    ctx = RequestContext(dbs, "p1", "u1")
    group = InstanceGroup.get_by_uuid(ctx, _group_in(topology, Phase.API_ONLY, [a, c]))
    with StatementCounter(engines_of(dbs)) as counter:
        assert group.get_hosts() == ["h1", "h3"]
    assert counter.counts == {"api": 1, "cell1": 1, "cell2": 0, "cell3": 1}, counter.statements


@pytest.mark.parametrize("phase", list(Phase))
def test_hosts_are_the_distinct_hosts_of_live_members(topology: Topology, phase: Phase) -> None:
    live = [_seed(topology, "cell1", "h1"), _seed(topology, "cell1", "h1")]
    null_state = _seed(topology, "cell1", "h4", vm_state=None)  # live: NULL is not soft-delete
    gone = [
        _seed(topology, "cell1", "h2", deleted=True),
        _seed(topology, "cell1", "h3", vm_state="soft-delete"),
        _seed(topology, "cell1", None),
    ]
    excluded = _seed(topology, "cell1", "h5")
    unknown = new_uuid()  # a member whose instance row is gone for good
    members = [*live, null_state, *gone, excluded, unknown]
    uuid = _group_in(topology, phase, members)
    ctx = RequestContext(topology.dbs, "p1", "u1")
    group = InstanceGroup.get_by_uuid(ctx, uuid)
    assert group.get_hosts() == ["h1", "h4", "h5"]
    assert group.get_hosts(exclude=[excluded]) == ["h1", "h4"]
    assert group.hosts == ["h1", "h4", "h5"]  # lazy load
    assert "hosts" not in group.obj_what_changed()


def test_members_in_two_cells_are_asked_concurrently_once_each(topology: Topology) -> None:
    a = _seed(topology, "cell1", "h1")
    b = _seed(topology, "cell2", "h2")
    uuid = _group_in(topology, Phase.API_ONLY, [a, b])
    ctx = RequestContext(topology.dbs, "p1", "u1")
    group = InstanceGroup.get_by_uuid(ctx, uuid)
    with StatementCounter(engines_of(topology.dbs)) as counter:
        assert group.get_hosts() == ["h1", "h2"]
    # Two cells: no routing statement, one statement per cell.
    assert counter.counts == {"api": 0, "cell1": 1, "cell2": 1}, counter.statements


def test_members_of_one_cell_leave_the_other_cell_alone(topology: Topology, routed: None) -> None:
    a = _seed(topology, "cell2", "h2")
    ctx = RequestContext(topology.dbs, "p1", "u1")
    group = InstanceGroup.get_by_uuid(ctx, _group_in(topology, Phase.API_ONLY, [a]))
    with StatementCounter(engines_of(topology.dbs)) as counter:
        assert group.get_hosts() == ["h2"]
    assert counter.counts == {"api": 1, "cell1": 0, "cell2": 1}, counter.statements


def test_unmapped_members_are_asked_of_every_cell(topology: Topology, routed: None) -> None:
    a, b = new_uuid(), new_uuid()
    seed_instance(topology.cell_engine("cell1"), a, host="h1")
    seed_instance(topology.cell_engine("cell2"), b, host="h2")
    ctx = RequestContext(topology.dbs, "p1", "u1")
    group = InstanceGroup.get_by_uuid(ctx, _group_in(topology, Phase.API_ONLY, [a, b]))
    with StatementCounter(engines_of(topology.dbs)) as counter:
        assert group.get_hosts() == ["h1", "h2"]
    assert counter.counts == {"api": 1, "cell1": 1, "cell2": 1}, counter.statements


def test_members_mapped_to_no_cell_yet_are_asked_of_every_cell(
    topology: Topology, routed: None
) -> None:
    # Nova writes an instance mapping with a NULL cell_id before the instance is
    # scheduled; such members may be anywhere, like unmapped ones.
    dbs = topology.dbs
    a, b, c = new_uuid(), new_uuid(), _seed(topology, "cell1", "h3")
    seed_instance(topology.cell_engine("cell1"), a, host="h1")
    seed_instance(topology.cell_engine("cell2"), b, host="h2")
    with dbs.api.begin() as conn:
        conn.execute(
            models.api_instance_mappings.insert(),
            [{"instance_uuid": u, "cell_id": None, "project_id": "p1"} for u in (a, b)],
        )
    with StatementCounter(engines_of(dbs)) as counter:
        assert hosts_mod.hosts_of(dbs, [a, b, c]) == ["h1", "h2", "h3"]
    assert counter.counts == {"api": 1, "cell1": 1, "cell2": 1}, counter.statements
    routed = hosts_mod.route(dbs, sorted([a, b, c]))
    assert {cell.name: sorted(uuids) for cell, uuids in routed.items()} == {
        "cell1": sorted([a, b, c]),
        "cell2": sorted([a, b]),
    }


@pytest.mark.parametrize(("strategy", "routings"), [("scatter", 0), ("routing", 2)])
def test_thousands_of_members_take_one_statement_per_database(
    topology: Topology, monkeypatch: pytest.MonkeyPatch, strategy: str, routings: int
) -> None:
    if strategy == "routing":
        monkeypatch.setattr(hosts_mod, "SCATTER_UP_TO", 1)
    rows1 = [(new_uuid(), f"c1-{n % 37}") for n in range(2200)]
    rows2 = [(new_uuid(), None if n % 2 else f"c2-{n % 5}") for n in range(1300)]
    _bulk(topology, "cell1", rows1)
    _bulk(topology, "cell2", rows2)
    members = [u for u, _ in rows1 + rows2]
    excluded = [u for u, h in rows1 if h == "c1-0"]
    ctx = RequestContext(topology.dbs, "p1", "u1")
    group = InstanceGroup(ctx, uuid=new_uuid(), members=members)
    expected = sorted({h for _, h in rows1 + rows2 if h is not None})
    with StatementCounter(engines_of(topology.dbs)) as counter:
        assert group.get_hosts() == expected
        assert group.get_hosts(exclude=excluded) == [h for h in expected if h != "c1-0"]
    assert counter.counts == {"api": routings, "cell1": 2, "cell2": 2}, counter.statements
    assert group.count_members_by_user("u1") == 3500


def _api_group_over(
    topology: Topology, rows: Sequence[tuple[str, str | None]], policies: Sequence[str] = ()
) -> tuple[str, list[str]]:
    """Seed (uuid, host) instances in cell1 and an api-only group of them, in bulk.

    Returns the group's uuid and its members in stored order.
    """
    dbs = topology.dbs
    _bulk(topology, "cell1", rows)
    members = [u for u, _ in rows]
    put_in_phase(dbs, Phase.API_ONLY)
    uuid = seed_api_group(dbs.api, policies=policies or ("affinity",))
    with dbs.api.begin() as conn:
        groups = models.api_groups
        gid = conn.execute(sa.select(groups.c.id).where(groups.c.uuid == uuid)).scalar_one()
        conn.execute(
            models.api_members.insert(), [{"group_id": gid, "instance_uuid": m} for m in members]
        )
    return uuid, members


def test_lists_beyond_the_servers_default_concat_limit(topology: Topology, routed: None) -> None:
    # 40,000 members: MariaDB returns member lists and routings packed in one value
    # (shadowdb.packed), here 1.5 MiB, beyond its default group_concat_max_len (1 MiB).
    dbs = topology.dbs
    rows = [(new_uuid(), f"h-{n % 3}") for n in range(40_000)]
    uuid, members = _api_group_over(topology, rows, policies=("affinity", "soft-affinity"))
    ctx = RequestContext(dbs, "p1", "u1")
    group = InstanceGroup.get_by_uuid(ctx, uuid)
    assert list(group.members) == members  # in stored order
    assert list(group.policies) == ["affinity", "soft-affinity"]
    with StatementCounter(engines_of(dbs)) as counter:
        assert group.get_hosts() == ["h-0", "h-1", "h-2"]
    assert counter.counts == {"api": 1, "cell1": 1, "cell2": 0}, counter.statements


def test_member_uuids_holding_quotes_and_backslashes_are_matched_exactly(
    topology: Topology,
) -> None:
    # Nova's uuids are plain, but a member list is data: whatever it holds must reach
    # the database intact (on MariaDB it travels as a hex literal, shadowdb.packed.Hex).
    odd = ["it's", 'say "hi"', "back\\slash", "%s%%", "naïve-é", "x'; DROP TABLE instances; --"]
    _bulk(topology, "cell1", [(u, f"host-{n}") for n, u in enumerate(odd)])
    plain = _seed(topology, "cell1", "host-plain")
    assert hosts_mod.hosts_of(topology.dbs, [*odd, plain]) == sorted(
        [*(f"host-{n}" for n in range(len(odd))), "host-plain"]
    )
    assert hosts_mod.hosts_of(topology.dbs, [odd[0], "it''s", "it\\'s"]) == ["host-0"]


def _limit_group_concat(engine: sa.Engine, limit: int) -> None:
    """Make every new connection of ``engine`` pack lists of at most ``limit`` bytes."""
    engine.dispose()

    def lower(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET SESSION group_concat_max_len = {limit}")

    sa.event.listen(engine, "connect", lower)


@pytest.mark.parametrize("backend", [pytest.param("mysql", marks=pytest.mark.mysql)], indirect=True)
def test_a_packed_list_cut_short_is_an_error_never_a_shorter_answer(
    topology: Topology, routed: None
) -> None:
    dbs = topology.dbs
    uuid, members = _api_group_over(topology, [(new_uuid(), f"host-{n:03d}") for n in range(40)])
    for engine in (dbs.api_fast, dbs.read_engine(dbs.cell("cell1").engine)):
        _limit_group_concat(engine, 256)  # 40 terminated uuids take 1,480 bytes
    ctx = RequestContext(dbs, "p1", "u1")
    with pytest.raises(OperationalError, match="list of 40 members came back cut short"):
        InstanceGroup.get_by_uuid(ctx, uuid)
    with capture_logs() as logs, pytest.raises(CellUnavailable) as raised:
        hosts_mod.hosts_of(dbs, members)
    # The routing was cut short too: every member went to every cell, and cell1's
    # answer, cut short, failed the call instead of dropping hosts.
    assert any(e["event"] == "routing_unavailable" for e in logs)
    assert raised.value.cells == ("cell1",)
    assert "group_concat_max_len" in str(raised.value)
    assert len(hosts_mod.hosts_of(dbs, members, allow_partial=True).failed_cells) == 1


@pytest.mark.parametrize("phase", list(Phase))
def test_empty_group_asks_no_cell(topology: Topology, phase: Phase) -> None:
    only = _seed(topology, "cell1", "h1")
    ctx = RequestContext(topology.dbs, "p1", "u1")
    empty = InstanceGroup.get_by_uuid(ctx, _group_in(topology, phase, []))
    full = InstanceGroup.get_by_uuid(ctx, _group_in(topology, phase, [only]))
    with StatementCounter(engines_of(topology.dbs)) as counter:
        assert empty.get_hosts() == []
        assert full.get_hosts(exclude=[only]) == []
        assert empty.count_members_by_user("u1") == 0
    assert counter.total() == 0, counter.statements


def test_non_admins_see_only_their_projects_instances(topology: Topology) -> None:
    mine = _seed(topology, "cell1", "h1", project_id="p1")
    theirs = _seed(topology, "cell1", "h2", project_id="p2")
    theirs_too = _seed(topology, "cell2", "h3", project_id="p2", user_id="u1")
    uuid = _group_in(topology, Phase.API_ONLY, [mine, theirs, theirs_too])
    user = InstanceGroup.get_by_uuid(RequestContext(topology.dbs, "p1", "u1"), uuid)
    admin = InstanceGroup.get_by_uuid(RequestContext(topology.dbs, "p9", "a", True), uuid)
    assert user.get_hosts() == ["h1"]
    assert admin.get_hosts() == ["h1", "h2", "h3"]
    assert user.count_members_by_user("u1") == 1
    assert admin.count_members_by_user("u1") == 3


def test_count_members_by_user_counts_live_instances_of_that_user(topology: Topology) -> None:
    members = [
        _seed(topology, "cell1", "h1"),
        _seed(topology, "cell2", None),  # not placed yet: still a live instance
        _seed(topology, "cell1", "h1", user_id="u2"),
        _seed(topology, "cell1", "h1", deleted=True),
        _seed(topology, "cell2", "h1", vm_state="soft-delete"),
    ]
    ctx = RequestContext(topology.dbs, "p1", "u1")
    group = InstanceGroup.get_by_uuid(ctx, _group_in(topology, Phase.DUAL_WRITE_API_READS, members))
    assert group.count_members_by_user("u1") == 2
    assert group.count_members_by_user("u2") == 1


def test_a_failed_cell_raises_naming_it(topology: Topology) -> None:
    a = _seed(topology, "cell1", "h1")
    b = _seed(topology, "cell2", "h2")
    ctx = RequestContext(topology.dbs, "p1", "u1")
    group = InstanceGroup.get_by_uuid(ctx, _group_in(topology, Phase.API_ONLY, [a, b]))
    _unreachable(topology, "cell2")
    with capture_logs() as logs, pytest.raises(CellUnavailable) as raised:
        group.get_hosts()
    assert raised.value.cells == ("cell2",)
    assert "cell2" in str(raised.value)
    assert any(e["event"] == "cell_unavailable" and e["cell"] == "cell2" for e in logs)
    with pytest.raises(CellUnavailable):
        group.count_members_by_user("u1")


def test_a_failed_cell_gives_a_flagged_partial_answer_when_asked(
    topology: Topology, routed: None
) -> None:
    a = _seed(topology, "cell1", "h1")
    b = _seed(topology, "cell2", "h2")
    ctx = RequestContext(topology.dbs, "p1", "u1")
    group = InstanceGroup.get_by_uuid(ctx, _group_in(topology, Phase.API_ONLY, [a, b]))
    _unreachable(topology, "cell2")
    with capture_logs() as logs:
        hosts = group.get_hosts(allow_partial=True)
    assert hosts == ["h1"]
    assert hosts.partial and hosts.failed_cells == ("cell2",)
    assert any(e["event"] == "partial_hosts" and e["log_level"] == "warning" for e in logs)
    # A cell that holds none of the members is not asked, so it cannot fail the call.
    only_cell1 = InstanceGroup(ctx, uuid=new_uuid(), members=[a])
    assert only_cell1.get_hosts() == ["h1"]


def test_between_two_cells_a_failed_cell_fails_the_call_even_holding_no_member(
    topology: Topology,
) -> None:
    a = _seed(topology, "cell1", "h1")
    ctx = RequestContext(topology.dbs, "p1", "u1")
    only_cell1 = InstanceGroup(ctx, uuid=new_uuid(), members=[a])
    _unreachable(topology, "cell2")
    # Asked without routing, cell2 might hold a member: its failure is never skipped.
    with pytest.raises(CellUnavailable) as raised:
        only_cell1.get_hosts()
    assert raised.value.cells == ("cell2",)
    hosts = only_cell1.get_hosts(allow_partial=True)
    assert hosts == ["h1"] and hosts.failed_cells == ("cell2",)


def test_an_unknown_cell_id_refreshes_the_cell_list_once(
    topology: Topology, routed: None, third_cell: str
) -> None:
    # The process read the list before cell3 was registered: routing meets its id.
    dbs = topology.dbs
    a = _seed(topology, "cell1", "h1")
    c = new_uuid()
    with connect(topology.api_url_text, settings=topology.settings) as current:
        seed_instance(current.cell(third_cell).engine, c, host="h3")
        map_instance(current, c, third_cell)
    group = InstanceGroup(RequestContext(dbs, "p1", "u1"), uuid=new_uuid(), members=[a, c])
    assert group.get_hosts() == ["h1", "h3"]
    assert [c.name for c in dbs.cells] == ["cell1", "cell2", "cell3"]


def test_hosts_of_takes_members_directly(topology: Topology) -> None:
    a = _seed(topology, "cell1", "h1")
    assert hosts_mod.hosts_of(topology.dbs, [a, a]) == ["h1"]
    assert hosts_mod.hosts_of(topology.dbs, [a], project_id="p2") == []
    assert hosts_mod.hosts_of(topology.dbs, []) == []


# --------------------------------------------------------------------------- group lookups


def _cache_phase(topology: Topology) -> None:
    """Serve the phase from the cache for the rest of the test, as a running service does."""
    phases = topology.dbs.phases
    phases.get()
    phases._ttl = 3600.0


@pytest.mark.parametrize("phase", list(Phase))
def test_instance_in_no_group_costs_one_lookup_per_database(
    topology: Topology, phase: Phase
) -> None:
    dbs = topology.dbs
    put_in_phase(dbs, phase)
    seed_cell_group(topology.cell_engine("cell1"), members=[new_uuid()])
    seed_api_group(dbs.api, members=[new_uuid()])
    ctx = RequestContext(dbs, "p1", "u1")
    _cache_phase(topology)
    with StatementCounter(engines_of(dbs)) as counter, pytest.raises(GroupNotFound):
        InstanceGroup.get_by_instance_uuid(ctx, new_uuid())
    lookups = {
        name: [s for n, s in counter.statements if n == name and "instance_group_member" in s]
        for name in counter.counts
    }
    reads_api = phase in (Phase.DUAL_WRITE_API_READS, Phase.API_ONLY)
    reads_cells = phase is not Phase.API_ONLY
    assert len(lookups["api"]) == (1 if reads_api else 0)
    assert len(lookups["cell1"]) == len(lookups["cell2"]) == (1 if reads_cells else 0)
    # Nothing but those lookups: dual-write-api-reads reads the phase row (before it
    # falls back to the cells) in its API lookup's statement.
    others = [s for n, s in counter.statements if "instance_group_member" not in s]
    assert others == [], others
    if phase is Phase.DUAL_WRITE_API_READS:
        assert "shadowdb_state" in lookups["api"][0]
    # Each lookup is a single indexed probe: the member index, joined to the group row.
    for statement in [s for found in lookups.values() for s in found]:
        assert "JOIN instance_groups" in statement


@pytest.mark.parametrize("phase", list(Phase))
def test_group_of_an_instance_loads_in_two_statements(topology: Topology, phase: Phase) -> None:
    dbs = topology.dbs
    member = new_uuid()
    uuid = _group_in(topology, phase, [member, new_uuid()])
    ctx = RequestContext(dbs, "p1", "u1")
    _cache_phase(topology)
    with StatementCounter(engines_of(dbs)) as counter:
        group = InstanceGroup.get_by_instance_uuid(ctx, member)
    assert group.uuid == uuid and group.members[0] == member
    assert counter.total() == 2, counter.statements
    # Another project's caller does not see it (Nova: the member lookup is unscoped, the
    # group is not).
    with pytest.raises(GroupNotFound):
        InstanceGroup.get_by_instance_uuid(RequestContext(dbs, "p2", "u2"), member)
