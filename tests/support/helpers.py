"""Helpers for tests: put a deployment in a phase, seed legacy rows, dump databases."""

from __future__ import annotations

import datetime as dt
import uuid as uuidlib
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from shadowdb import models
from shadowdb.databases import CELL0_UUID, Databases, writer
from shadowdb.state import Phase, utcnow
from shadowdb.testing import StatementCounter

NOW = dt.datetime(2026, 1, 2, 3, 4, 5)


def new_uuid() -> str:
    return str(uuidlib.uuid4())


def map_cell0(dbs: Databases, url: sa.URL) -> None:
    """Map cell0 as ``nova-manage cell_v2 map_cell0`` does: its fixed uuid, first."""
    now = dt.datetime(2026, 1, 1)
    with dbs.api.begin() as conn:
        conn.execute(
            models.api_cell_mappings.insert().values(
                created_at=now,
                updated_at=now,
                uuid=CELL0_UUID,
                name="cell0",
                transport_url="none:///",
                database_connection=url.render_as_string(hide_password=False),
                disabled=False,
            )
        )


def put_in_phase(dbs: Databases, phase: Phase) -> None:
    """Move the deployment to ``phase`` directly (no guards): tests of the layer.

    Every database's phase row moves, as ``phase set`` moves them (the fence).
    """
    from shadowdb.fence import settle

    with writer(dbs.api) as conn:
        epoch = conn.execute(sa.select(models.api_state.c.epoch)).scalar_one()
        conn.execute(
            models.api_state.update().values(
                phase=phase.value,
                epoch=epoch + 1,
                changed_at=utcnow() - dt.timedelta(minutes=1),
            )
        )
    settle(dbs)
    dbs.phases.invalidate()


def seed_cell_group(
    engine: sa.Engine,
    *,
    uuid: str | None = None,
    name: str = "legacy",
    project_id: str = "p1",
    user_id: str = "u1",
    policies: Sequence[str] = ("anti-affinity",),
    members: Sequence[str] = (),
    created_at: dt.datetime = NOW,
    deleted: bool = False,
) -> str:
    """Insert a legacy group straight into a cell database, as Nova would have."""
    uuid = uuid or new_uuid()
    with engine.begin() as conn:
        gid = conn.execute(
            models.cell_groups.insert().values(
                uuid=uuid,
                name=name,
                project_id=project_id,
                user_id=user_id,
                created_at=created_at,
                deleted=0,
            )
        ).inserted_primary_key[0]
        for policy in policies:
            conn.execute(
                models.cell_policies.insert().values(
                    group_id=gid, policy=policy, deleted=0, created_at=created_at
                )
            )
        for member in members:
            conn.execute(
                models.cell_members.insert().values(
                    group_id=gid, instance_id=member, deleted=0, created_at=created_at
                )
            )
        if deleted:
            conn.execute(
                models.cell_groups.update()
                .where(models.cell_groups.c.id == gid)
                .values(deleted=gid, deleted_at=created_at)
            )
    return uuid


def seed_api_group(
    engine: sa.Engine,
    *,
    uuid: str | None = None,
    name: str = "api-group",
    project_id: str = "p1",
    user_id: str = "u1",
    policies: Sequence[str] = ("affinity",),
    members: Sequence[str] = (),
    created_at: dt.datetime = NOW,
) -> str:
    """Insert a group straight into the API database."""
    uuid = uuid or new_uuid()
    with engine.begin() as conn:
        gid = conn.execute(
            models.api_groups.insert().values(
                uuid=uuid, name=name, project_id=project_id, user_id=user_id, created_at=created_at
            )
        ).inserted_primary_key[0]
        for policy in policies:
            conn.execute(models.api_policies.insert().values(group_id=gid, policy=policy))
        for member in members:
            conn.execute(models.api_members.insert().values(group_id=gid, instance_uuid=member))
    return uuid


def seed_instance(
    engine: sa.Engine,
    uuid: str,
    *,
    host: str | None,
    project_id: str = "p1",
    user_id: str = "u1",
    vm_state: str | None = "active",
    deleted: bool = False,
) -> None:
    """Insert an instance row into a cell database."""
    with engine.begin() as conn:
        iid = conn.execute(
            models.cell_instances.insert().values(
                uuid=uuid,
                host=host,
                project_id=project_id,
                user_id=user_id,
                vm_state=vm_state,
                deleted=0,
                created_at=NOW,
            )
        ).inserted_primary_key[0]
        if deleted:
            conn.execute(
                models.cell_instances.update()
                .where(models.cell_instances.c.id == iid)
                .values(deleted=iid)
            )


def map_instance(
    dbs: Databases, instance_uuid: str, cell_name: str, project_id: str = "p1"
) -> None:
    """Record which cell an instance lives in (``instance_mappings``)."""
    cell = dbs.cell(cell_name)
    with dbs.api.begin() as conn:
        conn.execute(
            models.api_instance_mappings.insert().values(
                instance_uuid=instance_uuid, cell_id=cell.id, project_id=project_id
            )
        )


