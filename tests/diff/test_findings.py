"""What diff-report calls a difference, what it says of each, and which side each phase trusts."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from shadowdb import models
from shadowdb.databases import writer
from shadowdb.diff.checksums import Copy
from shadowdb.diff.findings import (
    DiffKind,
    Finding,
    authority,
    authority_by_tombstone,
    classify,
    finding_of,
    orphan_finding,
)
from shadowdb.diff.readers import Orphan, Seen
from shadowdb.state import Phase, utcnow
from tests.conftest import Topology

WHEN = dt.datetime(2026, 1, 2, 3, 4, 5)
COPY = Copy("g1", "web", "u1", "p1", WHEN, ("anti-affinity",), ("i1", "i2"))


def test_kinds_are_listed_in_report_order() -> None:
    assert [k.value for k in sorted(DiffKind, key=lambda k: -k.order)][::-1] == [
        "missing-in-api",
        "missing-in-cells",
        "field-mismatch",
        "policy-mismatch",
        "member-mismatch",
        "live-in-two-cells",
        "orphan",
    ]


@pytest.mark.parametrize("phase", list(Phase))
def test_identical_copies_and_no_copy_at_all_are_no_difference(phase: Phase) -> None:
    assert classify(phase, COPY, [("cell1", COPY)]) == []
    assert classify(phase, None, []) == []


def test_each_differing_part_is_its_own_kind() -> None:
    phase = Phase.DUAL_WRITE_CELL_READS
    other = dataclasses.replace(COPY, name="db", policies=("affinity",), members=("i1",))
    assert classify(phase, COPY, [("cell1", other)]) == [
        DiffKind.FIELD_MISMATCH,
        DiffKind.POLICY_MISMATCH,
        DiffKind.MEMBER_MISMATCH,
    ]
    later = dataclasses.replace(COPY, created_at=WHEN + dt.timedelta(seconds=1))
    assert classify(phase, COPY, [("cell1", later)]) == [DiffKind.FIELD_MISMATCH]


def test_a_copy_on_one_side_only() -> None:
    phase = Phase.DUAL_WRITE_API_READS
    assert classify(phase, None, [("cell1", COPY)]) == [DiffKind.MISSING_IN_API]
    assert classify(phase, COPY, []) == [DiffKind.MISSING_IN_CELLS]


def test_api_copies_are_leftovers_in_cell_only() -> None:
    # cell-only never writes the API database: a copy only there is no difference.
    assert classify(Phase.CELL_ONLY, COPY, []) == []
    assert classify(Phase.CELL_ONLY, None, [("cell1", COPY)]) == [DiffKind.MISSING_IN_API]


def test_two_live_cell_copies_are_that_and_nothing_else() -> None:
    other = dataclasses.replace(COPY, name="db")
    kinds = classify(Phase.API_ONLY, COPY, [("cell1", COPY), ("cell2", other)])
    assert kinds == [DiffKind.LIVE_IN_TWO_CELLS]


@pytest.mark.parametrize(
    ("phase", "trusted"),
    [
        (Phase.CELL_ONLY, "cell"),
        (Phase.DUAL_WRITE_CELL_READS, "cell"),
        (Phase.DUAL_WRITE_API_READS, "api"),
        (Phase.API_ONLY, "api"),
    ],
)
def test_the_side_each_phase_reads_is_the_authority(phase: Phase, trusted: str) -> None:
    for kind in (DiffKind.MISSING_IN_CELLS, DiffKind.FIELD_MISMATCH, DiffKind.MEMBER_MISMATCH):
        assert authority(phase, kind) == trusted
    assert authority(phase, DiffKind.LIVE_IN_TWO_CELLS) is None
    assert authority(phase, DiffKind.ORPHAN) is None


def test_dual_write_api_reads_trusts_a_cell_copy_the_api_lacks() -> None:
    assert authority(Phase.DUAL_WRITE_API_READS, DiffKind.MISSING_IN_API) == "cell"
    assert authority(Phase.API_ONLY, DiffKind.MISSING_IN_API) == "api"


def test_a_field_mismatch_names_and_carries_only_the_fields_that_differ() -> None:
    renamed = dataclasses.replace(COPY, name="db")
    seen = Seen(api=COPY, cells=(("cell1", renamed),), journaled=())
    found = finding_of(Phase.DUAL_WRITE_CELL_READS, "g1", DiffKind.FIELD_MISMATCH, seen)
    assert found == Finding(
        kind=DiffKind.FIELD_MISMATCH,
        key="g1",
        group_uuid="g1",
        authoritative="cell",
        cells=("cell1",),
        api={"name": "web"},
        cell={"name": "db"},
        detail="name differs",
    )
    moved = dataclasses.replace(renamed, project_id="p2")
    seen = Seen(api=COPY, cells=(("cell1", moved),), journaled=())
    found = finding_of(Phase.API_ONLY, "g1", DiffKind.FIELD_MISMATCH, seen)
    assert found.detail == "name, project_id differ"
    assert found.cell == {"name": "db", "project_id": "p2"}


def test_a_member_mismatch_carries_the_members_of_both_sides() -> None:
    fewer = dataclasses.replace(COPY, members=("i1",))
    seen = Seen(api=COPY, cells=(("cell1", fewer),), journaled=())
    found = finding_of(Phase.API_ONLY, "g1", DiffKind.MEMBER_MISMATCH, seen)
    assert (found.api, found.cell, found.detail) == (
        {"members": ["i1", "i2"]},
        {"members": ["i1"]},
        "members differ",
    )
    assert found.authoritative == "api"


def test_missing_copies_carry_the_whole_copy_there_is() -> None:
    seen = Seen(api=None, cells=(("cell2", COPY),), journaled=())
    found = finding_of(Phase.DUAL_WRITE_API_READS, "g1", DiffKind.MISSING_IN_API, seen)
    assert (found.api, found.cell, found.cells) == (None, COPY.values(), ("cell2",))
    assert found.detail == "live in cell cell2, not in the API database"
    seen = Seen(api=COPY, cells=(), journaled=())
    found = finding_of(Phase.API_ONLY, "g1", DiffKind.MISSING_IN_CELLS, seen)
    assert (found.api, found.cell, found.cells) == (COPY.values(), None, ())
    assert found.detail == "in the API database, live in no cell"


def test_two_live_cell_copies_carry_each_cells_values() -> None:
    other = dataclasses.replace(COPY, name="db")
    seen = Seen(api=None, cells=(("cell1", COPY), ("cell2", other)), journaled=())
    found = finding_of(Phase.API_ONLY, "g1", DiffKind.LIVE_IN_TWO_CELLS, seen)
    assert found.cell == {"cell1": COPY.values(), "cell2": other.values()}
    assert found.detail == "live in cells cell1, cell2"
    assert found.authoritative is None


def test_pending_journal_entries_are_said() -> None:
    seen = Seen(api=COPY, cells=(), journaled=("cell1", "api"))
    found = finding_of(Phase.API_ONLY, "g1", DiffKind.MISSING_IN_CELLS, seen)
    assert found.journal_pending
    assert found.detail.endswith("; journal entries pending (cell1, api)")


def test_an_orphan_row_is_reported_never_trusted() -> None:
    in_cell = orphan_finding(Orphan("cell1", "instance_group_member", 7, 3, "i1", "g1"))
    assert in_cell == Finding(
        kind=DiffKind.ORPHAN,
        key="cell1:instance_group_member:7",
        group_uuid="g1",
        authoritative=None,
        cells=("cell1",),
        api=None,
        cell={"table": "instance_group_member", "id": 7, "group_id": 3, "value": "i1"},
        detail=(
            "instance_group_member row 7 in the cell cell1 points at group id 3 (deleted group g1)"
        ),
    )
    in_api = orphan_finding(Orphan("api", "instance_group_policy", 8, 4, "affinity", None))
    assert (in_api.key, in_api.cells, in_api.cell) == ("api:instance_group_policy:8", (), None)
    assert in_api.api is not None and in_api.api["value"] == "affinity"
    assert in_api.detail.endswith("in the API database points at group id 4 (no such group)")


def _missing(uuid: str, phase: Phase) -> Finding:
    seen = Seen(api=None, cells=(("cell1", dataclasses.replace(COPY, uuid=uuid)),), journaled=())
    return finding_of(phase, uuid, DiffKind.MISSING_IN_API, seen)


def _bury(topology: Topology, uuid: str) -> None:
    with writer(topology.dbs.api) as conn:
        conn.execute(models.api_tombstones.insert().values(uuid=uuid, epoch=1, deleted_at=utcnow()))


def test_a_tombstone_makes_the_api_database_the_authority(topology: Topology) -> None:
    _bury(topology, "buried")
    phase = Phase.DUAL_WRITE_API_READS
    findings = [_missing("buried", phase), _missing("new", phase)]
    buried, new = authority_by_tombstone(topology.dbs, phase, findings)
    assert buried.authoritative == "api"
    assert buried.detail.endswith("(deleted in the API database)")
    assert new == findings[1]  # no tombstone: the cell copy is the group, not copied yet


def test_in_api_only_a_copy_the_api_never_had_is_the_cells(topology: Topology) -> None:
    _bury(topology, "buried")
    phase = Phase.API_ONLY
    findings = [_missing("buried", phase), _missing("new", phase)]
    buried, new = authority_by_tombstone(topology.dbs, phase, findings)
    assert buried.authoritative == "api"
    assert new.authoritative == "cell"
    assert new.detail.endswith("(never copied there: no deletion on record)")


@pytest.mark.parametrize("phase", [Phase.CELL_ONLY, Phase.DUAL_WRITE_CELL_READS])
def test_phases_that_read_the_cells_ignore_tombstones(topology: Topology, phase: Phase) -> None:
    _bury(topology, "buried")
    findings = [_missing("buried", phase)]
    assert authority_by_tombstone(topology.dbs, phase, findings) == findings
