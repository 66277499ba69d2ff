"""Run a whole cutover on the embedded SQLite default, with live traffic throughout.

What it does, in ``./shadowdb-data`` (the embedded default):

1. ``db sync`` and two cells, then legacy data as Nova left it in the cell databases:
   groups with policies and members, their instances on hosts, instance mappings;
2. a writer thread starts creating, renaming, growing and deleting groups through the
   object API, and a scheduler thread asks ``get_group_details`` for hosts, and both keep
   going through every phase change;
3. the operator's steps: ``phase set dual-write-cell-reads``, ``backfill``,
   ``diff-report``, ``phase set dual-write-api-reads``, ``diff-report``,
   ``phase set api-only``, ``cleanup --yes``;
4. the writers stop, and every acknowledged write is checked in the API database.

The folder is reset first if an earlier demo made it; any other existing
``shadowdb-data`` is left alone and the demo refuses to run there.
"""

from __future__ import annotations

import random
import shutil
import sys
import threading
import time
import uuid as uuidlib
from pathlib import Path

import sqlalchemy as sa

from shadowdb import models
from shadowdb.cli import main
from shadowdb.databases import connect
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.phase import utcnow
from shadowdb.queries import API
from shadowdb.settings import Settings

DATA = Path("shadowdb-data")
MARKER = DATA / ".shadowdb-demo"
LEGACY_GROUPS = 400
PHASE_TTL = "0.5"


def run(*argv: str, allowed: tuple[int, ...] = (0,)) -> int:
    """Run one shadowdb command as an operator would, and show it."""
    print(f"\n$ shadowdb {' '.join(argv)}", flush=True)
    code = main(list(argv), environ={"SHADOWDB_PHASE_TTL": PHASE_TTL})
    if code not in allowed:
        print(f"demo: `shadowdb {' '.join(argv)}` exited {code}", file=sys.stderr)
        sys.exit(code)
    return code


def prepare_folder() -> None:
    if DATA.exists():
        if not MARKER.exists():
            sys.exit(f"demo: {DATA}/ exists and was not made by the demo; run it elsewhere")
        shutil.rmtree(DATA)
    DATA.mkdir()
    MARKER.write_text("made by scripts/demo; removed by the next demo run\n")


