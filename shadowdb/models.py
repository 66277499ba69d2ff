"""Describe every table shadowdb reads or writes, as SQLAlchemy Core metadata.

Two metadata objects, one per kind of database:

* :data:`api_metadata`: the Nova API database tables shadowdb touches
  (``instance_groups``, ``instance_group_policy``, ``instance_group_member``,
  ``cell_mappings``, ``instance_mappings``) plus shadowdb's own ``shadowdb_*`` tables.
* :data:`cell_metadata`: the Nova cell ("main") database tables (the legacy soft-delete
  group tables and ``instances``) plus shadowdb's cell-side ``shadowdb_*`` tables.

The Nova tables are transcribed from Nova's own alembic trees (``nova 34.0.0``:
``nova/db/api/migrations/versions/d67eeaabee36_initial_version.py`` and
``nova/db/main/migrations/versions/8f2f1571d55b_initial_version.py`` with the later
``instances`` revisions applied), names, types, nullability, constraints and indexes
included, so that a database shadowdb creates is indistinguishable from one Nova built.
shadowdb never alters a Nova table: the concurrency guarantees Nova lacked (no duplicate
member rows, for instance) come from locking, not from new constraints.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

__all__ = [
    "NOVA_API_TABLES",
    "NOVA_CELL_TABLES",
    "api_metadata",
    "cell_metadata",
]

_MYSQL: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8"}


def _joined_columns(constraint: sa.Constraint, table: sa.Table) -> str:
    assert isinstance(constraint, sa.UniqueConstraint)  # the convention names only "uq"
    return "0".join(column.name for column in constraint.columns)


#: Nova names a unique constraint ``uniq_<table>0<column>[0<column>...]``, and shadowdb's
#: own tables follow it, so that no constraint needs its name spelled out.
_NAMES: dict[str, Any] = {
    "joined_columns": _joined_columns,
    "uq": "uniq_%(table_name)s0%(joined_columns)s",
}


def _table(name: str, metadata: sa.MetaData, *items: sa.schema.SchemaItem) -> sa.Table:
    """Declare a table with the MySQL options every Nova and shadowdb table carries."""
    return sa.Table(name, metadata, *items, **_MYSQL)


def _serial_table(name: str, metadata: sa.MetaData, *items: sa.schema.SchemaItem) -> sa.Table:
    """Declare one of shadowdb's own tables whose rows are keyed by a serial ``id``."""
    return _table(name, metadata, sa.Column("id", sa.Integer, primary_key=True), *items)


def _medium_text() -> sa.types.TypeEngine[str]:
    return sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def _inet_small() -> sa.types.TypeEngine[str]:
    return sa.String(length=39).with_variant(postgresql.INET(), "postgresql")


def _timestamps() -> list[sa.Column[Any]]:
    return [sa.Column("created_at", sa.DateTime), sa.Column("updated_at", sa.DateTime)]


def _soft_delete_timestamps() -> list[sa.Column[Any]]:
    return [*_timestamps(), sa.Column("deleted_at", sa.DateTime)]


def _strings(*names: str) -> list[sa.Column[Any]]:
    """Declare Nova's plain strings: nullable ``VARCHAR(255)`` columns, in the order given."""
    return [sa.Column(name, sa.String(length=255)) for name in names]


def _text(name: str) -> sa.Column[Any]:
    """Declare optional free text: a reason, a detail, an error message."""
    return sa.Column(name, sa.Text, nullable=True)


def _nova_id() -> sa.Column[Any]:
    return sa.Column("id", sa.Integer, primary_key=True, nullable=False)


def _uuid(name: str, **options: Any) -> sa.Column[Any]:
    """Declare a column holding a uuid in its 36-character text form, as Nova stores them."""
    return sa.Column(name, sa.String(length=36), **options)


def _epoch() -> sa.Column[Any]:
    """Declare the phase epoch a row belongs to (shadowdb.state)."""
    return sa.Column("epoch", sa.Integer, nullable=False)


