"""Measure shadowdb's group writes in every phase beside the same write on one database.

For each backend (SQLite, MariaDB, PostgreSQL) and each phase, every round runs, in a
fresh random order:

* **shadowdb**, through :class:`shadowdb.objects.InstanceGroup` as Nova's API calls it:
  ``create`` (a group with one policy), ``add_members`` (two instance uuids) and
  ``save`` (a name change), with whatever the phase asks of them (the fence, one or two
  databases, the journal);
* the **protocol floor** (``floor``): the statements shadowdb sent for the same three
  writes in this phase, recorded once per phase from a real shadowdb write and replayed
  through the bare driver on connections held open, with the same transactions, commits
  and rollbacks on the same databases (:mod:`benchmarks.protocol_floor`). shadowdb over
  the floor is its implementation's cost (SQLAlchemy, the pool, Python); the floor over
  the raw write is the protocol's (the fence, the group lock, the journal, the second
  database and its commit);
* the **raw write**, what Nova itself did: the same three writes through the bare driver
  (sqlite3, PyMySQL, psycopg) on a connection held open, on one database, each in one
  transaction: the INSERTs of the group and its policy; the INSERTs of the two member
  rows; the UPDATE of the name. It runs on the API database's tables (``raw-api``) and on
  a cell's (``raw-cell``, with Nova's soft-delete columns); the faster of the two is the
  raw floor.

Each write is timed on its own (commit included). Every round checks what was written:
the shadowdb group read back through shadowdb; the replayed group's rows, in every
database, against those of the recorded shadowdb group (and each replayed statement's row
count against the recorded one); the raw group on its side. The medians and the ratios
are recorded (``extra_info``), with the recorded statements of each write. The target
(measured on a quiet machine): shadowdb within 2x of the raw write in the dual-write
phases. ``SHADOWDB_BENCH_WRITE_ROUNDS`` sets the rounds per phase (default 60).

The deployment (an API database, ``cell1`` the default cell, ``cell2`` empty) is made
afresh per session: ``$SHADOWDB_BENCH_DIR/writes`` on SQLite, the ``sdbbench_writes_*``
databases on the local servers. Its group and journal ids start in the millions
(:func:`benchmarks.protocol_floor.spread_ids`) so that the replay can tell an id from
the small constants a statement carries.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import sqlite3
import statistics
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pymysql
import pytest
import sqlalchemy as sa

from benchmarks import protocol_floor
from benchmarks.deployments import fresh_urls, server_settings
from benchmarks.protocol_floor import Replayer, Script, TransactionLog
from shadowdb import commands, models
from shadowdb.databases import Databases, connect, reader, writer
from shadowdb.fence import settle
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.settings import Settings
from shadowdb.state import Phase, utcnow

#: Rounds per phase (each round: three writes through shadowdb, replayed, on each raw side),
#: unless ``SHADOWDB_BENCH_WRITE_ROUNDS`` says otherwise.
ROUNDS = 60
#: The writes, in the order a round makes them on one group.
WRITES = ("create", "add_members", "save")
SIDES = ("raw-api", "raw-cell")
#: What each round times: shadowdb, the protocol floor, the raw write on each side.
TURNS = ("shadowdb", "floor", *SIDES)
#: The phases that write two databases, where the target applies.
DUAL_WRITE = (Phase.DUAL_WRITE_CELL_READS, Phase.DUAL_WRITE_API_READS)
TARGET = 2.0

BACKENDS = [
    pytest.param("sqlite", marks=pytest.mark.sqlite),
    pytest.param("mysql", marks=pytest.mark.mysql),
    pytest.param("postgresql", marks=pytest.mark.postgresql),
]
_DB_NAMES = ("sdbbench_writes_api", "sdbbench_writes_cell1", "sdbbench_writes_cell2")


def _uuid() -> str:
    return str(uuidlib.uuid4())


# --------------------------------------------------------------------------- raw floor


class RawWriter:
    """The three writes on one database through the bare driver, connection held open."""

    def __init__(self, backend: str, url: str, side: str) -> None:
        self.backend = backend
        self.side = side
        u = sa.make_url(url)
        self.conn: Any
        if backend == "sqlite":
            # As shadowdb's engine: WAL, transactions begun by hand, the lock taken first.
            self.conn = sqlite3.connect(u.database or "", isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA busy_timeout=30000")
            q = "?"
        elif backend == "mysql":
            self.conn = pymysql.connect(
                host=u.host, port=u.port or 3306, user=u.username, password=u.password or "",
                database=u.database, charset="utf8mb4", autocommit=False,
            )  # fmt: skip
            with self.conn.cursor() as cur:
                cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            q = "%s"
        else:
            self.conn = psycopg.connect(
                host=u.host, port=u.port or 5432, user=u.username, password=u.password or "",
                dbname=u.database, autocommit=False,
            )  # fmt: skip
            q = "%s"
        cell = side == "raw-cell"
        live, zero = (", deleted", f", {q}") if cell else ("", "")
        member = "instance_id" if cell else "instance_uuid"
        self.insert_group = (
            f"INSERT INTO instance_groups (uuid, name, user_id, project_id, created_at{live})"
            f" VALUES ({q}, {q}, {q}, {q}, {q}{zero})"
        )
        self.find_group = f"SELECT id FROM instance_groups WHERE uuid = {q}"
        self.insert_policy = (
            f"INSERT INTO instance_group_policy (group_id, policy, created_at{live})"
            f" VALUES ({q}, {q}, {q}{zero})"
        )
        self.insert_member = (
            f"INSERT INTO instance_group_member (group_id, {member}, created_at{live})"
            f" VALUES ({q}, {q}, {q}{zero})"
        )
        self.update_name = f"UPDATE instance_groups SET name = {q}, updated_at = {q} WHERE id = {q}"
        self.live = (0,) if cell else ()
        self.ids: dict[str, int] = {}

    def _transaction(self, work: Callable[[Any], None]) -> None:
        if self.backend == "sqlite":
            cur = self.conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                work(cur)
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
            return
        with self.conn.cursor() as cur:
            try:
                work(cur)
            except BaseException:
                self.conn.rollback()
                raise
        self.conn.commit()

    def create(self, uuid: str, name: str) -> None:
        now = utcnow()

        def work(cur: Any) -> None:
            cur.execute(self.insert_group, (uuid, name, "u1", "p1", now, *self.live))
            if self.backend == "sqlite" or self.backend == "mysql":
                group_id = cur.lastrowid
            else:
                cur.execute(self.find_group, (uuid,))
                (group_id,) = cur.fetchone()
            cur.execute(self.insert_policy, (group_id, "anti-affinity", now, *self.live))
            self.ids[uuid] = group_id

        self._transaction(work)

    def add_members(self, uuid: str, members: list[str]) -> None:
        now = utcnow()
        rows = [(self.ids[uuid], m, now, *self.live) for m in members]
        self._transaction(lambda cur: cur.executemany(self.insert_member, rows))

    def save(self, uuid: str, name: str) -> None:
        params = (name, utcnow(), self.ids[uuid])
        self._transaction(lambda cur: cur.execute(self.update_name, params))

    def check(self, uuid: str, name: str, members: list[str]) -> None:
        """Assert the group holds ``name``, one policy and ``members``."""
        member = "instance_id" if self.side == "raw-cell" else "instance_uuid"
        q = "?" if self.backend == "sqlite" else "%s"
        gid = self.ids[uuid]
        got: dict[str, Any] = {}

        def work(cur: Any) -> None:
            cur.execute(f"SELECT name FROM instance_groups WHERE id = {q}", (gid,))
            got["name"] = cur.fetchone()[0]
            cur.execute(f"SELECT count(*) FROM instance_group_policy WHERE group_id = {q}", (gid,))
            got["policies"] = cur.fetchone()[0]
            cur.execute(f"SELECT {member} FROM instance_group_member WHERE group_id = {q}", (gid,))
            got["members"] = sorted(r[0] for r in cur.fetchall())

        self._transaction(work)
        assert got == {"name": name, "policies": 1, "members": sorted(members)}, got

    def close(self) -> None:
        self.conn.close()


# --------------------------------------------------------------------------- set-up


def _move_to(dbs: Databases, phase: Phase) -> None:
    """Put the deployment in ``phase`` directly (its data is whatever this run wrote).

    The phase row moves as ``phase set`` moves it (a new epoch, every cell settled), its
    change dated a minute back so that no write waits out the grace period.
    """
    with writer(dbs.api) as conn:
        epoch = conn.execute(sa.select(models.api_state.c.epoch)).scalar_one()
        conn.execute(
            models.api_state.update().values(
                phase=phase.value,
                epoch=epoch + 1,
                changed_at=utcnow() - dt.timedelta(minutes=1),
            )
        )
    settle(dbs)
    dbs.phases.invalidate()
    assert dbs.phases.get().phase is phase


@pytest.fixture(scope="module", params=BACKENDS)
def deployment(request: pytest.FixtureRequest) -> Iterator[tuple[str, Databases, dict[str, str]]]:
    """A fresh deployment: its backend, shadowdb's databases and their URLs by name."""
    backend = str(request.param)
    api_url, cell1_url, cell2_url = fresh_urls(backend, "writes", _DB_NAMES)
    settings = Settings(actor="bench")
    try:
        dbs = connect(api_url, settings=settings, create=True)
    except sa.exc.OperationalError as err:
        pytest.skip(f"{backend} unreachable: {err}")
    try:
        commands.sync_schema(dbs)
        commands.add_cell(dbs, "cell1", cell1_url, default=True, create=True)
        commands.add_cell(dbs, "cell2", cell2_url, create=True)
        commands.sync_schema(dbs)
        protocol_floor.spread_ids(backend, _engines(dbs))
        yield backend, dbs, {"api": api_url, "cell1": cell1_url, "cell2": cell2_url}
    finally:
        dbs.dispose()


