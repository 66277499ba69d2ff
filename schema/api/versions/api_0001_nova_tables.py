"""Adopt Nova's API-database tables, creating those that are missing.

On an API database built by Nova's own migrations every table already exists and this
revision changes nothing: shadowdb never alters, fills or drops a Nova table. On an empty
database it creates them exactly as Nova 34.0.0's ``d67eeaabee36`` revision does.

Revision ID: api_0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "api_0001"
down_revision = None
branch_labels = None
depends_on = None

_MYSQL: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8"}


def _missing(name: str) -> bool:
    return not sa.inspect(op.get_bind()).has_table(name)


def upgrade() -> None:
    if _missing("cell_mappings"):
        op.create_table(
            "cell_mappings",
            sa.Column("created_at", sa.DateTime),
            sa.Column("updated_at", sa.DateTime),
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
    if _missing("instance_mappings"):
        op.create_table(
            "instance_mappings",
            sa.Column("created_at", sa.DateTime),
            sa.Column("updated_at", sa.DateTime),
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
    if _missing("instance_groups"):
        op.create_table(
            "instance_groups",
            sa.Column("created_at", sa.DateTime),
            sa.Column("updated_at", sa.DateTime),
            sa.Column("id", sa.Integer, primary_key=True, nullable=False),
            sa.Column("user_id", sa.String(length=255)),
            sa.Column("project_id", sa.String(length=255)),
            sa.Column("uuid", sa.String(length=36), nullable=False),
            sa.Column("name", sa.String(length=255)),
            sa.UniqueConstraint("uuid", name="uniq_instance_groups0uuid"),
            **_MYSQL,
        )
    if _missing("instance_group_policy"):
        op.create_table(
            "instance_group_policy",
            sa.Column("created_at", sa.DateTime),
            sa.Column("updated_at", sa.DateTime),
            sa.Column("id", sa.Integer, primary_key=True, nullable=False),
            sa.Column("policy", sa.String(length=255)),
            sa.Column("group_id", sa.Integer, sa.ForeignKey("instance_groups.id"), nullable=False),
            sa.Column("rules", sa.Text),
            sa.Index("instance_group_policy_policy_idx", "policy"),
            **_MYSQL,
        )
    if _missing("instance_group_member"):
        op.create_table(
            "instance_group_member",
            sa.Column("created_at", sa.DateTime),
            sa.Column("updated_at", sa.DateTime),
            sa.Column("id", sa.Integer, primary_key=True, nullable=False),
            sa.Column("instance_uuid", sa.String(length=255)),
            sa.Column("group_id", sa.Integer, sa.ForeignKey("instance_groups.id"), nullable=False),
            sa.Index("instance_group_member_instance_idx", "instance_uuid"),
            **_MYSQL,
        )


def downgrade() -> None:
    # Nova's tables may hold Nova's data: shadowdb never drops them.
    raise NotImplementedError("shadowdb does not drop Nova's tables")
