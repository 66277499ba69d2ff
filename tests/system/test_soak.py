"""The soak, short: writer processes, the cutover walked forward and back, faults, a check.

``scripts/soak`` runs it for as long as asked (RELIABILITY.md has the figures); here each
server backend gets a short run in the default suite, and the checker is shown to catch
each thing it looks for by planting it in a finished run's databases.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import structlog

from shadowdb import models
from tests.soak import checker
from tests.soak.harness import Soak

SERVERS = [
    pytest.param("mysql", marks=pytest.mark.mysql),
    pytest.param("postgresql", marks=pytest.mark.postgresql),
]

#: Seconds of traffic in the suite's short runs.
SHORT = 45.0


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """The driver runs the command line in this process, which configures logging."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.mark.slow
@pytest.mark.parametrize("backend", SERVERS, indirect=True)
def test_a_short_soak_loses_nothing_and_resurrects_nothing(
    backend: str, server: object, tmp_path: Path
) -> None:
    soak = Soak(backend, tmp_path / "soak", duration=SHORT, writers=4, seed=11)
    try:
        summary = soak.run()
    finally:
        soak.destroy()
    assert summary.problems == [], "\n".join(summary.problems[:20])
    # It did what it is for: traffic of every kind, faults, phase changes both ways.
    acked = {k.split(":")[0] for k, n in summary.ops.items() if k.endswith(":ack") and n}
    assert acked == {"create", "rename", "add", "remove", "destroy", "get"}
    assert sum(summary.faults.values()) >= 5, summary.faults
    assert summary.phase_changes >= 4, summary
    assert summary.commands.get("cleanup") == 1
    assert summary.groups_checked > 100


@pytest.fixture
def finished(tmp_path: Path) -> Iterator[Soak]:
    """A short, finished soak on SQLite whose databases are kept for planting."""
    soak = Soak("sqlite", tmp_path / "soak", duration=6.0, writers=2, seed=3, legacy_groups=20)
    summary = soak.run()
    assert summary.problems == [], summary.problems
    yield soak
    soak.destroy()


def test_the_checker_catches_a_lost_write_a_resurrection_and_a_duplicate_row(
    finished: Soak,
) -> None:
    soak = finished
    ops = checker.read_logs(soak.workdir / "logs")
    groups, _ = checker.model(ops, soak.shared)
    kept = next(u for u, p in groups.items() if p.exists == {True} and p.owner)
    gone = next(u for u, p in groups.items() if p.exists == {False} and p.owner)
    member_of = next(u for u, p in groups.items() if p.exists == {True} and p.members)
    engine = sa.create_engine(soak.urls["api"], poolclass=sa.pool.NullPool)
    g, m, p = models.api_groups, models.api_members, models.api_policies
    with engine.begin() as conn:
        gid = conn.scalar(sa.select(g.c.id).where(g.c.uuid == kept))
        conn.execute(m.delete().where(m.c.group_id == gid))
        conn.execute(p.delete().where(p.c.group_id == gid))
        conn.execute(g.delete().where(g.c.id == gid))  # an acknowledged group lost
        conn.execute(g.insert().values(uuid=gone, name="back", project_id="soak"))
        other = conn.scalar(sa.select(g.c.id).where(g.c.uuid == member_of))
        member = conn.scalar(sa.select(m.c.instance_uuid).where(m.c.group_id == other).limit(1))
        if member is None:  # its members may all have been removed: give it one twice
            member = next(iter(groups[member_of].members))[1]
            conn.execute(m.insert().values(group_id=other, instance_uuid=member))
        conn.execute(m.insert().values(group_id=other, instance_uuid=member))
    engine.dispose()
    report = soak.check()
    assert any(kept in line for line in report.lost), report.lost
    assert any(gone in line for line in report.resurrected), report.resurrected
    assert any(member_of in line for line in report.duplicates), report.duplicates
