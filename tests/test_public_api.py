"""Keep ``shadowdb.__all__`` honest: the documented names, all importable, nothing else."""

from __future__ import annotations

import shadowdb
from shadowdb import errors

DOCUMENTED = {
    # connection and settings
    "connect",
    "Databases",
    "Cell",
    "Settings",
    "Phase",
    # the object API (Nova's calling convention)
    "RequestContext",
    "InstanceGroup",
    "InstanceGroupList",
    "drain_journals",
    # typed errors callers catch
    "ShadowDBError",
    "InvalidInput",
    "NotFound",
    "GroupNotFound",
    "GroupExists",
    "GroupSaveError",
    "ObjectActionError",
    "OperationalError",
    "DatabaseUnreachable",
    "CellUnavailable",
    "GuardRefused",
    "UnsupportedPolicy",
}


def test_all_lists_exactly_the_documented_names() -> None:
    assert set(shadowdb.__all__) == DOCUMENTED
    assert len(shadowdb.__all__) == len(set(shadowdb.__all__))


def test_every_name_in_all_is_there() -> None:
    namespace: dict[str, object] = {}
    exec("from shadowdb import *", namespace)
    for name in shadowdb.__all__:
        assert getattr(shadowdb, name) is namespace[name]


def test_exported_errors_are_the_errors_module_s() -> None:
    for name in shadowdb.__all__:
        value = getattr(shadowdb, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert getattr(errors, name) is value
            assert issubclass(value, errors.ShadowDBError)
