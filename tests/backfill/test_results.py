"""What the backfill reports: a step per migration call, and the run's result as JSON shows it."""

from __future__ import annotations

import dataclasses

import pytest

from shadowdb.backfill.results import BackfillResult, BatchStep, CopyConflict, MigrationTotal
from shadowdb.render import jsonable


def test_a_step_keeps_its_partial_progress_beside_its_error() -> None:
    assert BatchStep(5, 5).error is None
    failed = BatchStep(found=4, done=2, error="cell cell2: unreachable")
    assert (failed.found, failed.done, failed.error) == (4, 2, "cell cell2: unreachable")


def test_results_are_values() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        BatchStep(1, 1).done = 0  # type: ignore[misc]
    assert MigrationTotal("m", 1, 1) == MigrationTotal("m", 1, 1)


def test_the_json_form_of_a_run_names_every_field_the_cli_promises() -> None:
    result = BackfillResult(
        totals=(MigrationTotal("migrate_instance_groups", 3, 2),),
        batches=2,
        errors=("migrate_instance_groups: cell cell2: unreachable",),
        conflicts=(CopyConflict("g1", "cell1", "live-in-two-cells", "also live in cell cell2"),),
        stuck=("migrate_instance_groups",),
        outcome="stuck",
        max_count=None,
    )
    assert jsonable(result) == {
        "totals": [{"migration": "migrate_instance_groups", "found": 3, "done": 2}],
        "batches": 2,
        "errors": ["migrate_instance_groups: cell cell2: unreachable"],
        "conflicts": [
            {
                "group_uuid": "g1",
                "cell": "cell1",
                "kind": "live-in-two-cells",
                "detail": "also live in cell cell2",
            }
        ],
        "stuck": ["migrate_instance_groups"],
        "outcome": "stuck",
        "max_count": None,
    }
