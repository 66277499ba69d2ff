"""Property: live writes interleaved with backfill batches and crashes lose nothing.

Hypothesis draws a program of operations on a few legacy and new groups: object-API
writes (create, rename, replace members, add and remove members, destroy), backfill
batches of random size, batches that crash at a lifecycle point (an exception raised
from a ``backfill-step`` receiver: every open transaction rolls back, whatever committed
stays, as after ``kill -9``), live writes slipped in between a batch's scan and its
locks, and flips between the two dual-write phases.

The writes run one at a time, so the expected state of every group is exact: a model
updated only when a write is acknowledged. After the program, backfill runs to
completion and the journals drain; then every group must match the model in *both*
databases: nothing lost, nothing resurrected, nothing stale, one copy per uuid.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shadowdb import signals
from shadowdb.backfill import ForwardCopier, backfill
from shadowdb.databases import Databases, connect
from shadowdb.errors import GroupNotFound
from shadowdb.journals import drain_journals
from shadowdb.objects import InstanceGroup, InstanceGroupList, RequestContext
from shadowdb.state import Phase
from tests.conftest import Topology, empty_topology
from tests.support.helpers import group_state, put_in_phase, seed_cell_group

INSTANCES = [f"00000000-0000-4000-8000-{i:012d}" for i in range(6)]
NAMES = ["a", "b", "c"]
LEGACY = 3  # legacy groups seeded in the cells before the program
NEW = 3  # groups the program may create through the object API
STEPS = ("scanned", "locked", "copied", "checkpointed")


class Crash(Exception):
    """Raised from a lifecycle hook to abort a backfill mid-batch."""


@dataclasses.dataclass
class Model:
    """The acknowledged state of each group: (name, member set), or None once destroyed."""

    groups: dict[str, tuple[str, frozenset[str]] | None] = dataclasses.field(default_factory=dict)


slot = st.integers(min_value=0, max_value=LEGACY + NEW - 1)
write = st.one_of(
    st.tuples(st.just("create"), st.integers(min_value=LEGACY, max_value=LEGACY + NEW - 1)),
    st.tuples(st.just("rename"), slot, st.sampled_from(NAMES)),
    st.tuples(st.just("members"), slot, st.sets(st.sampled_from(INSTANCES), max_size=3)),
    st.tuples(st.just("add"), slot, st.sampled_from(INSTANCES)),
    st.tuples(st.just("remove"), slot, st.sampled_from(INSTANCES)),
    st.tuples(st.just("destroy"), slot),
)
# Writes racing a batch between its scan and its locks are where copies go wrong: draw
# them often, and aim them mostly at the legacy groups the batch is about to copy.
legacy_write = st.one_of(
    st.tuples(st.just("destroy"), st.integers(min_value=0, max_value=LEGACY - 1)),
    st.tuples(
        st.just("add"), st.integers(min_value=0, max_value=LEGACY - 1), st.sampled_from(INSTANCES)
    ),
    st.tuples(
        st.just("rename"), st.integers(min_value=0, max_value=LEGACY - 1), st.sampled_from(NAMES)
    ),
)
operation = st.one_of(
    write,
    st.tuples(st.just("batch"), st.integers(min_value=1, max_value=4)),
    st.tuples(st.just("crash"), st.sampled_from(STEPS), st.integers(min_value=1, max_value=4)),
    st.tuples(st.just("race"), st.sampled_from(("scanned",)), legacy_write),
    st.tuples(st.just("race"), st.sampled_from(("scanned",)), write),
    st.tuples(
        st.just("flip"), st.sampled_from([Phase.DUAL_WRITE_CELL_READS, Phase.DUAL_WRITE_API_READS])
    ),
)


class Program:
    """Run one drawn program against a deployment and its model."""

    def __init__(self, dbs: Databases, topology: Topology, uuids: list[str], model: Model) -> None:
        self.dbs = dbs
        self.topology = topology
        self.uuids = uuids
        self.model = model
        self.ctx = RequestContext(dbs, "p1", "u1", is_admin=True)

    def write(self, op: tuple[Any, ...]) -> None:
        kind, index = op[0], op[1]
        uuid = self.uuids[index]
        current = self.model.groups.get(uuid)
        try:
            if kind == "create":
                if uuid in self.model.groups:
                    return  # a uuid is created once (a destroyed one stays destroyed)
                InstanceGroup(
                    self.ctx, uuid=uuid, name="new", project_id="p1", user_id="u1"
                ).create()
                self.model.groups[uuid] = ("new", frozenset())
            elif kind == "rename":
                group = InstanceGroup.get_by_uuid(self.ctx, uuid)
                group.name = op[2]
                group.save()
                assert current is not None
                self.model.groups[uuid] = (op[2], current[1])
            elif kind == "members":
                group = InstanceGroup.get_by_uuid(self.ctx, uuid)
                group.members = sorted(op[2])
                group.save()
                assert current is not None
                self.model.groups[uuid] = (current[0], frozenset(op[2]))
            elif kind == "add":
                InstanceGroup.add_members(self.ctx, uuid, [op[2]])
                assert current is not None
                self.model.groups[uuid] = (current[0], current[1] | {op[2]})
            elif kind == "remove":
                InstanceGroup.remove_members(self.ctx, uuid, [op[2]])
                assert current is not None
                self.model.groups[uuid] = (current[0], current[1] - {op[2]})
            elif kind == "destroy":
                InstanceGroup.get_by_uuid(self.ctx, uuid).destroy()
                self.model.groups[uuid] = None
        except GroupNotFound:
            # Only a group the model says is absent may be missing.
            assert current is None, f"{kind} on {uuid}: acknowledged group not found"

    def batch(self, count: int, hook: Callable[..., None] | None = None) -> None:
        if hook is not None:
            signals.backfill_step.connect(hook, sender=self.dbs)
        try:
            ForwardCopier(self.dbs, batch_size=2).migrate_instance_groups(count)
        except Crash:
            pass
        finally:
            if hook is not None:
                signals.backfill_step.disconnect(hook, sender=self.dbs)

    def run(self, op: tuple[Any, ...]) -> None:
        kind = op[0]
        if kind == "batch":
            self.batch(op[1])
        elif kind == "crash":
            point, count = op[1], op[2]

            def crash(sender: Any, step: str, **_: Any) -> None:
                if step == point:
                    raise Crash(point)

            self.batch(count, crash)
        elif kind == "race":
            point, live_write = op[1], op[2]
            fired: list[bool] = []

            def race(sender: Any, step: str, **_: Any) -> None:
                if step == point and not fired:
                    fired.append(True)
                    self.write(live_write)

            self.batch(4, race)
        elif kind == "flip":
            put_in_phase(self.dbs, op[1])
        else:
            self.write(op)


@pytest.fixture
def fresh_topology(topology: Topology) -> Iterator[Callable[[], Databases]]:
    """Hand out an emptied deployment for each Hypothesis example."""
    opened: list[Databases] = []

    def make() -> Databases:
        for dbs in opened:
            dbs.dispose()
        empty_topology(topology.api_url, topology.cell_urls, topology.settings)
        dbs = connect(topology.api_url_text, settings=topology.settings)
        opened.append(dbs)
        return dbs

    yield make
    for dbs in opened:
        dbs.dispose()


BACKENDS = [
    pytest.param("sqlite", marks=pytest.mark.sqlite),
    pytest.param("mysql", marks=pytest.mark.mysql),
]


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(program=st.lists(operation, min_size=1, max_size=14))
def test_backfill_with_live_writes_and_crashes_loses_nothing(
    topology: Topology,
    fresh_topology: Callable[[], Databases],
    program: list[tuple[Any, ...]],
) -> None:
    dbs = fresh_topology()
    model = Model()
    uuids: list[str] = []
    cells = [topology.cell_urls["cell1"], topology.cell_urls["cell2"]]
    for i in range(LEGACY):
        engine = dbs.cell("cell1" if i % 2 == 0 else "cell2").engine
        members = INSTANCES[i : i + 2]
        uuids.append(seed_cell_group(engine, name=f"legacy{i}", members=members))
        model.groups[uuids[-1]] = (f"legacy{i}", frozenset(members))
    uuids.extend(f"11111111-0000-4000-8000-{i:012d}" for i in range(NEW))
    assert len(cells) == 2
    put_in_phase(dbs, Phase.DUAL_WRITE_CELL_READS)

    runner = Program(dbs, topology, uuids, model)
    for op in program:
        runner.run(op)

    # Finish: backfill until nothing is left, then nothing may remain in the journals.
    result = backfill(dbs, sleep=lambda _s: None)
    assert result.outcome == "done", result
    drained = drain_journals(dbs)
    assert drained.conflicts == () and drained.errors == ()

    for uuid, expected in model.groups.items():
        api = group_state(dbs.api, "api", uuid)
        cell = group_state(dbs.cell("cell1").engine, "cell", uuid) or group_state(
            dbs.cell("cell2").engine, "cell", uuid
        )
        if expected is None:
            assert api is None and cell is None, f"{uuid} was destroyed and is back"
            continue
        name, members = expected
        assert api is not None, f"{uuid} is missing from the API database"
        assert (api[0], set(api[4])) == (name, set(members)), f"API copy of {uuid} is stale"
        assert api == cell, f"copies of {uuid} differ"
    listed = [g.uuid for g in InstanceGroupList.get_all(RequestContext(dbs, None, None, True))]
    assert sorted(listed) == sorted(u for u, e in model.groups.items() if e is not None)
