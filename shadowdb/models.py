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


def _medium_text() -> sa.types.TypeEngine[str]:
    return sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def _inet_small() -> sa.types.TypeEngine[str]:
    return sa.String(length=39).with_variant(postgresql.INET(), "postgresql")


def _timestamps() -> list[sa.Column[object]]:
    return [sa.Column("created_at", sa.DateTime), sa.Column("updated_at", sa.DateTime)]


def _soft_delete_timestamps() -> list[sa.Column[object]]:
    return [*_timestamps(), sa.Column("deleted_at", sa.DateTime)]


# --------------------------------------------------------------------------- API database

api_metadata = sa.MetaData()

api_cell_mappings = sa.Table(
    "cell_mappings",
    api_metadata,
    *_timestamps(),
    sa.Column("id", sa.Integer, primary_key=True, nullable=False),
    sa.Column("uuid", sa.String(length=36), nullable=False),
    sa.Column("name", sa.String(length=255)),
    sa.Column("transport_url", sa.Text()),
    sa.Column("database_connection", sa.Text()),
    sa.Column("disabled", sa.Boolean(create_constraint=False), default=False),
    sa.UniqueConstraint("uuid", name="uniq_cell_mappings0uuid"),
    sa.Index("uuid_idx", "uuid"),
    **_MYSQL,
)

api_instance_mappings = sa.Table(
    "instance_mappings",
    api_metadata,
    *_timestamps(),
    sa.Column("id", sa.Integer, primary_key=True, nullable=False),
    sa.Column("instance_uuid", sa.String(length=36), nullable=False),
    sa.Column("cell_id", sa.Integer, nullable=True),
    sa.Column("project_id", sa.String(length=255), nullable=False),
    sa.Column("queued_for_delete", sa.Boolean(create_constraint=False), default=False),
    sa.Column("user_id", sa.String(length=255), nullable=True),
    sa.UniqueConstraint("instance_uuid", name="uniq_instance_mappings0instance_uuid"),
    sa.Index("instance_uuid_idx", "instance_uuid"),
    sa.Index("project_id_idx", "project_id"),
    sa.Index("instance_mappings_user_id_project_id_idx", "user_id", "project_id"),
    sa.ForeignKeyConstraint(columns=["cell_id"], refcolumns=["cell_mappings.id"]),
    **_MYSQL,
)

api_groups = sa.Table(
    "instance_groups",
    api_metadata,
    *_timestamps(),
    sa.Column("id", sa.Integer, primary_key=True, nullable=False),
    sa.Column("user_id", sa.String(length=255)),
    sa.Column("project_id", sa.String(length=255)),
    sa.Column("uuid", sa.String(length=36), nullable=False),
    sa.Column("name", sa.String(length=255)),
    sa.UniqueConstraint("uuid", name="uniq_instance_groups0uuid"),
    **_MYSQL,
)

api_policies = sa.Table(
    "instance_group_policy",
    api_metadata,
    *_timestamps(),
    sa.Column("id", sa.Integer, primary_key=True, nullable=False),
    sa.Column("policy", sa.String(length=255)),
    sa.Column("group_id", sa.Integer, sa.ForeignKey("instance_groups.id"), nullable=False),
    sa.Column("rules", sa.Text),
    sa.Index("instance_group_policy_policy_idx", "policy"),
    **_MYSQL,
)

api_members = sa.Table(
    "instance_group_member",
    api_metadata,
    *_timestamps(),
    sa.Column("id", sa.Integer, primary_key=True, nullable=False),
    sa.Column("instance_uuid", sa.String(length=255)),
    sa.Column("group_id", sa.Integer, sa.ForeignKey("instance_groups.id"), nullable=False),
    sa.Index("instance_group_member_instance_idx", "instance_uuid"),
    **_MYSQL,
)

# shadowdb's own API-side bookkeeping.

