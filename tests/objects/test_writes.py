"""Test the writes of the object API in every phase, on every backend.

Covers create, save, destroy, add_members and remove_members (nova-behaviour cases 1-10),
project scoping of writes (15), typed input errors and the write signals. Each test runs
once per phase (``put_in_phase``) and, through the ``topology`` fixture, per backend.

Where the copies of a group live after a write, by phase: ``cell-only`` the cell,
``dual-write-cell-reads`` and ``dual-write-api-reads`` both, ``api-only`` the API database
(:func:`tests.support.helpers.writes_api`, :func:`tests.support.helpers.writes_cell`).
New groups go to the default cell, ``cell1``; legacy groups are seeded in ``cell2`` so that
the layer has to find them there.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from shadowdb import models, signals
from shadowdb.errors import (
    GroupExists,
    GroupNotFound,
    GroupSaveError,
    InvalidInput,
    ObjectActionError,
)
from shadowdb.objects import InstanceGroup, RequestContext, is_uuid_like
from shadowdb.state import Phase
from tests.conftest import Topology
from tests.support.helpers import (
    StatementLog,
    child_rows,
    dump_all,
    engines_of,
    group_rows,
    group_state,
    live_members,
    new_uuid,
    put_in_phase,
    seed_api_group,
    seed_cell_group,
    writes_api,
    writes_cell,
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


def make_group(
    ctx: RequestContext,
    *,
    name: str = "web",
    members: list[str] | None = None,
    policies: list[str] | None = None,
    **fields: Any,
) -> InstanceGroup:
    """Create a group of ``ctx``'s project and user through the layer."""
    group = InstanceGroup(
        ctx,
        name=name,
        user_id=ctx.user_id,
        project_id=ctx.project_id,
        policies=policies if policies is not None else ["affinity"],
        members=members or [],
        **fields,
    )
    group.create()
    return group


def copies(topology: Topology, phase: Phase, uuid: str) -> dict[str, tuple[Any, ...] | None]:
    """Return the state of every copy the phase writes, by database."""
    out: dict[str, tuple[Any, ...] | None] = {}
    if writes_api(phase):
        out["api"] = group_state(topology.dbs.api, "api", uuid)
    if writes_cell(phase):
        out["cell1"] = group_state(topology.cell_engine("cell1"), "cell", uuid)
    return out


def assert_soft_deleted(engine: sa.Engine, uuid: str) -> None:
    """Check that every row of the cell copy of ``uuid`` is soft-deleted the Nova way."""
    rows = group_rows(engine, "cell", uuid)
    assert rows, f"no cell row for {uuid}"
    for row in rows:
        assert row["deleted"] == row["id"] and row["deleted_at"] is not None
        children = child_rows(engine, "cell", row["id"])
        for child in children["policies"] + children["members"]:
            assert child["deleted"] == child["id"] and child["deleted_at"] is not None


# --------------------------------------------------------------------------- create, destroy


