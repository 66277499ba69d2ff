"""api-only -> dual-write-api-reads -> dual-write-cell-reads while writers run."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from shadowdb import commands
from shadowdb.databases import connect
from shadowdb.errors import GuardRefused
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.state import Phase
from shadowdb.switcher import Switcher
from tests.conftest import Topology
from tests.protocol.test_phase_set_killed import (
    ALL,
    Destroyer,
    Renamer,
    _loop,
    _migrated,
    _reach,
    _verify,
)

C, CR, AR, A = list(Phase)


@pytest.mark.parametrize("backend", ALL, indirect=True)
def test_rollback_under_writers(topology: Topology) -> None:
    renamed = [_migrated(topology) for _ in range(4)]
    doomed = [_migrated(topology, "doomed") for _ in range(10)]
    _reach(topology, A)
    fresh = connect(
        topology.api_url_text, settings=dataclasses.replace(topology.settings, phase_ttl=0.0)
    )
    stale = connect(
        topology.api_url_text, settings=dataclasses.replace(topology.settings, phase_ttl=60.0)
    )
    stale.phases.get()
    ctx = RequestContext(fresh, "p1", "u1")
    made = InstanceGroup(ctx, name="made in A", user_id="u1", project_id="p1")
    made.create()
    workers = [
        Renamer(fresh, renamed[0], "f0"),
        Renamer(stale, renamed[1], "s1"),
        Renamer(fresh, made.uuid, "fm"),
        Renamer(stale, renamed[2], "s2"),
        Destroyer(fresh, doomed[:5]),
        Destroyer(stale, doomed[5:]),
    ]
    stop = threading.Event()
    threads = [threading.Thread(target=_loop, args=(w, stop), daemon=True) for w in workers]
    problems: list[str] = []
    for t in threads:
        t.start()
    try:
        for target in (AR, CR):
            for _attempt in range(20):
                commands.diff_report(fresh)
                try:
                    Switcher(fresh).run(target)
                    break
                except GuardRefused as err:
                    last = err
            else:
                problems.append(f"never reached {target.value}: {last}")
                break
            problems += _verify(fresh, workers)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    problems += _verify(fresh, workers)
    assert sum(1 for w in workers if isinstance(w, Renamer) and w.n > 3), "writers did not run"
    assert not problems, problems
    fresh.dispose()
    stale.dispose()
