"""Record, with each diff-report, the cell groups the API database never had.

In ``api-only`` a cell registered after the cutover holds groups the API database never
had (no deletion on record): the move back to ``dual-write-api-reads``, whose backfill
copies them, admits them; ``cleanup`` does not.

Revision ID: api_0006
Revises: api_0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "api_0006"
down_revision = "api_0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("shadowdb_diff_results") as batch:
        batch.add_column(sa.Column("never_copied", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shadowdb_diff_results") as batch:
        batch.drop_column("never_copied")