def test_create_then_destroy(topology: Topology, phase: Phase) -> None:
    """Cases 1, 3 and 5: a new group is stored whole where the phase writes, then deleted.

    create() generates a uuid when none is given and refuses to run twice; destroy()
    hard-deletes the API copy with its children and soft-deletes the cell copy.
    """
    dbs, ctx = topology.dbs, owner(topology)
    a, b = new_uuid(), new_uuid()
    group = make_group(ctx, members=[a, b], policies=["anti-affinity"])

    assert is_uuid_like(group.uuid)
    assert group.id > 0 and group.created_at is not None
    assert group.deleted is False and group.deleted_at is None
    assert group.obj_what_changed() == set()
    stored = ("web", "u1", "p1", ("anti-affinity",), tuple(sorted([a, b])))
    assert group_state(dbs.api, "api", group.uuid) == (stored if writes_api(phase) else None)
    cell1, cell2 = topology.cell_engine("cell1"), topology.cell_engine("cell2")
    assert group_state(cell1, "cell", group.uuid) == (stored if writes_cell(phase) else None)
    assert group_state(cell2, "cell", group.uuid) is None
    # Every copy keeps the group's creation time.
    created = [r["created_at"] for r in group_rows(dbs.api, "api", group.uuid)]
    created += [r["created_at"] for r in group_rows(cell1, "cell", group.uuid)]
    assert created == [group.created_at] * len(copies(topology, phase, group.uuid))

    loaded = InstanceGroup.get_by_uuid(ctx, group.uuid)
    assert (loaded.id, loaded.name, loaded.user_id) == (group.id, "web", "u1")
    assert loaded.project_id == "p1"
    assert loaded.policies == ["anti-affinity"] and loaded.members == [a, b]
    assert loaded.deleted is False and loaded.deleted_at is None

    before = dump_all(dbs)
    with pytest.raises(ObjectActionError):
        group.create()
    with pytest.raises(ObjectActionError):
        InstanceGroup(ctx, id=7, name="preset").create()
    assert dump_all(dbs) == before

    chosen = new_uuid()
    assert make_group(ctx, uuid=chosen, name="db").uuid == chosen
    assert InstanceGroup.get_by_uuid(ctx, chosen).name == "db"

    # Case 5: the API copy is hard-deleted with its children, the cell copy soft-deleted.
    api_ids = [r["id"] for r in group_rows(dbs.api, "api", group.uuid)]
    assert len(api_ids) == (1 if writes_api(phase) else 0)

    group.destroy()

    assert group_rows(dbs.api, "api", group.uuid) == []
    for api_id in api_ids:
        assert child_rows(dbs.api, "api", api_id) == {"policies": [], "members": []}
    if writes_cell(phase):
        assert len(group_rows(cell1, "cell", group.uuid)) == 1
        assert_soft_deleted(cell1, group.uuid)
    else:
        assert group_rows(cell1, "cell", group.uuid) == []
    with pytest.raises(GroupNotFound):
        InstanceGroup.get_by_uuid(ctx, group.uuid)
    before = dump_all(dbs)
    with pytest.raises(GroupNotFound):
        group.destroy()
    with pytest.raises(GroupNotFound) as raised:
        InstanceGroup(ctx, uuid=(unknown := new_uuid())).destroy()
    assert raised.value.group_uuid == unknown
    assert dump_all(dbs) == before


def test_create_checks_the_uuid_where_the_phase_is_authoritative(
    topology: Topology, phase: Phase
) -> None:
    """Cases 2 and 4: a taken uuid raises GroupExists and nothing is written.

    A live legacy group (here in ``cell2``, not the default cell) blocks the uuid in
    every phase that writes cells; a soft-deleted cell row does not block it; a uuid in
    the API database blocks it where the API database is the authority.

    ``api-only`` deliberately does not query the cells: the move is complete, cell copies
    are no longer maintained (a group destroyed in ``api-only`` keeps its live cell row),
    so the uuid of a cell row is free and the create succeeds without any cell statement.
    """
    dbs, ctx = topology.dbs, owner(topology)
    cell1, cell2 = topology.cell_engine("cell1"), topology.cell_engine("cell2")

    def candidate(uuid: str, name: str = "new") -> InstanceGroup:
        return InstanceGroup(
            ctx, uuid=uuid, name=name, user_id="u1", project_id="p1", policies=["affinity"]
        )

    new = ("new", "u1", "p1", ("affinity",), ())

    # A live legacy cell group.
    taken = seed_cell_group(cell2, name="legacy")
    before = dump_all(dbs)
    group = candidate(taken)
    if phase is Phase.API_ONLY:
        cells = {name: e for name, e in engines_of(dbs).items() if name != "api"}
        with StatementLog(cells) as log:
            group.create()
        assert log.seen == {"cell1": [], "cell2": []}
        assert group_state(dbs.api, "api", taken) == new
        after = dump_all(dbs)
        assert (after["cell1"], after["cell2"]) == (before["cell1"], before["cell2"])
    else:
        with pytest.raises(GroupExists) as raised:
            group.create()
        assert raised.value.group_uuid == taken
        assert dump_all(dbs) == before
        assert not group.obj_attr_is_set("id")

    # A soft-deleted cell row.
    gone = seed_cell_group(cell1, name="old", deleted=True)
    candidate(gone, "reborn").create()
    assert InstanceGroup.get_by_uuid(ctx, gone).name == "reborn"
    rows = group_rows(cell1, "cell", gone)
    assert rows[0]["name"] == "old" and rows[0]["deleted"] == rows[0]["id"]
    if writes_cell(phase):
        assert [(r["name"], r["deleted"]) for r in rows[1:]] == [("reborn", 0)]
    else:
        assert len(rows) == 1
    reborn = ("reborn", "u1", "p1", ("affinity",), ())
    assert group_state(dbs.api, "api", gone) == (reborn if writes_api(phase) else None)

    # A uuid taken in the API database.
    taken = seed_api_group(dbs.api, name="api-group")
    before = dump_all(dbs)
    group = candidate(taken)
    if phase is Phase.CELL_ONLY:
        # cell-only never reads the API database: the uuid is free where it writes.
        group.create()
        assert group_state(cell1, "cell", taken) == new
        assert dump_all(dbs)["api"] == before["api"]
    else:
        # Every phase that writes the API database refuses to overwrite its group with a
        # create, dual-write-cell-reads included (failure 14 of the protocol issue): the
        # cell write is rolled back with the refusal.
        with pytest.raises(GroupExists) as raised:
            group.create()
        assert raised.value.group_uuid == taken
        assert dump_all(dbs) == before


