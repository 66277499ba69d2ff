"""Answer the scheduler's question: on which hosts do a group's instances run?

Members are routed to their cells through ``instance_mappings`` (members without a
mapping are asked of every cell); each cell answers with the distinct, non-null ``host``
of its live instances among them, and cells are asked concurrently. A cell that fails
is an error the caller sees, or, with ``allow_partial``, an explicit and logged partial
answer: never a silent skip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection

from shadowdb.databases import Cell, Databases, reader
from shadowdb.errors import CellUnavailable, ShadowDBError
from shadowdb.models import api_instance_mappings, cell_instances
from shadowdb.queries import CHUNK

__all__ = ["Hosts", "count_members_by_user", "hosts_of"]

log = structlog.get_logger(__name__)

_i = cell_instances
#: A live instance, as Nova's ``deleted=False`` filter means it.
_LIVE = sa.and_(_i.c.deleted == 0, sa.or_(_i.c.vm_state != "soft-delete", _i.c.vm_state.is_(None)))


class Hosts(list[str]):
    """The hosts of a group; ``failed_cells`` names the cells that did not answer.

    ``failed_cells`` is only ever non-empty when the caller asked for a partial answer.
    """

    failed_cells: tuple[str, ...] = ()

    @property
    def partial(self) -> bool:
        """True if some cell did not answer."""
        return bool(self.failed_cells)


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]


def route(dbs: Databases, members: Sequence[str]) -> dict[Cell, list[str]]:
    """Group ``members`` by the cell ``instance_mappings`` puts them in.

    Members with no mapping (or a mapping to an unknown cell) go to every cell.
    """
    m = api_instance_mappings
    cell_of: dict[str, int | None] = {}
    with reader(dbs.api, dbs.api_label) as conn:
        for chunk in _chunks(members):
            for uuid, cell_id in conn.execute(
                sa.select(m.c.instance_uuid, m.c.cell_id).where(m.c.instance_uuid.in_(chunk))
            ):
                cell_of[uuid] = cell_id
    routed: dict[Cell, list[str]] = {}
    everywhere: list[str] = []
    for uuid in members:
        cell_id = cell_of.get(uuid)
        cell = dbs.cell_by_id(cell_id) if cell_id is not None else None
        if cell is None:
            everywhere.append(uuid)
        else:
            routed.setdefault(cell, []).append(uuid)
    if everywhere:
        for cell in dbs.cells:
            routed.setdefault(cell, []).extend(everywhere)
    return routed


def _hosts_in(conn: Connection, uuids: Sequence[str], project_id: str | None) -> set[str]:
    hosts: set[str] = set()
    for chunk in _chunks(uuids):
        stmt = (
            sa.select(_i.c.host)
            .distinct()
            .where(_i.c.uuid.in_(chunk), _LIVE, _i.c.host.is_not(None))
        )
        if project_id is not None:
            stmt = stmt.where(_i.c.project_id == project_id)
        hosts.update(row[0] for row in conn.execute(stmt))
    return hosts


def hosts_of(
    dbs: Databases,
    members: Sequence[str],
    *,
    exclude: Iterable[str] | None = None,
    project_id: str | None = None,
    allow_partial: bool = False,
) -> Hosts:
    """Return the distinct hosts of the live instances among ``members``.

    Args:
        members: the group's member instance uuids.
        exclude: uuids dropped before any query.
        project_id: restrict to one project's instances (non-admin callers).
        allow_partial: answer with the cells that did answer instead of raising.

    Raises:
        CellUnavailable: a cell failed and ``allow_partial`` is false.
    """
    skip = set(exclude or ())
    wanted = [u for u in dict.fromkeys(members) if u not in skip]
    result = Hosts()
    if not wanted:
        return result
    routed = route(dbs, wanted)

    def ask(cell: Cell) -> set[str]:
        with reader(cell.engine, cell.label) as conn:
            return _hosts_in(conn, routed[cell], project_id)

    failed: list[str] = []
    found: set[str] = set()
    cells = list(routed)
    if len(cells) == 1:
        outcomes = [_try(ask, cells[0])]
    else:
        with ThreadPoolExecutor(max_workers=min(8, len(cells))) as pool:
            outcomes = list(pool.map(lambda c: _try(ask, c), cells))
    for cell, (hosts, error) in zip(cells, outcomes, strict=True):
        if error is not None:
            failed.append(cell.name)
            log.warning("cell_unavailable", cell=cell.name, error=error)
        else:
            found |= hosts
    if failed and not allow_partial:
        raise CellUnavailable(failed)
    result.extend(sorted(found))
    result.failed_cells = tuple(failed)
    if failed:
        log.warning("partial_hosts", failed_cells=failed, hosts=len(found))
    return result


def _try(ask: Callable[[Cell], set[str]], cell: Cell) -> tuple[set[str], str | None]:
    try:
        return ask(cell), None
    except (ShadowDBError, sa.exc.DBAPIError) as err:
        return set(), str(err).splitlines()[0] if str(err) else type(err).__name__


def count_members_by_user(dbs: Databases, members: Sequence[str], user_id: str) -> int:
    """Count the live instances among ``members`` that belong to ``user_id``.

    Raises:
        CellUnavailable: a cell that may hold members could not be asked.
    """
    wanted = list(dict.fromkeys(members))
    if not wanted:
        return 0
    total = 0
    failed: list[str] = []
    for cell, uuids in route(dbs, wanted).items():
        try:
            with reader(cell.engine, cell.label) as conn:
                for chunk in _chunks(uuids):
                    total += int(
                        conn.execute(
                            sa.select(sa.func.count())
                            .select_from(_i)
                            .where(_i.c.uuid.in_(chunk), _LIVE, _i.c.user_id == user_id)
                        ).scalar_one()
                    )
        except (ShadowDBError, sa.exc.DBAPIError):
            failed.append(cell.name)
    if failed:
        raise CellUnavailable(failed)
    return total
