"""Run the cell-database tree on the connection handed over by :mod:`shadowdb.schema`."""

from __future__ import annotations

from alembic import context

from shadowdb import models
from shadowdb.schema import CELL_VERSION_TABLE, run_migrations

run_migrations(context, models.cell_metadata, CELL_VERSION_TABLE)
