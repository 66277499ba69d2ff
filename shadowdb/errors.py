"""Name every failure shadowdb reports, so callers can catch exactly what they mean.

Hierarchy::

    ShadowDBError                      base of everything shadowdb raises on purpose
    +-- InvalidInput                   bad input from a caller or an operator (CLI exit 127)
    |   +-- InvalidURL                 .url (masked)
    |   +-- UnknownCell                .cell
    |   +-- UnknownPhase               .phase
    +-- NotFound                       something asked for does not exist
    |   +-- GroupNotFound              .group_uuid (or .name / .instance_uuid)
    +-- Conflict                       a write collided with existing state
    |   +-- GroupExists                .group_uuid, .database
    |   +-- CellExists                 .cell
    +-- GroupSaveError                 save() of a read-only field ("hosts")
    +-- ObjectActionError              an object method used out of order (create twice)
    +-- OperationalError               a database could not do what was asked (exit 2)
    |   +-- DatabaseUnreachable        .database (a masked URL or a cell name)
    |   +-- SchemaError                .database, a migration failed or the schema is old
    |   +-- CellUnavailable            .cells, a get_hosts scatter that lost a cell
    |   +-- ScanIncomplete             .database, .what, .expected, .seen: a diff scan
    |                                  that read fewer rows than the database holds
    +-- GuardRefused                   a phase transition refused by its guards (exit 3)
    |                                  .reasons, a tuple of human-readable strings
    +-- UnsupportedPolicy              a group policy whose scheduler filter or weigher is
                                       not enabled: .policy, .enforcer

Driver errors are wrapped where they occur and chained with ``raise ... from``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar, TypeVar, dataclass_transform

__all__ = [
    "CellExists",
    "CellInUse",
    "CellUnavailable",
    "Conflict",
    "DatabaseUnreachable",
    "GroupExists",
    "GroupNotFound",
    "GroupSaveError",
    "GuardRefused",
    "InvalidInput",
    "InvalidURL",
    "NoDefaultCell",
    "NotFound",
    "ObjectActionError",
    "OperationalError",
    "ScanIncomplete",
    "SchemaError",
    "ShadowDBError",
    "UnknownCell",
    "UnknownPhase",
    "UnsupportedPolicy",
]


class ShadowDBError(Exception):
    """Base class of every error shadowdb raises on purpose.

    An error that carries data declares it as fields (:func:`_carrying`) and its message
    as ``template``, filled in from those fields (``str.format``) once they are set; an
    error whose message takes more than that overrides :meth:`_message`.
    """

    template: ClassVar[str] = ""

    def __post_init__(self) -> None:
        super().__init__(self._message())

    def _message(self) -> str:
        return self.template.format_map(vars(self))


_E = TypeVar("_E", bound=ShadowDBError)


@dataclass_transform(eq_default=False)
def _carrying(cls: type[_E]) -> type[_E]:
    """Give ``cls`` a constructor that keeps its arguments as the fields ``cls`` declares.

    Equality stays identity (an exception must stay hashable) and ``repr`` stays
    ``Exception``'s, the class name and the message.
    """
    return dataclasses.dataclass(eq=False, repr=False)(cls)


class InvalidInput(ShadowDBError, ValueError):
    """Reject a value before anything is written."""


@_carrying
class InvalidURL(InvalidInput):
    """Reject a database URL that cannot be parsed or names no supported backend."""

    template = "invalid database URL {url!r}: {why}"
    url: str
    why: str


@_carrying
class UnknownCell(InvalidInput):
    """Name a cell that is not in ``cell_mappings``."""

    template = "unknown cell {cell!r}"
    cell: str


@_carrying
class UnknownPhase(InvalidInput):
    """Name a phase that does not exist."""

    phase: str
    known: Sequence[str]

    def _message(self) -> str:
        return f"unknown phase {self.phase!r} (known: {', '.join(self.known)})"


class NotFound(ShadowDBError, LookupError):
    """Report that something asked for does not exist."""


class GroupNotFound(NotFound):
    """Report an instance group that no database holds (or the caller may not see)."""

    def __init__(
        self,
        group_uuid: str | None = None,
        *,
        name: str | None = None,
        instance_uuid: str | None = None,
    ) -> None:
        self.group_uuid = group_uuid
        self.name = name
        self.instance_uuid = instance_uuid
        if name is not None:
            what = f"name {name!r}"
        elif instance_uuid is not None:
            what = f"member instance {instance_uuid}"
        else:
            what = f"uuid {group_uuid}"
        super().__init__(f"instance group with {what} not found")


class Conflict(ShadowDBError):
    """Report a write that collided with existing state."""


@_carrying
class GroupExists(Conflict):
    """Refuse to create a group whose uuid is already taken."""

    template = "instance group {group_uuid} already exists in the {database} database"
    group_uuid: str
    database: str


@_carrying
class JournalConflict(Conflict):
    """Refuse a write to a group with unreplayed writes on both sides."""

    template = (
        "instance group {group_uuid} has unreplayed writes in both the cell and the API "
        "journal: each copy holds a change the other lacks; compare them with "
        "`shadowdb diff-report` and repair by hand (nothing is overwritten silently)"
    )
    group_uuid: str


@_carrying
class CellExists(Conflict):
    """Refuse to register a cell name twice."""

    template = "cell {cell!r} already exists"
    cell: str


class GroupSaveError(ShadowDBError):
    """Refuse to save a field that is computed, never stored (``hosts``)."""


@_carrying
class ObjectActionError(ShadowDBError):
    """Refuse an object method called out of order (``create()`` on a created group)."""

    template = "cannot {action}: {reason}"
    action: str
    reason: str


class OperationalError(ShadowDBError):
    """Report a database that could not do what was asked."""


@_carrying
class TransientError(OperationalError):
    """Report a transaction the database rolled back whole: nothing of it committed.

    A deadlock (MariaDB 1213, PostgreSQL 40P01), a lock wait timeout (MariaDB 1205), a
    serialization failure (PostgreSQL 40001), a Galera certification conflict (1213 at
    commit). The same work may run again in a new transaction; ``code`` is the server's.
    """

    template = "{database}: {detail}"
    database: str
    code: str
    detail: str


@_carrying
class DatabaseUnreachable(OperationalError):
    """Report a database that cannot be connected to or went away mid-operation."""

    template = "{database} unreachable: {detail}"
    database: str
    detail: str


class CommitUncertain(DatabaseUnreachable):
    """Report a connection that died while committing: the transaction may have committed.

    Never run again blindly; the caller hears that the outcome is unknown.
    """


@_carrying
class NotTheWriterNode(OperationalError):
    """Refuse a write through a Galera node that is not shadowdb's writer node."""

    template = (
        "{database}: this write reached Galera node {node!r}, and shadowdb writes only "
        "through node {recorded!r}: one writer "
        "node is required (a second would let a write slip past a phase change); send "
        "every shadowdb writer to one node (HAProxy: one active server, the others "
        "backup), and after a failover, once the old node takes no writes, run "
        "`shadowdb db sync` through the new one"
    )
    database: str
    node: str
    recorded: str