# --------------------------------------------------------------------------- save


def test_save(topology: Topology, phase: Phase) -> None:
    """Cases 6 and 7: save persists names and replaces member and policy sets everywhere.

    Every copy the phase writes is saved; hosts cannot be saved; an unchanged group writes
    nothing and announces nothing.
    """
    dbs, ctx = topology.dbs, owner(topology)
    cell1 = topology.cell_engine("cell1")
    a, b, c, d = (new_uuid() for _ in range(4))
    group = make_group(ctx, members=[a, b, c], policies=["affinity"])

    group.name = "renamed"
    group.members = [c, d]
    group.policies = ["anti-affinity"]
    group.save()

    assert group.obj_what_changed() == set()
    assert (group.name, group.members, group.policies) == ("renamed", [c, d], ["anti-affinity"])
    assert group.updated_at is not None
    saved = ("renamed", "u1", "p1", ("anti-affinity",), tuple(sorted([c, d])))
    assert set(copies(topology, phase, group.uuid).values()) == {saved}
    loaded = InstanceGroup.get_by_uuid(ctx, group.uuid)
    assert (loaded.name, loaded.members, loaded.policies) == ("renamed", [c, d], ["anti-affinity"])
    if writes_api(phase):
        (row,) = group_rows(dbs.api, "api", group.uuid)
        children = child_rows(dbs.api, "api", row["id"])
        assert [m["uuid"] for m in children["members"]] == [c, d]
        assert [p["policy"] for p in children["policies"]] == ["anti-affinity"]
    if writes_cell(phase):
        (row,) = group_rows(cell1, "cell", group.uuid)
        children = child_rows(cell1, "cell", row["id"])
        retired = {m["uuid"] for m in children["members"] if m["deleted"] == m["id"]}
        assert retired == {a, b}
        assert [m["uuid"] for m in children["members"] if m["deleted"] == 0] == [c, d]
        assert [(p["policy"], p["deleted"] == p["id"]) for p in children["policies"]] == [
            ("affinity", True),
            ("anti-affinity", False),
        ]

    # Differing copies in both databases: the saved object is the copy the phase reads;
    # the other copy, where the phase writes it, is made equal to the authoritative one
    # (its extra member goes, its name and policy follow).
    uuid, x = new_uuid(), new_uuid()
    seed_api_group(dbs.api, uuid=uuid, name="api-name", policies=["affinity"], members=[a])
    seed_cell_group(cell1, uuid=uuid, name="cell-name", policies=["anti-affinity"], members=[a, x])
    api_before = group_state(dbs.api, "api", uuid)
    cell_before = group_state(cell1, "cell", uuid)

    group = InstanceGroup.get_by_uuid(ctx, uuid)
    group.members = [a, b]
    group.save()

    api_read = phase in (Phase.DUAL_WRITE_API_READS, Phase.API_ONLY)
    name, policy = ("api-name", "affinity") if api_read else ("cell-name", "anti-affinity")
    saved = (name, "u1", "p1", (policy,), tuple(sorted([a, b])))
    assert group.members == [a, b] and group.name == name
    assert set(copies(topology, phase, uuid).values()) == {saved}
    if phase is Phase.CELL_ONLY:
        assert group_state(dbs.api, "api", uuid) == api_before
    if phase is Phase.API_ONLY:
        assert group_state(cell1, "cell", uuid) == cell_before

    # Case 6: hosts cannot be saved; no change means no write and no signal.
    group = make_group(ctx, name="still", members=[new_uuid()])
    before = dump_all(dbs)
    updated: list[dict[str, Any]] = []

    def on_update(_sender: object, **kwargs: Any) -> None:
        updated.append(kwargs)

    with signals.group_updated.connected_to(on_update, sender=dbs):
        group.save()
        loaded = InstanceGroup.get_by_uuid(ctx, group.uuid)
        loaded.save()
        assert dump_all(dbs) == before

        loaded.name = "sneaky"
        loaded.hosts = ["host1"]
        with pytest.raises(GroupSaveError):
            loaded.save()
    assert dump_all(dbs) == before
    assert updated == []

    # A group destroyed behind the object's back cannot be saved.
    InstanceGroup.get_by_uuid(ctx, group.uuid).destroy()
    before = dump_all(dbs)
    group.name = "ghost"
    with pytest.raises(GroupNotFound):
        group.save()
    assert dump_all(dbs) == before


