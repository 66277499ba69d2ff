"""A model of shadowdb's cutover protocol, explored exhaustively (docs/protocol.md).

The databases are the API database and two cells (``c1``, ``c2``); a group copy is a
version number (``None``: absent, deleted or never there). The processes are the ones of
the real system, each step one transaction (or one commit) of the real code, with the
real write order and locks of :mod:`shadowdb.phases`, :mod:`shadowdb.locks`,
:mod:`shadowdb.journals`, :mod:`shadowdb.backfill`, :mod:`shadowdb.diff` and
:mod:`shadowdb.switcher`:

* writers, each one operation (update or destroy) under the phase it cached, fenced by
  the phase row of every database it writes (re-planning, or settling a lagging cell);
  a writer may see its second database fail (an outage);
  ``dual-write-cell-reads`` writes commit the cell with an outbox entry, then replay it;
* the backfill (journal replay, then the forward copy), the reverse sync, the
  diff-report (two snapshots), and ``phase set`` (the guards' preview, the locks taken
  one by one, the exact checks under them, the API commit, then each cell's commit, the
  catch-up when leaving ``api-only``);
* a crash of any process at any step: its open transactions roll back, its locks go.

:func:`explore` walks every interleaving breadth first and checks, in every reachable
state, what DESIGN.md section 3 promises: a fresh read returns the last acknowledged
outcome of the group (or that of a write whose outcome is unknown because its process
crashed: never an older one, never a deleted group); one live copy per uuid among the
cells; no deadlock. In every final state it then runs what an operator runs (settle,
backfill) and checks convergence and idempotence: every maintained copy equal to the
authority's, or the difference reported as a conflict (never a silent one), and a
second backfill with nothing to do.

:class:`Protections` switches the protocol's protections off one by one; the tests show
that each one is needed: without it the explorer finds a violation.

Where the real code is more cautious than the model, the model explores the bolder
protocol: under the fence it replays every cell journal entry, the code only those that
recorded no failure (the others refuse the move until a backfill drains them).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

C, CR, AR, A = "cell-only", "dual-write-cell-reads", "dual-write-api-reads", "api-only"
CELLS = ("c1", "c2")
DBS = ("api", *CELLS)
FORWARD = (CR, AR)
MOVES = {(C, CR), (CR, AR), (AR, A), (CR, C), (AR, CR), (A, AR)}
HOME = "c1"  # every group's cell (the default cell too)


@dataclasses.dataclass(frozen=True)
class Protections:
    """The protocol's protections; each can be switched off to show it is needed."""

    fence: bool = True  # writers check the epoch of the row of each database they write
    tombstones: bool = True  # API deletions are remembered; absence is not "not migrated"
    identity_lock: bool = True  # a lock row per uuid, whether or not a group row exists
    exact_guards: bool = True  # journal guards counted again under the phase-row locks
    gate_epoch: bool = True  # a gating diff-report must have run at the current epoch
    api_only_journal: bool = True  # api-only writes journal their group for the way back
    two_phase: bool = True  # phase set prepares every cell before the API commit


@dataclasses.dataclass(frozen=True)
class Op:
    """One writer: an operation on one group; ``None`` as value destroys it."""

    group: str
    value: int | None
    outage: bool = False  # the second database this writer needs may fail


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A starting phase, the groups' copies, and the processes that run."""

    name: str
    phase: str
    epoch: int
    api: dict[str, int | None]
    cell: dict[str, int | None]
    writers: tuple[Op, ...] = ()
    moves: tuple[str, ...] = ()  # the targets `phase set` is asked for, in order
    backfill: bool = False
    reverse: bool = False
    diffs: int = 0
    crashes: int = 1  # at most this many crashes in one run
    api_journal: tuple[str, ...] = ()  # groups with an API entry at the start
    clean_diff_at: int | None = None  # a clean diff-report on record, run at this epoch


