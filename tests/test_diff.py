"""diff-report: every kind of divergence found exactly, short scans refused, live writes
tolerated, repairs replayed by backfill, results stored for the phase guards."""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa

from shadowdb import commands, diff, models
from shadowdb.backfill import backfill
from shadowdb.databases import reader
from shadowdb.diff import Copy, Differ, DiffKind, bucket_of, canonical_lines
from shadowdb.diff.checksums import digest, norm
from shadowdb.diff.readers import RangeReader, StreamReader
from shadowdb.errors import GroupNotFound, InvalidInput, ScanIncomplete, UnknownCell
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.phase import Phase
from shadowdb.queries import API, CELL
from tests.conftest import Topology
from tests.diff_support import (
    Injected,
    inject_everything,
    inject_field_mismatches,
    inject_member_mismatches,
    inject_missing_in_api,
    inject_missing_in_cells,
    inject_policy_mismatch,
    no_sleep,
    reported,
    seed_clean,
    seed_pair,
)
from tests.helpers import NOW, new_uuid, put_in_phase, seed_api_group, seed_cell_group


def run(topology: Topology, **kwargs: Any) -> diff.DiffReport:
    kwargs.setdefault("sleep", no_sleep)
    return commands.diff_report(topology.dbs, **kwargs)


# --------------------------------------------------------------------------- canonical form


def test_bucket_of_splits_the_key_space_in_order() -> None:
    assert bucket_of("00000000-0000-4000-8000-000000000000", 16) == 0
    assert bucket_of("0fffffff-0000-4000-8000-000000000000", 16) == 0
    assert bucket_of("10000000-0000-4000-8000-000000000000", 16) == 1
    assert bucket_of("ffffffff-ffff-4fff-bfff-ffffffffffff", 16) == 15
    assert bucket_of("ffffffff", 1) == 0
    # Anything else shares the extra chunk n: uppercase, short, not hex.
    assert bucket_of("ABCDEF01-0000-4000-8000-000000000000", 16) == 16
    assert bucket_of("abc", 16) == 16
    assert bucket_of("g0000000-0000", 16) == 16


def test_canonical_lines_are_unambiguous() -> None:
    one = Copy("u", "ab", "c", None, None, (), ())
    two = Copy("u", "a", "bc", None, None, (), ())
    empty = Copy("u", "", None, None, None, (), ())
    null = Copy("u", None, None, None, None, (), ())
    lines = {canonical_lines(c)[0] for c in (one, two, empty, null)}
    assert len(lines) == 4
    stamped = Copy("u", None, None, None, dt.datetime(999, 1, 2, 3, 4, 5), ("affinity",), ("m",))
    assert canonical_lines(stamped) == [
        "g1:u~~~19:0999-01-02 03:04:05",
        "p1:u8:affinity",
        "m1:u1:m",
    ]


def test_a_row_hashes_to_the_first_64_bits_of_its_md5_summed_modulo_2_64() -> None:
    line = "m1:u1:m"
    assert digest(line) == int(hashlib.md5(line.encode()).hexdigest()[:16], 16)
    assert 0 <= digest("g" + "x" * 10_000) < 2**64
    # Tallies are compared modulo 2**64, whatever sign or carry the servers' sums had.
    assert norm([1, 2, 3, 2**64 + 5]) == norm([1, 2, 3, 5]) == (1, 2, 3, 5)
    assert norm([1, 2, 3, -1]) == (1, 2, 3, 2**64 - 1)


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


def test_each_backend_checksums_exactly_like_the_python_reference(topology: Topology) -> None:
    """The SQL of each backend and the Python streaming code agree on tricky rows."""
    odd = [
        ("ABCDEF01-0000-4000-8000-000000000000", "Upper", dt.datetime(2026, 1, 2, 3, 4, 5)),
        ("short", "é ünïcode ✓", dt.datetime(2026, 1, 2, 3, 4, 5, 999999)),
        (new_uuid(), "  spaced  ", dt.datetime(1999, 12, 31, 23, 59, 59)),
        (new_uuid(), "a:b~c", None),
        (new_uuid(), "", NOW),
    ]
    for uuid, name, created in odd:
        seed_api_group(topology.dbs.api, uuid=uuid, name=name, members=[new_uuid()], created_at=NOW)
        with topology.dbs.api.begin() as conn:
            conn.execute(
                models.api_groups.update()
                .where(models.api_groups.c.uuid == uuid)
                .values(created_at=created, user_id=None)
            )
    differ = Differ(topology.dbs, chunk_size=2)
    differ._size(len(odd))
    scan = differ._scan(topology.dbs.api, "api", API, "api")
    # The reference: every row through the Python code, however the backend computed it.
    expected: dict[int, list[int]] = {}
    with reader(topology.dbs.api) as conn:
        copies = diff.read_copies(conn, API, [u for u, _, _ in odd])
    for uuid, copy in copies.items():
        tally = expected.setdefault(bucket_of(uuid, differ.n), [0, 0, 0, 0])
        tally[0] += 1
        tally[1] += len(copy.policies)
        tally[2] += len(copy.members)
        tally[3] += sum(digest(line) for line in canonical_lines(copy))
    got = {c: norm(t) for c, t in scan.chunks.items()}
    assert got == {c: norm(t) for c, t in expected.items()}
    assert scan.hashed == len(odd) * 3


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


# --------------------------------------------------------------------------- repair


REPAIRABLE = (
    "missing-in-api",
    "missing-in-cells",
    "field-mismatch",
    "policy-mismatch",
    "member-mismatch",
)


