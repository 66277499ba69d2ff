"""``cell-only``: Nova before the move; the cells are the only databases written or read."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from shadowdb import models
from shadowdb.databases import Databases, connect
from shadowdb.objects import InstanceGroup, InstanceGroupList, RequestContext
from shadowdb.state import Phase
from shadowdb.testing import StatementCounter
from tests.conftest import Topology
from tests.support.helpers import dump, group_state, new_uuid, put_in_phase, seed_cell_group


@pytest.fixture
def cached(topology: Topology) -> Iterator[Databases]:
    """The topology's databases with the phase cached for an hour and the cells known."""
    settings = dataclasses.replace(topology.settings, phase_ttl=3600.0)
    with connect(topology.api_url_text, settings=settings) as dbs:
        dbs.phases.get()
        assert len(dbs.cells) == 2
        yield dbs


def test_no_group_statement_reaches_the_api_database(topology: Topology, cached: Databases) -> None:
    ctx = RequestContext(cached, "p1", "u1")
    old_member, new_member = new_uuid(), new_uuid()
    legacy = seed_cell_group(topology.cell_engine("cell2"), name="legacy", members=(old_member,))
    before = dump(topology.dbs.api, models.api_metadata)
    with StatementCounter({"api": cached.api, "read": cached.read_engine(cached.api)}) as api:
        g = InstanceGroup(ctx, name="web", project_id="p1", user_id="u1", policies=["affinity"])
        g.create()
        InstanceGroup.add_members(ctx, g.uuid, [new_member])
        assert InstanceGroup.get_by_uuid(ctx, legacy).members == [old_member]
        assert InstanceGroup.get_by_instance_uuid(ctx, new_member).uuid == g.uuid
        assert {x.uuid for x in InstanceGroupList.get_all(ctx)} == {legacy, g.uuid}
        g.name = "web2"
        g.save()
        g.destroy()
    assert api.total() == 0, api.statements
    assert dump(topology.dbs.api, models.api_metadata) == before


def test_a_new_group_goes_to_the_default_cell_an_old_one_stays_in_its_own(
    topology: Topology,
) -> None:
    ctx = RequestContext(topology.dbs, "p1", "u1")
    g = InstanceGroup(ctx, name="new", project_id="p1", user_id="u1", policies=["affinity"])
    g.create()
    assert group_state(topology.cell_engine("cell1"), "cell", g.uuid) is not None
    old = seed_cell_group(topology.cell_engine("cell2"), name="old")
    member = new_uuid()
    InstanceGroup.add_members(ctx, old, [member])
    state = group_state(topology.cell_engine("cell2"), "cell", old)
    assert state is not None and state[4] == (member,)
    assert group_state(topology.cell_engine("cell1"), "cell", old) is None
    assert group_state(topology.dbs.api, "api", g.uuid) is None


def test_a_process_still_caching_cell_only_is_fenced_by_the_cell(
    topology: Topology, cached: Databases
) -> None:
    # The deployment moved on while this process's cache still says cell-only: the
    # cell's row holds the new epoch, and the write is planned again under it.
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    assert cached.phases.get().phase is Phase.CELL_ONLY
    ctx = RequestContext(cached, "p1", "u1")
    uuid = new_uuid()
    InstanceGroup(ctx, uuid=uuid, name="late", project_id="p1", user_id="u1").create()
    api = group_state(topology.dbs.api, "api", uuid)
    assert api is not None and api == group_state(topology.cell_engine("cell1"), "cell", uuid)
