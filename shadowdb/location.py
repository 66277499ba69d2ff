"""Find the cell that holds a group's live copy, or the cell a new group goes to."""

from __future__ import annotations

import dataclasses

import sqlalchemy as sa

from shadowdb.databases import Cell, Databases, cell0_last, choose_default
from shadowdb.errors import DatabaseUnreachable, NoDefaultCell
from shadowdb.queries import CELL
from shadowdb.state import PhaseState
from shadowdb.transactions import read_again_once

__all__ = ["Location", "default_cell", "locate"]


def default_cell(dbs: Databases, state: PhaseState) -> Cell:
    """Return the cell where new groups' cell copies are written (never cell0).

    Raises:
        NoDefaultCell: no cell besides cell0 is registered, or several are and none was
            chosen (``shadowdb cell set-default NAME``).
    """
    chosen = choose_default(dbs.cells, state.default_cell_uuid)
    if chosen is None:
        raise NoDefaultCell([c.name for c in dbs.cells if not c.is_cell0])
    return chosen


@dataclasses.dataclass(frozen=True)
class Location:
    """Where a group's live cell copy is, and which cells could not be asked."""

    cell: Cell | None
    unreachable: tuple[Cell, ...]


def locate(dbs: Databases, group_uuid: str) -> Location:
    """Find the cell holding ``group_uuid``'s live copy, asking each cell in turn, cell0 last."""
    unreachable: list[Cell] = []
    g = CELL.groups
    stmt = sa.select(g.c.id).where(g.c.uuid == group_uuid, g.c.deleted == 0).limit(1)
    for cell in cell0_last(dbs.cells):
        try:
            # One statement: the hot-path engine spares it BEGIN and ROLLBACK.
            engine = dbs.read_engine(cell.engine)
            found = read_again_once(engine, cell.label, lambda conn: conn.execute(stmt).first())
            if found is not None:
                return Location(cell, tuple(unreachable))
        except DatabaseUnreachable:
            unreachable.append(cell)
    return Location(None, tuple(unreachable))
