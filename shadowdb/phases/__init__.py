"""Map each phase to the strategy that serves it: an explicit table, no discovery."""

from __future__ import annotations

from shadowdb.phases.api_only import ApiOnly
from shadowdb.phases.base import PhaseStrategy
from shadowdb.phases.cell_only import CellOnly
from shadowdb.phases.dual_write_api_reads import DualWriteApiReads
from shadowdb.phases.dual_write_cell_reads import DualWriteCellReads
from shadowdb.state import Phase

__all__ = ["STRATEGIES", "PhaseStrategy", "strategy_for"]

STRATEGIES: dict[Phase, PhaseStrategy] = {
    Phase.CELL_ONLY: CellOnly(),
    Phase.DUAL_WRITE_CELL_READS: DualWriteCellReads(),
    Phase.DUAL_WRITE_API_READS: DualWriteApiReads(),
    Phase.API_ONLY: ApiOnly(),
}


def strategy_for(phase: Phase) -> PhaseStrategy:
    """Return the strategy serving ``phase``."""
    return STRATEGIES[phase]
