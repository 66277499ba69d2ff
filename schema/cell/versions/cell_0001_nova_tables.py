"""Adopt Nova's cell-database tables, creating those that are missing.

On a cell database built by Nova's own migrations every table already exists and this
revision changes nothing: shadowdb never alters, fills or drops a Nova table. On an empty
database it creates them as Nova 34.0.0's main tree leaves them at its head (``instances``
as of revision ``ab450ba04102``, the group tables as of ``8f2f1571d55b``).

Revision ID: cell_0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

revision = "cell_0001"
down_revision = None
branch_labels = None
depends_on = None

_MYSQL: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8"}


def _missing(name: str) -> bool:
    return not sa.inspect(op.get_bind()).has_table(name)


def _medium_text() -> sa.types.TypeEngine[str]:
    return sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def _inet_small() -> sa.types.TypeEngine[str]:
    return sa.String(length=39).with_variant(postgresql.INET(), "postgresql")


def _soft_delete() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", sa.DateTime),
        sa.Column("updated_at", sa.DateTime),
        sa.Column("deleted_at", sa.DateTime),
        sa.Column("deleted", sa.Integer),
    ]


def upgrade() -> None:
    if _missing("instances"):
        op.create_table(
            "instances",
            sa.Column("created_at", sa.DateTime),
            sa.Column("updated_at", sa.DateTime),
            sa.Column("deleted_at", sa.DateTime),
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
    if _missing("instance_groups"):
        op.create_table(
            "instance_groups",
            *_soft_delete(),
            sa.Column("id", sa.Integer, primary_key=True, nullable=False),
            sa.Column("user_id", sa.String(length=255)),
            sa.Column("project_id", sa.String(length=255)),
            sa.Column("uuid", sa.String(length=36), nullable=False),
            sa.Column("name", sa.String(length=255)),
            sa.UniqueConstraint("uuid", "deleted", name="uniq_instance_groups0uuid0deleted"),
            **_MYSQL,
        )
    if _missing("instance_group_policy"):
        op.create_table(
            "instance_group_policy",
            *_soft_delete(),
            sa.Column("id", sa.Integer, primary_key=True, nullable=False),
            sa.Column("policy", sa.String(length=255)),
            sa.Column("group_id", sa.Integer, sa.ForeignKey("instance_groups.id"), nullable=False),
            sa.Index("instance_group_policy_policy_idx", "policy"),
            **_MYSQL,
        )
    if _missing("instance_group_member"):
        op.create_table(
            "instance_group_member",
            *_soft_delete(),
            sa.Column("id", sa.Integer, primary_key=True, nullable=False),
            sa.Column("instance_id", sa.String(length=255)),
            sa.Column("group_id", sa.Integer, sa.ForeignKey("instance_groups.id"), nullable=False),
            sa.Index("instance_group_member_instance_idx", "instance_id"),
            **_MYSQL,
        )


def downgrade() -> None:
    # Nova's tables may hold Nova's data: shadowdb never drops them.
    raise NotImplementedError("shadowdb does not drop Nova's tables")
