"""A phase set killed -9 at "locked", "prepared" or after its API commit, under writers.

Writers of two cached phases (fresh, and a cache of the old phase for a minute) keep
renaming their own group and destroying others while the phase set dies. Afterwards:
every acknowledged write is readable, every acknowledged destroy stays destroyed, and
after settle + drain + backfill the diff-report is clean.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from shadowdb import commands
from shadowdb.backfill import backfill
from shadowdb.databases import Databases, connect
from shadowdb.errors import GroupNotFound
from shadowdb.journals import drain_journals
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.state import Phase
from shadowdb.switcher import Switcher
from tests.conftest import Topology
from tests.support.helpers import put_in_phase, seed_api_group, seed_cell_group

C, CR, AR, A = list(Phase)
SCRIPT = Path(__file__).parents[1] / "support" / "crashing_phase_set.py"

ALL = [
    pytest.param("sqlite", marks=pytest.mark.sqlite),
    pytest.param("mysql", marks=pytest.mark.mysql),
    pytest.param("postgresql", marks=pytest.mark.postgresql),
]

MOVES = [(C, CR), (CR, AR), (AR, A), (A, AR), (AR, CR), (CR, C)]
PATH = {C: [], CR: [CR], AR: [CR, AR], A: [CR, AR, A]}


@dataclasses.dataclass
class Renamer:
    dbs: Databases
    uuid: str
    tag: str
    acked: str = "g"
    after_ack: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    n: int = 0

    def step(self) -> None:
        self.n += 1
        name = f"{self.tag}-{self.n}"
        try:
            g = InstanceGroup(RequestContext(self.dbs, "p1", "u1"), uuid=self.uuid)
            g.obj_reset_changes()
            g.name = name
            self.after_ack.append(name)
            g.save()
            self.acked = name
            self.after_ack = []
        except Exception as err:  # not acknowledged
            self.errors.append(f"{type(err).__name__}: {err}"[:200])


@dataclasses.dataclass
class Destroyer:
    dbs: Databases
    uuids: list[str]
    acked: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)

    def step(self) -> None:
        if not self.uuids:
            return
        uuid = self.uuids[0]
        try:
            g = InstanceGroup.get_by_uuid(RequestContext(self.dbs, "p1", "u1"), uuid)
            g.destroy()
            self.acked.append(uuid)
            self.uuids.pop(0)
        except GroupNotFound:
            self.uuids.pop(0)
        except Exception as err:
            self.errors.append(f"{type(err).__name__}: {err}"[:200])


def _loop(worker: Any, stop: threading.Event) -> None:
    while not stop.is_set():
        worker.step()
        time.sleep(0.005)


def _migrated(topology: Topology, name: str = "g") -> str:
    uuid = seed_cell_group(topology.cell_engine("cell1"), name=name, policies=("affinity",))
    seed_api_group(topology.dbs.api, uuid=uuid, name=name, policies=("affinity",))
    return uuid


def _reach(topology: Topology, phase: Phase) -> None:
    for p in PATH[phase]:
        put_in_phase(topology.dbs, p)


@pytest.mark.parametrize("backend", ALL, indirect=True)
@pytest.mark.parametrize("point", ["locked", "prepared", "committed"])
@pytest.mark.parametrize("move", MOVES, ids=lambda m: f"{m[0].value}->{m[1].value}")
def test_phase_set_killed_under_writers(
    topology: Topology, move: tuple[Phase, Phase], point: str
) -> None:
    frm, to = move
    renamed = [_migrated(topology) for _ in range(4)]
    doomed = [_migrated(topology, "doomed") for _ in range(6)]
    _reach(topology, frm)
    assert commands.diff_report(topology.dbs).total == 0 or frm is A
    if frm is A:
        commands.diff_report(topology.dbs)
    fresh_s = dataclasses.replace(topology.settings, phase_ttl=0.0)
    stale_s = dataclasses.replace(topology.settings, phase_ttl=60.0)
    fresh = connect(topology.api_url_text, settings=fresh_s)
    stale = connect(topology.api_url_text, settings=stale_s)
    stale.phases.get()  # cached in the old phase for a minute
    workers: list[Any] = [
        Renamer(fresh, renamed[0], "fresh0"),
        Renamer(fresh, renamed[1], "fresh1"),
        Renamer(stale, renamed[2], "stale2"),
        Renamer(stale, renamed[3], "stale3"),
        Destroyer(fresh, doomed[:3]),
        Destroyer(stale, doomed[3:]),
    ]
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), topology.api_url_text, to.value, point],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(Path(__file__).parents[2]),
    )
    stop = threading.Event()
    threads = [threading.Thread(target=_loop, args=(w, stop), daemon=True) for w in workers]
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        line = proc.stdout.readline().strip()
        assert line == f"reached {point}", (line, proc.stderr.read() if proc.stderr else "")
        for t in threads:
            t.start()
        time.sleep(0.4)  # the writers run into the dying phase set's locks
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(30) == -9
        time.sleep(0.6)  # the writers carry on after the crash
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                f.close()
    check = connect(topology.api_url_text, settings=fresh_s)
    try:
        commands.status(check)
        phase = check.phases.fresh().phase
        assert phase in (frm, to)
        problems = _verify(check, workers)
        acked = [w for w in workers if isinstance(w, Renamer) and w.acked != "g"]
        assert acked, [w.errors[:2] for w in workers]
        # Recover: drain, backfill where allowed, diff clean in the dual-write phases.
        drain_journals(check)
        if phase in (CR, AR):
            backfill(check)
            report = commands.diff_report(check)
            problems += [f"diff after backfill in {phase.value}: {report.total} differences"] * (
                not report.clean
            )
        problems += _verify(check, workers)
        # Finish the interrupted move where it did not happen; check again.
        if phase is frm:
            if to in (AR, A) or frm is A:
                commands.diff_report(check)
            try:
                Switcher(check).run(to, force=True, reason="finish")
            except Exception as err:
                problems.append(f"could not finish the move: {err}")
            problems += _verify(check, workers)
        assert not problems, problems
    finally:
        check.dispose()
        fresh.dispose()
        stale.dispose()


def _verify(dbs: Databases, workers: list[Any]) -> list[str]:
    problems: list[str] = []
    ctx = RequestContext(dbs, "p1", "u1")
    phase = dbs.phases.fresh().phase.value
    for w in workers:
        if isinstance(w, Renamer):
            try:
                name = InstanceGroup.get_by_uuid(ctx, w.uuid).name
            except GroupNotFound:
                problems.append(f"{phase}: renamed group {w.tag} gone")
                continue
            if name != w.acked and name not in w.after_ack:
                problems.append(f"{phase}: {w.tag} reads {name!r}, last acknowledged {w.acked!r}")
        else:
            for uuid in w.acked:
                try:
                    InstanceGroup.get_by_uuid(ctx, uuid)
                    problems.append(f"{phase}: destroyed group {uuid} readable again")
                except GroupNotFound:
                    pass
    return problems