@pytest.mark.parametrize(
    ("phase", "duplicate_in"),
    [(Phase.DUAL_WRITE_CELL_READS, "api"), (Phase.DUAL_WRITE_API_READS, "cell")],
    ids=["cell-reads", "api-reads"],
)
def test_repair_then_backfill_then_clean(
    topology: Topology, phase: Phase, duplicate_in: str
) -> None:
    put_in_phase(topology.dbs, phase)
    seed_clean(topology, 12)
    found = inject_everything(topology, duplicate_in=duplicate_in)
    report = run(topology, repair=True, chunk_size=4)
    assert reported(report) == found.expected  # a repair run still reports (and exits 1)
    for finding in report.findings:
        if finding.kind.value in REPAIRABLE:
            assert finding.repair is not None and finding.repair.startswith("enqueued"), finding
            side = "API journal" if finding.authoritative == "api" else "journal of cell"
            assert side in finding.repair
        else:
            assert finding.repair == "not enqueued: no authoritative copy"
    unrepaired = {(k, kind) for k, kind in found.expected if kind not in REPAIRABLE}
    assert report.repaired == len({k for k, kind in found.expected if kind in REPAIRABLE})
    result = backfill(topology.dbs, sleep=no_sleep)
    assert result.errors == () and result.conflicts == ()
    after = run(topology, chunk_size=4)
    assert reported(after) == unrepaired


@pytest.mark.parametrize("phase", [Phase.DUAL_WRITE_CELL_READS, Phase.DUAL_WRITE_API_READS])
def test_duplicate_rows_never_block_and_a_repair_levels_the_sets(
    topology: Topology, phase: Phase
) -> None:
    """Legacy duplicate rows on the authoritative side: noted, repairable, then clean."""
    put_in_phase(topology.dbs, phase)
    found = Injected()
    inject_member_mismatches(topology, found, duplicate_in="cell")
    report = run(topology, repair=True)
    assert reported(report) == found.expected
    assert all(f.repair is not None and f.repair.startswith("enqueued") for f in report.findings)
    assert report.repaired == 2 and report.not_repaired == 0
    result = backfill(topology.dbs, sleep=no_sleep)
    assert result.errors == () and result.conflicts == ()
    after = run(topology)
    assert after.clean, after.findings
    # The cell still holds its legacy duplicate rows (nothing rewrites them there in a
    # cell-trusting phase; in dual-write-api-reads the replay wrote the cell copy as the
    # set, so only the group that needed no repair keeps them).
    assert after.rows.legacy_duplicates == (2 if phase is Phase.DUAL_WRITE_CELL_READS else 1)


def test_repair_in_api_reads_enqueues_in_the_api_journal(topology: Topology) -> None:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_API_READS)
    found = Injected()
    inject_policy_mismatch(topology, found)
    inject_missing_in_cells(topology, found)
    run(topology, repair=True)
    with reader(topology.dbs.api) as conn:
        queued = {e.group_uuid for e in API.journal_pending(conn)}
    assert queued == {k for k, _ in found.expected}
    with reader(topology.cell_engine("cell1").connect().engine) as conn:
        assert CELL.journal_pending(conn) == []


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

    # Deterministic overlap: after the API database's checksums, wait for the writers to
    # complete more writes, so the cells are scanned in a state the API scan did not see.
    scan = Differ._scan

    def scan_then_wait(self: Differ, engine: Any, label: str, side: Any, database: str) -> Any:
        result = scan(self, engine, label, side, database)
        if database == "api":
            target = ops[0] + 10
            deadline = time.monotonic() + 30
            while ops[0] < target and time.monotonic() < deadline and not errors:
                time.sleep(0.01)
        return result

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


# --------------------------------------------------------------------------- stored results


def test_results_are_stored(topology: Topology) -> None:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    seed_pair(topology)
    clean = run(topology)
    with reader(topology.dbs.api) as conn:
        first = diff.last_result(conn)
    assert first is not None
    assert (first.outcome, first.scope, first.phase, first.differences) == (
        "clean",
        "all",
        "dual-write-cell-reads",
        0,
    )
    assert first.started_at == clean.started_at and first.epoch == clean.epoch
    assert first.rows_api == clean.rows.api_hashed and first.rows_cells > 0
    found = Injected()
    inject_policy_mismatch(topology, found)
    run(topology, cell="cell1")
    with reader(topology.dbs.api) as conn:
        second = diff.last_result(conn)
    assert second is not None and second.id > first.id
    assert (second.outcome, second.scope, second.counts) == (
        "differences",
        "cell1",
        {"policy-mismatch": 1},
    )
    with reader(topology.dbs.api) as conn:
        assert (
            conn.execute(
                sa.select(sa.func.count()).select_from(models.api_diff_results)
            ).scalar_one()
            == 2
        )


def test_a_superseding_record_is_known_by_its_reason(topology: Topology) -> None:
    put_in_phase(topology.dbs, Phase.DUAL_WRITE_CELL_READS)
    seed_pair(topology)
    run(topology)
    with reader(topology.dbs.api) as conn:
        ran = diff.last_result(conn)
    assert ran is not None and not ran.superseded_by("cells rebuilt")
    state = topology.dbs.phases.fresh()
    with topology.dbs.api.begin() as conn:
        diff.record_superseded(conn, state, "tester", "cells rebuilt")
    with reader(topology.dbs.api) as conn:
        last = diff.last_result(conn)
    assert last is not None and last.id > ran.id
    assert (last.outcome, last.scope, last.cells, last.epoch) == (
        "incomplete",
        "all",
        (),
        state.epoch,
    )
    assert last.superseded_by("cells rebuilt") and not last.superseded_by("something else")
