"""diff-report: every kind of divergence found exactly, short scans refused, live writes
tolerated (the canonical form, repairs and stored results have their own modules)."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest

from shadowdb import commands, diff
from shadowdb.backfill import backfill
from shadowdb.databases import reader
from shadowdb.diff import Differ, DiffKind
from shadowdb.diff.readers import RangeReader, StreamReader
from shadowdb.errors import GroupNotFound, InvalidInput, ScanIncomplete, UnknownCell
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.queries import CELL
from shadowdb.state import Phase
from tests.conftest import Topology
from tests.support.diff import (
    Injected,
    inject_everything,
    inject_field_mismatches,
    inject_member_mismatches,
    inject_missing_in_api,
    no_sleep,
    reported,
    seed_clean,
)
from tests.support.helpers import new_uuid, put_in_phase, seed_api_group, seed_cell_group


def run(topology: Topology, **kwargs: Any) -> diff.DiffReport:
    kwargs.setdefault("sleep", no_sleep)
    return commands.diff_report(topology.dbs, **kwargs)


def test_doubled_rows_on_both_sides_do_not_cancel_out(topology: Topology) -> None:
    """Members {a, a, c} in the cell against {c, e, e} in the API: every count agrees.

    A XOR of row hashes would agree too (each doubled row cancels out); the sum does not,
    so the chunk is compared row by row and the member sets found to differ.
    """
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    uuid, a, c, e = new_uuid(), new_uuid(), new_uuid(), new_uuid()
    seed_cell_group(topology.cell_engine("cell1"), uuid=uuid, name="g", members=[a, a, c])
    seed_api_group(
        topology.dbs.api, uuid=uuid, name="g", policies=("anti-affinity",), members=[c, e, e]
    )
    report = run(topology)
    assert report.rows.api_hashed == report.rows.cells_hashed == 5
    assert report.rows.chunks_differing == 1
    assert [(f.key, f.kind) for f in report.findings] == [(uuid, DiffKind.MEMBER_MISMATCH)]


# --------------------------------------------------------------------------- finding them


def test_a_clean_system_is_clean(topology: Topology) -> None:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    seed_clean(topology, 40)
    report = run(topology, chunk_size=8)
    assert report.clean and report.total == 0 and report.findings == ()
    assert report.counts == {}
    rows = report.rows
    assert rows.api_hashed == rows.cells_hashed > 0
    assert rows.chunks_differing == 0 and rows.api_compared == rows.cells_compared == 0
    assert rows.chunks == -(-41 // 8) + 1


def test_an_empty_system_is_clean(topology: Topology) -> None:
    report = run(topology)
    assert report.clean
    assert report.rows.api_hashed == report.rows.cells_hashed == 0


def test_every_kind_is_reported_exactly_and_nothing_else(topology: Topology) -> None:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    seed_clean(topology, 30)
    found = inject_everything(topology)
    report = run(topology, chunk_size=4)
    assert reported(report) == found.expected
    assert not report.clean
    assert report.total == len(found.expected)
    assert report.counts == {kind: len(keys) for kind, keys in found.keys.items()}
    assert report.rows.legacy_duplicates == len(found.duplicated) == 2
    by_key = {(f.key, f.kind.value): f for f in report.findings}
    # Authority in dual-write-cell-reads: the cell; none for twins and orphans.
    for (key, kind), finding in by_key.items():
        if kind in ("live-in-two-cells", "orphan"):
            assert finding.authoritative is None, key
        else:
            assert finding.authoritative == "cell", key
    # Only the chunks that differ were read row by row.
    assert 0 < report.rows.chunks_differing < report.rows.chunks
    assert report.rows.api_compared < report.rows.api_hashed


@pytest.mark.parametrize("reader", ["ranges", "stream"])
def test_both_ways_of_reading_chunks_find_the_same(
    topology: Topology, monkeypatch: pytest.MonkeyPatch, reader: str
) -> None:
    """Index ranges (MariaDB, few chunks differing) and the ordered pass agree."""
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    seed_clean(topology, 30)
    found = inject_everything(topology)
    made: list[str] = []

    def source(self: Differ, engine: Any, label: str, side: Any, wanted: set[int], **_: Any) -> Any:
        made.append(reader)
        if reader == "ranges":
            return RangeReader(engine, label, side, self.n)
        return StreamReader(engine, label, side, self.n, wanted)

    monkeypatch.setattr(Differ, "_source", source)
    report = run(topology, chunk_size=4)
    assert reported(report) == found.expected
    assert report.rows.legacy_duplicates == len(found.duplicated)
    assert made == [reader] * 3  # the API database and both cells


def test_findings_carry_both_values(topology: Topology) -> None:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_API_READS)
    found = Injected()
    inject_missing_in_api(topology, found)
    inject_field_mismatches(topology, found)
    inject_member_mismatches(topology, found, duplicate_in="cell")
    report = run(topology)
    assert reported(report) == found.expected
    missing = next(f for f in report.findings if f.kind is DiffKind.MISSING_IN_API)
    assert missing.api is None and missing.cells == ("cell2",)
    assert missing.cell is not None and missing.cell["policies"] == ["anti-affinity"]
    assert missing.authoritative == "cell"  # adopted by the phase's writers
    renamed = next(
        f
        for f in report.findings
        if f.kind is DiffKind.FIELD_MISMATCH and f.api == {"name": "renamed"}
    )
    assert renamed.cell == {"name": "g"} and renamed.detail == "name differs"
    assert renamed.authoritative == "api"
    # Members are sets: the group with a duplicate row and one member more in the cell is
    # reported with its distinct members; the one with only a duplicate row is not.
    (differs,) = [
        f
        for f in report.findings
        if f.kind is DiffKind.MEMBER_MISMATCH and f.key in found.duplicated
    ]
    assert differs.detail == "members differ"
    assert differs.cell is not None and len(differs.cell["members"]) == 3
    assert differs.api is not None and len(differs.api["members"]) == 2
    assert report.rows.legacy_duplicates == 2


def test_keys_only_and_limit(topology: Topology) -> None:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    found = inject_everything(topology)
    report = run(topology, keys_only=True, limit=3)
    assert report.total == len(found.expected) and len(report.findings) == 3
    assert all(f.api is None and f.cell is None for f in report.findings)
    everything = run(topology)
    assert list(report.findings) == [
        f.__class__(**{**f.__dict__, "api": None, "cell": None}) for f in everything.findings[:3]
    ]
    with pytest.raises(InvalidInput):
        run(topology, limit=0)
    with pytest.raises(InvalidInput):
        run(topology, chunk_size=0)
    with pytest.raises(UnknownCell):
        run(topology, cell="cell9")


def test_missing_in_cells_is_not_a_difference_in_cell_only(topology: Topology) -> None:
    # cell-only never writes the API database: copies left there are not divergence.
    seed_api_group(topology.dbs.api)
    missing = seed_cell_group(topology.cell_engine("cell1"))
    report = run(topology)
    assert reported(report) == {(missing, "missing-in-api")}


def test_one_cell(topology: Topology) -> None:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    seed_clean(topology, 12)
    found = inject_everything(topology)
    report = run(topology, cell="cell1", chunk_size=4)
    assert report.scope == "cell1"
    with reader(topology.cell_engine("cell1")) as conn:
        live = CELL.uuids(conn)
    # What one cell's run can see: its own live groups (not API groups in no cell) and
    # its own orphan rows.
    in_cell1 = {
        (key, kind)
        for key, kind in found.expected
        if (key in live and kind != "missing-in-cells") or key.startswith("cell1:")
    }
    assert {kind for _, kind in in_cell1} == set(found.keys) - {
        "missing-in-api",
        "missing-in-cells",
    }
    assert reported(report) == in_cell1
    assert report.rows.cells_compared > 0


# --------------------------------------------------------------------------- scans at once


SERVERS = [
    pytest.param("mysql", marks=pytest.mark.mysql),
    pytest.param("postgresql", marks=pytest.mark.postgresql),
]


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_the_databases_are_checksummed_at_once(
    topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API database's scan waits inside its snapshot until both cells' scans have
    started: one after another, it would wait in vain."""
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    seed_clean(topology, 20)
    scan = Differ._scan
    started: list[str] = []
    both = threading.Event()

    def scan_together(self: Differ, engine: Any, label: str, side: Any, database: str) -> Any:
        if database == "api":
            assert both.wait(timeout=30), f"scans started: {started}"
        else:
            started.append(database)
            if len(started) == 2:
                both.set()
        return scan(self, engine, label, side, database)

    monkeypatch.setattr(Differ, "_scan", scan_together)
    progress: list[tuple[str, int, int]] = []
    report = run(topology, chunk_size=8, progress=lambda *p: progress.append(p))
    assert report.clean and report.rows.api_hashed == report.rows.cells_hashed > 0
    checksums = [(done, total) for stage, done, total in progress if stage == "checksums"]
    assert checksums == [(0, 3), (1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize(
    "backend", [pytest.param("sqlite", marks=pytest.mark.sqlite)], indirect=True
)
def test_sqlite_databases_are_checksummed_one_at_a_time(
    topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's checksums are computed in Python: threads would only take turns."""
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    seed_clean(topology, 20)
    scan = Differ._scan
    running: list[str] = []
    overlaps: list[list[str]] = []

    def one_at_a_time(self: Differ, engine: Any, label: str, side: Any, database: str) -> Any:
        running.append(database)
        if len(running) > 1:
            overlaps.append(list(running))
        time.sleep(0.05)  # room for another scan to start, were it allowed to
        try:
            return scan(self, engine, label, side, database)
        finally:
            running.remove(database)

    monkeypatch.setattr(Differ, "_scan", one_at_a_time)
    report = run(topology, chunk_size=8)
    assert report.clean and report.rows.api_hashed == report.rows.cells_hashed > 0
    assert overlaps == []


@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_a_failed_scan_lets_the_others_finish_then_fails_the_diff(
    topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cell1's scan fails at once while the API database's is still running: the diff
    fails with cell1's error once the API scan has ended, and no scan outlives it."""
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    seed_clean(topology, 20)
    scan = Differ._scan
    failed = threading.Event()
    ended: list[str] = []
    labels: list[str] = []

    def one_fails(self: Differ, engine: Any, label: str, side: Any, database: str) -> Any:
        if database == "cell1":
            labels.append(label)
            failed.set()
            raise ScanIncomplete(label, "instance_groups", 1, 0)
        if database == "api":
            assert failed.wait(timeout=30)
        try:
            return scan(self, engine, label, side, database)
        finally:
            ended.append(database)

    monkeypatch.setattr(Differ, "_scan", one_fails)
    with pytest.raises(ScanIncomplete) as caught:
        run(topology, chunk_size=8)
    assert caught.value.database == labels[0]
    assert sorted(ended) == ["api", "cell2"]  # both ran to their end before the raise
    scanners = [t for t in threading.enumerate() if t.name == "shadowdb-diff-scan"]
    for thread in scanners:  # each has handed in its result: it is only returning
        thread.join(timeout=5)
    assert not [t for t in scanners if t.is_alive()]
    with reader(topology.dbs.api) as conn:
        last = diff.last_result(conn)
    assert last is not None and last.outcome == "incomplete"


# --------------------------------------------------------------------------- short scans


def test_a_short_scan_is_an_error_never_clean(
    topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    seed_clean(topology, 20)
    original = Differ._checked_chunks

    def lose_the_last_chunk(self: Differ, chunks: dict[int, list[int]]) -> dict[int, list[int]]:
        kept = original(self, chunks)
        kept.pop(max(kept), None)
        return kept

    monkeypatch.setattr(Differ, "_checked_chunks", lose_the_last_chunk)
    with pytest.raises(ScanIncomplete) as caught:
        run(topology, chunk_size=4)
    assert caught.value.seen < caught.value.expected
    with reader(topology.dbs.api) as conn:
        last = diff.last_result(conn)
    assert last is not None and last.outcome == "incomplete"
    assert last.detail is not None and "ScanIncomplete" in last.detail


def test_a_short_chunk_read_is_an_error(
    topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    seed_clean(topology, 10)
    inject_missing_in_api(topology, Injected())

    original = StreamReader._groups

    def lose_the_last_row(self: StreamReader, rows: Any) -> Any:
        rows = list(rows)
        rows = rows[:-1] if len(rows) > 1 else rows  # as if a driver had dropped one
        return original(self, rows)

    monkeypatch.setattr(StreamReader, "_groups", lose_the_last_row)
    with pytest.raises(ScanIncomplete) as caught:
        run(topology)
    assert caught.value.seen == caught.value.expected - 1


# --------------------------------------------------------------------------- live traffic


def test_a_write_in_flight_is_rechecked_not_reported(
    topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group levelled between the scans and the re-check is dropped, not reported."""
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    seed_clean(topology, 8)
    lagging = seed_cell_group(topology.cell_engine("cell1"), name="in flight")
    original = Differ._recheck

    def level_first(self: Differ, suspects: dict[str, tuple[str, ...]]) -> None:
        if lagging in suspects:
            seed_api_group(
                topology.dbs.api, uuid=lagging, name="in flight", policies=("anti-affinity",)
            )
        original(self, suspects)

    monkeypatch.setattr(Differ, "_recheck", level_first)
    report = run(topology)
    assert report.clean
    assert report.rows.rechecked == 1 and report.rows.cleared == 1


def test_a_journaled_key_waits_for_its_drain(topology: Topology) -> None:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    lagging = seed_cell_group(topology.cell_engine("cell1"))
    with topology.cell_engine("cell1").begin() as conn:
        CELL.journal_add(conn, lagging, 1, "API unreachable")
    slept: list[float] = []

    def drain_while_waiting(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 2:
            backfill(topology.dbs, sleep=no_sleep)

    report = run(topology, sleep=drain_while_waiting)
    assert report.clean and report.rows.cleared == 1
    assert slept[0] == pytest.approx(topology.settings.write_grace)


def test_a_stuck_journal_is_reported_as_pending(topology: Topology) -> None:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    lagging = seed_cell_group(topology.cell_engine("cell1"))
    with topology.cell_engine("cell1").begin() as conn:
        CELL.journal_add(conn, lagging, 1, "API unreachable")
    report = run(topology)
    (finding,) = report.findings
    assert finding.key == lagging and finding.journal_pending
    assert "journal entries pending (cell1)" in finding.detail


@pytest.mark.slow
@pytest.mark.parametrize("backend", [pytest.param("mysql", marks=pytest.mark.mysql)], indirect=True)
@pytest.mark.parametrize(
    "phase", [Phase.DUAL_WRITE_CELL_READS, Phase.DUAL_WRITE_API_READS], ids=lambda p: p.value
)
@pytest.mark.parametrize("reader", ["ranges", "stream"])
def test_writers_during_the_diff_leave_a_clean_system_clean(
    topology: Topology, monkeypatch: pytest.MonkeyPatch, phase: Phase, reader: str
) -> None:
    put_in_phase(topology.dbs, phase)
    seed_clean(topology, 200)
    ctx = RequestContext(topology.dbs, "p1", "u1")
    pool = [
        InstanceGroup(ctx, name=f"live{i}", project_id="p1", user_id="u1", policies=["affinity"])
        for i in range(20)
    ]
    for group in pool:
        group.create()
    uuids = [g.uuid for g in pool]
    stop = threading.Event()
    errors: list[str] = []
    ops = [0]

    def write(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            try:
                roll = rng.random()
                if roll < 0.1:
                    g = InstanceGroup(ctx, name="new", project_id="p1", user_id="u1", policies=[])
                    g.create()
                    uuids.append(g.uuid)
                elif roll < 0.5:
                    InstanceGroup.add_members(ctx, rng.choice(uuids), [new_uuid()])
                elif roll < 0.9:
                    g = InstanceGroup.get_by_uuid(ctx, rng.choice(uuids))
                    g.name = f"n{rng.randrange(1000)}"
                    g.save()
                else:
                    InstanceGroup.get_by_uuid(ctx, rng.choice(uuids)).destroy()
                ops[0] += 1
            except GroupNotFound:
                pass
            except Exception as err:  # any other failure is a defect
                errors.append(f"{type(err).__name__}: {err}")

    # Deterministic overlap: the cells' checksums (run beside the API database's) wait
    # until the API scan is done and the writers have completed more writes, so the cells
    # are scanned in a state the API scan did not see.
    scan = Differ._scan
    api_done: dict[int, threading.Event] = {}  # per run (Differ), set as its API scan ends

    def scan_then_wait(self: Differ, engine: Any, label: str, side: Any, database: str) -> Any:
        done = api_done.setdefault(id(self), threading.Event())
        if database == "api":
            try:
                return scan(self, engine, label, side, database)
            finally:
                done.set()
        assert done.wait(timeout=30), "the API scan did not end"
        target = ops[0] + 10
        deadline = time.monotonic() + 30
        while ops[0] < target and time.monotonic() < deadline and not errors:
            time.sleep(0.01)
        return scan(self, engine, label, side, database)

    monkeypatch.setattr(Differ, "_scan", scan_then_wait)
    # Both ways of reading the chunks that differ, whatever the share that differs.
    ranged = reader == "ranges"
    source = Differ._source

    def forced(self: Differ, *args: Any, ranges: bool) -> Any:
        return source(self, *args, ranges=ranged)

    monkeypatch.setattr(Differ, "_source", forced)
    threads = [threading.Thread(target=write, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    try:
        reports = [commands.diff_report(topology.dbs, chunk_size=16) for _ in range(3)]
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert errors == []
    for report in reports:
        assert report.clean, report.findings
        # The writers made chunks differ: the row compare and re-check kept it clean.
        assert report.rows.chunks_differing > 0
