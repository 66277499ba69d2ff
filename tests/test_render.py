"""Rendering results: JSON values, tables that never cut what an operator copies, summaries."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import re

from shadowdb.backfill.results import BackfillResult, MigrationTotal
from shadowdb.bookkeeping import HistoryEntry
from shadowdb.render import Output, backfill_summary, cells_table, jsonable, phase_history
from shadowdb.state import Phase
from shadowdb.status import CellInfo

WHEN = dt.datetime(2026, 1, 2, 3, 4, 5)
UUID = "0f3b6c2e-58a4-4d6f-9a51-3c1f2b7e9d10"
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def _text(out: Output) -> str:
    assert isinstance(out.stream, io.StringIO)
    return _ESCAPES.sub("", out.stream.getvalue())


def _terminal(columns: int) -> Output:
    out = Output("text", Terminal())
    out.console.width = columns
    return out


@dataclasses.dataclass(frozen=True)
class _Inner:
    phase: Phase
    at: dt.datetime


@dataclasses.dataclass(frozen=True)
class _Outer:
    items: tuple[_Inner, ...]
    counts: dict[int, int]
    note: str | None


def test_jsonable_turns_results_into_plain_json_values() -> None:
    value = _Outer((_Inner(Phase.API_ONLY, WHEN),), {1: 2}, None)
    assert jsonable(value) == {
        "items": [{"phase": "api-only", "at": "2026-01-02T03:04:05"}],
        "counts": {"1": 2},
        "note": None,
    }
    assert jsonable(_Outer) is _Outer  # a class is no value


def test_json_output_is_sorted_and_parseable() -> None:
    out = Output("json", io.StringIO())
    assert out.json
    out.emit_json(_Inner(Phase.CELL_ONLY, WHEN))
    text = _text(out)
    assert json.loads(text) == {"at": "2026-01-02T03:04:05", "phase": "cell-only"}
    assert text.index('"at"') < text.index('"phase"')


def test_off_a_terminal_nothing_is_cut_or_wrapped() -> None:
    out = Output("text", io.StringIO())
    assert not out.terminal
    detail = "x" * 600
    out.table(None, ("Key", "Detail"), [(UUID, detail), ("k2", None)], keep=("Key",))
    lines = _text(out).splitlines()
    assert any(UUID in line and detail in line for line in lines)
    assert "…" not in _text(out)


def test_on_a_terminal_kept_values_stay_whole_and_the_rest_wraps() -> None:
    out = _terminal(60)
    assert out.terminal
    detail = " ".join(["word"] * 40)
    out.table(None, ("Kind", "Key", "Detail"), [("orphan", UUID, detail)], keep=("Key",))
    text = _text(out)
    assert any(UUID in line for line in text.splitlines())
    assert all(len(line) <= 60 for line in text.splitlines())
    assert text.count("word") == 40 and "…" not in text


def test_the_cells_table_names_the_default() -> None:
    out = Output("text", io.StringIO())
    cells_table(
        out,
        [
            CellInfo("cell1", UUID, "mysql+pymysql://nova:***@db/nova_cell1", True),
            CellInfo("cell2", "u2", "sqlite:////srv/cell2.sqlite", False),
        ],
    )
    lines = _text(out).splitlines()
    (first,) = [line for line in lines if "cell1" in line]
    (second,) = [line for line in lines if "cell2" in line]
    assert UUID in first and "yes" in first and "yes" not in second


def _result(**changes: object) -> BackfillResult:
    base = BackfillResult(
        totals=(MigrationTotal("shadowdb_instance_groups", 5, 5),),
        batches=1,
        errors=(),
        conflicts=(),
        stuck=(),
        outcome="done",
        max_count=None,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _rows(text: str) -> list[list[str]]:
    """Return a table's header and rows, cell by cell."""
    return [
        [c.strip() for c in re.split("[│┃]", line.strip("│┃ "))]
        for line in text.splitlines()
        if line.startswith(("│", "┃"))
    ]


def test_the_backfill_summary_lists_every_migration_sorted_and_those_not_reached() -> None:
    out = Output("text", io.StringIO())
    result = _result(outcome="more", max_count=5)
    backfill_summary(out, result, ["zz_last", "shadowdb_instance_groups"])
    text = _text(out)
    assert _rows(text) == [
        ["Migration", "Total Needed", "Completed"],
        ["shadowdb_instance_groups", "5", "5"],
        ["zz_last", "0", "0"],
    ]
    assert "not reached within --max-count 5: zz_last" in text
    assert text.rstrip().endswith("More work may remain: run backfill again.")


def test_the_backfill_summary_says_each_failure_once() -> None:
    out = Output("text", io.StringIO())
    error = "shadowdb_instance_groups: cell cell1 unreachable"
    backfill_summary(out, _result(errors=(error, error), outcome="error"), [])
    text = _text(out)
    assert text.count("Error attempting to run shadowdb_instance_groups: cell cell1") == 1
    assert "Some migrations failed unexpectedly." in text


def test_stuck_records_are_said_before_anything_else() -> None:
    out = Output("text", io.StringIO())
    backfill_summary(out, _result(stuck=("g1", "g2"), outcome="error"), [])
    text = _text(out)
    assert "could not be migrated (stuck): g1, g2." in text
    assert "failed unexpectedly" not in text


HISTORY = [
    HistoryEntry(0, None, "cell-only", WHEN, "tests", "initial state (db sync)", False, ()),
    HistoryEntry(1, "cell-only", "dual-write-cell-reads", WHEN, "op", "go", True, ("backlog: 3",)),
]


def test_the_phase_history_is_a_table_where_it_fits() -> None:
    out = Output("text", io.StringIO())
    phase_history(out, HISTORY)
    rows = _rows(_text(out))
    assert rows[0][:3] == ["Epoch", "From", "To"]
    assert rows[2][:3] == ["1", "cell-only", "dual-write-cell-reads"]


def test_on_a_narrow_terminal_the_phase_history_never_breaks_a_phase_name() -> None:
    out = _terminal(60)
    phase_history(out, HISTORY)
    text = _text(out)
    assert "  cell-only -> dual-write-cell-reads" in text.splitlines()
    assert "  (none) -> cell-only" in text.splitlines()
    assert "  by op: go (forced; overridden: backlog: 3)" in text.splitlines()
    assert "epoch 1, 2026-01-02 03:04:05 UTC" in text.splitlines()
