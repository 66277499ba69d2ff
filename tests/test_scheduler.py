"""The scheduler's view of groups: group details, host checks, a cheap import."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa

from shadowdb import hosts as hosts_mod
from shadowdb.errors import CellUnavailable, UnsupportedPolicy
from shadowdb.objects import RequestContext
from shadowdb.scheduler import (
    AFFINITY_FILTER,
    ALL_ENABLED,
    SOFT_ANTI_AFFINITY_WEIGHER,
    Enabled,
    GroupDetails,
    affinity_passes,
    anti_affinity_passes,
    get_group_details,
    members_on_host,
    soft_affinity_weight,
    soft_anti_affinity_weight,
)
from shadowdb.state import Phase
from shadowdb.testing import StatementCounter
from tests.conftest import Topology
from tests.support.helpers import (
    engines_of,
    map_instance,
    new_uuid,
    put_in_phase,
    seed_api_group,
    seed_cell_group,
    seed_instance,
)
from tests.test_hosts import _cache_phase, _unreachable

ROOT = Path(__file__).resolve().parent.parent


def _placed(topology: Topology, cell: str, host: str | None) -> str:
    uuid = new_uuid()
    seed_instance(topology.cell_engine(cell), uuid, host=host)
    map_instance(topology.dbs, uuid, cell)
    return uuid


def _group(topology: Topology, phase: Phase, members: list[str], policy: str) -> str:
    put_in_phase(topology.dbs, phase)
    uuid = new_uuid()
    if phase is not Phase.API_ONLY:
        seed_cell_group(
            topology.cell_engine("cell1"), uuid=uuid, members=members, policies=[policy]
        )
    if phase is not Phase.CELL_ONLY:
        seed_api_group(topology.dbs.api, uuid=uuid, members=members, policies=[policy])
    return uuid


@pytest.mark.parametrize("phase", list(Phase))
def test_affinity_group_with_its_member_in_cell2_rejects_a_cell1_host(
    topology: Topology, phase: Phase
) -> None:
    old = _placed(topology, "cell2", "cell2-host")
    new = _placed(topology, "cell1", None)  # being scheduled
    uuid = _group(topology, phase, [old, new], "affinity")
    ctx = RequestContext(topology.dbs, "p1", "u1")
    details = get_group_details(ctx, new, user_group_hosts=["chosen-earlier"])
    assert details == GroupDetails(
        uuid=uuid,
        policies=("affinity",),
        members=(old, new),
        hosts=frozenset({"cell2-host", "chosen-earlier"}),
    )
    assert not affinity_passes("cell1-host", details.hosts)
    assert affinity_passes("cell2-host", details.hosts)


def test_anti_affinity_across_cells(topology: Topology) -> None:
    a = _placed(topology, "cell1", "h1")
    b = _placed(topology, "cell2", "h2")
    new = _placed(topology, "cell1", None)
    _group(topology, Phase.DUAL_WRITE_CELL_READS, [a, b, new], "anti-affinity")
    details = get_group_details(RequestContext(topology.dbs, "p1", "u1"), new)
    assert details is not None and details.hosts == {"h1", "h2"}
    assert not anti_affinity_passes("h2", details.hosts)
    assert anti_affinity_passes("h3", details.hosts)
    # A move: the instance's own host does not conflict with itself.
    assert anti_affinity_passes("h1", details.hosts, current_host="h1")


@pytest.mark.parametrize("phase", list(Phase))
def test_no_details_without_an_instance_or_a_group(topology: Topology, phase: Phase) -> None:
    put_in_phase(topology.dbs, phase)
    ctx = RequestContext(topology.dbs, "p1", "u1")
    assert get_group_details(ctx, None) is None
    assert get_group_details(ctx, "") is None
    assert get_group_details(ctx, new_uuid()) is None
    member = _placed(topology, "cell1", "h1")
    _group(topology, phase, [member], "affinity")
    assert get_group_details(ctx, member) is not None


def test_group_without_a_scheduling_policy_gives_no_details(topology: Topology) -> None:
    put_in_phase(topology.dbs, Phase.API_ONLY)
    member = _placed(topology, "cell1", "h1")
    seed_api_group(topology.dbs.api, members=[member], policies=[])
    assert get_group_details(RequestContext(topology.dbs, "p1", "u1"), member) is None


@pytest.mark.parametrize(
    ("policy", "enabled"),
    [
        ("affinity", Enabled.of(filters=["ServerGroupAntiAffinityFilter"])),
        ("anti-affinity", Enabled.of(filters=[AFFINITY_FILTER])),
        ("soft-affinity", Enabled.of(weighers=[SOFT_ANTI_AFFINITY_WEIGHER])),
        ("soft-anti-affinity", Enabled.of()),
    ],
)
def test_policy_without_its_filter_or_weigher_is_unsupported(
    topology: Topology, policy: str, enabled: Enabled
) -> None:
    member = _placed(topology, "cell1", "h1")
    _group(topology, Phase.API_ONLY, [member], policy)
    ctx = RequestContext(topology.dbs, "p1", "u1")
    with pytest.raises(UnsupportedPolicy) as raised:
        get_group_details(ctx, member, enabled=enabled)
    assert raised.value.policy == policy
    assert get_group_details(ctx, member, enabled=ALL_ENABLED) is not None


def test_a_failed_cell_fails_the_details_or_flags_them(topology: Topology) -> None:
    a = _placed(topology, "cell1", "h1")
    b = _placed(topology, "cell2", "h2")
    _group(topology, Phase.API_ONLY, [a, b], "anti-affinity")
    _unreachable(topology, "cell2")
    ctx = RequestContext(topology.dbs, "p1", "u1")
    with pytest.raises(CellUnavailable) as raised:
        get_group_details(ctx, a)
    assert raised.value.cells == ("cell2",)
    details = get_group_details(ctx, a, allow_partial=True)
    assert details is not None
    assert details.hosts == {"h1"} and details.partial and details.failed_cells == ("cell2",)


# --------------------------------------------------------------------------- statement counts


def _route_if(strategy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Route between the two cells, as deployments of three cells or more do."""
    if strategy == "routing":
        monkeypatch.setattr(hosts_mod, "SCATTER_UP_TO", 1)