class World:
    """One state of the model: the databases, the locks, the processes."""

    __slots__ = (
        "acked",
        "conflicts",
        "crashes",
        "diff",
        "journal",
        "locks",
        "marker",
        "next_id",
        "phase",
        "pins",
        "procs",
        "rows",
        "tomb",
        "unknown",
        "xlock",
    )

    phase: dict[str, tuple[str, int]]
    marker: dict[str, int]  # a cell's prepared next epoch (phase set's first half)
    rows: dict[str, dict[str, int | None]]
    journal: dict[str, frozenset[tuple[str, int]]]
    tomb: frozenset[str]
    diff: tuple[int, bool, bool] | None
    acked: dict[str, int | None]
    unknown: dict[str, frozenset[int | None]]
    locks: dict[tuple[str, str], int]
    pins: dict[str, frozenset[int]]
    xlock: dict[str, int]
    procs: tuple[tuple[Any, ...], ...]
    conflicts: frozenset[str]
    next_id: int
    crashes: int

    def copy(self) -> World:
        w = World.__new__(World)
        w.phase = dict(self.phase)
        w.marker = dict(self.marker)
        w.rows = {db: dict(r) for db, r in self.rows.items()}
        w.journal = dict(self.journal)
        w.tomb = self.tomb
        w.diff = self.diff
        w.acked = dict(self.acked)
        w.unknown = dict(self.unknown)
        w.locks = dict(self.locks)
        w.pins = dict(self.pins)
        w.xlock = dict(self.xlock)
        w.procs = self.procs
        w.conflicts = self.conflicts
        w.next_id = self.next_id
        w.crashes = self.crashes
        return w

    def key(self) -> tuple[Any, ...]:
        return (
            tuple(sorted(self.phase.items())),
            tuple(sorted(self.marker.items())),
            tuple((db, tuple(sorted(r.items(), key=repr))) for db, r in sorted(self.rows.items())),
            tuple((db, tuple(sorted(j))) for db, j in sorted(self.journal.items())),
            tuple(sorted(self.tomb)),
            self.diff,
            tuple(sorted(self.acked.items(), key=repr)),
            tuple((g, tuple(sorted(u, key=repr))) for g, u in sorted(self.unknown.items())),
            tuple(sorted(self.locks.items())),
            tuple((db, tuple(sorted(p))) for db, p in sorted(self.pins.items())),
            tuple(sorted(self.xlock.items())),
            self.procs,
            tuple(sorted(self.conflicts)),
            self.next_id,
            self.crashes,
        )

    # ------------------------------------------------------------------ locks

    def free(self, pid: int, db: str, group: str | None = None, *, exclusive: bool = False) -> bool:
        """Can ``pid`` take db's phase row (shared, or exclusive) and ``group``'s lock?"""
        holder = self.xlock.get(db)
        if holder is not None and holder != pid:
            return False
        if exclusive and self.pins.get(db, frozenset()) - {pid}:
            return False
        if group is not None:
            owner = self.locks.get((db, group))
            if owner is not None and owner != pid:
                return False
        return True

    def pin(self, pid: int, db: str, group: str | None = None) -> None:
        self.pins[db] = self.pins.get(db, frozenset()) | {pid}
        if group is not None:
            self.locks[(db, group)] = pid

    def release(self, pid: int, db: str | None = None) -> None:
        for d in [db] if db else list(self.pins):
            self.pins[d] = self.pins.get(d, frozenset()) - {pid}
            if self.xlock.get(d) == pid:
                del self.xlock[d]
        for k in [k for k, v in self.locks.items() if v == pid and (db is None or k[0] == db)]:
            del self.locks[k]
        if db is None:
            for d in [d for d, v in self.xlock.items() if v == pid]:
                del self.xlock[d]

    # ------------------------------------------------------------------ data

    def put(self, db: str, group: str, value: int | None, p: Protections) -> None:
        """Write a copy (``None`` deletes it; an API deletion leaves a tombstone)."""
        self.rows[db][group] = value
        if db == "api":
            if value is None and p.tombstones:
                self.tomb = self.tomb | {group}
            elif value is not None:
                self.tomb = self.tomb - {group}

    def entry(self, db: str, group: str) -> int:
        self.next_id += 1
        self.journal[db] = self.journal[db] | {(group, self.next_id)}
        return self.next_id

    def entries(self, db: str, group: str) -> frozenset[tuple[str, int]]:
        return frozenset(e for e in self.journal[db] if e[0] == group)

    def clear(self, db: str, group: str, ids: Sequence[int], p: Protections) -> None:
        """Delete exactly the entries ``ids`` (never a range: another's entry stays)."""
        self.journal[db] = frozenset(e for e in self.journal[db] if e[1] not in ids)

    def ack(self, group: str, value: int | None) -> None:
        self.acked[group] = value
        self.unknown[group] = frozenset()

    def settle(self, pid: int, cell: str) -> bool:
        """Bring a lagging cell's row to the API's, or drop a marker the API never took.

        The API row is read under a shared lock: while a phase set holds it, this waits.
        """
        if not self.free(pid, cell, exclusive=True) or not self.free(pid, "api"):
            return False
        if self.phase[cell][1] < self.phase["api"][1]:
            self.phase[cell] = self.phase["api"]
        self.marker.pop(cell, None)
        return True

    def settled(self, cell: str) -> bool:
        return cell not in self.marker and self.phase[cell] == self.phase["api"]

    def read(self, group: str, p: Protections) -> int | None:
        """What a reader with a fresh phase is served for ``group``."""
        phase = self.phase["api"][0]
        if phase in (C, CR):
            return self.rows[HOME].get(group)
        api = self.rows["api"].get(group)
        if phase == A or api is not None:
            return api
        if p.tombstones and group in self.tomb:
            return None
        return self.rows[HOME].get(group)

    def groups(self) -> list[str]:
        return sorted({g for r in self.rows.values() for g in r})


