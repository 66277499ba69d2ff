"""Check the growth report's arithmetic and table on small, hand-made results.

No database and no timing: ``.venv/bin/pytest benchmarks/test_growth.py`` runs in a
second. It sits beside the benchmarks rather than in ``tests/``, which mirrors the
package only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from benchmarks import growth
from benchmarks.growth import BENCHMARKS, Curve, curves, exponent, load, rows, table

BACKFILL, DIFF = BENCHMARKS


def _bench(backend: str, what: str, seconds: float, groups: int | None) -> dict[str, Any]:
    info: dict[str, Any] = {"backend": backend, "what": what, "rows": 1}
    if groups is not None:
        info["groups"] = groups
    return {"extra_info": info, "stats": {"min": seconds, "median": seconds * 1.1}}


def _write(path: Path, *benches: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"benchmarks": list(benches)}))
    return path


def test_the_exponent_is_one_for_linear_and_two_for_quadratic_growth() -> None:
    assert exponent(10_000, 1.0, 100_000, 10.0) == pytest.approx(1.0)
    assert exponent(10_000, 1.0, 30_000, 9.0) == pytest.approx(2.0)
    assert exponent(10_000, 0.531, 100_000, 5.691) == pytest.approx(
        math.log(5.691 / 0.531) / math.log(10)
    )


def test_a_curve_spans_its_own_smallest_and_largest_size() -> None:
    curve = Curve("sqlite", "x", {10_000: 1.0, 30_000: 3.0, 100_000: 100.0})
    assert curve.exponent() == pytest.approx(2.0)
    assert curve.exponent(10_000, 30_000) == pytest.approx(1.0)
    assert curve.exponent(30_000, 300_000) is None
    assert Curve("sqlite", "x", {10_000: 1.0}).exponent() is None


def test_files_combine_and_a_later_figure_replaces_an_earlier(tmp_path: Path) -> None:
    first = _write(
        tmp_path / "sqlite.json",
        _bench("sqlite", "backfill-50", 2.0, 10_000),
        _bench("sqlite", "backfill-50", 9.0, 30_000),
        _bench("sqlite", "diff-report", 1.0, None),  # an older, single-size result
    )
    second = _write(
        tmp_path / "rerun.json",
        _bench("sqlite", "backfill-50", 6.0, 30_000),
        _bench("mysql", "backfill-50", 3.0, 10_000),
    )
    results, skipped = load([first, second])
    assert skipped == 1
    assert results == {
        ("sqlite", "backfill-50", 10_000): 2.0,
        ("sqlite", "backfill-50", 30_000): 6.0,
        ("mysql", "backfill-50", 10_000): 3.0,
    }


def test_the_floor_is_the_faster_baseline_at_each_size() -> None:
    results = {
        ("postgresql", "plain-copy-core", 10_000): 1.7,
        ("postgresql", "plain-copy-dbapi", 10_000): 1.1,
        ("postgresql", "plain-copy-core", 30_000): 3.0,
        ("postgresql", "plain-copy-dbapi", 30_000): 3.8,
        ("sqlite", "backfill-1000", 10_000): 0.5,
        ("sqlite", "diff-report", 10_000): 0.9,
    }
    found = curves(BACKFILL, results)
    assert [(c.backend, c.label, c.is_floor) for c in found] == [
        ("sqlite", "backfill, batch 1000", False),
        ("postgresql", "plain copy (floor)", True),
    ]
    assert found[1].seconds == {10_000: 1.1, 30_000: 3.0}
    assert [c.label for c in curves(DIFF, results)] == ["diff-report"]


def test_the_table_holds_seconds_exponents_and_rate_to_the_floor() -> None:
    results = {
        ("sqlite", "backfill-1000", 10_000): 0.5,
        ("sqlite", "backfill-1000", 30_000): 1.5,
        ("sqlite", "backfill-1000", 100_000): 5.0,
        ("sqlite", "plain-copy-dbapi", 10_000): 0.25,
        ("sqlite", "plain-copy-dbapi", 30_000): 1.5,
        ("sqlite", "plain-copy-dbapi", 100_000): 10.0,
        # A backend measured at two sizes only.
        ("mysql", "backfill-1000", 10_000): 2.0,
        ("mysql", "backfill-1000", 30_000): 6.0,
        ("mysql", "plain-copy-dbapi", 10_000): 1.0,
    }
    header, body = rows(curves(BACKFILL, results))
    assert header == [
        "backend",
        "path",
        "10k (s)",
        "30k (s)",
        "100k (s)",
        "exponent 10k to 100k",
        "exponent 10k to 30k",
        "exponent 30k to 100k",
        "rate / floor 10k",
        "rate / floor 30k",
        "rate / floor 100k",
    ]
    seconds_and_exponents = [row[:8] for row in body]
    assert seconds_and_exponents == [
        ["SQLite", "backfill, batch 1000", "0.500", "1.500", "5.000", "1.00", "1.00", "1.00"],
        ["SQLite", "plain copy (floor)", "0.250", "1.500", "10.000", "1.60", "1.63", "1.58"],
        [
            "MariaDB",
            "backfill, batch 1000",
            "2.000",
            "6.000",
            "-",
            "1.00 (10k to 30k)",
            "1.00",
            "-",
        ],
        ["MariaDB", "plain copy (floor)", "1.000", "-", "-", "-", "-", "-"],
    ]
    # Rate / floor: the floor's seconds over the path's; the floor itself has none.
    assert [row[8:] for row in body] == [
        ["0.50", "1.00", "2.00"],
        ["-", "-", "-"],
        ["0.50", "-", "-"],
        ["-", "-", "-"],
    ]
    rendered = table(curves(BACKFILL, results)).splitlines()
    assert rendered[1] == "| --- | --- |" + " ---: |" * 9
    assert len(rendered) == 2 + len(body)


def test_two_sizes_show_one_exponent_column() -> None:
    results = {("sqlite", "diff-report", 10_000): 1.0, ("sqlite", "diff-report", 30_000): 3.3}
    header, body = rows(curves(DIFF, results))
    assert [h for h in header if h.startswith("exponent")] == ["exponent 10k to 30k"]
    assert body == [["SQLite", "diff-report", "1.000", "3.300", "1.09", "-", "-"]]


def test_the_command_prints_each_benchmark_found_and_draws_its_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    results = _write(
        tmp_path / "diff.json",
        _bench("sqlite", "diff-report", 1.0, 10_000),
        _bench("sqlite", "diff-report", 3.0, 30_000),
        _bench("sqlite", "scan-hash-dbapi", 0.5, 10_000),
        _bench("mysql", "diff-report", 2.0, 10_000),
    )
    growth.main([str(results), "--plots", str(tmp_path / "plots")])
    out = capsys.readouterr().out
    assert "diff-report of a clean deployment" in out and "backfill" not in out
    assert (tmp_path / "plots" / "diff_growth.png").stat().st_size > 0
    assert not (tmp_path / "plots" / "backfill_growth.png").exists()