def _group_tables(metadata: sa.MetaData, *, cell: bool) -> tuple[sa.Table, sa.Table, sa.Table]:
    """Declare Nova's three instance-group tables as the API or a cell database has them.

    One shape serves both: Nova moved the tables from the cell ("main") database to the API
    database and changed only this on the way. The cell copies keep soft delete
    (``deleted_at``, and a ``deleted`` column that joins the uuid's unique key), call a
    member's instance column ``instance_id`` where the API says ``instance_uuid``, and have
    no ``rules`` on a policy.

    Returns:
        The groups, policies and members tables, in creation order (parents first).
    """

    def head() -> list[sa.Column[Any]]:
        if cell:
            return [*_soft_delete_timestamps(), sa.Column("deleted", sa.Integer), _nova_id()]
        return [*_timestamps(), _nova_id()]

    def group_id() -> sa.Column[Any]:
        return sa.Column(
            "group_id", sa.Integer, sa.ForeignKey("instance_groups.id"), nullable=False
        )

    uuid_key = ("uuid", "deleted") if cell else ("uuid",)
    rules = [] if cell else [sa.Column("rules", sa.Text)]
    instance = "instance_id" if cell else "instance_uuid"
    groups = _table(
        "instance_groups",
        metadata,
        *head(),
        *_strings("user_id", "project_id"),
        _uuid("uuid", nullable=False),
        *_strings("name"),
        sa.UniqueConstraint(*uuid_key),
    )
    policies = _table(
        "instance_group_policy",
        metadata,
        *head(),
        *_strings("policy"),
        group_id(),
        *rules,
        sa.Index("instance_group_policy_policy_idx", "policy"),
    )
    members = _table(
        "instance_group_member",
        metadata,
        *head(),
        *_strings(instance),
        group_id(),
        sa.Index("instance_group_member_instance_idx", instance),
    )
    return groups, policies, members


def _state(metadata: sa.MetaData, *own: sa.Column[Any]) -> sa.Table:
    """Declare ``shadowdb_state``: the phase and epoch this database has taken, one row (id 1).

    The API database's row is the authority and each cell's is its fence (shadowdb.fence);
    ``own`` are the columns only that kind of database keeps.
    """
    return _table(
        "shadowdb_state",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("phase", sa.String(length=32), nullable=False),
        _epoch(),
        sa.Column("changed_at", sa.DateTime, nullable=False),
        *own,
        # On Galera, the node every shadowdb write goes through (`db sync` records it).
        sa.Column("writer_node", sa.String(length=255), nullable=True),
    )


