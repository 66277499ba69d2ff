"""Run a soak: a deployment, writer processes, a driver walking the cutover, faults, a check.

See :mod:`tests.soak`. ``run_soak`` returns a :class:`Summary`; ``main`` is
``scripts/soak``'s command line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid as uuidlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import structlog

from shadowdb import cli, commands, models
from shadowdb.databases import connect
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.settings import Settings
from shadowdb.testing import LegacyGroup, write_legacy_cells
from tests.soak import checker
from tests.soak.writer import PROJECT
from tests.support.backends import Server
from tests.support.proxy import Proxy

ROOT = Path(__file__).resolve().parents[2]

#: The phase walk, repeated until the time is up: forward to api-only and back, and now
#: and then back to cell-only (a second cutover after a rollback).
FORWARD = ("dual-write-cell-reads", "dual-write-api-reads", "api-only")

#: The client ports of scripts/galera's three nodes.
GALERA_PORTS = (13306, 13307, 13308)


@dataclasses.dataclass
class Summary:
    """What one soak did and found."""

    backend: str
    seed: int
    duration: float
    writers: int
    ops: dict[str, int]
    faults: dict[str, int]
    phase_changes: int
    refusals: int
    commands: dict[str, int]
    groups_checked: int
    stale_reads: int
    problems: list[str]
    machine: str

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"ok": self.ok}


class Soak:
    """One soak run on one backend (see :mod:`tests.soak`)."""

    def __init__(
        self,
        backend: str,
        workdir: Path,
        *,
        duration: float,
        writers: int,
        seed: int,
        legacy_groups: int = 120,
        shared_groups: int = 8,
    ) -> None:
        self.backend, self.workdir = backend, workdir
        self.duration, self.writer_count, self.seed = duration, writers, seed
        self.legacy_groups, self.shared_count = legacy_groups, shared_groups
        self.rng = random.Random(seed)
        if backend == "galera":
            # scripts/galera's cluster: shadowdb reaches it through its first node, as
            # OpenStack's HAProxy setups send every write to one node.
            url = sa.make_url(f"mysql+pymysql://root@127.0.0.1:{GALERA_PORTS[0]}/")
            self.server = Server("mysql", admin_url=url.set(query={"ssl_disabled": "true"}))
        else:
            self.server = Server.for_backend(backend, workdir)
        #: Writers whose API database is reached through another Galera node (0: none).
        self.spread = 0
        self.names = {role: f"sdbsoak_{os.getpid()}_{role}" for role in ("api", "cell1", "cell2")}
        self.urls: dict[str, sa.URL] = {}
        self.faults: Counter[str] = Counter()
        self.commands: Counter[str] = Counter()
        self.phase_changes = 0
        self.refusals = 0
        self.writers: dict[str, subprocess.Popen[bytes]] = {}
        self.ttl: dict[str, float] = {}
        self.generation: Counter[str] = Counter()
        self.shared: list[str] = []
        self.legacy: list[LegacyGroup] = []
        self.proxy: Proxy | None = None
        self.phase = "cell-only"
        self.until = 0.0
        self.last_diff_clean = False
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # ------------------------------------------------------------------ set-up

    def url_text(self, role: str) -> str:
        return self.urls[role].render_as_string(hide_password=False)

    def build(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        for role, name in self.names.items():
            self.urls[role] = self.server.create(name)
        api = self.url_text("api")
        with connect(api, settings=Settings(), create=True) as dbs:
            commands.sync_schema(dbs)
            commands.add_cell(dbs, "cell1", self.url_text("cell1"), default=True)
            commands.add_cell(dbs, "cell2", self.url_text("cell2"))
            commands.sync_schema(dbs)
            self.legacy = write_legacy_cells(dbs, groups=self.legacy_groups, seed=self.seed)
            ctx = RequestContext(dbs, PROJECT, "harness")
            for _ in range(self.shared_count):
                uuid = str(uuidlib.uuid4())
                InstanceGroup(
                    ctx,
                    uuid=uuid,
                    name=f"shared-{uuid[:8]}",
                    user_id="harness",
                    project_id=PROJECT,
                    policies=["affinity"],
                ).create()
                self.shared.append(uuid)

    def destroy(self) -> None:
        for name in self.names.values():
            with contextlib.suppress(Exception):
                self.server.drop(name)
        self.server.dispose()

    # ------------------------------------------------------------------ processes

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT)
        env["SHADOWDB_API_URL"] = self.url_text("api")
        env["SHADOWDB_PHASE_TTL"] = "0.5"
        env["SHADOWDB_DATA_DIR"] = str(self.workdir / "data")
        return env

    def start_writer(self, slot: int) -> None:
        self.generation[str(slot)] += 1
        name = f"w{slot}.{self.generation[str(slot)]}"
        ttl = (0.2, 1.0, 5.0, 30.0)[slot % 4]  # different phase caches, some long
        api = self.url_text("api")
        if slot == 0 and self.proxy is not None:
            api = self.proxy.url_for(self.urls["api"]).render_as_string(hide_password=False)
        elif self.spread and slot % 2 == 1:
            api = self.urls["api"].set(port=GALERA_PORTS[1]).render_as_string(hide_password=False)
        argv = [
            sys.executable,
            "-m",
            "tests.soak.writer",
            "--api-url",
            api,
            "--log",
            str(self.workdir / "logs" / f"writer-{name}.log"),
            "--writer",
            name,
            "--seed",
            str(self.rng.getrandbits(32)),
            "--ttl",
            str(ttl),
            "--until",
            str(self.until),
            "--shared",
            ",".join(self.shared),
        ]
        self.ttl[name] = ttl
        with open(self.workdir / "logs" / f"stderr-{name}.txt", "wb") as err:
            self.writers[name] = subprocess.Popen(
                argv, cwd=ROOT, env=self._env(), stdout=subprocess.DEVNULL, stderr=err
            )

    def shadowdb(self, *argv: str) -> tuple[int, str]:
        """Run one ``shadowdb`` command as an operator would; return (exit code, output).

        In this process, through the command line's own ``main`` (an interpreter start per
        command would leave the walk few steps in a short run); the backfills that are
        killed run as subprocesses (:meth:`killed_backfill`).
        """
        self.commands[argv[0] if argv[0] != "phase" else f"phase {argv[1]}"] += 1
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(list(argv), stdout=out, stderr=err, environ=self._env())
        text = out.getvalue() + err.getvalue()
        with open(self.workdir / "logs" / "driver.txt", "a", encoding="utf-8") as log:
            log.write(f"{time.time():.3f} $ shadowdb {' '.join(argv)} -> {code}\n{text}\n")
        return code, text

    # ------------------------------------------------------------------ faults

    def inject_faults(self, rng: random.Random) -> None:
        """Until stopped: every second or three, one fault of a random kind."""
        while not self._stop.wait(rng.uniform(1.0, 3.0)):
            roll = rng.random()
            if roll < 0.35:
                with self._lock:
                    victims = [n for n, p in self.writers.items() if p.poll() is None]
                    if not victims or time.time() > self.until - 3:
                        continue
                    victim = rng.choice(victims)
                    self.writers[victim].send_signal(signal.SIGKILL)
                    self.writers[victim].wait()
                    self.faults["writer SIGKILL"] += 1
                    self.start_writer(int(victim[1:].split(".")[0]))
            elif roll < 0.6 and self.server.backend != "sqlite":
                with contextlib.suppress(sa.exc.DBAPIError):
                    self.kill_connections(rng)
            elif roll < 0.75 and self.server.backend != "sqlite":
                with contextlib.suppress(sa.exc.DBAPIError):
                    self.provoke_deadlock(rng)
            elif self.proxy is not None:
                self.proxy.cut()
                self.faults["API cut off (one writer)"] += 1
                time.sleep(rng.uniform(0.5, 2.0))
                self.proxy.restore()

    def killed_backfill(self) -> None:
        if self.phase not in ("dual-write-cell-reads", "dual-write-api-reads"):
            return
        argv = [sys.executable, "-m", "shadowdb", "backfill", "--batch-size", "7"]
        proc = subprocess.Popen(
            argv,
            cwd=self.workdir,
            env=self._env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(self.rng.uniform(0.3, 2.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            self.faults["backfill SIGKILL"] += 1
        proc.wait()

    def provoke_deadlock(self, rng: random.Random) -> None:
        """Lock a shared group's rows in the order writers never use: API, then cell.

        A writer locks the cell row, then the API row. Holding the API row while asking
        for the cell row closes a cycle with any writer in between: on MariaDB (the
        databases share one server) InnoDB picks a victim (1213), which may be a writer,
        whose write must then run again; elsewhere the lock wait of this session times
        out. Either way this transaction writes nothing and rolls back.
        """
        uuid = rng.choice(self.shared)
        api = sa.create_engine(self.urls["api"], poolclass=sa.pool.NullPool)
        cell = sa.create_engine(self.urls["cell1"], poolclass=sa.pool.NullPool)
        timeout = (
            "SET SESSION innodb_lock_wait_timeout = 2"
            if self.server.backend == "mysql"
            else "SET lock_timeout = '2s'"
        )
        try:
            with api.connect() as aconn, cell.connect() as cconn:
                for conn in (aconn, cconn):
                    conn.execute(sa.text(timeout))  # (this begins each transaction)
                g, c = models.api_groups, models.cell_groups
                aconn.execute(sa.select(g.c.id).where(g.c.uuid == uuid).with_for_update())
                time.sleep(rng.uniform(0.05, 0.3))
                self.faults["lock held against the writers' order"] += 1
                with contextlib.suppress(sa.exc.DBAPIError):
                    cconn.execute(
                        sa.select(c.c.id)
                        .where(c.c.uuid == uuid, c.c.deleted == 0)
                        .with_for_update()
                    )
                    time.sleep(rng.uniform(0.05, 0.3))
                aconn.rollback()
                cconn.rollback()
        finally:
            api.dispose()
            cell.dispose()

    def kill_connections(self, rng: random.Random) -> None:
        names = list(self.names.values())
        with self.server.admin.connect() as conn:
            if self.server.backend == "mysql":
                ids = list(
                    conn.scalars(
                        sa.text(
                            "SELECT id FROM information_schema.processlist "
                            "WHERE db IN :names AND id <> CONNECTION_ID()"
                        ).bindparams(sa.bindparam("names", expanding=True)),
                        {"names": names},
                    )
                )
            else:
                ids = list(
                    conn.scalars(
                        sa.text(
                            "SELECT pid FROM pg_stat_activity "
                            "WHERE datname = ANY(:names) AND pid <> pg_backend_pid()"
                        ),
                        {"names": names},
                    )
                )
        chosen = rng.sample(ids, min(len(ids), rng.randint(1, 4)))
        for ident in chosen:
            with contextlib.suppress(sa.exc.DBAPIError):  # it may have ended meanwhile
                self.server.kill_connection(ident)
        self.faults["server-side connection kill"] += len(chosen)

    # ------------------------------------------------------------------ the driver

    def move(self, target: str, attempts: int = 8) -> bool:
        """``phase set target``, doing what each refusal asks first; True once moved."""
        for _ in range(attempts):
            code, out = self.shadowdb("phase", "set", target, "--reason", "soak")
            if code == 0:
                self.phase = target
                self.phase_changes += 1
                return True
            if code != 3:
                continue  # an outage or a race: try again
            if f"already in {target}" in out:
                self.phase = target  # an earlier attempt did commit (its reply was lost)
                return True
            self.refusals += 1
            if "--reverse" in out:
                self.shadowdb("backfill", "--reverse")
            elif "backfill" in out:
                self.shadowdb("backfill")
            if "diff-report" in out:
                self.shadowdb("diff-report", "--repair" if "repair" in out else "--keys-only")
                if "repair" in out:
                    self.shadowdb("backfill")
                    self.shadowdb("diff-report", "--keys-only")
        return False

    def walk(self) -> None:
        """Walk the phases forward and back until the time is up."""
        plan: list[str] = []
        while time.time() < self.until - 2:
            if not plan:
                plan = [*list(FORWARD), "dual-write-api-reads", "dual-write-cell-reads"]
                if self.rng.random() < 0.3:
                    plan.append("cell-only")
            target = plan.pop(0)
            if self.phase in ("dual-write-cell-reads", "dual-write-api-reads"):
                if self.rng.random() < 0.4:
                    self.killed_backfill()
                self.shadowdb("backfill")
            if not self.move(target):
                plan = []  # start the walk again from wherever the deployment is
            time.sleep(self.rng.uniform(0.0, 0.5))

    def finish(self) -> None:
        """With the writers stopped: forward to api-only, a clean diff, cleanup."""
        order = ["cell-only", *FORWARD]
        for target in order[order.index(self.phase) + 1 :]:
            if self.phase in ("dual-write-cell-reads", "dual-write-api-reads"):
                self.shadowdb("backfill")
            if not self.move(target, attempts=12):
                return
        for _ in range(4):
            code, _out = self.shadowdb("diff-report", "--repair")
            if code == 0:
                self.last_diff_clean = True
                break
            self.shadowdb("phase", "set", "dual-write-api-reads")
            self.phase = "dual-write-api-reads"
            self.shadowdb("backfill")
            self.move("api-only")
        if self.last_diff_clean:
            self.shadowdb("cleanup", "--yes")

    # ------------------------------------------------------------------ run

    def run(self) -> Summary:
        started = time.time()
        self.build()
        with self._proxy():
            self.until = time.time() + self.duration
            with self._lock:
                for slot in range(self.writer_count):
                    self.start_writer(slot)
            faults = threading.Thread(
                target=self.inject_faults, args=(random.Random(self.seed + 1),), daemon=True
            )
            faults.start()
            try:
                self.walk()
            finally:
                self._stop.set()
                faults.join()
                for proc in self.writers.values():
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=max(0.0, self.until - time.time()) + 60)
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
        self.finish()
        report = self.check()
        return Summary(
            backend=self.backend,
            seed=self.seed,
            duration=round(time.time() - started, 1),
            writers=self.writer_count,
            ops=dict(sorted(report.ops.items())),
            faults=dict(self.faults),
            phase_changes=self.phase_changes,
            refusals=self.refusals,
            commands=dict(self.commands),
            groups_checked=report.groups_checked,
            stale_reads=report.stale_reads,
            problems=report.problems,
            machine=f"{os.cpu_count()} cores, {sys.platform}",
        )

    @contextlib.contextmanager
    def _proxy(self) -> Iterator[None]:
        if self.server.backend == "sqlite":
            yield
            return
        url = self.urls["api"]
        default = 3306 if self.server.backend == "mysql" else 5432
        self.proxy = Proxy(url.host or "127.0.0.1", int(url.port or default))
        try:
            yield
        finally:
            self.proxy.close()
            self.proxy = None

    def check(self) -> checker.Report:
        ops = checker.read_logs(self.workdir / "logs")
        groups, report = checker.model(ops, self.shared)
        checker.check_reads(ops, groups, self.ttl, report)
        engines = {
            role: sa.create_engine(url, poolclass=sa.pool.NullPool)
            for role, url in self.urls.items()
        }
        try:
            cells = {k: v for k, v in engines.items() if k != "api"}
            checker.check_final(groups, engines["api"], cells, self.legacy, report)
        finally:
            for engine in engines.values():
                engine.dispose()
        if not self.last_diff_clean:
            report.diff.append(f"no clean diff-report at the end (phase {self.phase})")
        return report


def run_soak(
    backend: str, workdir: Path, *, duration: float, writers: int, seed: int, spread: int = 0
) -> Summary:
    """Run one soak and drop its databases; return what it did and found."""
    soak = Soak(backend, workdir, duration=duration, writers=writers, seed=seed)
    soak.spread = spread
    try:
        return soak.run()
    finally:
        soak.destroy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/soak", description=__doc__)
    parser.add_argument(
        "--backend", choices=("sqlite", "mysql", "postgresql", "galera"), default="mysql"
    )
    parser.add_argument(
        "--galera-writers",
        choices=("one-node", "two-nodes"),
        default="one-node",
        help="galera: every write through one node, or half the writers' API writes "
        "through a second node",
    )
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of traffic")
    parser.add_argument("--writers", type=int, default=6, help="writer processes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path("soak-runs"))
    args = parser.parse_args(argv)
    workdir = args.workdir / f"{args.backend}-{args.seed}-{int(time.time())}"
    workdir.mkdir(parents=True, exist_ok=True)
    # shadowdb's own events (set-up, in this process) go to a file, not over the summary.
    events = open(workdir / "harness-events.log", "w", encoding="utf-8")  # noqa: SIM115
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=events))
    summary = run_soak(
        args.backend,
        workdir,
        duration=args.duration,
        writers=args.writers,
        seed=args.seed,
        spread=int(args.backend == "galera" and args.galera_writers == "two-nodes"),
    )
    (workdir / "summary.json").write_text(json.dumps(summary.as_dict(), indent=2) + "\n")
    print(json.dumps(summary.as_dict(), indent=2))
    return 0 if summary.ok else 1