def _engines(dbs: Databases) -> dict[str, sa.Engine]:
    return {"api": dbs.api, **{cell.name: cell.engine for cell in dbs.cells}}


# --------------------------------------------------------------------------- the floor


def _record(
    dbs: Databases, ctx: RequestContext, members: list[str]
) -> tuple[str, dict[str, Script]]:
    """Make the three writes once through shadowdb, recorded; return the group and scripts.

    The phase is read first, so that only the writes are recorded (as
    ``tests/test_writes.py`` counts them).
    """
    engines = _engines(dbs)
    reads = [dbs.read_engine(e) for e in engines.values()]
    group = InstanceGroup(
        ctx, name="before", user_id="u1", project_id="p1", policies=["anti-affinity"]
    )
    dbs.phases.get()
    with TransactionLog(engines, reads) as log:
        group.create()
    created = protocol_floor.script(log, {"uuid": group.uuid}, {})
    known = {k: v for k, v in created.made.items() if k.startswith("group")}
    dbs.phases.get()
    with TransactionLog(engines, reads) as log:
        InstanceGroup.add_members(ctx, group.uuid, members)
    uuids = {"uuid": group.uuid, "member0": members[0], "member1": members[1]}
    added = protocol_floor.script(log, uuids, known)
    group = InstanceGroup.get_by_uuid(ctx, group.uuid)
    group.name = "after"
    dbs.phases.get()
    with TransactionLog(engines, reads) as log:
        group.save()
    saved = protocol_floor.script(log, {"uuid": group.uuid}, known)
    return group.uuid, {"create": created, "add_members": added, "save": saved}


