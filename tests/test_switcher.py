"""The guarded phase switcher: the table, every guard, force, dry runs, the epoch CAS."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import logging
import re
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import structlog
import structlog.testing

from shadowdb import commands, diff, guards, journals, models, signals
from shadowdb.backfill import backfill, backlog
from shadowdb.databases import Databases, connect, reader
from shadowdb.errors import DatabaseUnreachable, GuardRefused, ScanIncomplete, UnknownPhase
from shadowdb.guards import GUARDS, TRANSITIONS
from shadowdb.state import Phase, read_cell_state, read_state, utcnow
from shadowdb.switcher import StepKind, Switcher
from tests.conftest import Topology
from tests.support.helpers import put_in_phase

C, CR, AR, A = (
    Phase.CELL_ONLY,
    Phase.DUAL_WRITE_CELL_READS,
    Phase.DUAL_WRITE_API_READS,
    Phase.API_ONLY,
)

ALLOWED = {(C, CR), (CR, AR), (AR, A), (CR, C), (AR, CR), (A, AR)}


def no_sleep(_seconds: float) -> None:
    """Skip the drain wait in tests that do not observe it."""


# --------------------------------------------------------------------------- helpers


def new_uuid() -> str:
    return str(uuidlib.uuid4())


def add_cell_group(engine: sa.Engine, group_uuid: str, *, deleted: bool = False) -> None:
    """Insert a legacy cell group, live or soft-deleted (``deleted`` = its own id)."""
    with engine.begin() as conn:
        pk = conn.execute(
            models.cell_groups.insert().values(
                uuid=group_uuid, name="g", project_id="p", user_id="u", deleted=0
            )
        ).inserted_primary_key[0]
        if deleted:
            conn.execute(
                models.cell_groups.update()
                .where(models.cell_groups.c.id == pk)
                .values(deleted=pk, deleted_at=sa.func.now())
            )


def add_api_group(topology: Topology, group_uuid: str) -> None:
    with topology.dbs.api.begin() as conn:
        conn.execute(
            models.api_groups.insert().values(
                uuid=group_uuid, name="g", project_id="p", user_id="u"
            )
        )


def add_journal(topology: Topology, engine: sa.Engine, table: sa.Table, count: int) -> None:
    """Journal ``count`` groups whose copies differ (an entry for level copies is moot).

    An API entry's group has an API copy and no cell copy; a cell entry's group has a
    cell copy (in ``engine``) and an API copy of another name.
    """
    for _ in range(count):
        group = new_uuid()
        with topology.dbs.api.begin() as conn:
            conn.execute(
                models.api_groups.insert().values(
                    uuid=group, name="api-side", project_id="p", user_id="u"
                )
            )
        if table is models.cell_journal:
            with engine.begin() as conn:
                conn.execute(
                    models.cell_groups.insert().values(
                        uuid=group, name="cell-side", project_id="p", user_id="u", deleted=0
                    )
                )
        with engine.begin() as conn:
            conn.execute(table.insert().values(group_uuid=group, created_at=sa.func.now(), epoch=1))


def add_unreachable_cell(topology: Topology, tmp_path: Path) -> None:
    """Register ``cell3`` at an address where no database answers."""
    url = {
        "sqlite": f"sqlite+pysqlite:///{tmp_path}/no-such-folder/cell3.sqlite",
        "mysql": "mysql+pymysql://root@127.0.0.1:1/nowhere",
        "postgresql": "postgresql+psycopg://postgres@127.0.0.1:1/nowhere",
    }[topology.backend]
    with topology.dbs.api.begin() as conn:
        conn.execute(
            models.api_cell_mappings.insert().values(
                uuid=new_uuid(), name="cell3", database_connection=url, transport_url="none:///"
            )
        )


def snapshot(dbs: Databases) -> tuple[Any, ...]:
    """Return everything a phase change writes, to compare before and after."""
    with reader(dbs.api) as conn:
        state = read_state(conn)
    return (state, commands.phase_history(dbs))


#: The moves the clean-recent-diff guard gates.
DIFF_GATED = {(CR, AR), (AR, A), (A, AR)}


def go(dbs: Databases, *phases: Phase) -> None:
    """Walk through ``phases`` with no drain wait, diffing as an operator must.

    A diff-report runs before each move that needs one and once more at the end, so that
    a test of another guard finds a clean, recent diff of the current phase on record.
    """
    for phase in phases:
        if (dbs.phases.fresh().phase, phase) in DIFF_GATED:
            commands.diff_report(dbs, sleep=no_sleep)
        Switcher(dbs).run(phase)
    commands.diff_report(dbs, sleep=no_sleep)


def refusal(dbs: Databases, target: Phase, **kwargs: Any) -> tuple[str, ...]:
    """Return the reasons a switch to ``target`` is refused with; nothing may change."""
    before = snapshot(dbs)
    with pytest.raises(GuardRefused) as caught:
        Switcher(dbs).run(target, **kwargs)
    assert caught.value.target == target.value
    assert snapshot(dbs) == before
    return caught.value.reasons


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    """Capture structlog events at every level, restoring the configuration after."""
    old = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with structlog.testing.capture_logs() as captured:
            yield captured
    finally:
        structlog.configure(**old)


# --------------------------------------------------------------------------- the table


def test_transition_table_is_one_step_forward_or_back() -> None:
    assert set(TRANSITIONS) == ALLOWED
    assert len(TRANSITIONS) == len(ALLOWED)
    for frm, to in TRANSITIONS:
        assert abs(frm.index - to.index) == 1


def test_every_allowed_transition_has_an_explicit_guard_entry() -> None:
    assert set(GUARDS) == set(TRANSITIONS)
    assert GUARDS[(C, CR)] == ()
    assert GUARDS[(CR, C)] == ()
    names = {key: tuple(g.name for g in guards) for key, guards in GUARDS.items()}
    assert names[(CR, AR)] == (
        "unmigrated-cell-groups",
        "cell-journals-empty",
        "clean-recent-diff",
    )
    assert names[(AR, A)] == (
        "api-journal-empty",
        "cell-journals-empty",
        "unmigrated-cell-groups",
        "clean-recent-diff",
    )
    assert names[(AR, CR)] == ("api-journal-empty",)
    assert names[(A, AR)] == ("cells-not-retired", "cell-journals-empty", "clean-recent-diff")


@pytest.mark.parametrize(("frm", "to"), list(itertools.product(Phase, Phase)))
def test_transition_refusal_matches_the_table(frm: Phase, to: Phase) -> None:
    reason = guards.transition_refusal(frm, to)
    if (frm, to) in ALLOWED:
        assert reason is None
    elif frm is to:
        assert reason == f"already in {frm.value}"
    else:
        assert reason is not None
        assert f"from {frm.value} to {to.value}" in reason
        for nxt in guards.allowed_next(frm):
            assert nxt.value in reason


def test_allowed_next() -> None:
    assert guards.allowed_next(C) == (CR,)
    assert guards.allowed_next(CR) == (C, AR)
    assert guards.allowed_next(AR) == (CR, A)
    assert guards.allowed_next(A) == (AR,)


# --------------------------------------------------------------------------- transitions


def test_every_allowed_transition_forward_and_back(topology: Topology) -> None:
    dbs = topology.dbs
    # A migrated group, live in a cell and in the API: every guard runs and passes.
    group = new_uuid()
    add_cell_group(topology.cell_engine("cell2"), group)
    add_api_group(topology, group)
    walk = [CR, AR, A, AR, CR, C]
    previous = C
    for epoch, target in enumerate(walk, start=1):
        if (previous, target) in DIFF_GATED:
            assert commands.diff_report(dbs, sleep=no_sleep).clean
        change = commands.set_phase(dbs, target.value, reason=f"step {epoch}")
        assert (change.from_phase, change.to_phase) == (previous.value, target.value)
        assert change.epoch == epoch
        assert not change.forced and change.overridden == () and not change.dry_run
        assert change.changed_at is not None
        info = commands.show_phase(dbs)
        assert (info.phase, info.epoch) == (target.value, epoch)
        assert info.allowed_next == tuple(p.value for p in guards.allowed_next(target))
        previous = target
    history = commands.phase_history(dbs)
    assert [h.epoch for h in history] == list(range(7))
    assert [(h.from_phase, h.to_phase) for h in history] == [
        (None, "cell-only"),
        ("cell-only", "dual-write-cell-reads"),
        ("dual-write-cell-reads", "dual-write-api-reads"),
        ("dual-write-api-reads", "api-only"),
        ("api-only", "dual-write-api-reads"),
        ("dual-write-api-reads", "dual-write-cell-reads"),
        ("dual-write-cell-reads", "cell-only"),
    ]
    assert [h.reason for h in history[1:]] == [f"step {n}" for n in range(1, 7)]
    assert all(h.actor == "tests" and not h.forced and h.overridden == () for h in history[1:])


def test_same_phase_is_refused(topology: Topology) -> None:
    assert refusal(topology.dbs, C) == ("already in cell-only",)
    assert refusal(topology.dbs, C, force=True) == ("already in cell-only",)


@pytest.mark.parametrize("force", [False, True], ids=["plain", "forced"])
def test_skipping_a_phase_is_refused_even_with_force(topology: Topology, force: bool) -> None:
    (reason,) = refusal(topology.dbs, A, force=force)
    assert "from cell-only to api-only" in reason
    assert "allowed next: dual-write-cell-reads" in reason


def test_unknown_phase_is_refused_before_anything_is_read(topology: Topology) -> None:
    before = snapshot(topology.dbs)
    with pytest.raises(UnknownPhase) as caught:
        commands.set_phase(topology.dbs, "api-first")
    assert caught.value.phase == "api-first"
    assert snapshot(topology.dbs) == before


# --------------------------------------------------------------------------- guards


def test_guard_into_api_reads_lists_unmigrated_groups_and_cell_journals(
    topology: Topology,
) -> None:
    go(topology.dbs, CR)
    cell1, cell2 = topology.cell_engine("cell1"), topology.cell_engine("cell2")
    add_cell_group(cell1, new_uuid())
    add_cell_group(cell1, new_uuid())
    add_cell_group(cell1, new_uuid(), deleted=True)  # deleted: nothing to migrate
    migrated = new_uuid()
    add_cell_group(cell1, migrated)
    add_api_group(topology, migrated)
    add_cell_group(cell2, new_uuid())
    add_journal(topology, cell1, models.cell_journal, 1)
    add_journal(topology, cell2, models.cell_journal, 2)
    add_journal(topology, topology.dbs.api, models.api_journal, 1)  # not this guard's business
    assert refusal(topology.dbs, AR) == (
        "3 live cell groups not in the API database (cell1: 2, cell2: 1); run backfill",
        "journal of cell cell1 holds 1 entry (API copies lag); run backfill",
        "journal of cell cell2 holds 2 entries (API copies lag); run backfill",
    )


def test_guard_counts_unmigrated_groups_across_batches(
    topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backlog, "PAGE", 4)
    go(topology.dbs, CR)
    cell1 = topology.cell_engine("cell1")
    for n in range(19):
        group = new_uuid()
        add_cell_group(cell1, group)
        if n % 5:
            add_api_group(topology, group)
    assert refusal(topology.dbs, AR) == (
        "4 live cell groups not in the API database (cell1: 4); run backfill",
    )


def test_a_write_between_its_two_commits_does_not_refuse_the_move_to_api_reads(
    topology: Topology,
) -> None:
    """A dual-write-cell-reads create whose cell half committed (with its outbox entry) and
    whose API half has not run yet is in flight, not unmigrated: the move goes through and
    the exact journal check under the lock brings its API copy over."""
    go(topology.dbs, CR)
    backfill(topology.dbs)
    commands.diff_report(topology.dbs, sleep=no_sleep)
    group = new_uuid()
    cell1 = topology.cell_engine("cell1")
    add_cell_group(cell1, group)
    epoch = topology.dbs.phases.fresh().epoch
    with cell1.begin() as conn:
        conn.execute(
            models.cell_journal.insert().values(
                group_uuid=group, created_at=sa.func.now(), epoch=epoch, error=journals.OUTBOX
            )
        )
    assert backlog.uncopied(topology.dbs, topology.dbs.cell("cell1")) == 0
    Switcher(topology.dbs).run(AR)
    assert topology.dbs.phases.fresh().phase is AR
    with reader(topology.dbs.api) as conn:
        assert (
            conn.execute(
                sa.select(models.api_groups.c.name).where(models.api_groups.c.uuid == group)
            ).scalar_one()
            == "g"
        )
    with reader(cell1) as conn:
        assert (
            conn.execute(sa.select(sa.func.count()).select_from(models.cell_journal)).scalar() == 0
        )


def test_guard_into_api_only_lists_journals_and_unmigrated_groups(topology: Topology) -> None:
    go(topology.dbs, CR, AR)
    add_journal(topology, topology.dbs.api, models.api_journal, 1)
    add_journal(topology, topology.cell_engine("cell1"), models.cell_journal, 1)
    add_cell_group(topology.cell_engine("cell2"), new_uuid())
    assert refusal(topology.dbs, A) == (
        "API journal holds 1 entry (cell copies lag); run backfill",
        "journal of cell cell1 holds 1 entry (API copies lag); run backfill",
        "1 live cell group not in the API database (cell2: 1); run backfill",
    )


def test_guard_back_to_cell_reads_needs_the_api_journal_drained(topology: Topology) -> None:
    go(topology.dbs, CR, AR)
    add_journal(topology, topology.dbs.api, models.api_journal, 2)
    add_journal(topology, topology.cell_engine("cell1"), models.cell_journal, 1)  # not checked here
    assert refusal(topology.dbs, CR) == (
        "API journal holds 2 entries (cell copies lag); run backfill",
    )


def test_guard_back_from_api_only_needs_every_difference_journaled(topology: Topology) -> None:
    """Leaving api-only: the cells may lag, but only behind journaled api-only writes."""
    go(topology.dbs, CR, AR, A)
    synced, unjournaled = new_uuid(), new_uuid()
    for group in (synced, unjournaled):
        add_api_group(topology, group)
    add_cell_group(topology.cell_engine("cell2"), synced)
    add_journal(topology, topology.dbs.api, models.api_journal, 1)  # explained: passes
    assert commands.diff_report(topology.dbs, sleep=no_sleep).total == 2
    (reason,) = refusal(topology.dbs, AR)
    assert "found 2 differences (missing-in-cells: 2)" in reason
    with topology.dbs.api.begin() as conn:
        conn.execute(
            models.api_journal.insert().values(
                group_uuid=unjournaled, created_at=sa.func.now(), epoch=3
            )
        )
    report = commands.diff_report(topology.dbs, sleep=no_sleep)
    assert report.total == 2 and all(f.journal_pending for f in report.findings)
    Switcher(topology.dbs).run(AR)
    assert commands.show_phase(topology.dbs).phase == AR.value


def test_guard_back_from_api_only_refuses_retired_cells(topology: Topology) -> None:
    go(topology.dbs, CR, AR, A)
    with topology.dbs.api.begin() as conn:
        conn.execute(models.api_state.update().values(cells_retired=True))
    assert refusal(topology.dbs, AR)[0].startswith("cleanup retired the cell copies")


def test_cell_only_and_cell_reads_flip_without_guards(topology: Topology) -> None:
    # Data that would stop every guarded move does not stop these two.
    add_cell_group(topology.cell_engine("cell1"), new_uuid())
    add_journal(topology, topology.cell_engine("cell1"), models.cell_journal, 1)
    add_journal(topology, topology.dbs.api, models.api_journal, 1)
    go(topology.dbs, CR, C)
    assert commands.show_phase(topology.dbs).epoch == 2


def test_unreachable_cell_fails_every_guard_that_reads_cells(
    topology: Topology, tmp_path: Path
) -> None:
    go(topology.dbs, CR)
    add_unreachable_cell(topology, tmp_path)
    reasons = refusal(topology.dbs, AR)
    assert len(reasons) == 3
    assert all(r.startswith("cell cell3 unreachable, not checked: ") for r in reasons[:2])
    assert "did not compare cell cell3" in reasons[2]


def test_unreachable_cell_refuses_even_an_unguarded_change(
    topology: Topology, tmp_path: Path
) -> None:
    """The fence needs every cell: a change no guard gates still cannot skip one."""
    add_unreachable_cell(topology, tmp_path)
    before = snapshot(topology.dbs)
    with pytest.raises(DatabaseUnreachable):
        Switcher(topology.dbs).run(CR)
    assert snapshot(topology.dbs) == before
    assert commands.show_phase(topology.dbs).phase == C.value


# --------------------------------------------------------------------------- the diff guard


def last_diff_started(dbs: Databases) -> str:
    with reader(dbs.api) as conn:
        last = diff.last_result(conn)
    assert last is not None
    return f"{last.started_at:%Y-%m-%d %H:%M:%S}Z"


def test_every_diff_gated_move_runs_the_journal_guards_of_its_source_phase() -> None:
    # CleanRecentDiff leaves writes since the diff to these (see its docstring).
    names = {key: {g.name for g in guards} for key, guards in GUARDS.items()}
    gated = {key for key, guards in names.items() if "clean-recent-diff" in guards}
    assert gated == DIFF_GATED
    assert "cell-journals-empty" in names[(CR, AR)]
    assert {"cell-journals-empty", "api-journal-empty"} <= names[(AR, A)]
    # Leaving api-only, API entries are expected (one per group api-only wrote): the
    # catch-up replays them; the diff must find nothing they do not explain.
    assert "cell-journals-empty" in names[(A, AR)]


def test_diff_guard_needs_a_diff_on_record(topology: Topology) -> None:
    Switcher(topology.dbs).run(CR)
    assert refusal(topology.dbs, AR) == ("no diff-report on record; run `shadowdb diff-report`",)


def test_diff_guard_refuses_differences_until_repaired(topology: Topology) -> None:
    dbs = topology.dbs
    go(dbs, CR)
    group = new_uuid()
    add_cell_group(topology.cell_engine("cell1"), group)
    add_api_group(topology, group)
    with dbs.api.begin() as conn:
        conn.execute(
            models.api_groups.update().where(models.api_groups.c.uuid == group).values(name="x")
        )
    assert not commands.diff_report(dbs, sleep=no_sleep).clean
    assert refusal(dbs, AR) == (
        f"the last diff-report (started {last_diff_started(dbs)}) found 1 difference "
        "(field-mismatch: 1); repair them (diff-report --repair, then backfill) and run "
        "diff-report again",
    )
    assert commands.diff_report(dbs, repair=True, sleep=no_sleep).repaired == 1
    assert backfill(dbs, sleep=no_sleep).errors == ()
    assert commands.diff_report(dbs, sleep=no_sleep).clean
    Switcher(dbs).run(AR)
    assert commands.show_phase(dbs).phase == AR.value


def test_diff_guard_refuses_an_incomplete_diff(
    topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    go(topology.dbs, CR)
    monkeypatch.setattr(diff.Differ, "_checked_chunks", lambda self, chunks: {})
    add_cell_group(topology.cell_engine("cell1"), new_uuid())
    with pytest.raises(ScanIncomplete):
        commands.diff_report(topology.dbs, sleep=no_sleep)
    assert refusal(topology.dbs, AR)[-1] == (
        f"the last diff-report (started {last_diff_started(topology.dbs)}) did not complete; "
        "run `shadowdb diff-report`"
    )


def test_diff_guard_refuses_a_diff_of_one_cell(topology: Topology) -> None:
    go(topology.dbs, CR)
    assert commands.diff_report(topology.dbs, cell="cell2", sleep=no_sleep).clean
    assert refusal(topology.dbs, AR) == (
        f"the last diff-report (started {last_diff_started(topology.dbs)}) compared cell cell2 "
        "only; run `shadowdb diff-report` for every cell",
    )


def test_diff_guard_refuses_an_old_diff(topology: Topology) -> None:
    go(topology.dbs, CR, AR)
    t = models.api_diff_results
    with topology.dbs.api.begin() as conn:
        conn.execute(t.update().values(started_at=utcnow() - dt.timedelta(minutes=5, seconds=1)))
    # The default diff_max_age (an hour) admits it; a stricter setting does not.
    Switcher(topology.dbs).plan(A)
    strict = dataclasses.replace(topology.settings, diff_max_age=300)
    with connect(topology.api_url_text, settings=strict) as dbs:
        (reason,) = refusal(dbs, A)
        # The age is to the second, and a second may tick during the test.
        assert re.fullmatch(
            re.escape(f"the last diff-report (started {last_diff_started(dbs)}) is ")
            + r"5m 0\ds"
            + re.escape(" old, more than diff_max_age (5m 00s); run `shadowdb diff-report`"),
            reason,
        ), reason
    with topology.dbs.api.begin() as conn:
        conn.execute(t.update().values(started_at=utcnow() - dt.timedelta(hours=2)))
    assert refusal(topology.dbs, A)[0].endswith(
        "is 2h 00m old, more than diff_max_age (60m 00s); run `shadowdb diff-report`"
    )


def test_diff_guard_refuses_a_diff_from_another_epoch(topology: Topology) -> None:
    dbs = topology.dbs
    go(dbs, CR)  # a clean diff at epoch 1
    # Back to cell-only and forward again: cell-only writers may have run in between.
    Switcher(dbs).run(C)
    Switcher(dbs).run(CR)
    assert refusal(dbs, AR) == (
        "the phase changed since the last diff-report (it ran in dual-write-cell-reads at "
        "epoch 1, now epoch 3); run `shadowdb diff-report`",
    )


def test_a_failed_write_since_the_diff_is_refused_by_its_journal(topology: Topology) -> None:
    dbs = topology.dbs
    group = new_uuid()
    add_cell_group(topology.cell_engine("cell1"), group)
    add_api_group(topology, group)
    go(dbs, CR)  # clean
    # Since the diff: a write whose API half failed, journaled with its cell half.
    with topology.cell_engine("cell1").begin() as conn:
        conn.execute(
            models.cell_groups.update()
            .where(models.cell_groups.c.uuid == group)
            .values(name="renamed")
        )
        conn.execute(
            models.cell_journal.insert().values(
                group_uuid=group, created_at=sa.func.now(), epoch=1, error="API unreachable"
            )
        )
    assert refusal(dbs, AR) == (
        "journal of cell cell1 holds 1 entry (API copies lag); run backfill",
    )
    # Replayed: the copies are level again, and the clean diff still stands.
    assert backfill(dbs, sleep=no_sleep).errors == ()
    Switcher(dbs).run(AR)
    assert commands.diff_report(dbs, sleep=no_sleep).clean


# --------------------------------------------------------------------------- force


def test_force_overrides_failed_guards_and_records_them(topology: Topology) -> None:
    go(topology.dbs, CR)
    add_cell_group(topology.cell_engine("cell1"), new_uuid())
    add_journal(topology, topology.cell_engine("cell2"), models.cell_journal, 1)
    expected = (
        "1 live cell group not in the API database (cell1: 1); run backfill",
        "journal of cell cell2 holds 1 entry (API copies lag); run backfill",
    )
    assert refusal(topology.dbs, AR) == expected
    change = commands.set_phase(topology.dbs, AR.value, reason="incident 42", force=True)
    assert change.forced and change.overridden == expected
    assert (change.to_phase, change.epoch) == (AR.value, 2)
    last = commands.phase_history(topology.dbs)[-1]
    assert (last.epoch, last.from_phase, last.to_phase) == (2, CR.value, AR.value)
    assert last.forced and last.reason == "incident 42" and last.actor == "tests"
    assert last.overridden == expected
    with reader(topology.dbs.api) as conn:
        stored = conn.scalar(
            sa.select(models.api_phase_history.c.overridden).where(
                models.api_phase_history.c.epoch == 2
            )
        )
    assert stored == "\n".join(expected)


def test_force_with_passing_guards_records_forced_and_nothing_overridden(
    topology: Topology,
) -> None:
    commands.set_phase(topology.dbs, CR.value, force=True)
    last = commands.phase_history(topology.dbs)[-1]
    assert last.forced and last.overridden == () and last.reason is None
    with reader(topology.dbs.api) as conn:
        assert (
            conn.scalar(
                sa.select(models.api_phase_history.c.overridden).where(
                    models.api_phase_history.c.epoch == 1
                )
            )
            is None
        )


# --------------------------------------------------------------------------- dry run


def test_dry_run_lists_the_steps_in_order_and_changes_nothing(topology: Topology) -> None:
    fired: list[dict[str, Any]] = []
    before = snapshot(topology.dbs)

    def receiver(_sender: object, **kwargs: Any) -> None:
        fired.append(kwargs)

    with signals.phase_changed.connected_to(receiver):
        change = commands.set_phase(topology.dbs, CR.value, reason="try", dry_run=True)
        lines = Switcher(topology.dbs).dry_run(CR, reason="try")
    assert snapshot(topology.dbs) == before
    assert fired == []
    assert change.dry_run and change.changed_at is None and change.epoch == 1
    assert list(change.steps) == lines
    assert [line.split(":", 1)[0] for line in lines] == [
        k.value for k in StepKind if k is not StepKind.CATCH_UP
    ]
    assert lines == [
        "preconditions: cell-only -> dual-write-cell-reads allowed at epoch 0; guards passed: none",
        "record: lock shadowdb_state in 2 cell(s), then in the API database; require epoch 0 "
        "everywhere, the same cells and the exact guards (none); set phase "
        "dual-write-cell-reads at epoch 1 and append history (actor tests, reason try, "
        "forced no) in the API database; prepare every cell for epoch 1 and commit it, then "
        "commit the API database (the commit point); then every cell takes the new phase",
        "announce: drop this process's cached phase, log phase_changed, send phase-changed",
    ]


def test_dry_run_refuses_what_a_run_refuses_and_shows_what_force_overrides(
    topology: Topology,
) -> None:
    go(topology.dbs, CR)
    add_cell_group(topology.cell_engine("cell1"), new_uuid())
    before = snapshot(topology.dbs)
    sw = Switcher(topology.dbs)
    with pytest.raises(GuardRefused):
        sw.dry_run(AR)
    lines = sw.dry_run(AR, force=True)
    assert lines[0] == (
        "preconditions: dual-write-cell-reads -> dual-write-api-reads allowed at epoch 1; "
        "guards (unmigrated-cell-groups, cell-journals-empty, clean-recent-diff) failed, "
        "overridden by force: "
        "1 live cell group not in the API database (cell1: 1); run backfill"
    )
    assert "forced yes" in lines[1]
    assert snapshot(topology.dbs) == before


# --------------------------------------------------------------------------- the protocol


def test_epoch_cas_refuses_the_loser_of_a_race(topology: Topology) -> None:
    go(topology.dbs, CR)
    with connect(topology.api_url_text, settings=topology.settings) as other:
        first = Switcher(topology.dbs)
        second = Switcher(other)
        # Both evaluate their guards at epoch 1 (in dual-write-cell-reads)...
        plan = first.plan(AR, reason="first")
        # ...the second records first, going back to cell-only...
        second.run(C, reason="second")
        # ...so the first must not record: from cell-only, api-reads would skip a phase.
        with pytest.raises(GuardRefused) as caught:
            first.execute(plan)
    assert caught.value.reasons == (
        "phase changed while the guards ran: expected dual-write-cell-reads at epoch 1, "
        "found cell-only at epoch 2; run again to re-check",
    )
    info = commands.show_phase(topology.dbs)
    assert (info.phase, info.epoch) == (C.value, 2)
    history = commands.phase_history(topology.dbs)
    assert [(h.epoch, h.to_phase, h.reason) for h in history[1:]] == [
        (1, CR.value, None),
        (2, C.value, "second"),
    ]


def test_epoch_cas_refuses_the_same_move_made_twice(topology: Topology) -> None:
    with connect(topology.api_url_text, settings=topology.settings) as other:
        plan_a = Switcher(topology.dbs).plan(CR, reason="a")
        plan_b = Switcher(other).plan(CR, reason="b")
        Switcher(other).execute(plan_b)
        with pytest.raises(GuardRefused, match="found dual-write-cell-reads at epoch 1"):
            Switcher(topology.dbs).execute(plan_a)
    assert [h.reason for h in commands.phase_history(topology.dbs)] == [
        "initial state (db sync)",
        "b",
    ]


def test_the_change_is_in_every_database_when_the_signal_fires(topology: Topology) -> None:
    seen: list[tuple[str, list[int]]] = []

    def receiver(_sender: object, **kwargs: Any) -> None:
        with reader(topology.dbs.api) as conn:
            api = read_state(conn)
        cells = []
        for cell in topology.dbs.cells:
            with reader(cell.engine) as conn:
                found = read_cell_state(conn)
                assert found is not None
                cells.append(found.epoch)
        seen.append((api.phase.value, cells))

    with signals.phase_changed.connected_to(receiver, sender=topology.dbs):
        Switcher(topology.dbs).run(CR)
    assert seen == [(CR.value, [1, 1])]


def test_no_signal_on_refusal(topology: Topology) -> None:
    fired: list[object] = []
    with (
        signals.phase_changed.connected_to(lambda s, **kw: fired.append(kw)),
        pytest.raises(GuardRefused),
    ):
        Switcher(topology.dbs).run(A)
    assert fired == []


def test_phase_changed_signal_carries_the_documented_kwargs(
    topology: Topology, logs: list[dict[str, Any]]
) -> None:
    go(topology.dbs, CR)
    add_cell_group(topology.cell_engine("cell1"), new_uuid())
    calls: list[tuple[object, dict[str, Any]]] = []

    def receiver(sender: object, **kwargs: Any) -> None:
        calls.append((sender, kwargs))

    with signals.phase_changed.connected_to(receiver, sender=topology.dbs):
        Switcher(topology.dbs).run(AR, force=True, reason="why not")
    assert calls == [
        (
            topology.dbs,
            {
                "from_phase": "dual-write-cell-reads",
                "to_phase": "dual-write-api-reads",
                "epoch": 2,
                "forced": True,
                "reason": "why not",
                "actor": "tests",
            },
        )
    ]
    (event,) = [e for e in logs if e["event"] == "phase_changed" and e["epoch"] == 2]
    assert event["from_phase"] == "dual-write-cell-reads"
    assert event["to_phase"] == "dual-write-api-reads"
    assert event["forced"] is True and event["actor"] == "tests"
    assert event["overridden"] == [
        "1 live cell group not in the API database (cell1: 1); run backfill"
    ]


def test_refusal_is_logged_quietly(topology: Topology, logs: list[dict[str, Any]]) -> None:
    with pytest.raises(GuardRefused):
        Switcher(topology.dbs).run(A)
    (event,) = [e for e in logs if e["event"] == "phase_change_refused"]
    assert event["log_level"] == "info"
    assert event["phase"] == "cell-only" and event["target"] == "api-only"


def test_announce_drops_the_local_phase_cache(topology: Topology) -> None:
    slow = dataclasses.replace(topology.settings, phase_ttl=60.0)
    with connect(topology.api_url_text, settings=slow) as dbs:
        assert dbs.phases.get().phase is C  # cached for a minute
        Switcher(dbs).run(CR)
        assert dbs.phases.get().phase is CR


def test_announce_does_what_its_dry_run_line_says_in_that_order(
    topology: Topology, logs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    dbs = topology.dbs
    (line,) = [s for s in Switcher(dbs).dry_run(CR) if s.startswith("announce: ")]
    done: list[str] = []

    def saw(what: str) -> None:
        logged = any(e["event"] == "phase_changed" for e in logs)
        if logged and "log phase_changed" not in done:
            done.append("log phase_changed")
        if what:
            done.append(what)

    drop = dbs.phases.invalidate

    def dropping() -> None:
        saw("drop this process's cached phase")
        drop()

    def receiver(_sender: object, **_kwargs: Any) -> None:
        saw("send phase-changed")

    monkeypatch.setattr(dbs.phases, "invalidate", dropping)
    with signals.phase_changed.connected_to(receiver, sender=dbs):
        Switcher(dbs).run(CR)
    saw("")
    assert line == "announce: " + ", ".join(done)
    assert done == ["drop this process's cached phase", "log phase_changed", "send phase-changed"]


def test_dry_run_record_line_names_the_guards_checked_again_under_the_lock(
    topology: Topology,
) -> None:
    put_in_phase(topology.dbs, A)
    lines = Switcher(topology.dbs).dry_run(AR, force=True)
    assert "the exact guards (cells-not-retired, cell-journals-empty)" in lines[1]
    assert lines[1].endswith(
        "prepare every cell for epoch 2 and commit it, then commit the API database "
        "(the commit point); then every cell takes the new phase"
    )


def test_a_failing_receiver_does_not_undo_the_change(topology: Topology) -> None:
    def broken(_sender: object, **_kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    with signals.phase_changed.connected_to(broken, sender=topology.dbs):
        Switcher(topology.dbs).run(CR)
    assert commands.show_phase(topology.dbs).phase == CR.value