def dump(engine: sa.Engine, metadata: sa.MetaData) -> dict[str, list[tuple[Any, ...]]]:
    """Return every row of every table of ``metadata``, sorted, for before/after checks."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            rows = conn.execute(sa.select(table)).all()
            out[table.name] = sorted((tuple(r) for r in rows), key=repr)
    return out


def group_state(engine: sa.Engine, side: str, uuid: str) -> tuple[Any, ...] | None:
    """Return (name, user, project, sorted policies, sorted members) of one live copy."""
    from shadowdb.queries import API, CELL

    tables = API if side == "api" else CELL
    with engine.connect() as conn:
        record = tables.get(conn, uuid)
    if record is None:
        return None
    return (
        record.name,
        record.user_id,
        record.project_id,
        tuple(sorted(record.policies)),
        tuple(sorted(record.members)),
    )


# --------------------------------------------------------------------------- object-layer tests


def writes_api(phase: Phase) -> bool:
    """Tell whether ``phase`` writes the API copy of a group."""
    return phase is not Phase.CELL_ONLY


def writes_cell(phase: Phase) -> bool:
    """Tell whether ``phase`` writes the cell copy of a group."""
    return phase is not Phase.API_ONLY


def reads_api(phase: Phase) -> bool:
    """Tell whether ``phase`` answers single reads from the API database first."""
    return phase in (Phase.DUAL_WRITE_API_READS, Phase.API_ONLY)


def engines_of(dbs: Databases) -> dict[str, sa.Engine]:
    """Return every engine of a deployment: ``"api"`` and one per cell name."""
    return {"api": dbs.api, **{cell.name: cell.engine for cell in dbs.cells}}


def dump_all(dbs: Databases) -> dict[str, dict[str, list[tuple[Any, ...]]]]:
    """Dump the API database and every cell (keyed ``"api"`` and by cell name)."""
    out = {"api": dump(dbs.api, models.api_metadata)}
    for cell in dbs.cells:
        out[cell.name] = dump(cell.engine, models.cell_metadata)
    return out


#: The former name of :class:`shadowdb.testing.StatementCounter`, for the tests that use it.
StatementLog = StatementCounter


def _side_tables(side: str) -> tuple[sa.Table, sa.Table, sa.Table, str]:
    if side == "api":
        return models.api_groups, models.api_policies, models.api_members, "instance_uuid"
    return models.cell_groups, models.cell_policies, models.cell_members, "instance_id"


def group_rows(engine: sa.Engine, side: str, uuid: str) -> list[dict[str, Any]]:
    """Return every ``instance_groups`` row with ``uuid`` (live or soft-deleted), by id."""
    groups, _, _, _ = _side_tables(side)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(groups).where(groups.c.uuid == uuid).order_by(groups.c.id)
        ).all()
    return [dict(r._mapping) for r in rows]


def child_rows(engine: sa.Engine, side: str, group_id: int) -> dict[str, list[dict[str, Any]]]:
    """Return every policy and member row of group row ``group_id``, by id.

    Member rows carry the instance uuid under ``"uuid"`` whatever the side calls it.
    """
    _, policies, members, column = _side_tables(side)
    with engine.connect() as conn:
        prows = conn.execute(
            sa.select(policies).where(policies.c.group_id == group_id).order_by(policies.c.id)
        ).all()
        mrows = conn.execute(
            sa.select(members).where(members.c.group_id == group_id).order_by(members.c.id)
        ).all()
    return {
        "policies": [dict(r._mapping) for r in prows],
        "members": [{**dict(r._mapping), "uuid": r._mapping[column]} for r in mrows],
    }


def live_members(engine: sa.Engine, side: str, uuid: str) -> list[str] | None:
    """Return the member uuids of the live copy of group ``uuid`` in row order, or None."""
    live = [r for r in group_rows(engine, side, uuid) if not r.get("deleted")]
    if not live:
        return None
    assert len(live) == 1, f"{len(live)} live copies of {uuid} in one {side} database"
    rows = child_rows(engine, side, live[0]["id"])["members"]
    return [r["uuid"] for r in rows if not r.get("deleted")]


def cutover_through(dbs: Databases, last: str = "api-only") -> None:
    """Walk a deployment from ``cell-only`` through the real guards up to ``last``.

    Each move as the runbook makes it: ``backfill`` in ``dual-write-cell-reads``, and a
    clean ``diff-report`` before every move out of a dual-write phase and once in ``last``.
    """
    from shadowdb import commands
    from shadowdb.backfill import backfill

    for phase in ("dual-write-cell-reads", "dual-write-api-reads", "api-only"):
        commands.set_phase(dbs, phase)
        if phase == "dual-write-cell-reads":
            backfill(dbs, sleep=lambda _s: None)
        assert commands.diff_report(dbs).clean
        if phase == last:
            return