def _footprint(dbs: Databases, uuid: str) -> dict[str, tuple[Any, ...]]:
    """Return what a group left in each database: name, policies, members, journal, lock."""
    out: dict[str, tuple[Any, ...]] = {}
    sides = [("api", dbs.api, models.api_groups, models.api_policies, models.api_members)]
    for cell in dbs.cells:
        tables = (models.cell_groups, models.cell_policies, models.cell_members)
        sides.append((cell.name, cell.engine, *tables))
    for name, engine, groups, policies, members in sides:
        journal = models.api_journal if name == "api" else models.cell_journal
        with reader(engine) as conn:
            live = groups.c.uuid == uuid
            if name != "api":
                live = live & (groups.c.deleted == 0)
            row = conn.execute(sa.select(groups.c.id, groups.c.name).where(live)).first()
            gid = None if row is None else row.id
            count = sa.select(sa.func.count())
            out[name] = (
                None if row is None else row.name,
                conn.scalar(count.select_from(policies).where(policies.c.group_id == gid)),
                conn.scalar(count.select_from(members).where(members.c.group_id == gid)),
                conn.scalar(count.select_from(journal).where(journal.c.group_uuid == uuid)),
                None
                if name == "api"
                else conn.scalar(
                    count.select_from(models.cell_group_locks).where(
                        models.cell_group_locks.c.uuid == uuid
                    )
                ),
            )
    return out


# --------------------------------------------------------------------------- the benchmark


