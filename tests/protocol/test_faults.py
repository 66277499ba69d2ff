"""A database goes away mid-flight in a dual-write phase: writes succeed, nothing is lost.

The second database sits behind a TCP proxy that the test cuts (every connection dropped,
new ones refused, as when a server stops) and restores. Server backends only: SQLite has
no server to lose.
"""

from __future__ import annotations

from typing import Any

import pytest

from shadowdb import signals
from shadowdb.databases import Databases, reader
from shadowdb.journals import drain_journals
from shadowdb.objects import InstanceGroup, InstanceGroupList, RequestContext
from shadowdb.queries import API, CELL
from shadowdb.state import Phase
from tests.conftest import Topology
from tests.support.helpers import group_state, new_uuid, put_in_phase
from tests.support.proxy import Proxy

SERVERS = [
    pytest.param("mysql", marks=pytest.mark.mysql),
    pytest.param("postgresql", marks=pytest.mark.postgresql),
]


def _failures(dbs: Databases) -> tuple[list[dict[str, Any]], Any]:
    seen: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        seen.append(kwargs)

    signals.shadow_write_failed.connect(receiver, sender=dbs)
    return seen, receiver


def _assert_level(topology: Topology, uuids: list[str]) -> None:
    for uuid in uuids:
        api = group_state(topology.dbs.api, "api", uuid)
        cell = group_state(topology.cell_engine("cell1"), "cell", uuid)
        assert api == cell, uuid


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_api_outage_in_dual_write_cell_reads(
    topology: Topology, api_behind_proxy: tuple[Databases, Proxy]
) -> None:
    dbs, proxy = api_behind_proxy
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    ctx = RequestContext(dbs, "p1", "u1")
    groups = []
    for i in range(3):
        g = InstanceGroup(ctx, name=f"g{i}", project_id="p1", user_id="u1", policies=["affinity"])
        g.create()
        groups.append(g)
    dbs.phases.get()  # the phase is known before the outage
    seen, receiver = _failures(dbs)
    try:
        proxy.cut()
        created = InstanceGroup(ctx, name="during", project_id="p1", user_id="u1")
        created.create()
        groups[0].name = "renamed"
        groups[0].save()
        member = new_uuid()
        InstanceGroup.add_members(ctx, groups[1].uuid, [member])
        groups[2].destroy()
        # Reads in this phase come from the cells: unaffected.
        assert {g.uuid for g in InstanceGroupList.get_all(ctx)} == {
            groups[0].uuid,
            groups[1].uuid,
            created.uuid,
        }
    finally:
        signals.shadow_write_failed.disconnect(receiver, sender=dbs)
    affected = [created.uuid, groups[0].uuid, groups[1].uuid, groups[2].uuid]
    assert sorted(s["group_uuid"] for s in seen) == sorted(affected)
    assert {s["journal"] for s in seen} == {"cell"}
    with reader(topology.cell_engine("cell1")) as conn:
        journaled = {e.group_uuid for e in CELL.journal_pending(conn)}
    assert journaled == set(affected)
    # The API copies lag while the journal holds them.
    assert group_state(topology.dbs.api, "api", created.uuid) is None
    assert group_state(topology.dbs.api, "api", groups[2].uuid) is not None

    proxy.restore()
    result = drain_journals(dbs)
    assert (result.found, result.done, result.errors) == (4, 4, ())
    _assert_level(topology, [g.uuid for g in groups] + [created.uuid])
    assert group_state(topology.dbs.api, "api", groups[0].uuid)[0] == "renamed"  # type: ignore[index]
    assert member in group_state(topology.dbs.api, "api", groups[1].uuid)[4]  # type: ignore[index]
    assert group_state(topology.dbs.api, "api", groups[2].uuid) is None
    with reader(topology.cell_engine("cell1")) as conn:
        assert CELL.journal_count(conn) == 0
    assert drain_journals(dbs).found == 0


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_cell_outage_in_dual_write_api_reads(
    topology: Topology, cell_behind_proxy: tuple[Databases, Proxy]
) -> None:
    dbs, proxy = cell_behind_proxy
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_API_READS)
    ctx = RequestContext(dbs, "p1", "u1")
    groups = []
    for i in range(3):
        g = InstanceGroup(ctx, name=f"g{i}", project_id="p1", user_id="u1", policies=["affinity"])
        g.create()
        groups.append(g)
    _assert_level(topology, [g.uuid for g in groups])
    seen, receiver = _failures(dbs)
    try:
        proxy.cut()
        created = InstanceGroup(ctx, name="during", project_id="p1", user_id="u1")
        created.create()
        groups[0].name = "renamed"
        groups[0].save()
        member = new_uuid()
        InstanceGroup.add_members(ctx, groups[1].uuid, [member])
        groups[2].destroy()
        assert InstanceGroup.get_by_uuid(ctx, groups[0].uuid).name == "renamed"
    finally:
        signals.shadow_write_failed.disconnect(receiver, sender=dbs)
    affected = {created.uuid, groups[0].uuid, groups[1].uuid, groups[2].uuid}
    assert {s["group_uuid"] for s in seen} == affected
    assert {s["journal"] for s in seen} == {"api"}
    with reader(topology.dbs.api) as conn:
        assert {e.group_uuid for e in API.journal_pending(conn)} == affected
    assert group_state(topology.cell_engine("cell1"), "cell", created.uuid) is None

    proxy.restore()
    result = drain_journals(dbs)
    assert (result.found, result.done, result.errors) == (4, 4, ())
    _assert_level(topology, [g.uuid for g in groups] + [created.uuid])
    assert group_state(topology.cell_engine("cell1"), "cell", groups[2].uuid) is None
    assert group_state(topology.cell_engine("cell1"), "cell", created.uuid) is not None
    with reader(topology.dbs.api) as conn:
        assert API.journal_count(conn) == 0
