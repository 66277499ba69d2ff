"""Offer Nova's ``InstanceGroup`` / ``InstanceGroupList`` API over every phase.

Callers (the API service, the scheduler, the compute manager) use the same methods
whatever the phase; the phase's strategy (:mod:`shadowdb.phases`) decides which database
answers. Semantics follow Nova (``shared/reference/nova-behaviour.md``) where Nova was
right, and improve on it where it was not:

* ``save()`` replaces the sets of members and policies in every database (Nova unioned
  in the API database and replaced in the cell database);
* a name lookup is scoped the same way in every database (non-admins: their project;
  admins: every project) and resolves duplicates to the oldest group, deterministically;
* ``add_members`` never creates a duplicate member row, even with repeats in its input
  or concurrent callers (the group's row lock serialises them);
* lists hold one copy per uuid, the API copy winning; counts cover both databases.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import re
import time
import uuid as uuidlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import structlog
from blinker import NamedSignal

from shadowdb import hosts as hosts_mod
from shadowdb import signals
from shadowdb.databases import Databases, found_dead
from shadowdb.errors import (
    CommitUncertain,
    DatabaseUnreachable,
    GroupSaveError,
    InvalidInput,
    ObjectActionError,
    OperationalError,
    TransientError,
)
from shadowdb.fence import CellBehind, CellsChanged, EpochChanged, settle_cell
from shadowdb.phases import strategy_for
from shadowdb.phases.base import Lookup
from shadowdb.queries import GroupRecord, Scope
from shadowdb.state import PhaseState, utcnow
from shadowdb.writes import AddMembers, Create, Destroy, RemoveMembers, Save, Write, Written

__all__ = ["POLICIES", "InstanceGroup", "InstanceGroupList", "RequestContext"]

log = structlog.get_logger(__name__)

#: The policies a group may carry (Newton's list model).
POLICIES = ("affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity")

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_MAX_LEN = 255
#: How often a write is retried when the phase changes under it.
_EPOCH_RETRIES = 10
#: How often a write is run again after the database rolled it back whole (a deadlock,
#: a lock wait timeout, a serialization failure, a Galera certification conflict), and
#: the first pause between two runs (doubled each time, with jitter).
_TRANSIENT_RETRIES = 5
_TRANSIENT_PAUSE = 0.02


@dataclasses.dataclass(frozen=True)
class RequestContext:
    """Who is asking: a project and user, admin or not, and the deployment's databases."""

    dbs: Databases
    project_id: str | None
    user_id: str | None
    is_admin: bool = False

    @property
    def scope(self) -> Scope:
        """What the caller may see: admins every project, others their own."""
        return Scope(None if self.is_admin else self.project_id)


# --------------------------------------------------------------------------- validation


def is_uuid_like(value: object) -> bool:
    """Tell whether ``value`` is a uuid in its canonical 8-4-4-4-12 hex form."""
    return isinstance(value, str) and bool(_UUID.match(value))


def _check_uuid(value: object, what: str) -> str:
    if not is_uuid_like(value):
        raise InvalidInput(f"{what} must be a uuid, not {value!r}")
    return str(value)


def _check_uuids(values: object, what: str) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise InvalidInput(f"{what} must be a list of uuids")
    return [_check_uuid(v, what) for v in values]