# --------------------------------------------------------------------------- members


def test_add_and_remove_members(topology: Topology, phase: Phase) -> None:
    """Cases 8-10: added in order, present or repeated uuids add no row; removal."""
    dbs, ctx = topology.dbs, owner(topology)
    cell1 = topology.cell_engine("cell1")
    a, b, c, d = (new_uuid() for _ in range(4))
    group = make_group(ctx, members=[a])

    def stored() -> set[tuple[str, ...]]:
        found: set[tuple[str, ...]] = set()
        if writes_api(phase):
            found.add(tuple(live_members(dbs.api, "api", group.uuid) or ()))
        if writes_cell(phase):
            found.add(tuple(live_members(cell1, "cell", group.uuid) or ()))
        return found

    assert InstanceGroup.add_members(ctx, group.uuid, [b]) == [b]
    assert InstanceGroup.get_by_uuid(ctx, group.uuid).members == [a, b]
    assert stored() == {(a, b)}

    assert InstanceGroup.add_members(ctx, group.uuid, [a]) == [a]
    assert stored() == {(a, b)}

    assert InstanceGroup.add_members(ctx, group.uuid, [c, c, d, c, a]) == [c, d, a]
    assert InstanceGroup.get_by_uuid(ctx, group.uuid).members == [a, b, c, d]
    assert stored() == {(a, b, c, d)}
    # No duplicate rows at all, live or not.
    for engine, side in [(dbs.api, "api"), (cell1, "cell")]:
        for row in group_rows(engine, side, group.uuid):
            assert len(child_rows(engine, side, row["id"])["members"]) == 4

    empty = make_group(ctx, name="empty")
    assert InstanceGroup.add_members(ctx, empty.uuid, [b]) == [b]
    assert InstanceGroup.get_by_uuid(ctx, empty.uuid).members == [b]

    before = dump_all(dbs)
    with pytest.raises(GroupNotFound) as raised:
        InstanceGroup.add_members(ctx, (unknown := new_uuid()), [a])
    assert raised.value.group_uuid == unknown
    assert dump_all(dbs) == before

    # Case 10: removing [i1, i2] from [i1, i2, i3] leaves [i3] in every copy.
    i1, i2, i3 = (new_uuid() for _ in range(3))
    group = make_group(ctx, members=[i1, i2, i3])

    assert InstanceGroup.remove_members(ctx, group.uuid, [i1, i2]) == [i1, i2]

    assert InstanceGroup.get_by_uuid(ctx, group.uuid).members == [i3]
    if writes_api(phase):
        assert live_members(dbs.api, "api", group.uuid) == [i3]
        (row,) = group_rows(dbs.api, "api", group.uuid)
        assert [m["uuid"] for m in child_rows(dbs.api, "api", row["id"])["members"]] == [i3]
    if writes_cell(phase):
        assert live_members(cell1, "cell", group.uuid) == [i3]
        (row,) = group_rows(cell1, "cell", group.uuid)
        retired = [m for m in child_rows(cell1, "cell", row["id"])["members"] if m["deleted"]]
        assert {m["uuid"] for m in retired} == {i1, i2}
        assert all(m["deleted"] == m["id"] and m["deleted_at"] is not None for m in retired)

    assert InstanceGroup.remove_members(ctx, group.uuid, [new_uuid(), i1]) == []
    assert InstanceGroup.get_by_uuid(ctx, group.uuid).members == [i3]
    before = dump_all(dbs)
    with pytest.raises(GroupNotFound):
        InstanceGroup.remove_members(ctx, new_uuid(), [i3])
    assert dump_all(dbs) == before


