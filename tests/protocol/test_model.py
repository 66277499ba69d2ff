"""The protocol's model, explored exhaustively: every interleaving, a crash at any step.

See :mod:`tests.support.protocol_model`. Each scenario is small (one or two groups, two cells,
a handful of processes) so that every interleaving of every step of every process, and a
crash of any process at any of its steps, is walked in seconds; the invariants of
DESIGN.md section 3 are checked in every reachable state and, after the operator's
backfill, in every final one. The second half switches each protection off and shows
that the explorer then finds the failure it prevents.
"""

from __future__ import annotations

import pytest

from tests.support.protocol_model import AR, CR, A, C, Op, Protections, Scenario, explore

SCENARIOS = (
    # The cutover: writers with any cache, an API outage in dual-write-cell-reads, the
    # backfill and a diff-report, phase set forward twice.
    Scenario(
        "forward",
        C,
        1,
        api={},
        cell={"G": 0},
        writers=(Op("G", 1, outage=True), Op("G", None)),
        moves=(CR, AR),
        backfill=True,
        diffs=1,
    ),
    # The rollback from api-only under writes: the diff explained by the journal, the
    # catch-up, then one step further back.
    Scenario(
        "rollback",
        A,
        4,
        api={"G": 0},
        cell={"G": 0},
        writers=(Op("G", 1), Op("G", None)),
        moves=(AR, CR),
        diffs=1,
    ),
    # dual-write-api-reads with a cell outage, back to dual-write-cell-reads.
    Scenario(
        "outage",
        AR,
        3,
        api={"G": 0},
        cell={"G": 0},
        writers=(Op("G", 1, outage=True), Op("G", 2)),
        moves=(CR,),
        backfill=True,
    ),
    # A destroy in api-only, the reverse sync racing the way back and the writers.
    Scenario(
        "reverse",
        A,
        4,
        api={"G": 0},
        cell={"G": 0},
        writers=(Op("G", None), Op("G", 1)),
        moves=(AR,),
        reverse=True,
        diffs=1,
    ),
    # A group the API database holds alone (no cell row): two writers, one step back.
    Scenario(
        "no-cell-row",
        AR,
        3,
        api={"G": 0},
        cell={},
        writers=(Op("G", 1), Op("G", 2)),
        moves=(CR,),
        backfill=True,
        crashes=0,
        api_journal=("G",),
    ),
    # Forward again after a rollback to cell-only: the API copies are old, and a clean
    # diff-report from before is on record; a cell-only writer.
    Scenario(
        "again",
        C,
        3,
        api={"G": 0},
        cell={"G": 0},
        writers=(Op("G", 1),),
        moves=(CR, AR),
        diffs=1,
        clean_diff_at=3,
    ),
)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_every_interleaving_keeps_the_invariants(scenario: Scenario) -> None:
    report = explore(scenario)
    assert report.violations == [], report.violations[0]
    assert report.finals > 0
    assert report.states > 100  # the walk is not trivially short


@pytest.mark.parametrize(
    ("protection", "scenario", "finding"),
    [
        ("fence", "forward", "G"),
        ("two_phase", "forward", "read of G"),
        ("tombstones", "rollback", "read of G"),
        ("exact_guards", "outage", "read of G"),
        ("identity_lock", "no-cell-row", "read of G"),
        ("gate_epoch", "again", "read of G"),
        ("api_only_journal", "rollback", ""),
    ],
)
def test_without_each_protection_the_explorer_finds_a_violation(
    protection: str, scenario: str, finding: str
) -> None:
    weakened = Protections(**{protection: False})
    (chosen,) = [s for s in SCENARIOS if s.name == scenario]
    report = explore(chosen, weakened)
    assert report.violations, f"no violation found without {protection}"
    what, trace = report.violations[0]
    assert finding in what
    assert trace  # a counterexample, step by step
