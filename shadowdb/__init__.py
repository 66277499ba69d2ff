"""shadowdb: move Nova instance groups from cell databases to the API database, online.

The public API is what ``__all__`` lists; everything else is internal.
"""

from __future__ import annotations

from shadowdb.databases import Cell, Databases, connect
from shadowdb.errors import (
    CellUnavailable,
    DatabaseUnreachable,
    GroupExists,
    GroupNotFound,
    GuardRefused,
    InvalidInput,
    NotFound,
    ShadowDBError,
    UnsupportedPolicy,
)
from shadowdb.phase import Phase
from shadowdb.settings import Settings

__all__ = [
    "Cell",
    "CellUnavailable",
    "DatabaseUnreachable",
    "Databases",
    "GroupExists",
    "GroupNotFound",
    "GuardRefused",
    "InvalidInput",
    "NotFound",
    "Phase",
    "Settings",
    "ShadowDBError",
    "UnsupportedPolicy",
    "connect",
]

__version__ = "0.1.0"
