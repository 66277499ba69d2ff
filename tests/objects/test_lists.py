"""Test InstanceGroupList in every phase, on every backend (nova-behaviour cases 18-21).

Lists come from the phase's list databases: the cells in ``cell-only`` and
``dual-write-cell-reads``; the API database then the cells, one copy per uuid with the
API copy winning, in ``dual-write-api-reads``; the API database alone in ``api-only``.
Within a database groups come in row order, cells in ``cell_mappings`` order. Counts
cover exactly what the lists show.
"""

from __future__ import annotations

import pytest

from shadowdb.objects import InstanceGroup, InstanceGroupList, RequestContext
from shadowdb.state import Phase
from tests.conftest import Topology
from tests.support.helpers import new_uuid, put_in_phase, seed_api_group, seed_cell_group


@pytest.fixture(params=list(Phase), ids=[p.value for p in Phase])
def phase(request: pytest.FixtureRequest, topology: Topology) -> Phase:
    """Put the topology in each phase in turn."""
    chosen: Phase = request.param
    put_in_phase(topology.dbs, chosen)
    return chosen


def admin(topology: Topology) -> RequestContext:
    return RequestContext(topology.dbs, "admin-project", "admin", is_admin=True)


def shown(groups: InstanceGroupList) -> list[tuple[str, str | None, list[str]]]:
    return [(g.uuid, g.name, g.policies) for g in groups]


def test_lists_merge_one_copy_per_uuid_and_scope_by_project(
    topology: Topology, phase: Phase
) -> None:
    """Cases 18-21 on groups seeded straight into the databases.

    ``a`` and ``e`` are API-only, ``c`` and ``d`` cell-only (cell1, cell2), ``both`` has
    an API copy and a differing cell copy; ``p1`` and ``p2`` are projects, ``u*`` users.
    """
    dbs = topology.dbs
    cell1, cell2 = topology.cell_engine("cell1"), topology.cell_engine("cell2")
    both = new_uuid()
    a = seed_api_group(dbs.api, name="a", project_id="p1", user_id="u1")
    seed_api_group(dbs.api, uuid=both, name="both-api", project_id="p1", user_id="u1")
    e = seed_api_group(dbs.api, name="e", project_id="p2", user_id="u3")
    c = seed_cell_group(cell1, name="c", project_id="p1", user_id="u2")
    seed_cell_group(cell1, uuid=both, name="both-cell", project_id="p1", user_id="u1")
    d = seed_cell_group(cell2, name="d", project_id="p2", user_id="u3")
    api_rows = [(a, "a", ["affinity"]), (both, "both-api", ["affinity"]), (e, "e", ["affinity"])]
    cell_rows = [(c, "c", ["anti-affinity"]), (d, "d", ["anti-affinity"])]
    project = {a: "p1", both: "p1", c: "p1", e: "p2", d: "p2"}

    if phase is Phase.API_ONLY:
        everything = api_rows
    elif phase is Phase.DUAL_WRITE_API_READS:
        # Case 18: API first, then the cells; case 19: ``both`` once, its API copy.
        everything = api_rows + cell_rows
    else:
        everything = [cell_rows[0], (both, "both-cell", ["anti-affinity"]), cell_rows[1]]
    of_p1 = [row for row in everything if project[row[0]] == "p1"]
    of_p2 = [row for row in everything if project[row[0]] == "p2"]

    # Case 20: an admin spans projects; a non-admin sees their own.
    member = RequestContext(dbs, "p1", "u1")
    assert shown(InstanceGroupList.get_all(admin(topology))) == everything
    assert shown(InstanceGroupList.get_all(member)) == of_p1
    assert shown(InstanceGroupList.get_by_project_id(member, "p1")) == of_p1
    assert shown(InstanceGroupList.get_by_project_id(member, "p2")) == []
    assert shown(InstanceGroupList.get_by_project_id(admin(topology), "p2")) == of_p2
    assert shown(InstanceGroupList.get_all(RequestContext(dbs, "p3", "u3"))) == []
    for group in InstanceGroupList.get_all(admin(topology)):
        assert isinstance(group, InstanceGroup) and group.obj_what_changed() == set()
        assert group.deleted is False and group.deleted_at is None

    # Case 21: per project, and per user when one is given; both databases, de-duplicated.
    counts = {
        Phase.CELL_ONLY: (2, 1, 1, 1),
        Phase.DUAL_WRITE_CELL_READS: (2, 1, 1, 1),
        Phase.DUAL_WRITE_API_READS: (3, 2, 1, 2),
        Phase.API_ONLY: (2, 2, 0, 1),
    }[phase]
    p1, p1_u1, p1_u2, p2 = counts
    assert InstanceGroupList.get_counts(member, "p1") == {"project": {"server_groups": p1}}
    assert InstanceGroupList.get_counts(member, "p1", "u1") == {
        "project": {"server_groups": p1},
        "user": {"server_groups": p1_u1},
    }
    assert InstanceGroupList.get_counts(member, "p1", user_id="u2")["user"] == {
        "server_groups": p1_u2
    }
    assert InstanceGroupList.get_counts(admin(topology), "p2", "u3") == {
        "project": {"server_groups": p2},
        "user": {"server_groups": p2},
    }
    assert InstanceGroupList.get_counts(member, "p3", "u1") == {
        "project": {"server_groups": 0},
        "user": {"server_groups": 0},
    }


