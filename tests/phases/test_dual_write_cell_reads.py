"""``dual-write-cell-reads``: the cell copy is the authority, the API copy follows it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from shadowdb import signals
from shadowdb.databases import Databases, connect, reader
from shadowdb.errors import GroupExists
from shadowdb.objects import InstanceGroup, InstanceGroupList, RequestContext
from shadowdb.queries import API, CELL
from shadowdb.state import Phase
from shadowdb.testing import StatementCounter
from tests.conftest import Topology
from tests.protocol.test_faults import SERVERS
from tests.support.helpers import (
    group_state,
    new_uuid,
    put_in_phase,
    seed_api_group,
    seed_cell_group,
)
from tests.support.proxy import Proxy

CR = Phase.DUAL_WRITE_CELL_READS


@pytest.fixture
def dbs(topology: Topology) -> Iterator[Databases]:
    """The topology in dual-write-cell-reads, the phase cached for an hour, cells known."""
    put_in_phase(topology.dbs, CR)
    settings = dataclasses.replace(topology.settings, phase_ttl=3600.0)
    with connect(topology.api_url_text, settings=settings) as opened:
        assert opened.phases.get().phase is CR and len(opened.cells) == 2
        yield opened


def _journals(dbs: Databases) -> tuple[int, int]:
    with reader(dbs.api) as conn:
        api = len(API.journal_pending(conn))
    with reader(dbs.cell("cell1").engine) as conn:
        return api, len(CELL.journal_pending(conn))


def test_each_write_levels_the_api_copy_and_leaves_no_entry(
    topology: Topology, dbs: Databases
) -> None:
    ctx = RequestContext(dbs, "p1", "u1")
    member = new_uuid()
    g = InstanceGroup(ctx, name="web", project_id="p1", user_id="u1", policies=["affinity"])
    g.create()
    InstanceGroup.add_members(ctx, g.uuid, [member])
    g.name = "renamed"
    g.save()
    cell = group_state(topology.cell_engine("cell1"), "cell", g.uuid)
    assert cell is not None and cell[0] == "renamed" and cell[4] == (member,)
    assert group_state(dbs.api, "api", g.uuid) == cell
    assert _journals(dbs) == (0, 0)
    g.destroy()
    assert group_state(dbs.api, "api", g.uuid) is None
    assert group_state(topology.cell_engine("cell1"), "cell", g.uuid) is None


def test_reads_come_from_the_cells(topology: Topology, dbs: Databases) -> None:
    ctx = RequestContext(dbs, "p1", "u1")
    uuid = seed_cell_group(topology.cell_engine("cell2"), name="cell copy")
    seed_api_group(dbs.api, uuid=uuid, name="stale api copy")
    with StatementCounter({"api": dbs.api, "read": dbs.read_engine(dbs.api)}) as api:
        assert InstanceGroup.get_by_uuid(ctx, uuid).name == "cell copy"
        assert InstanceGroup.get_by_name(ctx, "cell copy").uuid == uuid
        assert [g.name for g in InstanceGroupList.get_all(ctx)] == ["cell copy"]
    assert api.total() == 0, api.statements


def test_a_create_never_overwrites_an_api_copy(topology: Topology, dbs: Databases) -> None:
    uuid = seed_api_group(dbs.api, name="already there")
    ctx = RequestContext(dbs, "p1", "u1")
    with pytest.raises(GroupExists):
        InstanceGroup(ctx, uuid=uuid, name="new", project_id="p1", user_id="u1").create()
    assert group_state(topology.cell_engine("cell1"), "cell", uuid) is None
    state = group_state(dbs.api, "api", uuid)
    assert state is not None and state[0] == "already there"


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_the_write_is_acknowledged_and_journaled_when_the_api_is_out_of_reach(
    topology: Topology, api_behind_proxy: tuple[Databases, Proxy]
) -> None:
    cut_off, proxy = api_behind_proxy
    put_in_phase(topology.dbs, CR)
    assert cut_off.phases.get().phase is CR and len(cut_off.cells) == 2
    uuid = seed_cell_group(topology.cell_engine("cell1"), name="before")
    failed: list[dict[str, Any]] = []
    ctx = RequestContext(cut_off, "p1", "u1")
    proxy.cut()
    try:
        with signals.shadow_write_failed.connected_to(
            lambda _, **kw: failed.append(kw), sender=cut_off
        ):
            g = InstanceGroup.get_by_uuid(ctx, uuid)
            g.name = "after"
            g.save()  # acknowledged: the cell is the authority
    finally:
        proxy.restore()
    state = group_state(topology.cell_engine("cell1"), "cell", uuid)
    assert state is not None and state[0] == "after"
    assert group_state(topology.dbs.api, "api", uuid) is None
    assert [(f["group_uuid"], f["journal"]) for f in failed] == [(uuid, "cell")]
    with reader(topology.cell_engine("cell1")) as conn:
        (entry,) = CELL.journal_pending(conn)
    assert entry.group_uuid == uuid and entry.error  # noted: the drain replays it
