"""Record the Galera node shadowdb writes through (NULL off Galera).

Revision ID: api_0007
Revises: api_0006
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "api_0007"
down_revision = "api_0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("shadowdb_state") as batch:
        batch.add_column(sa.Column("writer_node", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shadowdb_state") as batch:
        batch.drop_column("writer_node")
