"""Test the reads of the object API in every phase, on every backend.

Covers get_by_uuid / get_by_name / get_by_hint / get_by_instance_uuid (nova-behaviour
cases 11-15), refresh (16), the lazy ``hosts`` field (17), get_hosts and
count_members_by_user (38-40), the cost of a lookup that finds nothing (44) and the
``fallback-read`` signal.

Which database answers a single read, by phase: ``cell-only`` and ``dual-write-cell-reads``
the cells; ``dual-write-api-reads`` the API database, then (announced) the cells;
``api-only`` the API database alone (:func:`tests.support.helpers.reads_api`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from shadowdb import models, signals
from shadowdb.errors import GroupNotFound, ObjectActionError
from shadowdb.hosts import Hosts
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.state import Phase
from tests.conftest import Topology
from tests.support.helpers import (
    NOW,
    StatementLog,
    engines_of,
    map_instance,
    new_uuid,
    put_in_phase,
    reads_api,
    seed_api_group,
    seed_cell_group,
    seed_instance,
)


@pytest.fixture(params=list(Phase), ids=[p.value for p in Phase])
def phase(request: pytest.FixtureRequest, topology: Topology) -> Phase:
    """Put the topology in each phase in turn."""
    chosen: Phase = request.param
    put_in_phase(topology.dbs, chosen)
    return chosen


def owner(topology: Topology) -> RequestContext:
    return RequestContext(topology.dbs, "p1", "u1")


def admin(topology: Topology) -> RequestContext:
    return RequestContext(topology.dbs, "admin-project", "admin", is_admin=True)


def make_group(ctx: RequestContext, *, name: str = "web", members: list[str]) -> InstanceGroup:
    group = InstanceGroup(
        ctx,
        name=name,
        user_id=ctx.user_id,
        project_id=ctx.project_id,
        policies=["anti-affinity"],
        members=members,
    )
    group.create()
    return group


def fields(group: InstanceGroup) -> tuple[Any, ...]:
    return (
        group.uuid,
        group.name,
        group.user_id,
        group.project_id,
        group.policies,
        group.members,
        group.deleted,
        group.deleted_at,
    )


def every_lookup(ctx: RequestContext, uuid: str, name: str, member: str) -> list[InstanceGroup]:
    """Look one group up every way the API offers."""
    return [
        InstanceGroup.get_by_uuid(ctx, uuid),
        InstanceGroup.get_by_name(ctx, name),
        InstanceGroup.get_by_hint(ctx, uuid),
        InstanceGroup.get_by_hint(ctx, name),
        InstanceGroup.get_by_instance_uuid(ctx, member),
    ]


def assert_not_found(ctx: RequestContext, uuid: str, name: str, member: str) -> None:
    with pytest.raises(GroupNotFound) as by_uuid:
        InstanceGroup.get_by_uuid(ctx, uuid)
    assert by_uuid.value.group_uuid == uuid
    with pytest.raises(GroupNotFound) as by_name:
        InstanceGroup.get_by_name(ctx, name)
    assert by_name.value.name == name
    with pytest.raises(GroupNotFound):
        InstanceGroup.get_by_hint(ctx, uuid)
    with pytest.raises(GroupNotFound):
        InstanceGroup.get_by_hint(ctx, name)
    with pytest.raises(GroupNotFound) as by_instance:
        InstanceGroup.get_by_instance_uuid(ctx, member)
    assert by_instance.value.instance_uuid == member


# --------------------------------------------------------------------------- lookups


def test_lookups_find_a_group_created_in_the_phase(topology: Topology, phase: Phase) -> None:
    """Cases 11, 13, 15 and 44: every lookup finds the group; other projects do not.

    A lookup for an instance in no group costs at most one indexed lookup per database.
    """
    dbs, ctx = topology.dbs, owner(topology)
    member, other = new_uuid(), new_uuid()
    group = make_group(ctx, members=[member, other])
    make_group(ctx, name="other", members=[new_uuid()])

    for found in [
        *every_lookup(ctx, group.uuid, "web", member),
        *every_lookup(admin(topology), group.uuid, "web", other),
    ]:
        assert fields(found) == fields(group)
        assert found.id == group.id and found.created_at == group.created_at
        assert found.obj_what_changed() == set()

    assert_not_found(ctx, new_uuid(), "nameless", new_uuid())
    # Case 15: another project's non-admin cannot read it.
    assert_not_found(RequestContext(dbs, "p2", "u2"), group.uuid, "web", member)

    # Case 44: an instance in no group costs at most one indexed lookup per database,
    # and none at all on the cells in api-only.
    with StatementLog(engines_of(dbs)) as log, pytest.raises(GroupNotFound):
        InstanceGroup.get_by_instance_uuid(ctx, new_uuid())

    lookups = {name: len(log.texts(name, "instance_group")) for name in log.seen}
    if phase is Phase.API_ONLY:
        assert log.seen["cell1"] == [] and log.seen["cell2"] == []
        assert lookups == {"api": 1, "cell1": 0, "cell2": 0}
    elif phase is Phase.DUAL_WRITE_API_READS:
        assert lookups == {"api": 1, "cell1": 1, "cell2": 1}
    else:
        assert lookups == {"api": 0, "cell1": 1, "cell2": 1}


def test_lookups_by_where_the_copies_are(topology: Topology, phase: Phase) -> None:
    """Cases 11 and 12: a legacy cell group, an API-only group, a uuid in both databases.

    ``dual-write-api-reads`` finds the legacy group through the announced cell fallback
    and ``api-only`` does not find it; a uuid held by both databases (here with different
    names and members) is answered with the copy of the phase's read database, and a
    stale cell copy is never served where the API copy is the authority.
    """
    dbs, ctx = topology.dbs, owner(topology)
    cell1, cell2 = topology.cell_engine("cell1"), topology.cell_engine("cell2")
    fallbacks: list[dict[str, Any]] = []

    def on_fallback(sender: object, **kwargs: Any) -> None:
        assert sender is dbs
        fallbacks.append(kwargs)

    m_legacy, m_api, m_both_api, m_both_cell = (new_uuid() for _ in range(4))
    legacy = seed_cell_group(cell2, name="legacy", members=[m_legacy])
    only_api = seed_api_group(dbs.api, name="only-api", members=[m_api])
    both = new_uuid()
    seed_api_group(dbs.api, uuid=both, name="both-api", policies=["affinity"], members=[m_both_api])
    seed_cell_group(cell1, uuid=both, name="both-cell", members=[m_both_cell])
    legacy_fields = (legacy, "legacy", "u1", "p1", ["anti-affinity"], [m_legacy], False, None)
    api_fields = (only_api, "only-api", "u1", "p1", ["affinity"], [m_api], False, None)
    both_api = (both, "both-api", "u1", "p1", ["affinity"], [m_both_api], False, None)
    both_cell = (both, "both-cell", "u1", "p1", ["anti-affinity"], [m_both_cell], False, None)

    with signals.fallback_read.connected_to(on_fallback, sender=dbs):
        # The legacy group, in cell2 only.
        if phase is Phase.API_ONLY:
            cells = {name: e for name, e in engines_of(dbs).items() if name != "api"}
            with StatementLog(cells) as log:
                assert_not_found(ctx, legacy, "legacy", m_legacy)
            assert log.seen == {"cell1": [], "cell2": []}
        else:
            for found in every_lookup(ctx, legacy, "legacy", m_legacy):
                assert fields(found) == legacy_fields and found.created_at == NOW
        if phase is Phase.DUAL_WRITE_API_READS:
            what = ["uuid", "name", "uuid", "name", "instance"]
            keys = [legacy, "legacy", legacy, "legacy", m_legacy]
            assert fallbacks == [
                {"what": w, "key": k, "cell": "cell2"} for w, k in zip(what, keys, strict=True)
            ]
        else:
            assert fallbacks == []
        fallbacks.clear()

        # The group only the API database holds.
        if reads_api(phase):
            for found in every_lookup(ctx, only_api, "only-api", m_api):
                assert fields(found) == api_fields
        else:
            assert_not_found(ctx, only_api, "only-api", m_api)

        # One uuid, two differing copies.
        if reads_api(phase):
            for found in every_lookup(ctx, both, "both-api", m_both_api):
                assert fields(found) == both_api
            # The cell copy is stale: its name and member do not lead to the group.
            with pytest.raises(GroupNotFound):
                InstanceGroup.get_by_name(ctx, "both-cell")
            with pytest.raises(GroupNotFound):
                InstanceGroup.get_by_instance_uuid(ctx, m_both_cell)
        else:
            for found in every_lookup(ctx, both, "both-cell", m_both_cell):
                assert fields(found) == both_cell
            with pytest.raises(GroupNotFound):
                InstanceGroup.get_by_name(ctx, "both-api")
            with pytest.raises(GroupNotFound):
                InstanceGroup.get_by_instance_uuid(ctx, m_both_api)
        if phase is Phase.DUAL_WRITE_API_READS:
            # Both misses above fell back to the cells, which had nothing to serve.
            assert fallbacks == [
                {"what": "name", "key": "both-cell", "cell": None},
                {"what": "instance", "key": m_both_cell, "cell": None},
            ]
        else:
            assert fallbacks == []


def test_name_lookups_are_scoped_and_deterministic(topology: Topology, phase: Phase) -> None:
    """Case 14: the oldest group of a name wins; non-admins see their project, admins all.

    The rule is the same in the API database and the cells: oldest ``created_at`` first,
    ties broken by row id (within a database) and cell order (across cells), undated rows
    last, on every backend.
    """
    dbs = topology.dbs
    cell1, cell2 = topology.cell_engine("cell1"), topology.cell_engine("cell2")
    t1, t2, t3 = NOW - dt.timedelta(days=2), NOW - dt.timedelta(days=1), NOW
    # Cells: the oldest "dup" is p2's in cell2; p1's oldest ties between the two cells.
    c_p1 = seed_cell_group(cell1, name="dup", project_id="p1", created_at=t2)
    seed_cell_group(cell1, name="dup", project_id="p1", created_at=t3)
    c_p2 = seed_cell_group(cell2, name="dup", project_id="p2", created_at=t1)
    seed_cell_group(cell2, name="dup", project_id="p1", created_at=t2)
    # API: p1's two oldest share a creation time; the first inserted wins.
    a_p1 = seed_api_group(dbs.api, name="dup", project_id="p1", created_at=t2)
    seed_api_group(dbs.api, name="dup", project_id="p1", created_at=t2)
    a_p2 = seed_api_group(dbs.api, name="dup", project_id="p2", created_at=t1)
    # An undated row (NULL created_at, the lower id) loses to a dated one on every
    # backend, whatever the backend's own NULL ordering.
    for engine, table in [(cell1, models.cell_groups), (dbs.api, models.api_groups)]:
        seed = seed_cell_group if table is models.cell_groups else seed_api_group
        uuid = seed(engine, name="undated", created_at=t1)
        with engine.begin() as conn:
            conn.execute(table.update().where(table.c.uuid == uuid).values(created_at=None))
    c_dated = seed_cell_group(cell1, name="undated", created_at=t3)
    a_dated = seed_api_group(dbs.api, name="undated", created_at=t3)

    expected = (
        {"admin": a_p2, "p1": a_p1, "undated": a_dated}
        if reads_api(phase)
        else {"admin": c_p2, "p1": c_p1, "undated": c_dated}
    )
    for _ in range(2):  # the same answer every time
        assert InstanceGroup.get_by_name(admin(topology), "dup").uuid == expected["admin"]
        assert InstanceGroup.get_by_hint(admin(topology), "dup").uuid == expected["admin"]
        assert InstanceGroup.get_by_name(owner(topology), "dup").uuid == expected["p1"]
        assert InstanceGroup.get_by_hint(owner(topology), "dup").uuid == expected["p1"]
        assert InstanceGroup.get_by_name(owner(topology), "undated").uuid == expected["undated"]
    with pytest.raises(GroupNotFound):
        InstanceGroup.get_by_name(RequestContext(dbs, "p3", "u3"), "dup")


# --------------------------------------------------------------------------- object state


def test_refresh_and_lazy_hosts(
    topology: Topology, phase: Phase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cases 16 and 17: refresh takes over changes; hosts loads once, unchanged."""
    dbs, ctx = topology.dbs, owner(topology)
    member, newcomer = new_uuid(), new_uuid()
    seed_instance(topology.cell_engine("cell1"), member, host="host1")
    group = make_group(ctx, members=[member])

    # Changed through another object...
    other = InstanceGroup.get_by_uuid(ctx, group.uuid)
    other.name = "changed"
    other.members = [member, newcomer]
    other.save()
    group.refresh()
    assert (group.name, group.members) == ("changed", [member, newcomer])
    assert group.updated_at == other.updated_at
    assert group.obj_what_changed() == set()
    # ... and straight in the database the phase reads, behind the layer's back.
    table = models.api_groups if reads_api(phase) else models.cell_groups
    engine = dbs.api if reads_api(phase) else topology.cell_engine("cell1")
    with engine.begin() as conn:
        conn.execute(table.update().where(table.c.uuid == group.uuid).values(name="behind"))
    group.name = "local"
    group.refresh()
    assert group.name == "behind" and group.obj_what_changed() == set()

    calls: list[object] = []
    real = InstanceGroup.get_hosts

    def counting(self: InstanceGroup, exclude: Any = None, **kwargs: Any) -> Hosts:
        calls.append(exclude)
        return real(self, exclude, **kwargs)

    monkeypatch.setattr(InstanceGroup, "get_hosts", counting)
    loaded = InstanceGroup.get_by_uuid(ctx, group.uuid)
    assert not loaded.obj_attr_is_set("hosts")
    assert loaded.hosts == ["host1"]
    assert loaded.hosts == ["host1"]
    assert calls == [None]
    assert loaded.obj_attr_is_set("hosts") and "hosts" not in loaded.obj_what_changed()
    loaded.save()  # nothing to save: the lazy load changed nothing

    blank = InstanceGroup(ctx)
    for name in ("id", "uuid", "name", "policies", "members", "created_at"):
        with pytest.raises(ObjectActionError):
            getattr(blank, name)
    with pytest.raises(ObjectActionError):
        loaded.obj_load_attr("members")
    assert calls == [None]