# --------------------------------------------------------------------------- processes

Proc = tuple[Any, ...]  # (kind, pc, ...locals)
Move = tuple[str, World]


def _set(w: World, pid: int, proc: Proc) -> None:
    procs = list(w.procs)
    procs[pid] = proc
    w.procs = tuple(procs)


def _done(w: World, pid: int) -> None:
    w.release(pid)
    _set(w, pid, ("done",))


def _fence(w: World, pid: int, db: str, planned: tuple[str, int], p: Protections) -> str | None:
    """``None`` to go on; ``"replan"`` (the row is ahead); ``"behind"`` (a lagging cell);
    ``"inflight"`` (the cell is prepared for a change: only the API row can tell)."""
    if not p.fence:
        return None
    if db in w.marker:
        return "inflight"
    found = w.phase[db]
    if found[1] > planned[1]:
        return "replan"
    if found[1] < planned[1]:
        return "behind"
    return None


class Model:
    """The transitions of a scenario under a set of protections."""

    def __init__(self, scenario: Scenario, protections: Protections) -> None:
        self.s = scenario
        self.p = protections

    # ------------------------------------------------------------------ start

    def initial(self) -> World:
        s = self.s
        w = World.__new__(World)
        w.phase = {db: (s.phase, s.epoch) for db in DBS}
        w.marker = {}
        groups = sorted(set(s.api) | set(s.cell))
        w.rows = {
            "api": {g: s.api.get(g) for g in groups},
            "c1": {g: s.cell.get(g) for g in groups},
            "c2": {},
        }
        w.journal = {db: frozenset() for db in DBS}
        w.tomb = frozenset()
        w.diff = None if s.clean_diff_at is None else (s.clean_diff_at, True, True)
        w.acked = {g: None for g in groups}
        w.unknown = {g: frozenset() for g in groups}
        w.locks, w.pins, w.xlock = {}, {}, {}
        w.conflicts = frozenset()
        w.next_id = 0
        w.crashes = 0
        for g in s.api_journal:
            w.entry("api", g)
        for g in groups:
            w.acked[g] = w.read(g, self.p)
        procs: list[Proc] = [("writer", "start", i, None, 0) for i in range(len(s.writers))]
        if s.moves:
            procs.append(("changer", "plan", 0, None, 0, ()))
        if s.backfill:
            procs.append(("backfill", "collect", ()))
        if s.reverse:
            procs.append(("reverse", "copy", tuple(groups)))
        procs.extend(("diff", "start", None) for _ in range(s.diffs))
        w.procs = tuple(procs)
        return w

    # ------------------------------------------------------------------ moves

    def moves(self, w: World) -> Iterator[Move]:
        for pid, proc in enumerate(w.procs):
            kind = proc[0]
            if kind == "done":
                continue
            step = getattr(self, f"_{kind}")
            yield from step(w, pid, proc)
            if w.crashes < self.s.crashes:
                yield f"crash {kind}{pid} at {proc[1]}", self._crash(w, pid, proc)

    def _crash(self, w: World, pid: int, proc: Proc) -> World:
        n = w.copy()
        n.crashes += 1
        if proc[0] == "writer" and proc[1] != "start":
            op = self.s.writers[proc[2]]
            n.unknown[op.group] = n.unknown[op.group] | {op.value}
        _done(n, pid)
        return n

    # -- writers ---------------------------------------------------------------------

    def _writer(self, w: World, pid: int, proc: Proc) -> Iterator[Move]:
        _, pc, i, plan, replans = proc[:5]
        op = self.s.writers[i]
        g, label = op.group, f"writer{pid}"
        if pc == "start":
            n = w.copy()
            _set(n, pid, ("writer", "go", i, n.phase["api"], 0))
            yield f"{label} caches {n.phase['api']}", n
            return
        phase = plan[0]
        if pc == "go":
            if phase == C:
                yield from self._w_cell_only(w, pid, proc, op)
            elif phase == CR:
                yield from self._w_cell_reads(w, pid, proc, op)
            elif phase == AR:
                yield from self._w_api_reads(w, pid, proc, op)
            else:
                yield from self._w_api_only(w, pid, proc, op)
            return
        if pc == "cr-replay":  # dual-write-cell-reads: the API half, a replay of its entry
            entry = proc[5]
            n2 = self.replay(w, pid, HOME, g, (entry,))
            if n2 is not None:
                n2.release(pid)
                if w.settled(HOME):
                    _done(n2, pid)
                yield f"{label} replays its entry to the API", n2
            if op.outage:
                n = w.copy()
                _done(n, pid)  # the API database failed: the entry stays for the drain
                yield f"{label} API write fails", n
            return
        if pc == "ar-cell":  # dual-write-api-reads: level the cell copy
            value, entry, seen = proc[5], proc[6], proc[7]
            n = w.copy()
            n.put(HOME, g, value, self.p)
            n.clear(HOME, g, seen, self.p)
            n.release(pid)
            _set(n, pid, ("writer", "ar-clear", i, plan, replans, value, entry, seen))
            yield f"{label} levels the cell copy", n
            if op.outage:
                n = w.copy()
                _done(n, pid)  # the cell failed: the API entry stays for the replay
                yield f"{label} cell write fails", n
            return
        if pc == "ar-clear":
            entry = proc[6]
            n = w.copy()
            n.clear("api", g, [entry], self.p)
            _done(n, pid)
            yield f"{label} clears its API entry", n
            return
        raise AssertionError(pc)

    def _replan(self, w: World, pid: int, proc: Proc, db: str) -> Move:
        n = w.copy()
        n.release(pid)
        _set(n, pid, ("writer", "go", proc[2], n.phase[db], proc[4] + 1))
        return f"writer{pid} finds {db} at {n.phase[db]}: re-plans", n

    def _behind(self, w: World, pid: int, cell: str) -> Iterator[Move]:
        n = w.copy()
        n.release(pid)
        if n.settle(pid, cell):
            yield f"writer{pid} settles lagging {cell}", n

    def _fenced(
        self, w: World, pid: int, proc: Proc, db: str
    ) -> tuple[bool, Iterator[Move] | None]:
        """Check the fence of ``db``; (go on, or the moves that replace this one)."""
        verdict = _fence(w, pid, db, proc[3], self.p)
        if verdict == "replan":
            return False, iter([self._replan(w, pid, proc, db)])
        if verdict == "behind":
            return False, self._behind(w, pid, db)
        if verdict == "inflight":
            op = self.s.writers[proc[2]]
            moves = list(self._behind(w, pid, db))
            if op.outage and proc[3][0] in (C, CR):
                n = w.copy()
                _done(n, pid)  # the API row cannot be read: refused, nothing written
                moves.append((f"writer{pid}: change in flight, API unreachable: refused", n))
            return False, iter(moves)
        return True, None

    def _begin_cell_write(
        self, w: World, pid: int, proc: Proc, op: Op, label: str
    ) -> Iterator[Move] | None:
        """The cell transaction's start: the lock, the fence, the group found.

        Returns the moves that replace the write (blocked: none; re-planned, settled or
        not found), or ``None`` to go on.
        """
        if not w.free(pid, HOME, op.group):
            return iter(())
        ok, instead = self._fenced(w, pid, proc, HOME)
        if not ok:
            return instead or iter(())
        if w.rows[HOME].get(op.group) is None:
            n = w.copy()
            _done(n, pid)
            return iter([(f"{label}: not found", n)])
        return None

    def _w_cell_only(self, w: World, pid: int, proc: Proc, op: Op) -> Iterator[Move]:
        label = f"writer{pid} (cell-only)"
        instead = self._begin_cell_write(w, pid, proc, op, label)
        if instead is not None:
            yield from instead
            return
        n = w.copy()
        n.put(HOME, op.group, op.value, self.p)
        n.ack(op.group, op.value)
        _done(n, pid)
        yield f"{label} writes the cell (acknowledged)", n

    def _w_cell_reads(self, w: World, pid: int, proc: Proc, op: Op) -> Iterator[Move]:
        label = f"writer{pid} (cell reads)"
        instead = self._begin_cell_write(w, pid, proc, op, label)
        if instead is not None:
            yield from instead
            return
        n = w.copy()
        n.put(HOME, op.group, op.value, self.p)
        entry = n.entry(HOME, op.group)  # the outbox, in the authority's transaction
        n.ack(op.group, op.value)
        _set(n, pid, ("writer", "cr-replay", *proc[2:5], entry))
        yield f"{label} commits the cell with its entry (acknowledged)", n

    def _w_api_reads(self, w: World, pid: int, proc: Proc, op: Op) -> Iterator[Move]:
        g, p = op.group, self.p
        label = f"writer{pid} (api reads)"
        lock_id = p.identity_lock or w.rows[HOME].get(g) is not None
        if op.outage and w.free(pid, "api", g):  # the cell out of reach: API copy alone
            ok, instead = self._fenced(w, pid, proc, "api")
            if not ok:
                yield from instead or ()
            else:
                n = w.copy()
                if n.rows["api"].get(g) is None:
                    _done(n, pid)
                    yield f"{label} without the cell: group not in the API", n
                else:
                    n.put("api", g, op.value, p)
                    n.entry("api", g)
                    n.ack(g, op.value)
                    _done(n, pid)
                    yield f"{label} without the cell (acknowledged, journaled)", n
        if not (w.free(pid, HOME, g if lock_id else None) and w.free(pid, "api", g)):
            return
        ok, instead = self._fenced(w, pid, proc, HOME)
        if not ok:
            yield from instead or ()
            return
        ok, instead = self._fenced(w, pid, proc, "api")
        if not ok:
            yield from instead or ()
            return
        n = w.copy()
        crec, arec = n.rows[HOME].get(g), n.rows["api"].get(g)
        pending_cell = n.entries(HOME, g)
        pending_api = n.entries("api", g)
        if pending_cell and pending_api:
            n.conflicts = n.conflicts | {g}
            _done(n, pid)
            yield f"{label}: journal conflict (reported)", n
            return
        if pending_cell:
            n.put("api", g, crec, p)
            arec = crec
        elif arec is None and crec is not None:
            if p.tombstones and g in n.tomb:
                n.put(HOME, g, None, p)
                n.clear(HOME, g, [e[1] for e in pending_cell], p)
                _done(n, pid)
                yield f"{label}: tombstoned, retires the cell copy, not found", n
                return
            n.put("api", g, crec, p)
            arec = crec
        if arec is None:
            _done(n, pid)
            yield f"{label}: not found", n
            return
        n.put("api", g, op.value, p)
        entry = n.entry("api", g)
        n.ack(g, op.value)
        n.pin(pid, HOME, g if lock_id else None)
        seen = tuple(e[1] for e in pending_cell)
        _set(n, pid, ("writer", "ar-cell", *proc[2:5], op.value, entry, seen))
        yield f"{label} commits the API (acknowledged)", n

    def _w_api_only(self, w: World, pid: int, proc: Proc, op: Op) -> Iterator[Move]:
        g, p = op.group, self.p
        if not w.free(pid, "api", g):
            return
        ok, instead = self._fenced(w, pid, proc, "api")
        if not ok:
            yield from instead or ()
            return
        n = w.copy()
        if n.rows["api"].get(g) is None:
            _done(n, pid)
            yield f"writer{pid} (api-only): not found", n
            return
        n.put("api", g, op.value, p)
        if p.api_only_journal and not n.entries("api", g):
            n.entry("api", g)
        n.ack(g, op.value)
        _done(n, pid)
        yield f"writer{pid} (api-only) writes the API (acknowledged)", n

    # -- the journal replay (backfill's first part, and the catch-up) ---------------------

    def replay(self, w: World, pid: int, db: str, group: str, ids: tuple[int, ...]) -> World | None:
        """Replay one group's journal ``db`` under the locks; ``None`` if blocked."""
        if not (w.free(pid, HOME, group) and w.free(pid, "api", group)):
            return None
        n = w.copy()
        if not n.settled(HOME):
            return n if n.settle(pid, HOME) else None
        other = "api" if db != "api" else HOME
        if n.entries(other, group):
            n.conflicts = n.conflicts | {group}
            return n
        n.put(other, group, n.rows[db].get(group), self.p)
        n.clear(db, group, ids, self.p)
        return n

    def _pending(self, w: World) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
        out = []
        for db in (*CELLS, "api"):
            for g in sorted({e[0] for e in w.journal[db]}):
                out.append((db, g, tuple(sorted(e[1] for e in w.entries(db, g)))))
        return tuple(out)

    # -- backfill ----------------------------------------------------------------------

    def _backfill(self, w: World, pid: int, proc: Proc) -> Iterator[Move]:
        pc = proc[1]
        if pc == "collect":
            n = w.copy()
            _set(n, pid, ("backfill", "replay", self._pending(n)))
            yield "backfill collects the journals", n
        elif pc == "replay":
            todo = proc[2]
            if not todo:
                n = w.copy()
                _set(n, pid, ("backfill", "copy", tuple(n.groups())))
                yield "backfill starts the copy", n
                return
            db, g, ids = todo[0]
            n2 = self.replay(w, pid, db, g, ids)
            if n2 is not None:
                n2.release(pid)
                if w.settled(HOME):
                    _set(n2, pid, ("backfill", "replay", todo[1:]))
                yield f"backfill replays {db}:{g}", n2
        elif pc == "copy":
            todo = proc[2]
            if not todo:
                n = w.copy()
                _done(n, pid)
                yield "backfill done", n
                return
            g = todo[0]
            if not (w.free(pid, HOME, g) and w.free(pid, "api", g)):
                return
            n = w.copy()
            stop = self.copy_one(n, g)
            if stop:
                _done(n, pid)
                yield f"backfill stops: {stop}", n
                return
            _set(n, pid, ("backfill", "copy", todo[1:]))
            yield f"backfill copies {g}", n

    def copy_one(self, n: World, g: str) -> str | None:
        """The forward copy of one group, fenced by both phase rows (backfill._copy)."""
        cell_phase, api_phase = n.phase[HOME], n.phase["api"]
        if cell_phase[0] not in FORWARD or api_phase != cell_phase:
            return f"the phase moved ({cell_phase} / {api_phase})"
        crec, arec = n.rows[HOME].get(g), n.rows["api"].get(g)
        if crec is None or n.entries(HOME, g) or n.entries("api", g) or arec == crec:
            return None
        if arec is not None:
            n.conflicts = n.conflicts | {g}  # api-copy-differs: reported, not overwritten
        elif self.p.tombstones and g in n.tomb:
            n.conflicts = n.conflicts | {g}  # deleted-in-api
        else:
            n.put("api", g, crec, self.p)
        return None

    # -- reverse sync ------------------------------------------------------------------

    def _reverse(self, w: World, pid: int, proc: Proc) -> Iterator[Move]:
        todo = proc[2]
        if not todo:
            n = w.copy()
            _done(n, pid)
            yield "reverse done", n
            return
        g = todo[0]
        if not (w.free(pid, HOME, g) and w.free(pid, "api", g)):
            return
        n = w.copy()
        cell_phase, api_phase = n.phase[HOME], n.phase["api"]
        if cell_phase[0] not in (AR, A) or cell_phase != api_phase:
            _done(n, pid)
            yield f"reverse stops: the phase is {cell_phase} / {api_phase}", n
            return
        arec, crec = n.rows["api"].get(g), n.rows[HOME].get(g)
        if n.entries(HOME, g) and n.entries("api", g):
            n.conflicts = n.conflicts | {g}
        elif arec is not None:
            n.put(HOME, g, arec, self.p)
        elif self.p.tombstones and g in n.tomb:
            n.put(HOME, g, None, self.p)
        elif crec is not None:
            n.conflicts = n.conflicts | {g}  # missing-in-api: never retired blind
        _set(n, pid, ("reverse", "copy", todo[1:]))
        yield f"reverse levels {g}", n

    # -- diff-report -------------------------------------------------------------------

    def _diff(self, w: World, pid: int, proc: Proc) -> Iterator[Move]:
        pc = proc[1]
        if pc == "start":
            n = w.copy()
            for cell in CELLS:
                if not n.settle(pid, cell):
                    return
            state = n.phase["api"]
            if not all(n.settled(c) for c in CELLS):
                _done(n, pid)
                yield "diff: a cell lags (incomplete)", n
                return
            snap = (state, tuple(sorted(n.rows["api"].items(), key=repr)), n.journal["api"])
            _set(n, pid, ("diff", "cells", snap))
            yield f"diff snapshots the API at {state}", n
        else:
            state, api_rows, api_journal = proc[2]
            n = w.copy()
            api = dict(api_rows)
            unequal = [g for g in n.groups() if api.get(g) != n.rows[HOME].get(g)]
            journaled = {e[0] for e in api_journal} | {e[0] for e in n.journal[HOME]}
            unexplained = [g for g in unequal if g not in journaled]
            n.diff = (state[1], not unequal, not unexplained)
            _done(n, pid)
            yield f"diff compares the cells: {len(unequal)} differ", n

    # -- phase set ---------------------------------------------------------------------

    def _changer(self, w: World, pid: int, proc: Proc) -> Iterator[Move]:
        _, pc, index, planned, attempts, held = proc
        if index >= len(self.s.moves):
            n = w.copy()
            _done(n, pid)
            yield "phase set: all moves made", n
            return
        target = self.s.moves[index]
        if pc == "plan":
            n = w.copy()
            here = n.phase["api"]
            refusals = self._preview(n, here, target)
            if refusals and attempts >= 1:
                _done(n, pid)
                yield f"phase set {target} refused twice: {refusals[0]}", n
            elif refusals:
                _set(n, pid, ("changer", "plan", index, None, attempts + 1, ()))
                yield f"phase set {target} refused: {refusals[0]}", n
            else:
                _set(n, pid, ("changer", "lock", index, here, attempts, ()))
                yield f"phase set {target}: guards pass at {here}", n
        elif pc == "lock":
            db = next((d for d in (*CELLS, "api") if d not in held), None)
            if db is None:
                yield from self._record(w, pid, proc, target)
                return
            if w.free(pid, db, exclusive=True):
                n = w.copy()
                n.xlock[db] = pid
                _set(n, pid, ("changer", "lock", index, planned, attempts, (*held, db)))
                yield f"phase set locks {db}", n
        elif pc == "prepare":
            cell = held[0]
            n = w.copy()
            n.marker[cell] = planned[1] + 1
            n.release(pid, cell)
            rest = held[1:]
            _set(n, pid, ("changer", "prepare" if rest else "commit-api", *proc[2:5], rest))
            yield f"phase set prepares {cell}", n
        elif pc == "commit-api":
            n = w.copy()
            n.phase["api"] = (target, planned[1] + 1)
            n.release(pid, "api")
            _set(n, pid, ("changer", "finalize", index, planned, attempts, CELLS))
            yield f"phase set commits the API: {target}", n
        elif pc == "finalize":
            cell = held[0]
            n = w.copy()
            if not n.settle(pid, cell):
                return
            _set(n, pid, self._after_cell(n, proc, held[1:]))
            yield f"phase set finalizes {cell}", n
        elif pc == "commit":
            cell = held[0]
            n = w.copy()
            n.phase[cell] = n.phase["api"]
            n.release(pid, cell)
            _set(n, pid, self._after_cell(n, proc, held[1:]))
            yield f"phase set commits {cell}", n
        elif pc == "catch-up":
            todo = held
            if not todo:
                n = w.copy()
                _set(n, pid, ("changer", "plan", index, None, 0, ()))
                yield "phase set: catch-up done", n
                return
            db, g, ids = todo[0]
            n2 = self.replay(w, pid, db, g, ids)
            if n2 is not None:
                n2.release(pid)
                if w.settled(HOME):
                    _set(n2, pid, ("changer", "catch-up", index, None, 0, todo[1:]))
                yield f"phase set catch-up replays {db}:{g}", n2

    def _after_cell(self, n: World, proc: Proc, rest: tuple[str, ...]) -> Proc:
        _, pc, index, planned, attempts, _held = proc
        if rest:
            return ("changer", pc, index, planned, attempts, rest)
        if planned[0] == A:  # left api-only: the catch-up replays the API journal
            return ("changer", "catch-up", index + 1, None, 0, self._pending(n))
        return ("changer", "plan", index + 1, None, 0, ())

    def _preview(self, w: World, here: tuple[str, int], target: str) -> list[str]:
        move = (here[0], target)
        if move not in MOVES:
            return [f"{move} is not a move"]
        out = []
        if move in ((CR, AR), (AR, A)):
            missing = [g for g in w.groups() if w.rows[HOME].get(g) is not None]
            if any(w.rows["api"].get(g) is None for g in missing):
                out.append("unmigrated cell groups")
        if move in ((CR, AR), (AR, A), (A, AR)):
            d = w.diff
            explained = move == (A, AR)
            if d is None or not (d[1] or (explained and d[2])):
                out.append("no clean diff")
            elif self.p.gate_epoch and d[0] != here[1]:
                out.append("the diff ran at another epoch")
        if not self.p.exact_guards:  # the journal guards read once, here, without locks
            out.extend(self._journal_refusals(w, move, purge=False))
        return out

    def _journal_refusals(self, w: World, move: tuple[str, str], *, purge: bool) -> list[str]:
        out = []
        checks = {
            (CR, AR): (HOME,),
            (AR, A): ("api", HOME),
            (AR, CR): ("api",),
            (A, AR): (HOME,),
        }.get(move, ())
        for db in checks:
            live = []
            for g, _id in sorted(w.journal[db]):
                level = w.rows["api"].get(g) == w.rows[HOME].get(g)
                if purge and db != "api" and not level and not w.entries("api", g):
                    # Under the fence, an outbox entry of dual-write-cell-reads is replayed.
                    w.put("api", g, w.rows[db].get(g), self.p)
                    level = True
                if level and purge:
                    w.journal[db] = frozenset(e for e in w.journal[db] if e[0] != g)
                else:
                    live.append(g)
            if live:
                out.append(f"journal {db} holds entries")
        return out

    def _record(self, w: World, pid: int, proc: Proc, target: str) -> Iterator[Move]:
        _, _pc, index, planned, attempts, _held = proc
        n = w.copy()
        problems: list[str] = []
        if n.phase["api"] != planned:
            problems.append("the phase changed while the guards ran")
        elif any(n.phase[c] != planned or c in n.marker for c in CELLS):
            problems.append("a cell lags")
        elif self.p.exact_guards:
            problems.extend(self._journal_refusals(n, (planned[0], target), purge=True))
        if problems:
            n.release(pid)
            if attempts >= 1:
                _done(n, pid)
            else:
                _set(n, pid, ("changer", "plan", index, None, attempts + 1, ()))
            yield f"phase set {target} refused under the locks: {problems[0]}", n
            return
        if self.p.two_phase:
            _set(n, pid, ("changer", "prepare", index, planned, attempts, CELLS))
            yield f"phase set {target}: the checks pass under the locks", n
            return
        n.phase["api"] = (target, planned[1] + 1)
        n.release(pid, "api")
        _set(n, pid, ("changer", "commit", index, planned, attempts, CELLS))
        yield f"phase set commits the API: {target}", n


