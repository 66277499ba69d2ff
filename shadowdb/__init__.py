"""shadowdb: move Nova instance groups from cell databases to the API database, online.

The public API is what ``__all__`` lists; everything else is internal.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from shadowdb.errors import (
    CellUnavailable,
    DatabaseUnreachable,
    GroupExists,
    GroupNotFound,
    GroupSaveError,
    GuardRefused,
    InvalidInput,
    NotFound,
    ObjectActionError,
    OperationalError,
    ShadowDBError,
    UnsupportedPolicy,
)
from shadowdb.logs import library_defaults

# A library's events go to the host's logging, never to stdout (shadowdb.logs).
library_defaults()

if TYPE_CHECKING:
    from shadowdb.databases import Cell, Databases, connect
    from shadowdb.journals import drain_journals
    from shadowdb.objects import InstanceGroup, InstanceGroupList, RequestContext
    from shadowdb.settings import Settings
    from shadowdb.state import Phase

#: Every other public name, loaded on first use: importing a light module
#: (``shadowdb.scheduler``, which the scheduler imports on every worker start, or the command
#: line's entry point, which must answer a Ctrl-C while the rest loads) does not pull in the
#: whole package. The errors are imported above: ``shadowdb.errors`` imports nothing.
_LAZY = {
    "Cell": "shadowdb.databases",
    "Databases": "shadowdb.databases",
    "connect": "shadowdb.databases",
    "InstanceGroup": "shadowdb.objects",
    "InstanceGroupList": "shadowdb.objects",
    "RequestContext": "shadowdb.objects",
    "Phase": "shadowdb.state",
    "Settings": "shadowdb.settings",
    "drain_journals": "shadowdb.journals",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shadowdb' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Cell",
    "CellUnavailable",
    "DatabaseUnreachable",
    "Databases",
    "GroupExists",
    "GroupNotFound",
    "GroupSaveError",
    "GuardRefused",
    "InstanceGroup",
    "InstanceGroupList",
    "InvalidInput",
    "NotFound",
    "ObjectActionError",
    "OperationalError",
    "Phase",
    "RequestContext",
    "Settings",
    "ShadowDBError",
    "UnsupportedPolicy",
    "connect",
    "drain_journals",
]

__version__ = "0.1.0"