def test_concurrent_add_members_create_no_duplicate_rows(topology: Topology, phase: Phase) -> None:
    """Case 9: eight callers adding the same uuids at once leave one row per uuid.

    Each caller also adds a uuid of its own, so a lost write would show as well. Rows are
    counted with SQL in every database that holds a copy, soft-deleted rows included.
    """
    dbs, ctx = topology.dbs, owner(topology)
    group = make_group(ctx)
    shared = [new_uuid() for _ in range(5)]
    own = [new_uuid() for _ in range(8)]
    start = threading.Barrier(len(own))
    errors: list[BaseException] = []
    added: list[list[str]] = []

    def on_added(_sender: object, **kwargs: Any) -> None:
        added.append(kwargs["instance_uuids"])

    def add(mine: str) -> None:
        try:
            start.wait(timeout=30)
            InstanceGroup.add_members(ctx, group.uuid, [*shared, mine])
        except BaseException as err:
            errors.append(err)

    with signals.group_members_added.connected_to(on_added, sender=dbs):
        threads = [threading.Thread(target=add, args=(mine,)) for mine in own]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []

    expected = set(shared) | set(own)
    holders: list[tuple[sa.Engine, sa.Table, sa.Table, str]] = []
    if writes_api(phase):
        holders.append((dbs.api, models.api_groups, models.api_members, "instance_uuid"))
    if writes_cell(phase):
        cell1 = topology.cell_engine("cell1")
        holders.append((cell1, models.cell_groups, models.cell_members, "instance_id"))
    for engine, groups, members, column in holders:
        col = members.c[column]
        with engine.connect() as conn:
            counts = dict(
                conn.execute(
                    sa.select(col, sa.func.count())
                    .select_from(members.join(groups, members.c.group_id == groups.c.id))
                    .where(groups.c.uuid == group.uuid)
                    .group_by(col)
                ).all()
            )
        assert counts == dict.fromkeys(expected, 1)
    assert set(InstanceGroup.get_by_uuid(ctx, group.uuid).members) == expected
    assert sorted(u for batch in added for u in batch) == sorted(expected)


# --------------------------------------------------------------------------- legacy groups