def test_lists_of_groups_created_in_the_phase(topology: Topology, phase: Phase) -> None:
    """Cases 18-21 on groups the layer wrote (both copies in the dual-write phases).

    Legacy groups of another project (``p9``, cell-only) are listed in every phase that
    reads the cells, and by nothing in ``api-only``.
    """
    dbs = topology.dbs
    created = []
    for project_id, user_id, name in [("p1", "u1", "g1"), ("p1", "u2", "g2"), ("p2", "u3", "g3")]:
        ctx = RequestContext(dbs, project_id, user_id)
        group = InstanceGroup(
            ctx, name=name, user_id=user_id, project_id=project_id, policies=["affinity"]
        )
        group.create()
        InstanceGroup.add_members(ctx, group.uuid, [new_uuid()])
        created.append((group.uuid, name, ["affinity"]))
    legacy = [
        (seed_cell_group(topology.cell_engine(cell), name=name, project_id="p9"), name)
        for cell, name in [("cell2", "l1"), ("cell1", "l2"), ("cell2", "l3")]
    ]
    cells_order = [legacy[1], legacy[0], legacy[2]]  # cell1 first, then cell2 by id

    listed = InstanceGroupList.get_all(admin(topology))
    everything = list(created)
    if phase is not Phase.API_ONLY:
        everything += [(uuid, name, ["anti-affinity"]) for uuid, name in cells_order]
    assert shown(listed) == everything
    assert all(len(g.members) == 1 for g in listed if g.project_id != "p9")

    p1 = RequestContext(dbs, "p1", "u1")
    assert shown(InstanceGroupList.get_all(p1)) == created[:2]
    assert shown(InstanceGroupList.get_by_project_id(p1, "p1")) == created[:2]
    assert shown(InstanceGroupList.get_by_project_id(admin(topology), "p2")) == created[2:]
    p9 = InstanceGroupList.get_by_project_id(admin(topology), "p9")
    expected_p9 = [] if phase is Phase.API_ONLY else [(u, n) for u, n in cells_order]
    assert [(g.uuid, g.name) for g in p9] == expected_p9

    assert InstanceGroupList.get_counts(p1, "p1") == {"project": {"server_groups": 2}}
    assert InstanceGroupList.get_counts(p1, "p1", "u2") == {
        "project": {"server_groups": 2},
        "user": {"server_groups": 1},
    }
    assert InstanceGroupList.get_counts(p1, "p9")["project"] == {"server_groups": len(expected_p9)}
