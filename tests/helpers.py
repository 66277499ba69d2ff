"""Helpers for tests: put a deployment in a phase, seed legacy rows, dump databases."""

from __future__ import annotations

import datetime as dt
import uuid as uuidlib
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from shadowdb import models
from shadowdb.databases import Databases
from shadowdb.phase import Phase, utcnow

NOW = dt.datetime(2026, 1, 2, 3, 4, 5)


def new_uuid() -> str:
    return str(uuidlib.uuid4())


def put_in_phase(dbs: Databases, phase: Phase) -> None:
    """Move the deployment to ``phase`` directly (no guards, no wait): tests of the layer."""
    with dbs.api.begin() as conn:
        epoch = conn.execute(sa.select(models.api_state.c.epoch)).scalar_one()
        conn.execute(
            models.api_state.update().values(
                phase=phase.value, epoch=epoch + 1, changed_at=utcnow()
            )
        )
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
