"""``api-only``: the API copies alone, no cell database queried for groups."""

from __future__ import annotations

import pytest

from shadowdb.errors import GroupNotFound
from shadowdb.objects import InstanceGroup, InstanceGroupList, RequestContext
from shadowdb.state import Phase
from shadowdb.testing import StatementCounter
from tests.conftest import Topology
from tests.support.helpers import new_uuid, put_in_phase, seed_cell_group


def _cells(topology: Topology) -> StatementCounter:
    return StatementCounter({c.name: c.engine for c in topology.dbs.cells})


def test_api_only_queries_no_cell(topology: Topology) -> None:
    dbs = topology.dbs
    put_in_phase(dbs, Phase.API_ONLY)
    ctx = RequestContext(dbs, "p1", "u1")
    # A legacy copy still sits in a cell (copies stay until cleanup): it must not leak in.
    legacy = seed_cell_group(topology.cell_engine("cell1"), name="legacy")
    member = new_uuid()
    with _cells(topology) as counter:
        g = InstanceGroup(ctx, name="web", project_id="p1", user_id="u1", policies=["affinity"])
        g.create()
        InstanceGroup.add_members(ctx, g.uuid, [member])
        assert InstanceGroup.get_by_uuid(ctx, g.uuid).members == [member]
        assert InstanceGroup.get_by_name(ctx, "web").uuid == g.uuid
        assert InstanceGroup.get_by_hint(ctx, g.uuid).uuid == g.uuid
        assert InstanceGroup.get_by_instance_uuid(ctx, member).uuid == g.uuid
        with pytest.raises(GroupNotFound):
            InstanceGroup.get_by_instance_uuid(ctx, new_uuid())
        with pytest.raises(GroupNotFound):
            InstanceGroup.get_by_uuid(ctx, legacy)
        g.name = "web2"
        g.save()
        InstanceGroup.remove_members(ctx, g.uuid, [member])
        g.refresh()
        assert (g.name, g.members) == ("web2", [])
        assert [x.uuid for x in InstanceGroupList.get_all(ctx)] == [g.uuid]
        assert [x.uuid for x in InstanceGroupList.get_by_project_id(ctx, "p1")] == [g.uuid]
        assert InstanceGroupList.get_counts(ctx, "p1", "u1") == {
            "project": {"server_groups": 1},
            "user": {"server_groups": 1},
        }
        assert g.get_hosts() == []  # no members left: no cell query either
        g.destroy()
    assert counter.total() == 0, counter.statements
