"""Describe failed database calls: which errors count as one, and how they read in one line."""

from __future__ import annotations

import sqlalchemy as sa

from shadowdb.errors import OperationalError
from shadowdb.urls import mask_text

__all__ = ["DB_FAILURES", "one_line"]

#: What a failed database call can raise: ours (translated) or the driver's.
DB_FAILURES: tuple[type[BaseException], ...] = (
    OperationalError,
    sa.exc.DBAPIError,
)


def one_line(err: BaseException) -> str:
    """Render ``err`` as one line, passwords masked."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return mask_text(f"{type(err).__name__}: {text}")[:500]