#: Two cells: both asked about every member (the default), or the members routed first.
STRATEGIES = ["scatter", "routing"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_api_hit_in_dual_write_api_reads_asks_cells_only_for_hosts(
    topology: Topology, strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _route_if(strategy, monkeypatch)
    member = _placed(topology, "cell2", "h2")
    _group(topology, Phase.DUAL_WRITE_API_READS, [member], "affinity")
    ctx = RequestContext(topology.dbs, "p1", "u1")
    _cache_phase(topology)
    with StatementCounter(engines_of(topology.dbs)) as counter:
        details = get_group_details(ctx, member)
    assert details is not None and details.hosts == {"h2"}
    if strategy == "routing":
        # API: the group by member, its children, the routing; cell2: the hosts.
        assert counter.counts == {"api": 3, "cell1": 0, "cell2": 1}, counter.statements
    else:
        # API: the group by member, its children; each cell: the hosts. No fallback.
        assert counter.counts == {"api": 2, "cell1": 1, "cell2": 1}, counter.statements
    (hosts_query,) = [s for name, s in counter.statements if name == "cell2"]
    assert "DISTINCT i.host" in hosts_query


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_api_only_touches_cells_only_for_hosts(
    topology: Topology, strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _route_if(strategy, monkeypatch)
    a = _placed(topology, "cell1", "h1")
    b = _placed(topology, "cell2", "h2")
    _group(topology, Phase.API_ONLY, [a, b], "anti-affinity")
    ctx = RequestContext(topology.dbs, "p1", "u1")
    _cache_phase(topology)
    with StatementCounter(engines_of(topology.dbs)) as counter:
        assert get_group_details(ctx, new_uuid()) is None
    assert counter.counts == {"api": 1, "cell1": 0, "cell2": 0}, counter.statements
    with StatementCounter(engines_of(topology.dbs)) as counter:
        details = get_group_details(ctx, a)
    assert details is not None and details.hosts == {"h1", "h2"}
    routings = 1 if strategy == "routing" else 0
    assert counter.counts == {"api": 2 + routings, "cell1": 1, "cell2": 1}, counter.statements
    assert all("DISTINCT i.host" in s for name, s in counter.statements if name != "api")


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("phase", [Phase.CELL_ONLY, Phase.DUAL_WRITE_CELL_READS])
def test_cell_reads_load_the_group_from_its_cell(
    topology: Topology, phase: Phase, strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _route_if(strategy, monkeypatch)
    member = _placed(topology, "cell1", "h1")
    _group(topology, phase, [member], "soft-affinity")
    ctx = RequestContext(topology.dbs, "p1", "u1")
    _cache_phase(topology)
    with StatementCounter(engines_of(topology.dbs)) as counter:
        details = get_group_details(ctx, member)
    assert details is not None and details.hosts == {"h1"}
    if strategy == "routing":
        # cell1: the group by member, its children, the hosts; API: the routing only.
        assert counter.counts == {"api": 1, "cell1": 3, "cell2": 0}, counter.statements
    else:
        # cell1: the group by member, its children, the hosts; cell2: the hosts.
        assert counter.counts == {"api": 0, "cell1": 3, "cell2": 1}, counter.statements


@pytest.mark.parametrize("phase", list(Phase))
def test_one_cell_besides_cell0_no_routing_and_cell0_never_asked_for_hosts(
    single_cell: Topology, phase: Phase
) -> None:
    topology = single_cell
    a = _placed(topology, "cell1", "h1")
    b = _placed(topology, "cell1", "h2")
    failed = _placed(topology, "cell0", None)  # never scheduled: in cell0, no host
    new = _placed(topology, "cell1", None)  # being scheduled
    uuid = _group(topology, phase, [a, b, failed, new], "anti-affinity")
    ctx = RequestContext(topology.dbs, "p1", "u1")
    _cache_phase(topology)
    with StatementCounter(engines_of(topology.dbs)) as counter:
        details = get_group_details(ctx, new)
    assert details is not None and details.uuid == uuid
    assert details.hosts == {"h1", "h2"}
    assert not [s for _, s in counter.statements if "instance_mappings" in s]
    # cell0 is never asked for hosts, nor (asked last, after cell1 found it) for the group.
    if phase in (Phase.DUAL_WRITE_API_READS, Phase.API_ONLY):
        # API: the group by member, its children; cell1: the hosts.
        assert counter.counts == {"api": 2, "cell0": 0, "cell1": 1}, counter.statements
    else:
        # cell1: the group by member, its children, the hosts.
        assert counter.counts == {"api": 0, "cell0": 0, "cell1": 3}, counter.statements


# --------------------------------------------------------------------------- pure functions


def test_host_checks() -> None:
    assert affinity_passes("h1", set())
    assert affinity_passes("h1", {"h1"})
    assert not affinity_passes("h2", {"h1"})
    assert anti_affinity_passes("h2", {"h1"})
    assert not anti_affinity_passes("h1", {"h1"})
    assert anti_affinity_passes("h1", {"h1"}, current_host="h1")
    members = ["a", "b", "c"]
    assert members_on_host(["a", "x", "c"], members) == 2
    assert soft_affinity_weight(["a", "x", "c"], members) == 2.0
    assert soft_anti_affinity_weight(["a", "x", "c"], members) == -2.0
    assert soft_affinity_weight([], members) == 0.0
    assert Enabled.of(filters=[AFFINITY_FILTER]).supports("affinity")
    assert not Enabled.of(filters=[AFFINITY_FILTER]).supports("anti-affinity")
    assert not ALL_ENABLED.supports("unknown")


def test_importing_the_scheduler_module_is_cheap() -> None:
    probe = textwrap.dedent(
        """
        import gc, json, os, sys

        read = []

        class Spy(type(os.environ)):
            def __getitem__(self, key):
                read.append(key)
                return super().__getitem__(key)

        os.environ.__class__ = Spy
        fds = set(os.listdir("/proc/self/fd"))
        import shadowdb.scheduler  # noqa: F401
        import sqlalchemy

        engines = [o for o in gc.get_objects() if isinstance(o, sqlalchemy.engine.Engine)]
        print(json.dumps({
            "engines": len(engines),
            "env": [k for k in read if k.startswith("SHADOWDB")],
            "fds": sorted(set(os.listdir("/proc/self/fd")) - fds),
            "objects": "shadowdb.objects" in sys.modules,
            "hosts": "shadowdb.hosts" in sys.modules,
            "threads": __import__("threading").active_count(),
        }))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "SHADOWDB_API_URL": "mysql+pymysql://x@127.0.0.1:1/x"},
    )
    seen = json.loads(out.stdout)
    assert seen == {
        "engines": 0,
        "env": [],
        "fds": [],
        "objects": False,
        "hosts": False,
        "threads": 1,
    }, out.stderr


def test_the_scheduler_path_checks_out_one_connection_per_database(topology: Topology) -> None:
    a = _placed(topology, "cell1", "h1")
    _group(topology, Phase.API_ONLY, [a], "affinity")
    dbs = topology.dbs
    ctx = RequestContext(dbs, "p1", "u1")
    _cache_phase(topology)
    checkouts: list[str] = []
    engines = {"api": dbs.api_fast, "cell1": dbs.read_engine(dbs.cell("cell1").engine)}
    hooks = [(e, lambda *_, n=name: checkouts.append(n)) for name, e in engines.items()]
    for engine, hook in hooks:
        sa.event.listen(engine, "checkout", hook)
    try:
        details = get_group_details(ctx, a)
    finally:
        for engine, hook in hooks:
            sa.event.remove(engine, "checkout", hook)
    assert details is not None and details.hosts == {"h1"}
    # The group, its children and the routing share one API connection.
    assert sorted(checkouts) == ["api", "cell1"]
