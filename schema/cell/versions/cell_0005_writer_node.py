"""Record the Galera node shadowdb writes through (NULL off Galera).

Revision ID: cell_0005
Revises: cell_0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "cell_0005"
down_revision = "cell_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("shadowdb_state") as batch:
        batch.add_column(sa.Column("writer_node", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shadowdb_state") as batch:
        batch.drop_column("writer_node")