class NoDefaultCell(OperationalError):
    """Report a write that needs the default cell when none can be chosen for it."""

    def __init__(self, candidates: Sequence[str]) -> None:
        self.candidates = tuple(candidates)
        if not self.candidates:
            detail = "no cell other than cell0 is registered (shadowdb cell add NAME URL)"
        else:
            detail = (
                f"no default cell is set and several cells could take new groups "
                f"({', '.join(self.candidates)}): choose one with "
                "`shadowdb cell set-default NAME`"
            )
        super().__init__(detail)


@_carrying
class SchemaError(OperationalError):
    """Report a schema that is missing, outdated or could not be migrated."""

    template = "schema of {database}: {detail}"
    database: str
    detail: str


class CellUnavailable(OperationalError):
    """Report cells that failed while answering a scatter-gather query."""

    def __init__(self, cells: Sequence[str], detail: str = "") -> None:
        self.cells = tuple(cells)
        suffix = f": {detail}" if detail else ""
        super().__init__(f"cell(s) {', '.join(self.cells)} unavailable{suffix}")


@_carrying
class ScanIncomplete(OperationalError):
    """Report a diff scan that accounted for fewer (or more) rows than the database holds.

    A short scan proves nothing: the diff report is an error, never "clean".
    """

    template = (
        "{database}: the diff scan accounted for {seen} {what} rows, "
        "the database holds {expected}; nothing is reported clean"
    )
    database: str
    what: str
    expected: int
    seen: int


class GuardRefused(ShadowDBError):
    """Refuse a phase transition whose guards do not hold."""

    def __init__(self, target: str, reasons: Sequence[str]) -> None:
        self.target = target
        self.reasons = tuple(reasons)
        super().__init__(f"refusing to enter {target}: " + "; ".join(self.reasons))


class CellInUse(GuardRefused):
    """Refuse to remove a cell mapping that still holds something."""

    def __init__(self, cell: str, reasons: Sequence[str]) -> None:
        self.target = f"cell remove {cell}"
        self.reasons = tuple(reasons)
        ShadowDBError.__init__(self, f"refusing to remove cell {cell}: " + "; ".join(reasons))


@_carrying
class UnsupportedPolicy(ShadowDBError):
    """Refuse to schedule a group whose policy no enabled filter or weigher enforces."""

    template = "unsupported policy {policy!r}: {enforcer} is not enabled"
    policy: str
    enforcer: str