def _journal(metadata: sa.MetaData) -> sa.Table:
    """Declare ``shadowdb_journal``: the groups whose copy in the other database may lag.

    Each side journals the writes it could not carry to the other: the API database while
    it is authoritative, a cell while it is. An entry is written in the same transaction
    as the authoritative write and deleted once the other copy has been brought level.
    """
    return _serial_table(
        "shadowdb_journal",
        metadata,
        _uuid("group_uuid", nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        _epoch(),
        _text("error"),
        sa.Index("shadowdb_journal_group_uuid_idx", "group_uuid"),
    )


# --------------------------------------------------------------------------- API database

api_metadata = sa.MetaData(naming_convention=_NAMES)

api_cell_mappings = _table(
    "cell_mappings",
    api_metadata,
    *_timestamps(),
    _nova_id(),
    _uuid("uuid", nullable=False),
    *_strings("name"),
    sa.Column("transport_url", sa.Text()),
    sa.Column("database_connection", sa.Text()),
    sa.Column("disabled", sa.Boolean(create_constraint=False), default=False),
    sa.UniqueConstraint("uuid"),
    sa.Index("uuid_idx", "uuid"),
)

api_instance_mappings = _table(
    "instance_mappings",
    api_metadata,
    *_timestamps(),
    _nova_id(),
    _uuid("instance_uuid", nullable=False),
    sa.Column("cell_id", sa.Integer, nullable=True),
    sa.Column("project_id", sa.String(length=255), nullable=False),
    sa.Column("queued_for_delete", sa.Boolean(create_constraint=False), default=False),
    sa.Column("user_id", sa.String(length=255), nullable=True),
    sa.UniqueConstraint("instance_uuid"),
    sa.Index("instance_uuid_idx", "instance_uuid"),
    sa.Index("project_id_idx", "project_id"),
    sa.Index("instance_mappings_user_id_project_id_idx", "user_id", "project_id"),
    sa.ForeignKeyConstraint(columns=["cell_id"], refcolumns=["cell_mappings.id"]),
)

api_groups, api_policies, api_members = _group_tables(api_metadata, cell=False)

# shadowdb's own API-side bookkeeping.

api_state = _state(
    api_metadata,
    _uuid("default_cell_uuid", nullable=True),
    # Set by `cleanup` before it retires the cell copies: from then on api-only writers
    # stop journaling for a rollback, and rolling back needs a full reverse sync.
    sa.Column("cells_retired", sa.Boolean, nullable=False, server_default="0"),
)

api_phase_history = _serial_table(
    "shadowdb_phase_history",
    api_metadata,
    _epoch(),
    sa.Column("from_phase", sa.String(length=32), nullable=True),
    sa.Column("to_phase", sa.String(length=32), nullable=False),
    sa.Column("changed_at", sa.DateTime, nullable=False),
    sa.Column("actor", sa.String(length=255), nullable=False),
    _text("reason"),
    sa.Column("forced", sa.Boolean, nullable=False, default=False),
    _text("overridden"),
    sa.UniqueConstraint("epoch"),
)

api_journal = _journal(api_metadata)

api_backfill_chunks = _serial_table(
    "shadowdb_backfill_chunks",
    api_metadata,
    # A range of cell group ids the backfill scans; claimed with SKIP LOCKED by one
    # process at a time, ``next_id`` the resume point after a crash.
    _uuid("cell_uuid", nullable=False),
    sa.Column("start_id", sa.Integer, nullable=False),
    sa.Column("end_id", sa.Integer, nullable=False),
    sa.Column("next_id", sa.Integer, nullable=False),
    sa.Column("done", sa.Boolean, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("cell_uuid", "start_id"),
)

api_backfill_conflicts = _serial_table(
    "shadowdb_backfill_conflicts",
    api_metadata,
    # A cell group the backfill refused to copy (live in two cells, or an API copy that
    # disagrees outside a journal); retried on every run until it resolves.
    _uuid("group_uuid", nullable=False),
    _uuid("cell_uuid", nullable=False),
    sa.Column("kind", sa.String(length=64), nullable=False),
    _text("detail"),
    sa.Column("found_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("group_uuid", "cell_uuid"),
)

api_diff_results = _serial_table(
    "shadowdb_diff_results",
    api_metadata,
    # One row per diff-report run; the newest gates `phase set` (shadowdb.switcher).
    # ``outcome`` is "clean", "differences" or "incomplete"; ``scope`` "all" or a cell name;
    # ``counts`` a JSON object of differing keys per kind.
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime, nullable=False),
    sa.Column("phase", sa.String(length=32), nullable=False),
    _epoch(),
    sa.Column("scope", sa.String(length=255), nullable=False),
    sa.Column("outcome", sa.String(length=16), nullable=False),
    sa.Column("differences", sa.Integer, nullable=False),
    _text("counts"),
    sa.Column("rows_api", sa.Integer, nullable=False),
    sa.Column("rows_cells", sa.Integer, nullable=False),
    sa.Column("repaired", sa.Integer, nullable=False),
    sa.Column("actor", sa.String(length=255), nullable=False),
    _text("detail"),
    # The uuids of the cells the run compared, comma-separated (gates need every cell).
    _text("cells"),
    # Differences with no pending journal entry to explain them (writes in flight).
    sa.Column("unexplained", sa.Integer, nullable=True),
    # Of those, in api-only: cell groups the API database never had (no tombstone).
    sa.Column("never_copied", sa.Integer, nullable=True),
)

api_tombstones = _table(
    "shadowdb_tombstones",
    api_metadata,
    # A group deleted from the API database: absence there means "deleted", never "not
    # migrated yet". Written in the transaction of the deletion, cleared if the uuid is
    # inserted again, purged by `cleanup` once the cells are retired.
    _uuid("uuid", primary_key=True),
    _epoch(),
    sa.Column("deleted_at", sa.DateTime, nullable=False),
)

# --------------------------------------------------------------------------- cell database

cell_metadata = sa.MetaData(naming_convention=_NAMES)

cell_groups, cell_policies, cell_members = _group_tables(cell_metadata, cell=True)

cell_instances = _table(
    "instances",
    cell_metadata,
    *_soft_delete_timestamps(),
    _nova_id(),
    sa.Column("internal_id", sa.Integer),
    *_strings("user_id", "project_id", "image_ref", "kernel_id", "ramdisk_id"),
    sa.Column("launch_index", sa.Integer),
    *_strings("key_name"),
    sa.Column("key_data", _medium_text()),
    sa.Column("power_state", sa.Integer),
    *_strings("vm_state"),
    sa.Column("memory_mb", sa.Integer),
    sa.Column("vcpus", sa.Integer),
    *_strings("hostname", "host"),
    sa.Column("user_data", _medium_text()),
    *_strings("reservation_id"),
    sa.Column("launched_at", sa.DateTime),
    sa.Column("terminated_at", sa.DateTime),
    *_strings("display_name", "display_description", "availability_zone"),
    sa.Column("locked", sa.Boolean),
    *_strings("os_type"),
    sa.Column("launched_on", _medium_text()),
    sa.Column("instance_type_id", sa.Integer),
    *_strings("vm_mode"),
    _uuid("uuid", nullable=False),
    *_strings("architecture", "root_device_name"),
    sa.Column("access_ip_v4", _inet_small()),
    sa.Column("access_ip_v6", _inet_small()),
    *_strings("config_drive", "task_state", "default_ephemeral_device", "default_swap_device"),
    sa.Column("progress", sa.Integer),
    sa.Column("auto_disk_config", sa.Boolean),
    sa.Column("shutdown_terminate", sa.Boolean),
    sa.Column("disable_terminate", sa.Boolean),
    sa.Column("root_gb", sa.Integer),
    sa.Column("ephemeral_gb", sa.Integer),
    *_strings("cell_name", "node"),
    sa.Column("deleted", sa.Integer),
    sa.Column("locked_by", sa.Enum("owner", "admin", name="instances0locked_by")),
    sa.Column("cleaned", sa.Integer, default=0),
    _uuid("ephemeral_key_uuid"),
    sa.Column("hidden", sa.Boolean(create_constraint=False)),
    sa.Column("compute_id", sa.BigInteger(), nullable=True),
    sa.Index("instances_reservation_id_idx", "reservation_id"),
    sa.Index("instances_terminated_at_launched_at_idx", "terminated_at", "launched_at"),
    sa.Index("instances_task_state_updated_at_idx", "task_state", "updated_at"),
    sa.Index("instances_uuid_deleted_idx", "uuid", "deleted"),
    sa.Index("instances_host_node_deleted_idx", "host", "node", "deleted"),
    sa.Index("instances_host_deleted_cleaned_idx", "host", "deleted", "cleaned"),
    sa.Index("instances_project_id_deleted_idx", "project_id", "deleted"),
    sa.Index("instances_deleted_created_at_idx", "deleted", "created_at"),
    sa.Index("instances_project_id_idx", "project_id"),
    sa.Index("instances_updated_at_project_id_idx", "updated_at", "project_id"),
    sa.Index("instances_compute_id_deleted_idx", "compute_id", "deleted"),
    sa.UniqueConstraint("uuid"),
)

cell_journal = _journal(cell_metadata)

cell_state = _state(
    cell_metadata,
    # The epoch of a change prepared here but perhaps not committed in the API database.
    sa.Column("next_epoch", sa.Integer, nullable=True),
)

cell_group_locks = _table(
    "shadowdb_group_locks",
    cell_metadata,
    # One row per group uuid ever written through shadowdb in this cell: the identity
    # lock every writer of the group takes, whether or not a group row exists anywhere.
    _uuid("uuid", primary_key=True),
)

cell_child_map = _table(
    "shadowdb_child_map",
    cell_metadata,
    # Which group each live policy ('p') and member ('m') row belonged to when the map was
    # built, so that a backfill batch finds its children without scanning Nova's tables,
    # which have no index on group_id (shadowdb.childmap).
    sa.Column("kind", sa.String(length=1), primary_key=True),
    sa.Column("child_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("group_id", sa.Integer, nullable=False),
    sa.Index("shadowdb_child_map_kind_group_id_idx", "kind", "group_id"),
)

cell_child_map_built = _table(
    "shadowdb_child_map_built",
    cell_metadata,
    # A single row: the phase epoch the child map was built at (NULL: never built).
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("epoch", sa.Integer, nullable=True),
    sa.Column("built_at", sa.DateTime, nullable=True),
)

#: Nova's own tables, in creation order (parents first); shadowdb adopts them as they are.
NOVA_API_TABLES = (
    "cell_mappings",
    "instance_mappings",
    "instance_groups",
    "instance_group_policy",
    "instance_group_member",
)
NOVA_CELL_TABLES = (
    "instances",
    "instance_groups",
    "instance_group_policy",
    "instance_group_member",
)
