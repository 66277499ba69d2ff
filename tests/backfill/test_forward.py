"""The forward copy: live cell groups the API database lacks, copied under the writers' locks."""

from __future__ import annotations

import pytest

from shadowdb import models
from shadowdb.backfill.forward import ForwardCopier
from shadowdb.databases import reader, writer
from shadowdb.errors import InvalidInput
from shadowdb.queries import API
from shadowdb.state import Phase, utcnow
from tests.conftest import Topology
from tests.support.helpers import group_state, put_in_phase, seed_api_group, seed_cell_group


def _no_sleep(_seconds: float) -> None:
    pass


@pytest.fixture
def cr(topology: Topology) -> Topology:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    return topology


def _copier(topology: Topology, **kw: object) -> ForwardCopier:
    return ForwardCopier(topology.dbs, sleep=_no_sleep, **kw)  # type: ignore[arg-type]


def _api_uuids(topology: Topology) -> set[str]:
    with reader(topology.dbs.api) as conn:
        return API.uuids(conn)


@pytest.mark.parametrize("size", [0, -1])
def test_a_batch_size_below_one_is_bad_input(topology: Topology, size: int) -> None:
    with pytest.raises(InvalidInput, match="--batch-size"):
        ForwardCopier(topology.dbs, batch_size=size)


def test_every_lacking_group_is_copied_as_the_cell_holds_it(cr: Topology) -> None:
    engine = cr.cell_engine("cell1")
    made = [
        seed_cell_group(engine, name=f"g{i}", policies=("affinity",), members=(f"i{i}",))
        for i in range(3)
    ]
    other = seed_cell_group(cr.cell_engine("cell2"), name="other")
    step = _copier(cr).migrate_instance_groups(100)
    assert (step.found, step.done, step.error) == (4, 4, None)
    for uuid in made:
        assert group_state(cr.dbs.api, "api", uuid) == group_state(engine, "cell", uuid)
    assert _api_uuids(cr) == {*made, other}


def test_the_budget_caps_a_call_and_the_next_call_goes_on(cr: Topology) -> None:
    engine = cr.cell_engine("cell1")
    made = {seed_cell_group(engine, name=f"g{i}") for i in range(5)}
    copier = _copier(cr, batch_size=2)
    first = copier.migrate_instance_groups(3)
    assert (first.found, first.done) == (3, 3)
    second = copier.migrate_instance_groups(3)
    assert (second.found, second.done) == (2, 2)
    assert _copier(cr).migrate_instance_groups(3).found == 0
    assert _api_uuids(cr) == made


def test_deleted_level_and_journaled_groups_need_nothing(cr: Topology) -> None:
    engine = cr.cell_engine("cell1")
    seed_cell_group(engine, name="gone", deleted=True)
    level = seed_cell_group(engine, name="level", policies=("affinity",))
    seed_api_group(cr.dbs.api, uuid=level, name="level", policies=("affinity",))
    journaled = seed_cell_group(engine, name="in flight")
    with writer(cr.dbs.api) as conn:
        API.journal_add(conn, journaled, 1)  # the replay owns it
    step = _copier(cr).migrate_instance_groups(100)
    assert (step.found, step.done) == (0, 0)
    assert _api_uuids(cr) == {level}


def test_an_api_copy_is_never_overwritten(cr: Topology) -> None:
    engine = cr.cell_engine("cell1")
    group = seed_cell_group(engine, name="cell name")
    seed_api_group(cr.dbs.api, uuid=group, name="api name")
    copier = _copier(cr)
    step = copier.migrate_instance_groups(100)
    assert (step.found, step.done) == (1, 0)
    assert [(c.group_uuid, c.kind) for c in copier.conflicts.seen] == [(group, "api-copy-differs")]
    state = group_state(cr.dbs.api, "api", group)
    assert state is not None and state[0] == "api name"


def test_a_group_the_api_deleted_is_never_brought_back(cr: Topology) -> None:
    group = seed_cell_group(cr.cell_engine("cell1"))
    with writer(cr.dbs.api) as conn:
        conn.execute(
            models.api_tombstones.insert().values(uuid=group, epoch=1, deleted_at=utcnow())
        )
    copier = _copier(cr)
    copier.migrate_instance_groups(100)
    assert [c.kind for c in copier.conflicts.seen] == ["deleted-in-api"]
    assert _api_uuids(cr) == set()


def test_a_uuid_live_in_two_cells_is_copied_from_neither(cr: Topology) -> None:
    group = seed_cell_group(cr.cell_engine("cell1"))
    seed_cell_group(cr.cell_engine("cell2"), uuid=group)
    copier = _copier(cr)
    step = copier.migrate_instance_groups(100)
    assert (step.found, step.done) == (2, 0)
    assert {(c.cell, c.kind) for c in copier.conflicts.seen} == {
        ("cell1", "live-in-two-cells"),
        ("cell2", "live-in-two-cells"),
    }
    assert _api_uuids(cr) == set()


def test_a_resolved_conflict_is_copied_by_the_next_run(cr: Topology) -> None:
    group = seed_cell_group(cr.cell_engine("cell1"), name="g", policies=("affinity",))
    seed_cell_group(cr.cell_engine("cell2"), uuid=group, deleted=True)  # not a twin
    twin = seed_cell_group(cr.cell_engine("cell1"), name="twin")
    seed_cell_group(cr.cell_engine("cell2"), uuid=twin, name="twin")
    _copier(cr).migrate_instance_groups(100)
    with cr.cell_engine("cell2").begin() as conn:
        g = models.cell_groups
        conn.execute(g.update().where(g.c.uuid == twin).values(deleted=g.c.id))
    step = _copier(cr).migrate_instance_groups(100)
    assert step.done == 1
    assert _api_uuids(cr) == {group, twin}
    assert _copier(cr).conflicts.recorded(cr.dbs.cells, limit=10) == []


@pytest.mark.parametrize("phase", [Phase.CELL_ONLY, Phase.API_ONLY])
def test_outside_the_dual_write_phases_nothing_is_copied(topology: Topology, phase: Phase) -> None:
    put_in_phase(topology.dbs, phase)
    seed_cell_group(topology.cell_engine("cell1"))
    step = _copier(topology).migrate_instance_groups(100)
    assert step.done == 0 and step.error is not None and phase.value in step.error
    assert _api_uuids(topology) == set()


def test_max_rate_paces_the_copy(cr: Topology) -> None:
    for i in range(4):
        seed_cell_group(cr.cell_engine("cell1"), name=f"g{i}")
    slept: list[float] = []
    copier = ForwardCopier(cr.dbs, batch_size=2, max_rate=1, sleep=slept.append)
    copier.migrate_instance_groups(100)
    assert len(slept) >= 2 and slept[-1] > 2  # four groups at one a second
