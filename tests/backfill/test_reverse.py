"""Leaving ``api-only``: ``backfill --reverse`` and the switcher's catch-up step."""

from __future__ import annotations

from shadowdb.backfill import backfill
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.state import Phase
from shadowdb.switcher import StepKind, Switcher
from tests.conftest import Topology
from tests.support.helpers import group_state, new_uuid, put_in_phase, seed_cell_group


def _cell_state(topology: Topology, uuid: str) -> object:
    return group_state(topology.cell_engine("cell1"), "cell", uuid) or group_state(
        topology.cell_engine("cell2"), "cell", uuid
    )


def test_reverse_levels_cells_with_what_api_only_wrote(topology: Topology) -> None:
    dbs = topology.dbs
    ctx = RequestContext(dbs, "p1", "u1")
    legacy = seed_cell_group(topology.cell_engine("cell2"), name="legacy", members=[new_uuid()])
    gone = seed_cell_group(topology.cell_engine("cell1"), name="gone")
    put_in_phase(dbs, Phase.DUAL_WRITE_CELL_READS)
    assert backfill(dbs, sleep=lambda _s: None).outcome == "done"
    put_in_phase(dbs, Phase.API_ONLY)
    # api-only writes touch the API database only.
    created = InstanceGroup(ctx, name="new", project_id="p1", user_id="u1")
    created.create()
    renamed = InstanceGroup.get_by_uuid(ctx, legacy)
    renamed.name = "renamed"
    renamed.save()
    member = new_uuid()
    InstanceGroup.add_members(ctx, legacy, [member])
    InstanceGroup.get_by_uuid(ctx, gone).destroy()
    assert _cell_state(topology, created.uuid) is None
    assert _cell_state(topology, gone) is not None

    result = backfill(dbs, reverse=True, sleep=lambda _s: None)
    assert result.outcome == "done"
    assert {t.migration: (t.found, t.done) for t in result.totals}["reverse_instance_groups"] == (
        3,
        3,
    )
    for uuid in (created.uuid, legacy):
        assert _cell_state(topology, uuid) == group_state(dbs.api, "api", uuid)
    # The existing copy was levelled where it lives; the new group went to the default cell.
    assert group_state(topology.cell_engine("cell2"), "cell", legacy) is not None
    assert group_state(topology.cell_engine("cell1"), "cell", created.uuid) is not None
    assert _cell_state(topology, gone) is None
    again = backfill(dbs, reverse=True, sleep=lambda _s: None)
    assert all((t.found, t.done) == (0, 0) for t in again.totals)


def test_switch_back_from_api_only_catches_up_late_writes(topology: Topology) -> None:
    dbs = topology.dbs
    ctx = RequestContext(dbs, "p1", "u1", is_admin=True)
    put_in_phase(dbs, Phase.API_ONLY)
    group = InstanceGroup(ctx, name="before", project_id="p1", user_id="u1")
    group.create()
    assert backfill(dbs, reverse=True, sleep=lambda _s: None).outcome == "done"
    # A write after the reverse sync, before the switch: the cell copy lags, unjournaled.
    group.name = "late"
    group.save()
    assert _cell_state(topology, group.uuid)[0] == "before"  # type: ignore[index]

    switcher = Switcher(dbs)
    plan = switcher.plan(Phase.DUAL_WRITE_API_READS, force=True, reason="rollback")
    assert [step.kind for step in plan][-1] is StepKind.CATCH_UP
    switcher.execute(plan)
    assert dbs.phases.fresh().phase is Phase.DUAL_WRITE_API_READS
    assert _cell_state(topology, group.uuid) == group_state(dbs.api, "api", group.uuid)
    assert _cell_state(topology, group.uuid)[0] == "late"  # type: ignore[index]
