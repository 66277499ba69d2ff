"""Run a whole cutover on embedded SQLite, with live traffic throughout (``shadowdb demo``).

What it does, in its data folder (``./shadowdb-data`` unless told otherwise):

1. ``db sync`` and ``K`` cells, then legacy data as Nova left it in the cell databases:
   groups with policies and members, their instances on hosts, instance mappings;
2. ``W`` writer threads start creating, renaming, growing and deleting groups through
   the object API, and a scheduler thread asks ``get_group_details`` for hosts; they
   keep going through every phase change;
3. the operator's steps, each run as the command line runs it: ``phase set
   dual-write-cell-reads``, ``backfill``, ``diff-report``, ``phase set
   dual-write-api-reads``, ``backfill``, ``diff-report``, ``phase set api-only``,
   ``cleanup --yes``;
4. the traffic stops, and every acknowledged write is checked in the API database.

Each writer owns the groups it writes (legacy groups are shared out by uuid), so the
order in which its writes were acknowledged is the order they committed in.

The folder is reset first if an earlier demo made it; any other existing folder is left
alone and the demo refuses to run there.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import threading
import time
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa

from shadowdb import diff, models, signals
from shadowdb.databases import Databases, connect, reader
from shadowdb.errors import InvalidInput, ShadowDBError
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.queries import API
from shadowdb.settings import Settings
from shadowdb.state import utcnow

__all__ = ["DemoOptions", "DemoReport", "PhaseTime", "run_demo"]

#: The file that marks a data folder as the demo's own (reset by the next run).
MARKER = ".shadowdb-demo"
#: Seconds a demo process may serve a cached phase to reads.
PHASE_TTL = 0.5

#: How often a refused ``phase set`` runs again, and the exit code of a refusal.
_RETRIES = 5
_REFUSED = 3

#: A shadowdb command line run: argv and environment in, exit code out.
Runner = Callable[[list[str], dict[str, str]], int]

Expected = dict[str, tuple[str, frozenset[str]] | None]


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    """How big a cutover to run.

    Attributes:
        groups: legacy groups, shared out across the cells.
        cells: cell databases.
        data_dir: the folder of the embedded databases.
        writers: writer threads.
    """

    groups: int = 400
    cells: int = 2
    data_dir: Path = Path("shadowdb-data")
    writers: int = 1


@dataclasses.dataclass(frozen=True)
class PhaseTime:
    """How long the deployment stayed in one phase while the demo ran."""

    phase: str
    seconds: float


@dataclasses.dataclass(frozen=True)
class DemoReport:
    """What the demo did, and whether every acknowledged write is accounted for.

    Attributes:
        phases: each phase, in order, with how long the traffic ran in it.
        rows_moved: groups backfill copied into the API database.
        fallback_reads: reads served from a cell in ``dual-write-api-reads``.
        shadow_write_failures: second writes that failed and were journaled.
        final_diff: the last diff-report's outcome before cleanup.
        final_differences: its differing keys.
        writes: acknowledged writes.
        lookups: scheduler lookups answered.
        errors: what failed, one line each (the first few).
        error_count: how many operations failed.
        checked: groups checked in the API database at the end.
        missing: acknowledged writes the API database does not show.
    """

    phases: tuple[PhaseTime, ...]
    rows_moved: int
    fallback_reads: int
    shadow_write_failures: int
    final_diff: str
    final_differences: int
    writes: int
    lookups: int
    errors: tuple[str, ...]
    error_count: int
    checked: int
    missing: int

    @property
    def ok(self) -> bool:
        """Every acknowledged write is in the API database, and nothing failed."""
        return self.missing == 0 and self.error_count == 0


def _prepare_folder(folder: Path) -> None:
    if folder.exists():
        if not (folder / MARKER).exists():
            raise InvalidInput(
                f"{folder}/ exists and was not made by the demo; run it elsewhere (--data-dir)"
            )
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / MARKER).write_text("made by shadowdb demo; removed by the next demo run\n")


def _seed_legacy(dbs: Databases, groups: int) -> tuple[Expected, list[str]]:
    """Write legacy groups, members and instances as Nova left them in the cells."""
    rng = random.Random(7)
    legacy: Expected = {}
    lines = []
    cells = [c for c in dbs.refresh_cells() if not c.is_cell0]
    now = utcnow()
    for index, cell in enumerate(cells):
        share = groups // len(cells) + (1 if index < groups % len(cells) else 0)
        rows: dict[str, list[dict[str, Any]]] = {
            "groups": [],
            "policies": [],
            "members": [],
            "instances": [],
            "mappings": [],
        }
        for g in range(share):
            gid = g + 1
            uuid = str(uuidlib.uuid4())
            project, user = f"project-{g % 5}", f"user-{g % 7}"
            name = f"{cell.name}-group-{g}"
            rows["groups"].append(
                {
                    "id": gid,
                    "uuid": uuid,
                    "name": name,
                    "project_id": project,
                    "user_id": user,
                    "created_at": now,
                    "deleted": 0,
                }
            )
            policy = ("affinity", "anti-affinity", "soft-anti-affinity")[g % 3]
            rows["policies"].append({"group_id": gid, "policy": policy, "deleted": 0})
            members: set[str] = set()
            for _ in range(rng.randint(1, 6)):
                instance = str(uuidlib.uuid4())
                members.add(instance)
                rows["members"].append({"group_id": gid, "instance_id": instance, "deleted": 0})
                rows["instances"].append(
                    {
                        "uuid": instance,
                        "host": f"{cell.name}-compute-{rng.randint(1, 20)}",
                        "project_id": project,
                        "user_id": user,
                        "vm_state": "active",
                        "deleted": 0,
                    }
                )
                rows["mappings"].append(
                    {"instance_uuid": instance, "cell_id": cell.id, "project_id": project}
                )
            legacy[uuid] = (name, frozenset(members))
        if share:
            with cell.engine.begin() as conn:
                conn.execute(models.cell_groups.insert(), rows["groups"])
                conn.execute(models.cell_policies.insert(), rows["policies"])
                conn.execute(models.cell_members.insert(), rows["members"])
                conn.execute(models.cell_instances.insert(), rows["instances"])
            with dbs.api.begin() as conn:
                conn.execute(models.api_instance_mappings.insert(), rows["mappings"])
        lines.append(
            f"  {cell.name}: {share} legacy groups, {len(rows['members'])} members, "
            f"{len(rows['instances'])} instances"
        )
    return legacy, lines


class _Traffic:
    """Live writes and scheduler reads running through the whole cutover."""

    def __init__(self, dbs: Databases, legacy: Expected, writers: int) -> None:
        self.dbs = dbs
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.writers = writers
        # Legacy groups are written to as well: they move while they are being migrated.
        self.expected: Expected = dict(legacy)
        self.owner = {uuid: i % writers for i, uuid in enumerate(legacy)}
        self.counts = {"writes": 0, "lookups": 0, "errors": 0}
        self.errors: list[str] = []

    def _failed(self, what: str, err: Exception) -> None:
        with self.lock:
            self.counts["errors"] += 1
            self.errors.append(f"{what}{type(err).__name__}: {err}")

    def writer(self, me: int) -> None:
        rng = random.Random(11 + me)
        ctx = RequestContext(self.dbs, "project-0", "user-0", is_admin=True)
        while not self.stop.is_set():
            try:
                with self.lock:
                    mine = [
                        u for u, e in self.expected.items() if e is not None and self.owner[u] == me
                    ]
                self._write_once(ctx, rng, me, mine)
                with self.lock:
                    self.counts["writes"] += 1
            except Exception as err:  # the demo reports, it does not hide
                self._failed(f"writer {me} ", err)
            time.sleep(0.01)

    def _write_once(
        self, ctx: RequestContext, rng: random.Random, me: int, mine: list[str]
    ) -> None:
        roll = rng.random()
        if roll < 0.3 or not mine:
            g = InstanceGroup(
                ctx, name="live", project_id="project-0", user_id="user-0", policies=["affinity"]
            )
            g.create()
            with self.lock:
                self.expected[g.uuid] = ("live", frozenset())
                self.owner[g.uuid] = me
        elif roll < 0.7:
            target = rng.choice(mine)
            member = str(uuidlib.uuid4())
            InstanceGroup.add_members(ctx, target, [member])
            with self.lock:
                name, members = self.expected[target] or ("", frozenset())
                self.expected[target] = (name, members | {member})
        elif roll < 0.9:
            target = rng.choice(mine)
            g = InstanceGroup.get_by_uuid(ctx, target)
            g.name = f"renamed-{rng.randrange(1000)}"
            g.save()
            with self.lock:
                _, members = self.expected[target] or ("", frozenset())
                self.expected[target] = (g.name, members)
        else:
            target = rng.choice(mine)
            InstanceGroup.get_by_uuid(ctx, target).destroy()
            with self.lock:
                self.expected[target] = None

    def scheduler(self) -> None:
        from shadowdb.scheduler import get_group_details

        ctx = RequestContext(self.dbs, None, None, is_admin=True)
        with reader(self.dbs.api) as conn:
            instances = list(
                conn.scalars(sa.select(models.api_instance_mappings.c.instance_uuid).limit(200))
            )
        if not instances:
            return
        rng = random.Random(13)
        while not self.stop.is_set():
            try:
                details = get_group_details(ctx, rng.choice(instances))
                # None: a writer destroyed that instance's group meanwhile.
                if details is not None and not details.hosts:
                    raise AssertionError(f"group {details.uuid} of a live instance has no host")
                with self.lock:
                    self.counts["lookups"] += 1
            except Exception as err:
                self._failed("scheduler ", err)
            time.sleep(0.005)

    def verify(self) -> int:
        """Check every acknowledged write against the API database; return the misses."""
        misses = 0
        with reader(self.dbs.api) as conn:
            for uuid, expected in self.expected.items():
                record = API.get(conn, uuid)
                if expected is None:
                    misses += record is not None
                elif record is None or (record.name, frozenset(record.members)) != expected:
                    misses += 1
        return misses


class _Tally:
    """Count what the signals announce, whichever deployment object sent them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.moved = self.fallbacks = self.failures = 0

    def copied(self, _sender: Any, *, step: str, count: int, **_kw: Any) -> None:
        if step == "copied":
            with self.lock:
                self.moved += count

    def fallback(self, _sender: Any, **_kw: Any) -> None:
        with self.lock:
            self.fallbacks += 1

    def failed(self, _sender: Any, **_kw: Any) -> None:
        with self.lock:
            self.failures += 1