def test_writes_to_a_legacy_cell_group(topology: Topology, phase: Phase) -> None:
    """Cases 5, 6 and 8 on a group only a (non-default) cell holds.

    The cell-reading phases write the cell that holds it (``dual-write-cell-reads`` also
    creates its API copy); ``dual-write-api-reads`` adopts it into the API database and
    keeps the cell copy level; ``api-only`` does not see it at all.
    """
    dbs, ctx = topology.dbs, owner(topology)
    cell2 = topology.cell_engine("cell2")
    a, b = new_uuid(), new_uuid()
    legacy = seed_cell_group(cell2, name="legacy", members=[a])

    if phase is Phase.API_ONLY:
        before = dump_all(dbs)
        with pytest.raises(GroupNotFound):
            InstanceGroup.get_by_uuid(ctx, legacy)
        with pytest.raises(GroupNotFound):
            InstanceGroup.add_members(ctx, legacy, [b])
        stranger = InstanceGroup(ctx, uuid=legacy)
        stranger.name = "renamed"
        with pytest.raises(GroupNotFound):
            stranger.save()
        with pytest.raises(GroupNotFound):
            stranger.destroy()
        assert dump_all(dbs) == before
        return

    def states() -> tuple[Any, ...]:
        return (
            group_state(cell2, "cell", legacy),
            group_state(dbs.api, "api", legacy),
            group_state(topology.cell_engine("cell1"), "cell", legacy),
        )

    def expect(name: str, members: list[str]) -> None:
        state = (name, "u1", "p1", ("anti-affinity",), tuple(sorted(members)))
        assert states() == (state, state if writes_api(phase) else None, None)

    InstanceGroup.add_members(ctx, legacy, [b])
    expect("legacy", [a, b])
    assert live_members(cell2, "cell", legacy) == [a, b]
    InstanceGroup.remove_members(ctx, legacy, [a])
    expect("legacy", [b])
    group = InstanceGroup.get_by_uuid(ctx, legacy)
    group.name = "renamed"
    group.members = [a, b]
    group.save()
    expect("renamed", [a, b])
    group.destroy()
    assert states() == (None, None, None)
    assert len(group_rows(cell2, "cell", legacy)) == 1
    assert_soft_deleted(cell2, legacy)
    assert group_rows(dbs.api, "api", legacy) == []
    with pytest.raises(GroupNotFound):
        InstanceGroup.get_by_uuid(ctx, legacy)


# --------------------------------------------------------------------------- project scoping


def test_other_projects_cannot_save_or_destroy(topology: Topology, phase: Phase) -> None:
    """Case 15: another project's non-admin gets GroupNotFound and writes nothing."""
    dbs, ctx = topology.dbs, owner(topology)
    group = make_group(ctx, members=[new_uuid()])
    legacy = seed_cell_group(topology.cell_engine("cell2"), name="legacy", project_id="p1")
    intruder = RequestContext(dbs, "p2", "u2")
    before = dump_all(dbs)

    for uuid in (group.uuid, legacy):
        stranger = InstanceGroup(intruder, uuid=uuid)
        stranger.name = "hijacked"
        stranger.members = [new_uuid()]
        with pytest.raises(GroupNotFound):
            stranger.save()
        with pytest.raises(GroupNotFound):
            InstanceGroup(intruder, uuid=uuid).destroy()
    assert dump_all(dbs) == before

    # An admin may write any project's group.
    by_admin = InstanceGroup.get_by_uuid(admin(topology), group.uuid)
    by_admin.name = "by-admin"
    by_admin.save()
    assert InstanceGroup.get_by_uuid(ctx, group.uuid).name == "by-admin"
    InstanceGroup.get_by_uuid(admin(topology), group.uuid).destroy()
    with pytest.raises(GroupNotFound):
        InstanceGroup.get_by_uuid(ctx, group.uuid)


# --------------------------------------------------------------------------- typed errors


