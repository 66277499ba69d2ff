from __future__ import annotations

from shadowdb import commands
from tests.conftest import Topology


def test_topology_has_two_cells_in_cell_only(topology: Topology) -> None:
    st = commands.status(topology.dbs)
    assert st.phase == "cell-only"
    assert [c.name for c in st.cells] == ["cell1", "cell2"]
    assert [c.default for c in st.cells] == [True, False]
