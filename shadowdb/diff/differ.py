"""The differ: checksums per chunk, rows where a chunk differs, re-checks under the lock.

How it proves what it reports is told in :mod:`shadowdb.diff`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import sqlalchemy as sa
import structlog

from shadowdb.databases import Cell, Databases, reader
from shadowdb.diff import readers
from shadowdb.diff.checksums import Copy, Tally, norm, rows_of, tallies
from shadowdb.diff.findings import Finding, RowCounts, classify, finding_of, orphan_finding
from shadowdb.diff.readers import ChunkReader, Orphan, RangeReader, Seen, StreamReader
from shadowdb.errors import InvalidInput
from shadowdb.queries import API, CELL, GroupTables
from shadowdb.state import PhaseState

__all__ = ["DEFAULT_CHUNK", "RECHECKS", "Differ", "Progress"]

log = structlog.get_logger(__name__)

#: Groups per chunk unless told otherwise.
DEFAULT_CHUNK = 1000
#: Re-checks of a differing key before it is reported as last seen.
RECHECKS = 4

#: Called with (stage, done, total) as a run progresses.
Progress = Callable[[str, int, int], None]

#: Databases checksummed at once. A server computes its checksums itself and the process
#: only waits, so a cell on a server of its own costs no more than its own scan. SQLite's
#: are computed in Python, where threads would only take turns at the interpreter: those
#: scans run one at a time (beside any server's).
SCANNERS = 8


@dataclasses.dataclass(frozen=True)
class _Scan:
    """One database's checksums, the live rows they account for, and its orphans."""

    chunks: dict[int, Tally]
    hashed: int
    orphans: list[Orphan]