def test_invalid_input_is_refused_before_any_statement(topology: Topology, phase: Phase) -> None:
    """Unknown policies, malformed uuids and names over 255 characters raise InvalidInput.

    They are refused before any statement reaches any database.
    """
    dbs, ctx = topology.dbs, owner(topology)
    member = new_uuid()
    group = make_group(ctx, members=[member])
    loaded = InstanceGroup.get_by_uuid(ctx, group.uuid)
    long = "x" * 256
    attempts: list[Callable[[], object]] = [
        lambda: InstanceGroup(ctx, name="g", policies=["bogus"]),
        lambda: InstanceGroup(ctx, name="g", policies="affinity"),
        lambda: InstanceGroup(ctx, uuid="not-a-uuid"),
        lambda: InstanceGroup(ctx, uuid=group.uuid[:-1]),
        lambda: InstanceGroup(ctx, members=[member, "not-a-uuid"]),
        lambda: InstanceGroup(ctx, members=member),
        lambda: InstanceGroup(ctx, name=long),
        lambda: InstanceGroup(ctx, user_id=long),
        lambda: InstanceGroup(ctx, project_id=long),
        lambda: InstanceGroup.get_by_uuid(ctx, "not-a-uuid"),
        lambda: InstanceGroup.get_by_instance_uuid(ctx, "not-a-uuid"),
        lambda: InstanceGroup.get_by_name(ctx, long),
        lambda: InstanceGroup.get_by_hint(ctx, long),
        lambda: InstanceGroup.add_members(ctx, "not-a-uuid", [member]),
        lambda: InstanceGroup.add_members(ctx, group.uuid, ["not-a-uuid"]),
        lambda: InstanceGroup.add_members(ctx, group.uuid, member),
        lambda: InstanceGroup.remove_members(ctx, "not-a-uuid", [member]),
        lambda: InstanceGroup.remove_members(ctx, group.uuid, [member, "nope"]),
        lambda: setattr(loaded, "name", long),
        lambda: setattr(loaded, "policies", ["affinity", "bogus"]),
        lambda: setattr(loaded, "members", [None]),
        lambda: setattr(loaded, "uuid", "not-a-uuid"),
    ]
    before = dump_all(dbs)
    with StatementLog(engines_of(dbs)) as log:
        for number, attempt in enumerate(attempts):
            with pytest.raises(InvalidInput):
                attempt()
                pytest.fail(f"attempt {number} was accepted")
    assert log.seen == {"api": [], "cell1": [], "cell2": []}
    assert loaded.obj_what_changed() == set()
    loaded.save()
    assert dump_all(dbs) == before

    longest = make_group(ctx, name="n" * 255)
    assert InstanceGroup.get_by_name(ctx, "n" * 255).uuid == longest.uuid


# --------------------------------------------------------------------------- signals


def test_write_signals_carry_their_documented_arguments(topology: Topology, phase: Phase) -> None:
    """group-created/-updated/-deleted and group-members-added/-removed, as documented.

    The sender is the deployment's Databases; failed and empty writes send nothing.
    """
    dbs, ctx = topology.dbs, owner(topology)
    events: list[tuple[str, object, dict[str, Any]]] = []

    def receiver(name: str) -> Callable[..., None]:
        def receive(sender: object, **kwargs: Any) -> None:
            events.append((name, sender, kwargs))

        return receive

    watched = [
        signals.group_created,
        signals.group_updated,
        signals.group_deleted,
        signals.group_members_added,
        signals.group_members_removed,
    ]
    a, b, c = new_uuid(), new_uuid(), new_uuid()
    with contextlib.ExitStack() as stack:
        for signal in watched:
            assert signal.name is not None
            stack.enter_context(signal.connected_to(receiver(signal.name), sender=dbs))
        group = make_group(ctx, members=[a])
        created = {
            f: getattr(group, f)
            for f in (
                "id",
                "uuid",
                "name",
                "user_id",
                "project_id",
                "policies",
                "members",
                "created_at",
                "updated_at",
            )
        }
        group.save()  # nothing changed: no signal
        group.name = "web2"
        group.members = [a, c]
        group.save()
        InstanceGroup.add_members(ctx, group.uuid, [a, b, b])
        InstanceGroup.remove_members(ctx, group.uuid, [b, new_uuid()])
        group.destroy()
        # Failures announce nothing.
        with pytest.raises(ObjectActionError):
            group.create()
        with pytest.raises(GroupNotFound):
            group.destroy()
        with pytest.raises(GroupNotFound):
            InstanceGroup.add_members(ctx, group.uuid, [a])

    uuid, value = group.uuid, phase.value
    assert created["name"] == "web" and created["members"] == [a]
    assert events == [
        ("group-created", dbs, {"group_uuid": uuid, "phase": value, "fields": created}),
        (
            "group-updated",
            dbs,
            {"group_uuid": uuid, "phase": value, "fields": {"name": "web2", "members": [a, c]}},
        ),
        ("group-members-added", dbs, {"group_uuid": uuid, "phase": value, "instance_uuids": [b]}),
        (
            "group-members-removed",
            dbs,
            {"group_uuid": uuid, "phase": value, "instance_uuids": [b]},
        ),
        ("group-deleted", dbs, {"group_uuid": uuid, "phase": value}),
    ]
