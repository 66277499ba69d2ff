"""Writers of both dual-write phases on the same groups while the phase flips under them.

Eight threads run random creates, saves, add_members, remove_members and destroys on a
shared pool of groups while a ninth flips the phase between ``dual-write-cell-reads`` and
``dual-write-api-reads`` (through :class:`~shadowdb.switcher.Switcher`, guards forced: the
phase row updated under its exclusive lock, then the drain wait). Afterwards, and after
draining the journals:

* every acknowledged write is present, in both databases: a group whose destroy was
  acknowledged is gone; every other acknowledged group holds exactly the members whose
  add was acknowledged minus those whose remove was;
* no write was reordered: a group's name is that of a save no other acknowledged save
  started after (a linearizable register);
* both databases agree on every group, and no group has a duplicate member row.

Members are added with fresh uuids and removed only by the thread that added them, so the
expected member set is exact whatever the interleaving.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa

from shadowdb.errors import GroupNotFound
from shadowdb.journals import drain_journals
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.queries import API, CELL
from shadowdb.state import Phase
from shadowdb.switcher import Switcher
from tests.conftest import Topology
from tests.support.helpers import group_state, new_uuid, put_in_phase

THREADS = 8
OPS_PER_THREAD = 40


@dataclasses.dataclass
class Ledger:
    """What the writers were told succeeded."""

    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    groups: list[str] = dataclasses.field(default_factory=list)
    initial_names: dict[str, str] = dataclasses.field(default_factory=dict)
    added: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    removed: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    saves: dict[str, list[tuple[float, float, str]]] = dataclasses.field(default_factory=dict)
    destroyed: set[str] = dataclasses.field(default_factory=set)
    errors: list[str] = dataclasses.field(default_factory=list)
    ops: Counter[str] = dataclasses.field(default_factory=Counter)


def _flip(topology: Topology, stop: threading.Event, flips: list[Phase]) -> None:
    """Alternate the two dual-write phases through the real switcher, as an operator would.

    Guards are forced (the writers keep journals and copies moving); the record step, the
    announcement run as in ``shadowdb phase set``.
    """
    switcher = Switcher(topology.dbs)
    phases = [Phase.DUAL_WRITE_API_READS, Phase.DUAL_WRITE_CELL_READS]
    i = 0
    while not stop.is_set():
        target = phases[i % 2]
        switcher.run(target, force=True, reason="concurrency test")
        flips.append(target)
        i += 1


#: Flips the writers must live through: they keep writing past OPS_PER_THREAD until then.
MIN_FLIPS = 4


def _writer(topology: Topology, ledger: Ledger, seed: int, flips: list[Phase]) -> None:
    rng = random.Random(seed)
    ctx = RequestContext(topology.dbs, "p1", "u1")
    mine: list[tuple[str, str]] = []  # (group, member) this thread added
    done = 0
    deadline = time.monotonic() + 120
    while done < OPS_PER_THREAD or (len(flips) < MIN_FLIPS and time.monotonic() < deadline):
        done += 1
        with ledger.lock:
            pool = list(ledger.groups)
        roll = rng.random()
        try:
            if roll < 0.15 or not pool:
                name = f"n{seed}-{rng.randrange(10**6)}"
                g = InstanceGroup(
                    ctx, name=name, project_id="p1", user_id="u1", policies=["affinity"]
                )
                g.create()
                with ledger.lock:
                    ledger.groups.append(g.uuid)
                    ledger.initial_names[g.uuid] = name
                ledger.ops["create"] += 1
            elif roll < 0.55:
                group, member = rng.choice(pool), new_uuid()
                InstanceGroup.add_members(ctx, group, [member])
                with ledger.lock:
                    ledger.added.setdefault(group, set()).add(member)
                mine.append((group, member))
                ledger.ops["add"] += 1
            elif roll < 0.70 and mine:
                group, member = mine.pop(rng.randrange(len(mine)))
                InstanceGroup.remove_members(ctx, group, [member])
                with ledger.lock:
                    ledger.removed.setdefault(group, set()).add(member)
                ledger.ops["remove"] += 1
            elif roll < 0.95:
                group = rng.choice(pool)
                name = f"s{seed}-{rng.randrange(10**6)}"
                g = InstanceGroup.get_by_uuid(ctx, group)
                g.name = name
                start = time.monotonic()
                g.save()
                end = time.monotonic()
                with ledger.lock:
                    ledger.saves.setdefault(group, []).append((start, end, name))
                ledger.ops["save"] += 1
            else:
                group = rng.choice(pool)
                InstanceGroup.get_by_uuid(ctx, group).destroy()
                with ledger.lock:
                    ledger.destroyed.add(group)
                ledger.ops["destroy"] += 1
        except GroupNotFound:
            ledger.ops["not-found"] += 1  # raced with a destroy: not acknowledged
        except Exception as err:  # any other failure is a defect
            ledger.errors.append(f"{type(err).__name__}: {err}")


def _duplicate_members(engine: sa.Engine, side: Any) -> int:
    m = side.members
    live = [m.c.deleted == 0] if side.soft_delete else []
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(m.c.group_id, side.member_col, sa.func.count())
            .where(*live)
            .group_by(m.c.group_id, side.member_col)
            .having(sa.func.count() > 1)
        ).all()
    return len(rows)


@pytest.mark.slow
def test_writers_of_both_phases_during_flips_lose_nothing(topology: Topology) -> None:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    ledger = Ledger()
    stop = threading.Event()
    flips: list[Phase] = []
    flipper = threading.Thread(target=_flip, args=(topology, stop, flips))
    writers = [
        threading.Thread(target=_writer, args=(topology, ledger, seed, flips))
        for seed in range(THREADS)
    ]
    flipper.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join(timeout=300)
    stop.set()
    flipper.join(timeout=60)

    assert ledger.errors == []
    assert len(flips) >= MIN_FLIPS, "the phase must flip several times under the writers"
    assert sum(ledger.ops.values()) >= THREADS * OPS_PER_THREAD
    assert ledger.ops["create"] and ledger.ops["add"] and ledger.ops["save"]

    drained = drain_journals(topology.dbs)
    assert drained.errors == () and drained.conflicts == ()

    api, cell = topology.dbs.api, topology.cell_engine("cell1")
    for group in ledger.groups:
        a, c = group_state(api, "api", group), group_state(cell, "cell", group)
        assert a == c, f"databases disagree on {group}"
        if group in ledger.destroyed:
            assert a is None, f"destroyed group {group} is back"
            continue
        assert a is not None, f"acknowledged group {group} is lost"
        expected = ledger.added.get(group, set()) - ledger.removed.get(group, set())
        assert set(a[4]) == expected, f"members of {group}"
        saves = ledger.saves.get(group, [])
        names = {n for _, _, n in saves} | {ledger.initial_names[group]}
        assert a[0] in names
        final = [s for s in saves if s[2] == a[0]]
        if final:
            # No acknowledged save began after the winning save had returned.
            _, won_end, _ = final[0]
            later = [s for s in saves if s[0] > won_end]
            assert later == [], f"save of {a[0]!r} overtook later saves {later}"
        else:
            assert saves == [], f"acknowledged saves of {group} were lost"
    assert _duplicate_members(api, API) == 0
    assert _duplicate_members(cell, CELL) == 0
    with api.connect() as conn:
        assert API.journal_count(conn) == 0
