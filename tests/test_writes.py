"""How many statements each write sends, per phase: a ceiling no change may raise.

Counted on the API engine and every cell engine together (the hot-path read engines
report to them), with the phase cached and the cells known, so that only the write
itself is counted. The ceilings were measured on the code before writes became values;
``add_members`` in ``dual-write-api-reads`` reads each copy of its group once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import pytest

from shadowdb.databases import Databases, connect
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.state import Phase
from shadowdb.testing import StatementCounter
from tests.conftest import Topology
from tests.support.helpers import engines_of, new_uuid, put_in_phase

WRITES = ("create", "save", "add_members", "remove_members", "destroy")

#: The statements of each write (create, save of name/policies/members, add_members of
#: two, remove_members of one, destroy) per phase, on MariaDB and PostgreSQL, as measured
#: before writes became values.
CEILINGS: dict[Phase, tuple[int, int, int, int, int]] = {
    Phase.CELL_ONLY: (10, 13, 10, 10, 10),
    Phase.DUAL_WRITE_CELL_READS: (25, 30, 24, 24, 26),
    Phase.DUAL_WRITE_API_READS: (21, 29, 23, 23, 27),
    Phase.API_ONLY: (10, 12, 9, 9, 11),
}

#: What the redesign brought two members added in ``dual-write-api-reads`` down to (from
#: 23, 27 on SQLite): each copy of the group read once, under its lock, with its journal.
ADD_MEMBERS_TARGET = 14

#: SQLite counts more: each write transaction's ``BEGIN IMMEDIATE`` (and each read's
#: ``BEGIN``) is a statement there, where the other drivers begin implicitly.
SQLITE_CEILINGS: dict[Phase, tuple[int, int, int, int, int]] = {
    Phase.CELL_ONLY: (13, 15, 12, 12, 12),
    Phase.DUAL_WRITE_CELL_READS: (32, 35, 29, 29, 31),
    Phase.DUAL_WRITE_API_READS: (26, 33, 27, 27, 31),
    Phase.API_ONLY: (11, 13, 10, 10, 12),
}


@pytest.fixture
def dbs(topology: Topology) -> Iterator[Databases]:
    """The topology's databases with a phase cache that cannot expire mid-count."""
    settings = dataclasses.replace(topology.settings, phase_ttl=3600.0)
    with connect(topology.api_url_text, settings=settings) as opened:
        yield opened


def _measure(dbs: Databases, write: Callable[[], object]) -> int:
    dbs.phases.get()  # the phase is cached: only the write is counted
    with StatementCounter(engines_of(dbs)) as counter:
        write()
    return counter.total()


def _counts(dbs: Databases, phase: Phase) -> dict[str, int]:
    put_in_phase(dbs, phase)
    ctx = RequestContext(dbs, "p1", "u1")
    group = InstanceGroup(ctx, name="web", project_id="p1", user_id="u1", policies=["affinity"])
    counts = {"create": _measure(dbs, group.create)}

    def save() -> None:
        group.name = "web2"
        group.policies = ["anti-affinity"]
        group.members = [new_uuid()]
        group.save()

    counts["save"] = _measure(dbs, save)
    added = [new_uuid(), new_uuid()]
    counts["add_members"] = _measure(dbs, lambda: InstanceGroup.add_members(ctx, group.uuid, added))
    counts["remove_members"] = _measure(
        dbs, lambda: InstanceGroup.remove_members(ctx, group.uuid, added[:1])
    )
    counts["destroy"] = _measure(dbs, group.destroy)
    return counts


@pytest.mark.parametrize("phase", list(Phase), ids=lambda p: p.value)
def test_write_statements(dbs: Databases, backend: str, phase: Phase) -> None:
    """No write sends more statements than before, in any phase, on any backend."""
    table = SQLITE_CEILINGS if backend == "sqlite" else CEILINGS
    ceilings = dict(zip(WRITES, table[phase], strict=True))
    counts = _counts(dbs, phase)
    over = {w: (counts[w], ceilings[w]) for w in WRITES if counts[w] > ceilings[w]}
    assert not over, f"statements (sent, ceiling) of writes over their ceiling: {over}"


def test_add_members_reads_each_copy_once(dbs: Databases) -> None:
    """Two members added in dual-write-api-reads: at most 14 statements, every backend."""
    counts = _counts(dbs, Phase.DUAL_WRITE_API_READS)
    assert counts["add_members"] <= ADD_MEMBERS_TARGET, counts


@pytest.mark.parametrize("phase", list(Phase), ids=lambda p: p.value)
def test_written_copy_is_the_stored_copy(dbs: Databases, phase: Phase) -> None:
    """The copy a write hands back (never read again) is the copy a fresh read finds."""
    put_in_phase(dbs, phase)
    ctx = RequestContext(dbs, "p1", "u1")
    kept, dropped = new_uuid(), new_uuid()
    group = InstanceGroup(
        ctx, name="web", project_id="p1", user_id="u1", policies=["affinity"], members=[kept]
    )
    group.create()
    InstanceGroup.add_members(ctx, group.uuid, [dropped, new_uuid()])
    InstanceGroup.remove_members(ctx, group.uuid, [dropped])
    group.refresh()
    group.name = "web2"
    group.policies = ["anti-affinity", "anti-affinity"]
    group.members = [new_uuid(), kept]
    group.save()
    stored = InstanceGroup.get_by_uuid(ctx, group.uuid)
    fields = ("name", "policies", "members", "updated_at", "created_at", "id")
    assert {f: getattr(group, f) for f in fields} == {f: getattr(stored, f) for f in fields}