def seed_legacy(api_url: str) -> dict[str, tuple[str, frozenset[str]]]:
    """Write legacy groups, members and instances as Nova left them in the cells."""
    rng = random.Random(7)
    legacy: dict[str, tuple[str, frozenset[str]]] = {}
    with connect(api_url) as dbs:
        now = utcnow()
        for index, cell in enumerate(dbs.cells):
            groups, policies, members, instances, mappings = [], [], [], [], []
            for g in range(LEGACY_GROUPS // len(dbs.cells)):
                gid = g + 1
                groups.append(
                    {
                        "id": gid,
                        "uuid": str(uuidlib.uuid4()),
                        "name": f"{cell.name}-group-{g}",
                        "project_id": f"project-{g % 5}",
                        "user_id": f"user-{g % 7}",
                        "created_at": now,
                        "deleted": 0,
                    }
                )
                policy = ("affinity", "anti-affinity", "soft-anti-affinity")[g % 3]
                policies.append({"group_id": gid, "policy": policy, "deleted": 0})
                group_members: set[str] = set()
                for _ in range(rng.randint(1, 6)):
                    instance = str(uuidlib.uuid4())
                    group_members.add(instance)
                    members.append({"group_id": gid, "instance_id": instance, "deleted": 0})
                    instances.append(
                        {
                            "uuid": instance,
                            "host": f"{cell.name}-compute-{rng.randint(1, 20)}",
                            "project_id": f"project-{g % 5}",
                            "user_id": f"user-{g % 7}",
                            "vm_state": "active",
                            "deleted": 0,
                        }
                    )
                    mappings.append(
                        {
                            "instance_uuid": instance,
                            "cell_id": cell.id,
                            "project_id": f"project-{g % 5}",
                        }
                    )
                legacy[groups[-1]["uuid"]] = (groups[-1]["name"], frozenset(group_members))
            with cell.engine.begin() as conn:
                conn.execute(models.cell_groups.insert(), groups)
                conn.execute(models.cell_policies.insert(), policies)
                conn.execute(models.cell_members.insert(), members)
                conn.execute(models.cell_instances.insert(), instances)
            with dbs.api.begin() as conn:
                conn.execute(models.api_instance_mappings.insert(), mappings)
            print(
                f"  {cell.name}: {len(groups)} legacy groups, {len(members)} members, "
                f"{len(instances)} instances (#{index + 1})"
            )
    return legacy


class Traffic:
    """Live writes and scheduler reads running through the whole cutover."""

    def __init__(self, api_url: str, legacy: dict[str, tuple[str, frozenset[str]]]) -> None:
        self.dbs = connect(api_url, settings=Settings(api_url=api_url, phase_ttl=float(PHASE_TTL)))
        self.stop = threading.Event()
        self.lock = threading.Lock()
        # Legacy groups are written to as well: they move while they are being migrated.
        self.expected: dict[str, tuple[str, frozenset[str]] | None] = dict(legacy)
        self.counts = {"writes": 0, "schedules": 0, "errors": 0}
        self.errors: list[str] = []

    def writer(self) -> None:
        rng = random.Random(11)
        ctx = RequestContext(self.dbs, "project-0", "user-0", is_admin=True)
        while not self.stop.is_set():
            try:
                with self.lock:
                    mine = [u for u, e in self.expected.items() if e is not None]
                roll = rng.random()
                if roll < 0.3 or not mine:
                    g = InstanceGroup(
                        ctx,
                        name="live",
                        project_id="project-0",
                        user_id="user-0",
                        policies=["anti-affinity"],
                    )
                    g.create()
                    with self.lock:
                        self.expected[g.uuid] = ("live", frozenset())
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
                self.counts["writes"] += 1
            except Exception as err:  # the demo reports, it does not hide
                self.counts["errors"] += 1
                self.errors.append(f"{type(err).__name__}: {err}")
            time.sleep(0.01)

    def scheduler(self) -> None:
        from shadowdb.scheduler import get_group_details

        ctx = RequestContext(self.dbs, None, None, is_admin=True)
        with self.dbs.api.connect() as conn:
            instances = [
                r[0]
                for r in conn.execute(
                    sa.select(models.api_instance_mappings.c.instance_uuid).limit(200)
                )
            ]
        rng = random.Random(13)
        while not self.stop.is_set():
            try:
                details = get_group_details(ctx, rng.choice(instances))
                # None: the writer destroyed that instance's group meanwhile.
                if details is not None and not details.hosts:
                    raise AssertionError(f"group {details.uuid} of a live instance has no host")
                self.counts["schedules"] += 1
            except Exception as err:
                self.counts["errors"] += 1
                self.errors.append(f"scheduler {type(err).__name__}: {err}")
            time.sleep(0.005)

    def verify(self) -> int:
        """Check every acknowledged write against the API database; return the misses."""
        misses = 0
        with self.dbs.api.connect() as conn:
            for uuid, expected in self.expected.items():
                record = API.get(conn, uuid)
                if expected is None:
                    misses += record is not None
                elif record is None or (record.name, frozenset(record.members)) != expected:
                    misses += 1
        return misses


def demo() -> None:
    prepare_folder()
    api_url = f"sqlite:///{(DATA / 'api.sqlite').resolve()}"
    run("db", "sync")
    for name in ("cell1", "cell2"):
        run("cell", "add", name, f"sqlite:///{DATA / (name + '.sqlite')}", "--create")
    run("cell", "set-default", "cell1")
    run("db", "sync")
    print("\nLegacy data, as Nova left it in the cell databases:")
    legacy = seed_legacy(api_url)
    run("status")

    traffic = Traffic(api_url, legacy)
    threads = [threading.Thread(target=traffic.writer), threading.Thread(target=traffic.scheduler)]
    for t in threads:
        t.start()
    print("\nLive traffic started: a writer and a scheduler, through every step below.")
    try:
        run("phase", "set", "dual-write-cell-reads", "--reason", "demo: start dual writes")
        run("backfill")
        run("diff-report", allowed=(0, 1))
        run("phase", "set", "dual-write-api-reads", "--reason", "demo: API authoritative")
        run("backfill")
        run("diff-report", allowed=(0, 1))
        run("phase", "set", "api-only", "--reason", "demo: cutover complete")
        run("cleanup", "--yes")
    finally:
        traffic.stop.set()
        for t in threads:
            t.join()
    run("phase", "history")
    run("status")
    misses = traffic.verify()
    print(
        f"\nLive traffic: {traffic.counts['writes']} acknowledged writes, "
        f"{traffic.counts['schedules']} scheduler lookups, {traffic.counts['errors']} errors; "
        f"{len(traffic.expected)} groups checked in the API database: {misses} missing or stale."
    )
    for error in traffic.errors[:5]:
        print(f"  error: {error}")
    traffic.dbs.dispose()
    if misses or traffic.counts["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    demo()
