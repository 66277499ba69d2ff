"""Describe groups as values: one copy of a group, a caller's scope, a journal entry.

What makes two copies the same group (:data:`COMPARED_FIELDS`) is defined here, once,
for every part of shadowdb that compares or copies them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable
from typing import Any

__all__ = [
    "COMPARED_FIELDS",
    "COPIED_FIELDS",
    "GROUP_COLUMNS",
    "GroupRecord",
    "JournalEntry",
    "Scope",
    "to_second",
]

#: What makes two copies of a group the same group, besides its uuid and the *sets* of
#: its live policies and members: backfill, the synchroniser, the switcher and the diff
#: report all compare exactly these. ``created_at`` is compared to the second (the
#: precision of Nova's MySQL columns); ``updated_at`` is not compared, since each side
#: stamps its own writes. Duplicate policy or member rows, which Nova's tables allowed,
#: are one policy or member: a copy is written as the set.
COMPARED_FIELDS = ("name", "user_id", "project_id", "created_at")

#: What a copy carries over besides policies and members.
COPIED_FIELDS = (*COMPARED_FIELDS, "updated_at")

#: The columns of a group row every read selects, in order.
GROUP_COLUMNS = ("id", "uuid", "name", "user_id", "project_id", "created_at", "updated_at")


def to_second(when: dt.datetime | None) -> dt.datetime | None:
    """Return ``when`` as compared: to the second (``None`` stays ``None``)."""
    return when.replace(microsecond=0) if when is not None else None


@dataclasses.dataclass(frozen=True)
class GroupRecord:
    """One group as one database holds it: the row, its live policies and members."""

    id: int
    uuid: str
    name: str | None
    user_id: str | None
    project_id: str | None
    policies: tuple[str, ...]
    members: tuple[str, ...]
    created_at: dt.datetime | None
    updated_at: dt.datetime | None

    @classmethod
    def of(cls, row: Any, policies: Iterable[str], members: Iterable[str]) -> GroupRecord:
        """Build a record from a group row (:data:`GROUP_COLUMNS`) and its live children."""
        columns = {name: getattr(row, name) for name in GROUP_COLUMNS}
        return cls(**columns, policies=tuple(policies), members=tuple(members))

    def same_data(self, other: GroupRecord) -> bool:
        """Say whether ``other`` is the same group (:data:`COMPARED_FIELDS`)."""
        return (
            self.uuid == other.uuid
            and all(
                getattr(self, f) == getattr(other, f) for f in COMPARED_FIELDS if f != "created_at"
            )
            and to_second(self.created_at) == to_second(other.created_at)
            and set(self.policies) == set(other.policies)
            and set(self.members) == set(other.members)
        )


@dataclasses.dataclass(frozen=True)
class Scope:
    """Which project a caller may see: ``None`` for an admin (every project)."""

    project_id: str | None


@dataclasses.dataclass(frozen=True)
class JournalEntry:
    """A pending journal row: the group whose other copy may lag this side's."""

    id: int
    group_uuid: str
    created_at: dt.datetime
    epoch: int
    error: str | None
