"""Describe each write to a group as a value, and apply it to one copy of the group.

The object layer (:mod:`shadowdb.objects`) says *what* to write (:class:`Create`,
:class:`Save`, :class:`AddMembers`, :class:`RemoveMembers`, :class:`Destroy`); the phase
strategies (:mod:`shadowdb.phases`) decide *where* and in which order, and hand each
copy's locked current state to :func:`apply`, which writes it through the side's SQL and
returns the copy as it now stands, without reading it again. Driver errors that mean
something to a caller are translated here, where they are raised: a uuid taken by a
concurrent creator is :class:`~shadowdb.errors.GroupExists`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from shadowdb.errors import GroupExists, GroupNotFound
from shadowdb.queries import COPIED_FIELDS, GroupRecord, Side
from shadowdb.state import utcnow

__all__ = [
    "AddMembers",
    "Create",
    "Destroy",
    "RemoveMembers",
    "Save",
    "Write",
    "Written",
    "apply",
    "copy_group",
]


@dataclasses.dataclass(frozen=True)
class Create:
    """Store a new group (its uuid must be free on every side)."""

    record: GroupRecord

    @property
    def group_uuid(self) -> str:
        """The uuid of the group written."""
        return self.record.uuid


@dataclasses.dataclass(frozen=True)
class Save:
    """Replace scalar fields and, if given, the sets of policies and members."""

    group_uuid: str
    #: ``(field, value)`` pairs among ``name``, ``user_id`` and ``project_id``.
    fields: tuple[tuple[str, str | None], ...] = ()
    policies: tuple[str, ...] | None = None
    members: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class AddMembers:
    """Add the instances not yet members (no duplicate rows)."""

    group_uuid: str
    instance_uuids: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class RemoveMembers:
    """Remove the instances that are members."""

    group_uuid: str
    instance_uuids: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Destroy:
    """Delete the group with its policies and members (a tombstone on the API side)."""

    group_uuid: str


#: Every write the object layer asks for.
Write = Create | Save | AddMembers | RemoveMembers | Destroy


@dataclasses.dataclass(frozen=True)
class Written:
    """The outcome of a write: the members it added or removed, and the copy after it."""

    value: tuple[str, ...]
    record: GroupRecord | None


def apply(side: Side, conn: Connection, write: Write, current: GroupRecord | None) -> Written:
    """Apply ``write`` to ``side``'s copy, whose locked state is ``current``.

    Raises:
        GroupExists: a create whose uuid the copy holds (or a concurrent creator took).
        GroupNotFound: any other write to a copy that does not exist.
    """
    if isinstance(write, Create):
        return _create(side, conn, write.record, current)
    if current is None:
        raise GroupNotFound(write.group_uuid)
    if isinstance(write, Save):
        return Written((), _save(side, conn, write, current))
    if isinstance(write, AddMembers):
        added = side.add_members(conn, current, write.instance_uuids)
        after = dataclasses.replace(current, members=(*current.members, *added))
        return Written(tuple(added), after)
    if isinstance(write, RemoveMembers):
        gone = side.remove_members(conn, current, write.instance_uuids)
        kept = tuple(m for m in current.members if m not in set(gone))
        return Written(tuple(gone), dataclasses.replace(current, members=kept))
    side.delete(conn, current)
    return Written((), None)


def _create(
    side: Side, conn: Connection, record: GroupRecord, current: GroupRecord | None
) -> Written:
    if current is not None:
        raise GroupExists(record.uuid, side.name)
    try:
        side.insert(conn, record)
    except sa.exc.IntegrityError as err:
        # Lost a race with another creator of the same uuid.
        raise GroupExists(record.uuid, side.name) from err
    # Read back: the database's own rendering of the given timestamps is the group's.
    return Written((), side.get_locked(conn, record.uuid, lock=False)[0])


def _save(side: Side, conn: Connection, write: Save, current: GroupRecord) -> GroupRecord:
    """Write the changes; return the copy as the side now holds it (rows in id order)."""
    now = utcnow()
    scalars: dict[str, Any] = dict(write.fields)
    side.update_fields(conn, current.id, {**scalars, "updated_at": now})
    after = dataclasses.replace(current, **scalars, updated_at=now)
    if write.policies is not None:
        side.set_policies(conn, current, write.policies)
        after = dataclasses.replace(after, policies=tuple(dict.fromkeys(write.policies)))
    if write.members is not None:
        side.set_members(conn, current, write.members)
        after = dataclasses.replace(after, members=_members_after(current, write.members))
    return after


def _members_after(current: GroupRecord, members: tuple[str, ...]) -> tuple[str, ...]:
    """The members :meth:`~shadowdb.queries.Side.set_members` leaves, in row order."""
    wanted = list(dict.fromkeys(members))
    have = list(current.members)
    if len(set(have)) != len(have):
        return tuple(wanted)  # duplicate rows: rebuilt in the order given
    if set(have) == set(wanted):
        return tuple(have)
    kept = [m for m in have if m in set(wanted)]
    return (*kept, *(m for m in wanted if m not in set(have)))


def copy_group(
    conn: Connection,
    side: Side,
    source: GroupRecord | None,
    current: GroupRecord | None,
) -> bool:
    """Make ``side``'s copy (``current``) equal to ``source``; return whether it changed.

    ``source`` ``None`` means the group is gone: the copy is deleted (soft on a cell).
    Timestamps are carried over, so a copy keeps its group's ``created_at``.
    """
    if source is None:
        if current is None:
            return False
        side.delete(conn, current)
        return True
    if current is None:
        side.insert(conn, source)
        return True
    fields: dict[str, Any] = {
        f: getattr(source, f) for f in COPIED_FIELDS if getattr(source, f) != getattr(current, f)
    }
    side.update_fields(conn, current.id, fields)
    changed = bool(fields)
    changed |= side.set_policies(conn, current, source.policies)
    changed |= side.set_members(conn, current, source.members)
    return changed