def run_demo(options: DemoOptions, run: Runner, out: TextIO) -> DemoReport:
    """Run the demo cutover; ``run`` runs each operator command as the command line does.

    Raises:
        InvalidInput: bad sizes, or a data folder the demo did not make.
        ShadowDBError: a step failed (its exit code is not one it allows).
    """
    if options.groups < 0 or options.cells < 1 or options.writers < 1:
        raise InvalidInput("demo needs --groups >= 0, --cells >= 1 and --writers >= 1")
    _prepare_folder(options.data_dir)
    folder = options.data_dir.resolve()
    environ = {"SHADOWDB_DATA_DIR": str(folder), "SHADOWDB_PHASE_TTL": str(PHASE_TTL)}

    def step(*argv: str, allowed: tuple[int, ...] = (0,)) -> int:
        out.write(f"\n$ shadowdb {' '.join(argv)}\n")
        out.flush()
        code = run(list(argv), environ)
        if code not in allowed:
            raise ShadowDBError(f"demo: the step 'shadowdb {' '.join(argv)}' exited {code}")
        return code

    step("db", "sync")
    for n in range(1, options.cells + 1):
        step("cell", "add", f"cell{n}", f"sqlite:///{folder / f'cell{n}.sqlite'}", "--create")
    step("cell", "set-default", "cell1")
    step("db", "sync")
    settings = Settings(data_dir=folder, phase_ttl=PHASE_TTL)
    tally = _Tally()
    signals.backfill_step.connect(tally.copied)
    signals.fallback_read.connect(tally.fallback)
    signals.shadow_write_failed.connect(tally.failed)
    dbs = connect(settings=settings)
    try:
        out.write("\nLegacy data, as Nova left it in the cell databases:\n")
        legacy, lines = _seed_legacy(dbs, options.groups)
        out.write("\n".join(lines) + "\n")
        step("status")
        traffic = _Traffic(dbs, legacy, options.writers)
        threads = [
            threading.Thread(target=traffic.writer, args=(i,)) for i in range(options.writers)
        ]
        threads.append(threading.Thread(target=traffic.scheduler))
        for t in threads:
            t.start()
        out.write(
            f"\nLive traffic started: {options.writers} writer(s) and a scheduler, "
            "through every step below.\n"
        )
        phases: list[PhaseTime] = []
        entered = time.monotonic()
        final: diff.StoredResult | None = None

        def enter(phase: str, previous: str, reason: str) -> None:
            nonlocal entered
            argv = ("phase", "set", phase, "--reason", f"demo: {reason}")
            for _attempt in range(_RETRIES):
                # A guard's scan runs beside the writers: a group whose second copy was
                # being written as it looked is refused, and the next look finds it level.
                if step(*argv, allowed=(0, _REFUSED)) == 0:
                    break
                out.write("(refused while writes were in flight: running it again)\n")
                time.sleep(0.5)
            else:
                raise ShadowDBError(f"demo: `shadowdb phase set {phase}` refused {_RETRIES} times")
            now = time.monotonic()
            phases.append(PhaseTime(previous, now - entered))
            entered = now

        def diff_report() -> None:
            nonlocal final
            step("diff-report", allowed=(0, 1))
            with reader(dbs.api) as conn:
                final = diff.last_result(conn)

        try:
            enter("dual-write-cell-reads", "cell-only", "start dual writes")
            step("backfill")
            diff_report()
            enter("dual-write-api-reads", "dual-write-cell-reads", "API authoritative")
            step("backfill")
            diff_report()
            enter("api-only", "dual-write-api-reads", "cutover complete")
            step("cleanup", "--yes")
        finally:
            ended = time.monotonic()
            traffic.stop.set()
            for t in threads:
                t.join()
        phases.append(PhaseTime("api-only", ended - entered))
        step("phase", "history")
        step("status")
        missing = traffic.verify()
    finally:
        signals.backfill_step.disconnect(tally.copied)
        signals.fallback_read.disconnect(tally.fallback)
        signals.shadow_write_failed.disconnect(tally.failed)
        dbs.dispose()
    return DemoReport(
        phases=tuple(phases),
        rows_moved=tally.moved,
        fallback_reads=tally.fallbacks,
        shadow_write_failures=tally.failures,
        final_diff="none" if final is None else final.outcome,
        final_differences=0 if final is None else final.differences,
        writes=traffic.counts["writes"],
        lookups=traffic.counts["lookups"],
        errors=tuple(traffic.errors[:5]),
        error_count=traffic.counts["errors"],
        checked=len(traffic.expected),
        missing=missing,
    )