# --------------------------------------------------------------------------- checking


@dataclasses.dataclass
class Report:
    """What an exploration found."""

    states: int = 0
    finals: int = 0
    violations: list[tuple[str, list[str]]] = dataclasses.field(default_factory=list)
    conflicts: int = 0  # final states with a reported conflict (never silent)

    def add(self, what: str, trace: list[str]) -> None:
        if len(self.violations) < 5:
            self.violations.append((what, trace))


def _invariants(model: Model, w: World) -> str | None:
    p = model.p
    for g in w.groups():
        got = w.read(g, p)
        if got != w.acked[g] and got not in w.unknown[g]:
            return (
                f"read of {g} returns {got!r}, acknowledged {w.acked[g]!r} "
                f"(unknown outcomes {sorted(w.unknown[g], key=repr)})"
            )
        if sum(w.rows[c].get(g) is not None for c in CELLS) > 1:
            return f"{g} is live in two cells"
    return None


def operator_finish(model: Model, w: World) -> tuple[World, int]:
    """Settle, drain the journals, backfill: what an operator runs. Returns (world, work)."""
    n = w.copy()
    for cell in CELLS:
        n.phase[cell] = n.phase["api"]
    n.marker = {}
    work = 0
    for db, g, ids in model._pending(n):
        replayed = model.replay(n, -1, db, g, ids)
        assert replayed is not None
        n = replayed
        work += 1
    if n.phase["api"][0] in FORWARD:
        for g in n.groups():
            before = n.key()
            model.copy_one(n, g)
            work += before != n.key()
    return n, work