def _check_text(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string")
    if len(value) > _MAX_LEN:
        raise InvalidInput(f"{what} is {len(value)} characters long; at most {_MAX_LEN} allowed")
    if "\x00" in value:
        # PostgreSQL cannot store it and the others would: refused alike everywhere.
        raise InvalidInput(f"{what} must not contain a NUL character")
    return value


def _check_policies(values: object) -> list[str]:
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise InvalidInput("policies must be a list")
    policies = list(values)
    for policy in policies:
        if policy not in POLICIES:
            raise InvalidInput(f"invalid policy {policy!r} (allowed: {', '.join(POLICIES)})")
    return policies


_VALIDATORS: dict[str, Any] = {
    "uuid": lambda v: _check_uuid(v, "uuid"),
    "name": lambda v: _check_text(v, "name"),
    "user_id": lambda v: _check_text(v, "user_id"),
    "project_id": lambda v: _check_text(v, "project_id"),
    "policies": _check_policies,
    "members": lambda v: _check_uuids(v, "members"),
}


# --------------------------------------------------------------------------- the write loop


def _write(ctx: RequestContext, write: Write, *, scope: Scope | None) -> tuple[Written, PhaseState]:
    """Run ``write`` through the phase's strategy, retrying if the phase moves."""
    group_uuid = write.group_uuid
    state = ctx.dbs.phases.get()
    transient = 0
    for _ in range(_EPOCH_RETRIES + _TRANSIENT_RETRIES):
        try:
            strategy = strategy_for(state.phase)
            return strategy.write(ctx.dbs, state, write, scope=scope), state
        except EpochChanged as changed:
            log.info(
                "write_replanned",
                group_uuid=group_uuid,
                planned=changed.planned.phase.value,
                found=changed.found.phase.value,
                epoch=changed.found.epoch,
            )
            # The phase read under the fence's lock, in the database written, is newer
            # than the plan: plan on it (a process cut off from the API database learns
            # the new phase from its cell this way).
            state = changed.found
            ctx.dbs.phases.observe(state)
        except CellsChanged as changed:
            # A cell was registered (or removed) since this process read cell_mappings.
            ctx.dbs.refresh_cells()
            log.info("write_replanned", group_uuid=group_uuid, cells=len(changed.current))
        except CellBehind as behind:
            # The cell has not taken the API database's epoch yet, or holds a prepared
            # change (a phase change in flight or cut short): settle it, which asks the
            # API database's row under its lock, then plan afresh.
            settle_cell(ctx.dbs, behind.cell)
            state = ctx.dbs.phases.fresh()
            log.info("write_replanned", group_uuid=group_uuid, settled=behind.cell.name)
        except (TransientError, DatabaseUnreachable) as err:
            # Nothing of the write committed: a phase strategy lets no error out once its
            # first half has committed (the second half's failures are journaled), so
            # what reaches here is the first half's. Run again: a transaction the
            # database rolled back whole, or one whose connection died before its commit
            # (found dead by a statement). Never a commit that may have gone through
            # (CommitUncertain), nor a database that cannot be reached at all.
            if isinstance(err, DatabaseUnreachable) and (
                isinstance(err, CommitUncertain) or not found_dead(err)
            ):
                raise
            transient += 1
            if transient > _TRANSIENT_RETRIES:
                raise
            pause = _TRANSIENT_PAUSE * 2 ** (transient - 1) * (0.5 + random.random())
            log.warning(
                "write_retried",
                group_uuid=group_uuid,
                database=err.database,
                code=err.code if isinstance(err, TransientError) else "connection-lost",
                attempt=transient,
                pause_ms=int(pause * 1000),
            )
            time.sleep(pause)
    raise OperationalError(f"the phase kept changing under a write to group {group_uuid}")


def _announce(
    ctx: RequestContext,
    signal: NamedSignal,
    group_uuid: str,
    state: PhaseState,
    *,
    logged: Mapping[str, Any] | None = None,
    **sent: Any,
) -> None:
    """Announce a committed write to a group: its signal, then its canonical log line.

    Args:
        signal: one of the group signals (:mod:`shadowdb.signals`); the log line's event
            is its name in snake_case (``group-created``: ``group_created``).
        logged: what the log line adds to the group and the phase.
        sent: what the signal adds to them.
    """
    phase = state.phase.value
    signals.send(signal, ctx.dbs, group_uuid=group_uuid, phase=phase, **sent)
    log.info(signal.name.replace("-", "_"), group_uuid=group_uuid, phase=phase, **(logged or {}))


def _change_members(
    ctx: RequestContext, change: AddMembers | RemoveMembers, signal: NamedSignal, counted: str
) -> list[str]:
    """Add or remove members (not project-scoped, as in Nova); return the uuids it changed.

    Args:
        signal: announces the change, with the changed uuids as ``instance_uuids``.
        counted: the key under which the log line counts them.
    """
    written, state = _write(ctx, change, scope=None)
    changed = list(written.value)
    logged = {counted: len(changed)}
    _announce(ctx, signal, change.group_uuid, state, logged=logged, instance_uuids=changed)
    return changed


# --------------------------------------------------------------------------- objects

_FIELDS = (
    "id",
    "uuid",
    "name",
    "user_id",
    "project_id",
    "policies",
    "members",
    "hosts",
    "created_at",
    "updated_at",
    "deleted",
    "deleted_at",
)


class InstanceGroup:
    """A server group, with Nova's object semantics (fields, change tracking, lazy hosts).

    Build one with ``InstanceGroup(ctx, name=..., policies=[...])`` and ``create()`` it, or
    load one with a ``get_by_*`` classmethod.
    """

    id: int
    uuid: str
    name: str | None
    user_id: str | None
    project_id: str | None
    policies: list[str]
    members: list[str]
    hosts: list[str]
    created_at: dt.datetime | None
    updated_at: dt.datetime | None
    deleted: bool
    deleted_at: dt.datetime | None
    _values: dict[str, Any]
    _changed: set[str]

    def __init__(self, context: RequestContext | None = None, **fields: Any) -> None:
        # Internal state lives in __dict__ directly: __setattr__ only takes fields.
        self.__dict__.update(_ctx=context, _values={}, _changed=set())
        for name, value in fields.items():
            setattr(self, name, value)

    # ------------------------------------------------------------------ fields

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found normally: i.e. fields not set yet.
        if name in _FIELDS:
            values = self._values
            if name in values:
                return values[name]
            if name == "hosts":
                self.obj_load_attr("hosts")
                return values["hosts"]
            raise ObjectActionError("obj_load_attr", f"attribute {name} is not lazy-loadable")
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in _FIELDS:
            raise AttributeError(f"InstanceGroup has no field {name!r}")
        validate = _VALIDATORS.get(name)
        if validate is not None:
            value = validate(value)
        self._values[name] = value
        self._changed.add(name)

    def obj_attr_is_set(self, name: str) -> bool:
        """Tell whether field ``name`` holds a value."""
        return name in self._values

    def obj_what_changed(self) -> set[str]:
        """Return the fields changed since the last load or save."""
        return set(self._changed)

    def obj_reset_changes(self, fields: Iterable[str] | None = None) -> None:
        """Forget changes (of ``fields``, or all)."""
        if fields is None:
            self._changed.clear()
        else:
            self._changed.difference_update(fields)

    def obj_load_attr(self, name: str) -> None:
        """Lazy-load ``hosts`` (by calling :meth:`get_hosts`); nothing else loads lazily."""
        if name != "hosts":
            raise ObjectActionError("obj_load_attr", f"attribute {name} is not lazy-loadable")
        self._values["hosts"] = list(self.get_hosts())
        self._changed.discard("hosts")

    @property
    def _context(self) -> RequestContext:
        ctx: RequestContext | None = self.__dict__["_ctx"]
        if ctx is None:
            raise ObjectActionError("use the group", "it has no request context")
        return ctx

    def __repr__(self) -> str:
        shown = {k: v for k, v in self._values.items() if k != "hosts"}
        return f"InstanceGroup({shown})"

    def _load(self, record: GroupRecord) -> InstanceGroup:
        # Every field the record holds (the object's lists as lists); a loaded group is live.
        values = self._values
        values.update((f.name, getattr(record, f.name)) for f in dataclasses.fields(record))
        values.update(
            policies=list(record.policies),
            members=list(record.members),
            deleted=False,
            deleted_at=None,
        )
        values.pop("hosts", None)
        self._changed.clear()
        return self

    @classmethod
    def _from_record(cls, ctx: RequestContext, record: GroupRecord) -> InstanceGroup:
        return cls(ctx)._load(record)

    # ------------------------------------------------------------------ reads

    @classmethod
    def _find(cls, ctx: RequestContext, lookup: Lookup) -> InstanceGroup:
        state = ctx.dbs.phases.get()
        record = strategy_for(state.phase).find(ctx.dbs, lookup, ctx.scope)
        return cls._from_record(ctx, record)

    @classmethod
    def get_by_uuid(cls, context: RequestContext, uuid: str) -> InstanceGroup:
        """Load the group with this uuid.

        Raises:
            InvalidInput: ``uuid`` is not a uuid.
            GroupNotFound: no database holds it (or the caller may not see it).
        """
        return cls._find(context, Lookup("uuid", _check_uuid(uuid, "group uuid")))

    @classmethod
    def get_by_name(cls, context: RequestContext, name: str) -> InstanceGroup:
        """Load the oldest group called ``name`` the caller may see."""
        _check_text(name, "name")
        return cls._find(context, Lookup("name", name))

    @classmethod
    def get_by_hint(cls, context: RequestContext, hint: str) -> InstanceGroup:
        """Load a group by a scheduler hint: a uuid-like hint is a uuid, else a name."""
        if is_uuid_like(hint):
            return cls.get_by_uuid(context, hint)
        return cls.get_by_name(context, hint)

    @classmethod
    def get_by_instance_uuid(cls, context: RequestContext, instance_uuid: str) -> InstanceGroup:
        """Load the group that has ``instance_uuid`` as a member."""
        return cls._find(context, Lookup("instance", _check_uuid(instance_uuid, "instance uuid")))

    def refresh(self) -> None:
        """Re-read the group and take over every field that changed behind our back."""
        current = self.get_by_uuid(self._context, self.uuid)
        for name in _FIELDS:
            if name in current._values and self._values.get(name) != current._values[name]:
                self._values[name] = current._values[name]
        self._changed.clear()

    # ------------------------------------------------------------------ writes

    def create(self) -> None:
        """Store this new group (a uuid is generated if none was given).

        Raises:
            ObjectActionError: the group was created already.
            GroupExists: the uuid is taken (in the API database, or live in a cell).
        """
        if self.obj_attr_is_set("id"):
            raise ObjectActionError("create", "already created")
        if not self.obj_attr_is_set("uuid"):
            self.uuid = str(uuidlib.uuid4())
        values = self._values
        record = GroupRecord(
            id=0,
            uuid=values["uuid"],
            name=values.get("name"),
            user_id=values.get("user_id"),
            project_id=values.get("project_id"),
            policies=tuple(dict.fromkeys(values.get("policies") or [])),
            members=tuple(dict.fromkeys(values.get("members") or [])),
            # Given timestamps are kept, as Nova's object kept them.
            created_at=values.get("created_at") or utcnow(),
            updated_at=values.get("updated_at"),
        )
        written, state = _write(self._context, Create(record), scope=None)
        assert written.record is not None
        self._load(written.record)
        fields = {k: v for k, v in self._values.items() if k not in ("deleted", "deleted_at")}
        _announce(self._context, signals.group_created, record.uuid, state, fields=fields)

    def save(self) -> None:
        """Store the changed fields; ``members`` and ``policies`` replace the stored sets.

        Raises:
            GroupSaveError: ``hosts`` was changed (it is computed, never stored).
            GroupNotFound: the group is gone (or the caller may not see it).
        """
        changes = self.obj_what_changed()
        if "hosts" in changes:
            raise GroupSaveError("hosts cannot be saved: it is computed from the members")
        changes -= {"id", "uuid", "created_at", "updated_at", "deleted", "deleted_at"}
        if not changes:
            return
        values = {name: self._values[name] for name in changes}
        group_uuid = self.uuid
        save = Save(
            group_uuid,
            tuple((k, values[k]) for k in ("name", "user_id", "project_id") if k in values),
            tuple(values["policies"]) if "policies" in values else None,
            tuple(values["members"]) if "members" in values else None,
        )
        ctx = self._context
        written, state = _write(ctx, save, scope=ctx.scope)
        assert written.record is not None
        self._load(written.record)
        logged = {"fields": sorted(values)}
        _announce(ctx, signals.group_updated, group_uuid, state, logged=logged, fields=values)

    def destroy(self) -> None:
        """Delete the group with its policies and members.

        Raises:
            GroupNotFound: the group is gone (or the caller may not see it).
        """
        group_uuid = self.uuid
        ctx = self._context
        _, state = _write(ctx, Destroy(group_uuid), scope=ctx.scope)
        _announce(ctx, signals.group_deleted, group_uuid, state)

    @classmethod
    def add_members(
        cls, context: RequestContext, group_uuid: str, instance_uuids: Sequence[str]
    ) -> list[str]:
        """Add instances to a group (not project-scoped, as in Nova); return them.

        Uuids already present, or repeated in ``instance_uuids``, add no second row.

        Raises:
            GroupNotFound: no such group.
        """
        group_uuid = _check_uuid(group_uuid, "group uuid")
        wanted = list(dict.fromkeys(_check_uuids(instance_uuids, "instance uuids")))
        change = AddMembers(group_uuid, tuple(wanted))
        _change_members(context, change, signals.group_members_added, "added")
        return wanted

    @classmethod
    def remove_members(
        cls, context: RequestContext, group_uuid: str, instance_uuids: Sequence[str]
    ) -> list[str]:
        """Remove instances from a group; return those that were members."""
        group_uuid = _check_uuid(group_uuid, "group uuid")
        wanted = _check_uuids(instance_uuids, "instance uuids")
        change = RemoveMembers(group_uuid, tuple(wanted))
        return _change_members(context, change, signals.group_members_removed, "removed")

    # ------------------------------------------------------------------ hosts

    def get_hosts(
        self, exclude: Iterable[str] | None = None, *, allow_partial: bool = False
    ) -> hosts_mod.Hosts:
        """Return the distinct hosts of the group's live member instances.

        Args:
            exclude: instance uuids left out before any query.
            allow_partial: if a cell fails, answer from the others (``.failed_cells``
                names the missing ones, and a warning is logged) instead of raising.

        Raises:
            CellUnavailable: a cell failed and ``allow_partial`` is false.
        """
        ctx = self._context
        members = self._values.get("members") or []
        return hosts_mod.hosts_of(
            ctx.dbs,
            members,
            exclude=exclude,
            project_id=ctx.scope.project_id,
            allow_partial=allow_partial,
        )

    def count_members_by_user(self, user_id: str) -> int:
        """Count the group's live member instances that belong to ``user_id``.

        A non-admin caller counts only instances of their own project, as in Nova.

        Raises:
            CellUnavailable: a cell that may hold members could not be asked.
        """
        ctx = self._context
        return hosts_mod.count_members_by_user(
            ctx.dbs,
            self._values.get("members") or [],
            user_id,
            project_id=ctx.scope.project_id,
        )


class InstanceGroupList:
    """A list of groups (``.objects``), with Nova's list classmethods."""

    def __init__(self, objects: Sequence[InstanceGroup] = ()) -> None:
        self.objects = list(objects)

    def __iter__(self) -> Iterator[InstanceGroup]:
        return iter(self.objects)

    def __len__(self) -> int:
        return len(self.objects)

    def __getitem__(self, index: int) -> InstanceGroup:
        return self.objects[index]

    @staticmethod
    def _records(context: RequestContext, scope: Scope) -> list[GroupRecord]:
        state = context.dbs.phases.get()
        return strategy_for(state.phase).list(context.dbs, scope)

    @classmethod
    def get_by_project_id(cls, context: RequestContext, project_id: str) -> InstanceGroupList:
        """List a project's groups, one per uuid (a non-admin sees only their own)."""
        if not context.is_admin and project_id != context.project_id:
            return cls()
        records = cls._records(context, Scope(project_id))
        return cls([InstanceGroup._from_record(context, r) for r in records])

    @classmethod
    def get_all(cls, context: RequestContext) -> InstanceGroupList:
        """List every group the caller may see (admins: every project), one per uuid."""
        records = cls._records(context, context.scope)
        return cls([InstanceGroup._from_record(context, r) for r in records])

    @classmethod
    def get_counts(
        cls, context: RequestContext, project_id: str, user_id: str | None = None
    ) -> dict[str, dict[str, int]]:
        """Count a project's groups (and a user's, if given) across both databases.

        Returns:
            ``{"project": {"server_groups": n}}``, plus ``"user"`` when ``user_id`` is given.
        """
        records = cls._records(context, Scope(project_id))
        counts = {"project": {"server_groups": len(records)}}
        if user_id is not None:
            counts["user"] = {"server_groups": sum(1 for r in records if r.user_id == user_id)}
        return counts