@pytest.mark.parametrize("phase", list(Phase), ids=[p.value for p in Phase])
def test_writes(
    benchmark: Any, deployment: tuple[str, Databases, dict[str, str]], phase: Phase
) -> None:
    """Time create, add_members and save through shadowdb, replayed and raw, in shuffled turns."""
    backend, dbs, urls = deployment
    rounds = int(os.environ.get("SHADOWDB_BENCH_WRITE_ROUNDS", ROUNDS))
    _move_to(dbs, phase)
    ctx = RequestContext(dbs, "p1", "u1")
    raw = {"raw-api": RawWriter(backend, urls["api"], "raw-api")}
    raw["raw-cell"] = RawWriter(backend, urls["cell1"], "raw-cell")
    replayer = Replayer(urls)
    times: dict[str, list[float]] = {f"{w} {t}": [] for w in WRITES for t in TURNS}

    def through_shadowdb() -> None:
        group = InstanceGroup(
            ctx, name="before", user_id="u1", project_id="p1", policies=["anti-affinity"]
        )
        members = [_uuid(), _uuid()]
        started = time.perf_counter()
        group.create()
        created = time.perf_counter()
        InstanceGroup.add_members(ctx, group.uuid, members)
        added = time.perf_counter()
        group = InstanceGroup.get_by_uuid(ctx, group.uuid)
        group.name = "after"
        saving = time.perf_counter()
        group.save()
        saved = time.perf_counter()
        times["create shadowdb"].append(created - started)
        times["add_members shadowdb"].append(added - created)
        times["save shadowdb"].append(saved - saving)
        stored = InstanceGroup.get_by_uuid(ctx, group.uuid)
        assert (stored.name, list(stored.policies)) == ("after", ["anti-affinity"])
        assert sorted(stored.members) == sorted(members)

    through_shadowdb()  # the phase's first write pays for what later ones find cached
    recorded_uuid, scripts = _record(dbs, ctx, [_uuid(), _uuid()])
    recorded = _footprint(dbs, recorded_uuid)

    def replayed() -> None:
        values: dict[str, Any] = {"uuid": _uuid(), "member0": _uuid(), "member1": _uuid()}
        counts = {}
        for write in WRITES:
            started = time.perf_counter()
            counts[write] = replayer.replay(scripts[write], values)
            times[f"{write} floor"].append(time.perf_counter() - started)
        for write in WRITES:
            protocol_floor.check_rowcounts(scripts[write], counts[write])
        assert _footprint(dbs, values["uuid"]) == recorded

    def on_one_database(side: str) -> Callable[[], None]:
        writes = raw[side]

        def run() -> None:
            uuid, members = _uuid(), [_uuid(), _uuid()]
            started = time.perf_counter()
            writes.create(uuid, "before")
            created = time.perf_counter()
            writes.add_members(uuid, members)
            added = time.perf_counter()
            writes.save(uuid, "after")
            saved = time.perf_counter()
            times[f"create {side}"].append(created - started)
            times[f"add_members {side}"].append(added - created)
            times[f"save {side}"].append(saved - added)
            writes.check(uuid, "after", members)

        return run

    turns = {
        "shadowdb": through_shadowdb,
        "floor": replayed,
        **{side: on_one_database(side) for side in SIDES},
    }
    rng = random.Random(f"{backend} {phase.value}")
    try:
        for _ in range(rounds):
            order = list(turns)
            rng.shuffle(order)
            for name in order:
                turns[name]()
    finally:
        replayer.close()
        for writes in raw.values():
            writes.close()
    medians = {name: statistics.median(t) for name, t in times.items()}
    raw_floor = {w: min(medians[f"{w} {side}"] for side in SIDES) for w in WRITES}
    ratios = {w: medians[f"{w} shadowdb"] / raw_floor[w] for w in WRITES}
    over_floor = {w: medians[f"{w} shadowdb"] / medians[f"{w} floor"] for w in WRITES}
    floor_over_raw = {w: medians[f"{w} floor"] / raw_floor[w] for w in WRITES}
    benchmark.extra_info.update(
        backend=backend,
        phase=phase.value,
        medians=medians,
        ratios=ratios,
        shadowdb_over_protocol=over_floor,
        protocol_over_raw=floor_over_raw,
        statements={w: scripts[w].summary() for w in WRITES},
        listings={w: scripts[w].listing() for w in WRITES},
        target=TARGET if phase in DUAL_WRITE else None,
        rounds=rounds,
        settings=server_settings(backend, dbs.api),
    )
    print(f"\n{backend} {phase.value} ({rounds} rounds):")
    for w in WRITES:
        print(
            f"  {w}: shadowdb {medians[f'{w} shadowdb'] * 1e3:.2f} ms,"
            f" floor {medians[f'{w} floor'] * 1e3:.2f} ms, raw {raw_floor[w] * 1e3:.2f} ms;"
            f" shadowdb/raw {ratios[w]:.2f}x, shadowdb/floor {over_floor[w]:.2f}x,"
            f" floor/raw {floor_over_raw[w]:.2f}x; statements {scripts[w].summary()}"
        )
    # One more create through shadowdb, for pytest-benchmark's own table.
    group = benchmark.pedantic(
        lambda: InstanceGroup(ctx, name="last", user_id="u1", project_id="p1").create(),
        rounds=1,
        iterations=1,
    )
    assert group is None
