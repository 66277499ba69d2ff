from __future__ import annotations

import pytest

from shadowdb.objects import InstanceGroup, InstanceGroupList, RequestContext
from shadowdb.state import Phase
from tests.conftest import Topology
from tests.support.helpers import group_state, new_uuid, put_in_phase


@pytest.mark.parametrize("phase", list(Phase))
def test_round_trip(topology: Topology, phase: Phase) -> None:
    dbs = topology.dbs
    put_in_phase(dbs, phase)
    ctx = RequestContext(dbs, "p1", "u1")
    g = InstanceGroup(ctx, name="web", user_id="u1", project_id="p1", policies=["affinity"])
    g.create()
    a, b = new_uuid(), new_uuid()
    InstanceGroup.add_members(ctx, g.uuid, [a, b, a])
    g2 = InstanceGroup.get_by_uuid(ctx, g.uuid)
    assert g2.members == [a, b]
    g2.name = "web2"
    g2.members = [b]
    g2.save()
    g3 = InstanceGroup.get_by_name(ctx, "web2")
    assert g3.members == [b]
    assert len(InstanceGroupList.get_all(ctx)) == 1
    api = group_state(dbs.api, "api", g.uuid)
    cell = group_state(topology.cell_engine("cell1"), "cell", g.uuid)
    if phase in (Phase.CELL_ONLY,):
        assert api is None and cell is not None
    elif phase is Phase.API_ONLY:
        assert cell is None and api is not None
    else:
        assert api == cell
    g3.destroy()
    assert len(InstanceGroupList.get_all(ctx)) == 0
