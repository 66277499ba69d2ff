"""``shadowdb.status``: what ``status`` gathers, before the advice names a next step."""

from __future__ import annotations

from pathlib import Path

import pytest

from shadowdb import commands, status
from shadowdb.databases import connect, reader
from shadowdb.queries import CELL
from shadowdb.testing import write_legacy_cells
from tests.conftest import Topology


def test_gather_reads_every_cell_and_names_no_step(topology: Topology) -> None:
    write_legacy_cells(topology.dbs, groups=6, seed=3)
    found = status.gather(topology.dbs)
    assert found.next_step is None and found.reason == ""
    assert found.phase == "cell-only" and found.diff is None
    assert [h.name for h in found.health] == ["cell1", "cell2"]
    assert all(h.reachable and h.synced and h.journal == 0 for h in found.health)
    # Nothing is copied yet: each cell's backlog is all its live groups.
    for h in found.health:
        with reader(topology.cell_engine(h.name), h.name) as conn:
            assert h.backlog == CELL.count(conn) > 0
    assert found.reachable
    assert [c.name for c in found.cells] == [c.name for c in status.cell_infos(topology.dbs)]
    # The command adds the advice to exactly this.
    advised = commands.status(topology.dbs)
    assert advised.next_step and advised.health == found.health


@pytest.mark.sqlite
def test_gather_shows_a_missing_cell_file_as_unreachable(
    topology: Topology, tmp_path: Path
) -> None:
    path = tmp_path / "gone.sqlite"
    with connect(topology.api_url_text, settings=topology.settings) as dbs:
        commands.add_cell(dbs, "gone", f"sqlite:///{path}", create=True)
        commands.sync_schema(dbs)
    path.unlink()
    found = status.gather(topology.dbs)
    gone = {h.name: h for h in found.health}["gone"]
    assert not gone.reachable and gone.error and "no such file" in gone.error
    assert not found.reachable
