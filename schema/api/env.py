"""Run the API-database tree on the connection handed over by :mod:`shadowdb.schema`."""

from __future__ import annotations

from alembic import context

from shadowdb import models
from shadowdb.schema import API_VERSION_TABLE, run_migrations

run_migrations(context, models.api_metadata, API_VERSION_TABLE)
