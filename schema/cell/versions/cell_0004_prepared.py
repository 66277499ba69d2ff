"""The prepared epoch of a phase change in flight, on every cell's phase row.

``phase set`` writes the new epoch here, in every cell, before it commits the API
database (the commit point); a writer that finds it set learns the outcome from the API
database's row before it writes (:mod:`shadowdb.fence`).

Revision ID: cell_0004
Revises: cell_0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "cell_0004"
down_revision = "cell_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("shadowdb_state", sa.Column("next_epoch", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shadowdb_state") as batch:
        batch.drop_column("next_epoch")