# --------------------------------------------------------------------------- hosts


def test_get_hosts_and_member_counts(topology: Topology, phase: Phase) -> None:
    """Cases 38-40: distinct non-null hosts of live members; counts of a user's live ones.

    Deleted instances, the ``soft-delete`` vm_state and NULL hosts are ignored; ``exclude``
    drops members before any query; no members means no cell query at all.
    """
    dbs, ctx = topology.dbs, owner(topology)
    cell1, cell2 = topology.cell_engine("cell1"), topology.cell_engine("cell2")
    live1, live2, gone, soft, hostless, far, unmapped, stateless, missing, foreign = (
        new_uuid() for _ in range(10)
    )
    seed_instance(cell1, live1, host="h1")
    seed_instance(cell1, live2, host="h1")
    seed_instance(cell1, gone, host="h2", deleted=True)
    seed_instance(cell1, soft, host="h3", vm_state="soft-delete")
    seed_instance(cell1, hostless, host=None)
    seed_instance(cell2, far, host="h4", user_id="u2")
    seed_instance(cell2, unmapped, host="h5")
    seed_instance(cell1, stateless, host="h6", vm_state=None)
    seed_instance(cell1, foreign, host="h7", project_id="p2", user_id="u2")
    for uuid in (live1, live2, gone, soft, hostless, stateless, foreign):
        map_instance(dbs, uuid, "cell1")
    map_instance(dbs, far, "cell2")
    members = [live1, live2, gone, soft, hostless, far, unmapped, stateless, missing, foreign]
    group = make_group(ctx, members=members)

    hosts = group.get_hosts()
    assert isinstance(hosts, Hosts) and not hosts.partial
    # Non-admins see their project's instances only (as in Nova); admins see all.
    assert sorted(hosts) == ["h1", "h4", "h5", "h6"]
    by_admin = InstanceGroup.get_by_uuid(admin(topology), group.uuid)
    assert sorted(by_admin.get_hosts()) == ["h1", "h4", "h5", "h6", "h7"]

    with StatementLog(engines_of(dbs)) as log:
        assert sorted(group.get_hosts(exclude=[live1])) == ["h1", "h4", "h5", "h6"]
        assert sorted(group.get_hosts(exclude=[live1, live2, far])) == ["h5", "h6"]
    sent = log.sent()
    assert live2 in sent and unmapped in sent  # the log sees what was sent...
    assert live1 not in sent  # ... and the excluded member never reached a database

    # No members (or all excluded): [] without any statement.
    empty = make_group(ctx, name="empty", members=[])
    with StatementLog(engines_of(dbs)) as log:
        assert empty.get_hosts() == []
        assert group.get_hosts(exclude=members) == []
        assert empty.count_members_by_user("u1") == 0
    assert log.seen == {"api": [], "cell1": [], "cell2": []}

    # Case 40: live instances of that user only (stateless counts, missing does not).
    assert by_admin.count_members_by_user("u1") == 5  # live1, live2, hostless, unmapped, ...
    assert by_admin.count_members_by_user("u2") == 2  # far, foreign
    assert by_admin.count_members_by_user("u3") == 0
    # A non-admin counts their own project's instances only, as in Nova.
    assert group.count_members_by_user("u2") == 1  # far; foreign is p2's