api_state = sa.Table(
    "shadowdb_state",
    api_metadata,
    # A single row (id = 1): the current phase and its epoch.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("phase", sa.String(length=32), nullable=False),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("changed_at", sa.DateTime, nullable=False),
    sa.Column("default_cell_uuid", sa.String(length=36), nullable=True),
    # Set by `cleanup` before it retires the cell copies: from then on api-only writers
    # stop journaling for a rollback, and rolling back needs a full reverse sync.
    sa.Column("cells_retired", sa.Boolean, nullable=False, server_default="0"),
    # On Galera, the node every shadowdb write goes through (`db sync` records it).
    sa.Column("writer_node", sa.String(length=255), nullable=True),
    **_MYSQL,
)

api_phase_history = sa.Table(
    "shadowdb_phase_history",
    api_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("from_phase", sa.String(length=32), nullable=True),
    sa.Column("to_phase", sa.String(length=32), nullable=False),
    sa.Column("changed_at", sa.DateTime, nullable=False),
    sa.Column("actor", sa.String(length=255), nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("forced", sa.Boolean, nullable=False, default=False),
    sa.Column("overridden", sa.Text, nullable=True),
    sa.UniqueConstraint("epoch", name="uniq_shadowdb_phase_history0epoch"),
    **_MYSQL,
)

api_journal = sa.Table(
    "shadowdb_journal",
    api_metadata,
    # A group whose cell copy may lag its API copy: written in the same transaction as
    # the API write, deleted once the cell copy has been brought level.
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("group_uuid", sa.String(length=36), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Index("shadowdb_journal_group_uuid_idx", "group_uuid"),
    **_MYSQL,
)

api_backfill_chunks = sa.Table(
    "shadowdb_backfill_chunks",
    api_metadata,
    # A range of cell group ids the backfill scans; claimed with SKIP LOCKED by one
    # process at a time, ``next_id`` the resume point after a crash.
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("cell_uuid", sa.String(length=36), nullable=False),
    sa.Column("start_id", sa.Integer, nullable=False),
    sa.Column("end_id", sa.Integer, nullable=False),
    sa.Column("next_id", sa.Integer, nullable=False),
    sa.Column("done", sa.Boolean, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint(
        "cell_uuid", "start_id", name="uniq_shadowdb_backfill_chunks0cell_uuid0start_id"
    ),
    **_MYSQL,
)

api_backfill_conflicts = sa.Table(
    "shadowdb_backfill_conflicts",
    api_metadata,
    # A cell group the backfill refused to copy (live in two cells, or an API copy that
    # disagrees outside a journal); retried on every run until it resolves.
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("group_uuid", sa.String(length=36), nullable=False),
    sa.Column("cell_uuid", sa.String(length=36), nullable=False),
    sa.Column("kind", sa.String(length=64), nullable=False),
    sa.Column("detail", sa.Text, nullable=True),
    sa.Column("found_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint(
        "group_uuid", "cell_uuid", name="uniq_shadowdb_backfill_conflicts0group_uuid0cell_uuid"
    ),
    **_MYSQL,
)

api_diff_results = sa.Table(
    "shadowdb_diff_results",
    api_metadata,
    # One row per diff-report run; the newest gates `phase set` (shadowdb.switcher).
    # ``outcome`` is "clean", "differences" or "incomplete"; ``scope`` "all" or a cell name;
    # ``counts`` a JSON object of differing keys per kind.
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime, nullable=False),
    sa.Column("phase", sa.String(length=32), nullable=False),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("scope", sa.String(length=255), nullable=False),
    sa.Column("outcome", sa.String(length=16), nullable=False),
    sa.Column("differences", sa.Integer, nullable=False),
    sa.Column("counts", sa.Text, nullable=True),
    sa.Column("rows_api", sa.Integer, nullable=False),
    sa.Column("rows_cells", sa.Integer, nullable=False),
    sa.Column("repaired", sa.Integer, nullable=False),
    sa.Column("actor", sa.String(length=255), nullable=False),
    sa.Column("detail", sa.Text, nullable=True),
    # The uuids of the cells the run compared, comma-separated (gates need every cell).
    sa.Column("cells", sa.Text, nullable=True),
    # Differences with no pending journal entry to explain them (writes in flight).
    sa.Column("unexplained", sa.Integer, nullable=True),
    # Of those, in api-only: cell groups the API database never had (no tombstone).
    sa.Column("never_copied", sa.Integer, nullable=True),
    **_MYSQL,
)

api_tombstones = sa.Table(
    "shadowdb_tombstones",
    api_metadata,
    # A group deleted from the API database: absence there means "deleted", never "not
    # migrated yet". Written in the transaction of the deletion, cleared if the uuid is
    # inserted again, purged by `cleanup` once the cells are retired.
    sa.Column("uuid", sa.String(length=36), primary_key=True),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("deleted_at", sa.DateTime, nullable=False),
    **_MYSQL,
)

# --------------------------------------------------------------------------- cell database

cell_metadata = sa.MetaData()

cell_groups = sa.Table(
    "instance_groups",
    cell_metadata,
    *_soft_delete_timestamps(),
    sa.Column("deleted", sa.Integer),
    sa.Column("id", sa.Integer, primary_key=True, nullable=False),
    sa.Column("user_id", sa.String(length=255)),
    sa.Column("project_id", sa.String(length=255)),
    sa.Column("uuid", sa.String(length=36), nullable=False),
    sa.Column("name", sa.String(length=255)),
    sa.UniqueConstraint("uuid", "deleted", name="uniq_instance_groups0uuid0deleted"),
    **_MYSQL,
)

cell_policies = sa.Table(
    "instance_group_policy",
    cell_metadata,
    *_soft_delete_timestamps(),
    sa.Column("deleted", sa.Integer),
    sa.Column("id", sa.Integer, primary_key=True, nullable=False),
    sa.Column("policy", sa.String(length=255)),
    sa.Column("group_id", sa.Integer, sa.ForeignKey("instance_groups.id"), nullable=False),
    sa.Index("instance_group_policy_policy_idx", "policy"),
    **_MYSQL,
)

cell_members = sa.Table(
    "instance_group_member",
    cell_metadata,
    *_soft_delete_timestamps(),
    sa.Column("deleted", sa.Integer),
    sa.Column("id", sa.Integer, primary_key=True, nullable=False),
    sa.Column("instance_id", sa.String(length=255)),
    sa.Column("group_id", sa.Integer, sa.ForeignKey("instance_groups.id"), nullable=False),
    sa.Index("instance_group_member_instance_idx", "instance_id"),
    **_MYSQL,
)

cell_instances = sa.Table(
    "instances",
    cell_metadata,
    *_soft_delete_timestamps(),
    sa.Column("id", sa.Integer, primary_key=True, nullable=False),
    sa.Column("internal_id", sa.Integer),
    sa.Column("user_id", sa.String(length=255)),
    sa.Column("project_id", sa.String(length=255)),
    sa.Column("image_ref", sa.String(length=255)),
    sa.Column("kernel_id", sa.String(length=255)),
    sa.Column("ramdisk_id", sa.String(length=255)),
    sa.Column("launch_index", sa.Integer),
    sa.Column("key_name", sa.String(length=255)),
    sa.Column("key_data", _medium_text()),
    sa.Column("power_state", sa.Integer),
    sa.Column("vm_state", sa.String(length=255)),
    sa.Column("memory_mb", sa.Integer),
    sa.Column("vcpus", sa.Integer),
    sa.Column("hostname", sa.String(length=255)),
    sa.Column("host", sa.String(length=255)),
    sa.Column("user_data", _medium_text()),
    sa.Column("reservation_id", sa.String(length=255)),
    sa.Column("launched_at", sa.DateTime),
    sa.Column("terminated_at", sa.DateTime),
    sa.Column("display_name", sa.String(length=255)),
    sa.Column("display_description", sa.String(length=255)),
    sa.Column("availability_zone", sa.String(length=255)),
    sa.Column("locked", sa.Boolean),
    sa.Column("os_type", sa.String(length=255)),
    sa.Column("launched_on", _medium_text()),
    sa.Column("instance_type_id", sa.Integer),
    sa.Column("vm_mode", sa.String(length=255)),
    sa.Column("uuid", sa.String(length=36), nullable=False),
    sa.Column("architecture", sa.String(length=255)),
    sa.Column("root_device_name", sa.String(length=255)),
    sa.Column("access_ip_v4", _inet_small()),
    sa.Column("access_ip_v6", _inet_small()),
    sa.Column("config_drive", sa.String(length=255)),
    sa.Column("task_state", sa.String(length=255)),
    sa.Column("default_ephemeral_device", sa.String(length=255)),
    sa.Column("default_swap_device", sa.String(length=255)),
    sa.Column("progress", sa.Integer),
    sa.Column("auto_disk_config", sa.Boolean),
    sa.Column("shutdown_terminate", sa.Boolean),
    sa.Column("disable_terminate", sa.Boolean),
    sa.Column("root_gb", sa.Integer),
    sa.Column("ephemeral_gb", sa.Integer),
    sa.Column("cell_name", sa.String(length=255)),
    sa.Column("node", sa.String(length=255)),
    sa.Column("deleted", sa.Integer),
    sa.Column("locked_by", sa.Enum("owner", "admin", name="instances0locked_by")),
    sa.Column("cleaned", sa.Integer, default=0),
    sa.Column("ephemeral_key_uuid", sa.String(36)),
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
    sa.UniqueConstraint("uuid", name="uniq_instances0uuid"),
    **_MYSQL,
)

cell_journal = sa.Table(
    "shadowdb_journal",
    cell_metadata,
    # A group whose API copy may lag its cell copy (the cell is authoritative).
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("group_uuid", sa.String(length=36), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Index("shadowdb_journal_group_uuid_idx", "group_uuid"),
    **_MYSQL,
)

cell_state = sa.Table(
    "shadowdb_state",
    cell_metadata,
    # The fence: the phase and epoch this cell has taken (shadowdb.fence). A single row.
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("phase", sa.String(length=32), nullable=False),
    sa.Column("epoch", sa.Integer, nullable=False),
    sa.Column("changed_at", sa.DateTime, nullable=False),
    # The epoch of a change prepared here but perhaps not committed in the API database.
    sa.Column("next_epoch", sa.Integer, nullable=True),
    # On Galera, the node every shadowdb write goes through (`db sync` records it).
    sa.Column("writer_node", sa.String(length=255), nullable=True),
    **_MYSQL,
)

cell_group_locks = sa.Table(
    "shadowdb_group_locks",
    cell_metadata,
    # One row per group uuid ever written through shadowdb in this cell: the identity
    # lock every writer of the group takes, whether or not a group row exists anywhere.
    sa.Column("uuid", sa.String(length=36), primary_key=True),
    **_MYSQL,
)

cell_child_map = sa.Table(
    "shadowdb_child_map",
    cell_metadata,
    # Which group each live policy ('p') and member ('m') row belonged to when the map was
    # built, so that a backfill batch finds its children without scanning Nova's tables,
    # which have no index on group_id (shadowdb.childmap).
    sa.Column("kind", sa.String(length=1), primary_key=True),
    sa.Column("child_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("group_id", sa.Integer, nullable=False),
    sa.Index("shadowdb_child_map_kind_group_id_idx", "kind", "group_id"),
    **_MYSQL,
)

cell_child_map_built = sa.Table(
    "shadowdb_child_map_built",
    cell_metadata,
    # A single row: the phase epoch the child map was built at (NULL: never built).
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("epoch", sa.Integer, nullable=True),
    sa.Column("built_at", sa.DateTime, nullable=True),
    **_MYSQL,
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