class Differ:
    """Compare the cells with the API database (:mod:`shadowdb.diff`); report nothing unproven."""

    def __init__(
        self,
        dbs: Databases,
        *,
        cell: str | None = None,
        chunk_size: int = DEFAULT_CHUNK,
        progress: Progress | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rechecks: int = RECHECKS,
    ) -> None:
        if chunk_size < 1:
            raise InvalidInput("chunk size must be a whole number >= 1")
        if rechecks < 2:
            raise InvalidInput("a key needs at least two re-checks")
        self.dbs = dbs
        self.cells: tuple[Cell, ...] = dbs.refresh_cells()
        self.only: Cell | None = dbs.cell(cell) if cell else None
        self.chunk_size = chunk_size
        self._progress = progress
        self._sleep = sleep
        self.rechecks = rechecks
        self.state: PhaseState = dbs.phases.fresh()
        self.n = 1
        self._rows = dict.fromkeys(
            (
                "api_hashed",
                "cells_hashed",
                "api_compared",
                "cells_compared",
                "chunks",
                "chunks_differing",
                "rechecked",
                "cleared",
            ),
            0,
        )
        self._seen: dict[str, Seen] = {}
        self._orphans: list[Orphan] = []
        self._duplicated: set[str] = set()

    # ------------------------------------------------------------------ running

    def run(self) -> tuple[list[Finding], RowCounts]:
        """Compare, re-check and return every confirmed difference, by kind then key.

        Raises:
            ScanIncomplete: a database held rows the scan did not account for.
            DatabaseUnreachable: a database could not be read (nothing is skipped).
        """
        if self.only is not None:
            self._run_one_cell(self.only)
        else:
            self._run_all()
        findings = self._findings()
        findings.sort(key=lambda f: (f.kind.order, f.key))
        return findings, RowCounts(**self._rows, legacy_duplicates=len(self._duplicated))

    @property
    def observed(self) -> Mapping[str, Seen]:
        """Return both sides of each differing key as its last re-check saw them."""
        return self._seen

    def _report(self, stage: str, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress(stage, done, total)

    def _size(self, groups: int) -> None:
        self.n = max(1, -(-groups // self.chunk_size))
        self._rows["chunks"] = self.n + 1

    def _run_all(self) -> None:
        with reader(self.dbs.api, self.dbs.api_label) as conn:
            biggest = readers.count(conn, API.groups)
        for cell in self.cells:
            with reader(cell.engine, cell.label) as conn:
                biggest = max(biggest, readers.count(conn, CELL.groups, CELL.groups.c.deleted == 0))
        self._size(biggest)
        api, *scans = self._scan_all(
            [(self.dbs.api, self.dbs.api_label, API, "api")]
            + [(cell.engine, cell.label, CELL, cell.name) for cell in self.cells]
        )
        self._rows["api_hashed"] = api.hashed
        self._orphans.extend(api.orphans)
        cells: dict[int, Tally] = {}
        for scan in scans:
            self._rows["cells_hashed"] += scan.hashed
            self._orphans.extend(scan.orphans)
            for chunk, tally in scan.chunks.items():
                total = cells.setdefault(chunk, [0, 0, 0, 0])
                for i, value in enumerate(tally):
                    total[i] += value
        differing = [
            chunk
            for chunk in range(self.n + 1)
            if norm(api.chunks.get(chunk)) != norm(cells.get(chunk))
        ]
        self._rows["chunks_differing"] = len(differing)
        log.debug("diff_checksums", chunks=self.n + 1, differing=len(differing))
        if differing:
            self._compare(differing)

    # ------------------------------------------------------------------ level one

    def _scan_all(self, databases: list[tuple[sa.Engine, str, GroupTables, str]]) -> list[_Scan]:
        """Checksum the databases at once (at most :data:`SCANNERS`); return them in order.

        Each scan is its own snapshot whether they run one after another or together:
        the proof never rested on two databases being read at one moment (chunks that
        differ are compared row by row and re-checked). If one fails, the others are let
        finish (each ends with its own query, as it would have one after another), so no
        connection outlives the diff; then the first failure is raised. The scans run in
        daemon threads: an interrupted diff exits without waiting for their queries.
        """
        self._report("checksums", 0, len(databases))
        turns = threading.BoundedSemaphore(SCANNERS)
        in_python = threading.Lock()
        results: queue.Queue[tuple[int, _Scan | BaseException]] = queue.Queue()

        def scan(index: int, engine: sa.Engine, label: str, side: GroupTables, name: str) -> None:
            hashing = in_python if engine.dialect.name == "sqlite" else contextlib.nullcontext()
            try:
                with hashing, turns:
                    results.put((index, self._scan(engine, label, side, name)))
            except BaseException as err:  # handed to the waiting thread, which raises it
                results.put((index, err))

        for index, database in enumerate(databases):
            threading.Thread(
                target=scan, args=(index, *database), name="shadowdb-diff-scan", daemon=True
            ).start()
        scans: dict[int, _Scan] = {}
        failed: BaseException | None = None
        for _ in databases:
            index, got = results.get()
            if isinstance(got, BaseException):
                failed = failed or got
                continue
            scans[index] = got
            if failed is None:
                self._report("checksums", len(scans), len(databases))
        if failed is not None:
            raise failed
        return [scans[index] for index in range(len(databases))]

    def _scan(self, engine: sa.Engine, label: str, side: GroupTables, database: str) -> _Scan:
        """Checksum one database per chunk, in one snapshot, and prove every row counted."""
        with readers.snapshot(engine, label) as conn:
            chunks = self._checked_chunks(tallies(conn, side, self.n))
            orphans = readers.read_orphans(conn, side, database)
            hashed = readers.account(conn, side, label, chunks, orphans)
        return _Scan(chunks, hashed, orphans)

    def _checked_chunks(self, chunks: dict[int, Tally]) -> dict[int, Tally]:
        """Keep the chunks of the key space; a row counted nowhere shows in the totals."""
        return {c: t for c, t in chunks.items() if 0 <= c <= self.n}

    # ------------------------------------------------------------------ level two

    def _source(
        self, engine: sa.Engine, label: str, side: GroupTables, wanted: set[int], *, ranges: bool
    ) -> ChunkReader:
        """Choose how one database's chunks are read row by row (see the two readers)."""
        if ranges and engine.dialect.name in ("mysql", "mariadb"):
            return RangeReader(engine, label, side, self.n)
        return StreamReader(engine, label, side, self.n, wanted)

    def _compare(self, chunks: list[int]) -> None:
        """Compare the given chunks row by row, re-checking suspects as they gather."""
        wanted = set(chunks)
        # Index ranges pay per chunk, one pass pays for the whole database: ranges while at
        # most a quarter of the chunks differ.
        ranges = len(chunks) * 4 <= self.n + 1
        with contextlib.ExitStack() as stack:
            # A reader proves its reads complete as it closes, or lets go on an error.
            api = self._source(self.dbs.api, self.dbs.api_label, API, wanted, ranges=ranges)
            stack.enter_context(api)
            cells = []
            for cell in self.cells:
                source = self._source(cell.engine, cell.label, CELL, wanted, ranges=ranges)
                stack.enter_context(source)
                cells.append((cell, source))
            suspects: dict[str, tuple[str, ...]] = {}
            for done, chunk in enumerate(chunks, start=1):
                suspects.update(self._compare_chunk(chunk, api, cells))
                if len(suspects) >= self.chunk_size:
                    self._recheck(suspects)
                    suspects = {}
                self._report("compare", done, len(chunks))
            # Every source proves its reads complete as it closes (ScanIncomplete if not).
            stack.close()
        self._recheck(suspects)

    def _compare_chunk(
        self, chunk: int, api_source: ChunkReader, cells: list[tuple[Cell, ChunkReader]]
    ) -> dict[str, tuple[str, ...]]:
        """Compare one differing chunk row by row; return suspects and where they live."""
        api, read = api_source.take(chunk)
        self._rows["api_compared"] += read
        held: dict[str, list[tuple[str, Copy]]] = {}
        for cell, source in cells:
            copies, read = source.take(chunk)
            self._rows["cells_compared"] += read
            for uuid, copy in copies.items():
                held.setdefault(uuid, []).append((cell.name, copy))
        suspects: dict[str, tuple[str, ...]] = {}
        for uuid in sorted(set(api) | set(held)):
            here = tuple(held.get(uuid, ()))
            self._note_duplicates(uuid, api.get(uuid), here)
            if classify(self.state.phase, api.get(uuid), here):
                suspects[uuid] = tuple(name for name, _ in here)
        return suspects

    def _run_one_cell(self, only: Cell) -> None:
        """Compare one cell's groups with their API copies, row by row, in one pass each.

        No checksum can stand for one cell's share of the API database, so every chunk is
        read; both databases are streamed in uuid order and counted in full.
        """
        with reader(only.engine, only.label) as conn:
            self._size(readers.count(conn, CELL.groups, CELL.groups.c.deleted == 0))
        chunks = list(range(self.n + 1))
        wanted = set(chunks)
        with contextlib.ExitStack() as stack:
            mine = self._source(only.engine, only.label, CELL, wanted, ranges=False)
            stack.enter_context(mine)
            api = self._source(self.dbs.api, self.dbs.api_label, API, wanted, ranges=False)
            stack.enter_context(api)
            others = [c for c in self.cells if c.uuid != only.uuid]
            suspects: dict[str, tuple[str, ...]] = {}
            for chunk in chunks:
                copies, read = mine.take(chunk)
                self._rows["cells_compared"] += read
                api_copies, _ = api.take(chunk)
                twins: dict[str, list[str]] = {}
                for other in others:
                    with reader(other.engine, other.label) as conn:
                        for uuid in CELL.present(conn, list(copies)):
                            twins.setdefault(uuid, []).append(other.name)
                for uuid, copy in copies.items():
                    theirs = api_copies.get(uuid)
                    if theirs is not None:
                        self._rows["api_compared"] += rows_of(theirs)
                    # A twin's data does not matter here: being live twice is the finding,
                    # and the re-check reads every copy in full.
                    held = [(only.name, copy)] + [(name, copy) for name in twins.get(uuid, ())]
                    held.sort(key=self._cell_order)
                    self._note_duplicates(uuid, theirs, held)
                    if classify(self.state.phase, theirs, held):
                        suspects[uuid] = tuple(name for name, _ in held)
                if len(suspects) >= self.chunk_size:
                    self._recheck(suspects)
                    suspects = {}
                self._report("compare", chunk + 1, len(chunks))
            stack.close()
        with readers.snapshot(only.engine, only.label) as conn:
            self._orphans.extend(readers.read_orphans(conn, CELL, only.name))
        self._recheck(suspects)

    def _note_duplicates(
        self, uuid: str, api: Copy | None, cells: Sequence[tuple[str, Copy]]
    ) -> None:
        if (api is not None and api.duplicates) or any(copy.duplicates for _, copy in cells):
            self._duplicated.add(uuid)

    def _cell_order(self, held: tuple[str, Copy]) -> int:
        names = [c.name for c in self.cells]
        return names.index(held[0]) if held[0] in names else len(names)

    # ------------------------------------------------------------------ live traffic

    def _recheck(self, suspects: dict[str, tuple[str, ...]]) -> None:
        """Re-check suspects under the writers' lock until each settles (:mod:`shadowdb.diff`)."""
        if not suspects:
            return
        self._rows["rechecked"] += len(suspects)
        pending = dict(suspects)
        last: dict[str, Seen] = {}
        pause = max(self.dbs.settings.write_grace, 0.01)
        for attempt in range(self.rechecks):
            if attempt:
                self._sleep(pause)
            seen = readers.observe(self.dbs, self.cells, pending)
            for uuid in list(pending):
                now = seen[uuid]
                if not classify(self.state.phase, now.api, now.cells):
                    del pending[uuid]
                    last.pop(uuid, None)
                    self._rows["cleared"] += 1
                    continue
                if not now.journaled and last.get(uuid) == now:
                    # The same difference, twice, a whole write apart and with nothing
                    # journaled: no write in flight explains it.
                    self._seen[uuid] = now
                    del pending[uuid]
                    continue
                last[uuid] = now
                pending[uuid] = tuple(name for name, _ in now.cells)
            self._report("recheck", len(suspects) - len(pending), len(suspects))
            if not pending:
                return
        for uuid in pending:
            self._seen[uuid] = last[uuid]

    # ------------------------------------------------------------------ findings

    def _findings(self) -> list[Finding]:
        phase = self.state.phase
        findings: list[Finding] = []
        for uuid, seen in self._seen.items():
            for kind in classify(phase, seen.api, seen.cells):
                findings.append(finding_of(phase, uuid, kind, seen))
        findings.extend(orphan_finding(orphan) for orphan in self._orphans)
        return findings