def _final(model: Model, w: World) -> str | None:
    n, _work = operator_finish(model, w)
    phase = n.phase["api"][0]
    for g in n.groups():
        got = n.read(g, model.p)
        if got != w.acked[g] and got not in w.unknown[g]:
            return f"after the backfill, {g} reads {got!r}, acknowledged {w.acked[g]!r}"
        if phase != C and g not in n.conflicts and n.rows["api"].get(g) != n.rows[HOME].get(g):
            return (
                f"after the backfill, {g} differs silently: API {n.rows['api'].get(g)!r}, "
                f"cell {n.rows[HOME].get(g)!r}"
            )
    again, work = operator_finish(model, n)
    if work:
        return "a second backfill found work to do"
    del again
    return None


def explore(
    scenario: Scenario,
    protections: Protections = Protections(),
    *,
    limit: int = 2_000_000,
    on_state: Callable[[World], None] | None = None,
) -> Report:
    """Walk every interleaving of ``scenario``; check the invariants in every state."""
    model = Model(scenario, protections)
    start = model.initial()
    seen: dict[tuple[Any, ...], tuple[tuple[Any, ...] | None, str]] = {start.key(): (None, "")}
    queue: deque[World] = deque([start])
    report = Report()

    def trace(key: tuple[Any, ...]) -> list[str]:
        out: list[str] = []
        cur: tuple[Any, ...] | None = key
        while cur is not None:
            parent, label = seen[cur]
            if label:
                out.append(label)
            cur = parent
        return out[::-1]

    while queue:
        w = queue.popleft()
        key = w.key()
        report.states += 1
        if on_state is not None:
            on_state(w)
        if report.states > limit:
            raise AssertionError(f"{scenario.name}: more than {limit} states")
        bad = _invariants(model, w)
        if bad:
            report.add(bad, trace(key))
            continue
        moved = False
        for label, n in model.moves(w):
            moved = True
            nk = n.key()
            if nk not in seen:
                seen[nk] = (key, label)
                queue.append(n)
        if not moved:
            if any(proc[0] != "done" for proc in w.procs):
                report.add("deadlock: processes left, none can move", trace(key))
                continue
            report.finals += 1
            report.conflicts += bool(w.conflicts)
            bad = _final(model, w)
            if bad:
                report.add(bad, trace(key))
    return report
