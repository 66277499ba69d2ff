"""No timing assumption: writers with 0.1 s and 60 s phase caches, one cut off, lose nothing.

Three service processes' worth of writers (each its own ``Databases``, so its own phase
cache): one with a 0.1 s cache, one with a 60 s cache, one with a 0.1 s cache reaching
the API database through a proxy that is cut for part of the run. A driver walks the
cutover forward to ``api-only`` and back to ``dual-write-cell-reads`` through the real
guards (no ``--force``), running backfill and diff-report as an operator would. Each
writer owns its groups, so the last acknowledged rename of each group is known exactly;
at the end both copies of every group must hold it.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Iterator

import pytest

from shadowdb import commands
from shadowdb.backfill import backfill
from shadowdb.databases import Databases, connect
from shadowdb.errors import GuardRefused, ShadowDBError
from shadowdb.journals import drain_journals
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.state import Phase
from shadowdb.switcher import Switcher
from tests.conftest import Topology
from tests.protocol.test_faults import SERVERS
from tests.support.helpers import group_state, seed_cell_group
from tests.support.proxy import Proxy, proxied

GROUPS_PER_WRITER = 4
ROUTE = [
    Phase.DUAL_WRITE_CELL_READS,
    Phase.DUAL_WRITE_API_READS,
    Phase.API_ONLY,
    Phase.DUAL_WRITE_API_READS,
    Phase.DUAL_WRITE_CELL_READS,
]


@dataclasses.dataclass
class Writer:
    name: str
    dbs: Databases
    groups: list[str]
    acknowledged: dict[str, str] = dataclasses.field(default_factory=dict)
    failed: int = 0
    writes: int = 0

    def run(self, stop: threading.Event, seed: int) -> None:
        rng = random.Random(seed)
        ctx = RequestContext(self.dbs, "p1", "u1")
        n = 0
        while not stop.is_set():
            group = rng.choice(self.groups)
            n += 1
            name = f"{self.name}-{n}"
            g = InstanceGroup(ctx, uuid=group)
            g.obj_reset_changes()
            g.name = name
            try:
                g.save()
            except ShadowDBError:
                self.failed += 1  # not acknowledged: no promise made
                continue
            self.acknowledged[group] = name
            self.writes += 1


@pytest.fixture
def proxy_for_api(topology: Topology) -> Iterator[Proxy]:
    with proxied(topology.api_url) as proxy:
        yield proxy


def _service(topology: Topology, ttl: float, url: str | None = None) -> Databases:
    settings = dataclasses.replace(topology.settings, phase_ttl=ttl)
    return connect(url or topology.api_url_text, settings=settings)


def _move(dbs: Databases, target: Phase, proxy: Proxy) -> None:
    """Run the operator's loop until the guards admit the move (never forced)."""
    last: GuardRefused | None = None
    for _attempt in range(20):
        phase = dbs.phases.fresh().phase
        if phase.dual_write:
            backfill(dbs)
        else:
            drain_journals(dbs)
        commands.diff_report(dbs)
        try:
            Switcher(dbs).run(target, reason="mixed caches")
            return
        except GuardRefused as refused:
            last = refused
            proxy.restore()  # a cut-off writer's journal must be able to drain
    raise AssertionError(f"never admitted into {target.value}: {last}")


@pytest.mark.slow
@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_mixed_phase_caches_through_a_cutover_and_back_lose_nothing(
    topology: Topology, proxy_for_api: Proxy
) -> None:
    proxy = proxy_for_api
    cell1, cell2 = topology.cell_engine("cell1"), topology.cell_engine("cell2")
    services = [
        ("fast", _service(topology, 0.1)),
        ("slow", _service(topology, 60.0)),
        (
            "cut",
            _service(
                topology,
                0.1,
                proxy.url_for(topology.api_url).render_as_string(hide_password=False),
            ),
        ),
    ]
    writers = []
    for i, (name, dbs) in enumerate(services):
        engine = cell1 if i % 2 == 0 else cell2
        groups = [seed_cell_group(engine, name=f"{name}{k}") for k in range(GROUPS_PER_WRITER)]
        assert len(dbs.cells) == 2 and dbs.phases.get().phase is Phase.CELL_ONLY
        writers.append(Writer(name, dbs, groups))
    stop = threading.Event()
    threads = [threading.Thread(target=w.run, args=(stop, seed)) for seed, w in enumerate(writers)]
    for t in threads:
        t.start()
    try:
        for step, target in enumerate(ROUTE):
            if step % 2 == 0:
                proxy.cut()  # the third process is cut off while the phase moves
            _move(topology.dbs, target, proxy)
            proxy.restore()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        proxy.restore()
    assert not any(t.is_alive() for t in threads)
    assert all(w.writes > 0 for w in writers), [(w.name, w.writes) for w in writers]
    assert drain_journals(topology.dbs).errors == ()
    backfill(topology.dbs)
    for w in writers:
        for group, name in w.acknowledged.items():
            engine = cell1 if group in writers[0].groups + writers[2].groups else cell2
            cell_copy = group_state(engine, "cell", group)
            api_copy = group_state(topology.dbs.api, "api", group)
            assert cell_copy is not None and cell_copy[0] == name, (w.name, group)
            assert api_copy is not None and api_copy[0] == name, (w.name, group)
    assert commands.diff_report(topology.dbs).clean
    for _name, dbs in services:
        dbs.dispose()
