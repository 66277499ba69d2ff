"""``dual-write-api-reads``: the API copy is the authority; reads fall back to the cells."""

from __future__ import annotations

from typing import Any

import pytest

from shadowdb import signals
from shadowdb.objects import InstanceGroup, InstanceGroupList, RequestContext
from shadowdb.state import Phase
from shadowdb.testing import StatementCounter
from tests.conftest import Topology
from tests.support.helpers import new_uuid, put_in_phase, seed_api_group, seed_cell_group


def _cells(topology: Topology) -> StatementCounter:
    return StatementCounter({c.name: c.engine for c in topology.dbs.cells})


@pytest.mark.parametrize("lookup", ["uuid", "name", "hint", "instance"])
def test_cell_only_group_is_found_by_fallback_in_dual_write_api_reads(
    topology: Topology, lookup: str
) -> None:
    dbs = topology.dbs
    put_in_phase(dbs, Phase.DUAL_WRITE_API_READS)
    ctx = RequestContext(dbs, "p1", "u1")
    member = new_uuid()
    uuid = seed_cell_group(topology.cell_engine("cell2"), name="only-in-cell", members=[member])
    seen: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        seen.append(kwargs)

    signals.fallback_read.connect(receiver, sender=dbs)
    try:
        find = {
            "uuid": lambda: InstanceGroup.get_by_uuid(ctx, uuid),
            "name": lambda: InstanceGroup.get_by_name(ctx, "only-in-cell"),
            "hint": lambda: InstanceGroup.get_by_hint(ctx, "only-in-cell"),
            "instance": lambda: InstanceGroup.get_by_instance_uuid(ctx, member),
        }[lookup]
        group = find()
    finally:
        signals.fallback_read.disconnect(receiver, sender=dbs)
    assert (group.uuid, group.name, group.members) == (uuid, "only-in-cell", [member])
    assert len(seen) == 1
    assert seen[0]["cell"] == "cell2"
    assert seen[0]["what"] == (
        "uuid" if lookup == "uuid" else "name" if lookup in ("name", "hint") else "instance"
    )


def test_a_fallback_read_receiver_that_raises_does_not_break_the_read(
    topology: Topology,
) -> None:
    """Signals observe, never control: a failing receiver costs the read nothing."""
    dbs = topology.dbs
    put_in_phase(dbs, Phase.DUAL_WRITE_API_READS)
    ctx = RequestContext(dbs, "p1", "u1")
    uuid = seed_cell_group(topology.cell_engine("cell2"), name="only-in-cell", members=[])

    def receiver(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("receiver broke")

    with signals.fallback_read.connected_to(receiver, sender=dbs):
        group = InstanceGroup.get_by_uuid(ctx, uuid)
    assert (group.uuid, group.name) == (uuid, "only-in-cell")


def test_api_hit_in_dual_write_api_reads_queries_no_cell(topology: Topology) -> None:
    dbs = topology.dbs
    put_in_phase(dbs, Phase.DUAL_WRITE_API_READS)
    ctx = RequestContext(dbs, "p1", "u1")
    member = new_uuid()
    uuid = seed_api_group(dbs.api, name="in-api", members=[member])
    with _cells(topology) as counter:
        assert InstanceGroup.get_by_uuid(ctx, uuid).name == "in-api"
        assert InstanceGroup.get_by_name(ctx, "in-api").uuid == uuid
        assert InstanceGroup.get_by_instance_uuid(ctx, member).uuid == uuid
    assert counter.total() == 0, counter.statements


def test_uuid_in_both_databases_is_listed_once_with_the_api_copy(topology: Topology) -> None:
    dbs = topology.dbs
    put_in_phase(dbs, Phase.DUAL_WRITE_API_READS)
    ctx = RequestContext(dbs, "p1", "u1")
    uuid = new_uuid()
    seed_cell_group(topology.cell_engine("cell1"), uuid=uuid, name="cell-copy")
    seed_api_group(dbs.api, uuid=uuid, name="api-copy")
    only_cell = seed_cell_group(topology.cell_engine("cell2"), name="cell-only")
    listed = InstanceGroupList.get_all(ctx)
    assert [(g.uuid, g.name) for g in listed] == [(uuid, "api-copy"), (only_cell, "cell-only")]
    assert InstanceGroup.get_by_uuid(ctx, uuid).name == "api-copy"
    assert InstanceGroupList.get_counts(ctx, "p1") == {"project": {"server_groups": 2}}
