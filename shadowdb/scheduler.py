"""Give the scheduler what it asks of server groups, the way Nova's scheduler utils do.

:func:`get_group_details` is Nova's ``setup_instance_group`` / ``_get_group_details``:
the group of the instance being scheduled, its policies, members and hosts (merged with
the hosts the caller already chose). The host checks are pure functions of those
details, one per policy: the affinity and anti-affinity filters and the two soft
weighers.

Importing this module is cheap on purpose (the scheduler imports it at start-up): it
creates no engine, reads no configuration and touches no database; the object layer is
imported on the first call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

from shadowdb.errors import UnsupportedPolicy

if TYPE_CHECKING:
    from shadowdb.objects import RequestContext

__all__ = [
    "AFFINITY_FILTER",
    "ALL_ENABLED",
    "ANTI_AFFINITY_FILTER",
    "SOFT_AFFINITY_WEIGHER",
    "SOFT_ANTI_AFFINITY_WEIGHER",
    "Enabled",
    "GroupDetails",
    "affinity_passes",
    "anti_affinity_passes",
    "get_group_details",
    "members_on_host",
    "soft_affinity_weight",
    "soft_anti_affinity_weight",
]

AFFINITY_FILTER = "ServerGroupAffinityFilter"
ANTI_AFFINITY_FILTER = "ServerGroupAntiAffinityFilter"
SOFT_AFFINITY_WEIGHER = "ServerGroupSoftAffinityWeigher"
SOFT_ANTI_AFFINITY_WEIGHER = "ServerGroupSoftAntiAffinityWeigher"

#: Which filter or weigher enforces each policy.
_ENFORCER = {
    "affinity": AFFINITY_FILTER,
    "anti-affinity": ANTI_AFFINITY_FILTER,
    "soft-affinity": SOFT_AFFINITY_WEIGHER,
    "soft-anti-affinity": SOFT_ANTI_AFFINITY_WEIGHER,
}


@dataclasses.dataclass(frozen=True)
class Enabled:
    """The scheduler's enabled filters and weighers (by Nova class name).

    Built by the caller from its own configuration; this module reads none.
    """

    filters: frozenset[str]
    weighers: frozenset[str]

    @classmethod
    def of(cls, filters: Iterable[str] = (), weighers: Iterable[str] = ()) -> Enabled:
        """Build from any iterables of class names."""
        return cls(frozenset(filters), frozenset(weighers))

    def supports(self, policy: str) -> bool:
        """Tell whether the filter or weigher that enforces ``policy`` is enabled."""
        enforcer = _ENFORCER.get(policy)
        return enforcer is not None and (enforcer in self.filters or enforcer in self.weighers)


#: Every group filter and weigher enabled (Nova's defaults enable all four).
ALL_ENABLED = Enabled.of(
    filters=(AFFINITY_FILTER, ANTI_AFFINITY_FILTER),
    weighers=(SOFT_AFFINITY_WEIGHER, SOFT_ANTI_AFFINITY_WEIGHER),
)


@dataclasses.dataclass(frozen=True)
class GroupDetails:
    """What the scheduler keeps of a group in its request spec.

    Attributes:
        uuid: the group's uuid.
        policies: the group's policies, in stored order.
        members: the member instance uuids, in stored order.
        hosts: the hosts of the group's live members, merged with the caller's hosts.
        failed_cells: cells that did not answer (only with ``allow_partial=True``): the
            hosts may then be incomplete.
    """

    uuid: str
    policies: tuple[str, ...]
    members: tuple[str, ...]
    hosts: frozenset[str]
    failed_cells: tuple[str, ...] = ()

    @property
    def partial(self) -> bool:
        """True if some cell did not answer, so ``hosts`` may lack some."""
        return bool(self.failed_cells)


def get_group_details(
    ctx: RequestContext,
    instance_uuid: str | None,
    user_group_hosts: Iterable[str] | None = None,
    *,
    enabled: Enabled = ALL_ENABLED,
    allow_partial: bool = False,
) -> GroupDetails | None:
    """Return the group details of ``instance_uuid``, or None if it is in no group.

    Like Nova's ``_get_group_details``: no instance uuid, an instance in no group, or a
    group with none of the four scheduling policies give None. Otherwise the group's
    hosts (:meth:`~shadowdb.objects.InstanceGroup.get_hosts`) are merged with
    ``user_group_hosts``.

    Args:
        ctx: the request context.
        instance_uuid: the instance being scheduled.
        user_group_hosts: hosts the caller already placed group members on.
        enabled: the scheduler's enabled filters and weighers.
        allow_partial: if a cell fails, answer without its hosts (the details name it
            in ``failed_cells``) instead of raising.

    Raises:
        UnsupportedPolicy: the group's policy needs a filter or weigher not enabled.
        CellUnavailable: a cell could not be asked and ``allow_partial`` is false.
    """
    if not instance_uuid:
        return None
    from shadowdb.databases import read_session
    from shadowdb.errors import GroupNotFound
    from shadowdb.objects import InstanceGroup

    # One connection per database for the group and the routing of its members.
    with read_session():
        try:
            group = InstanceGroup.get_by_instance_uuid(ctx, instance_uuid)
        except GroupNotFound:
            return None
        policies = tuple(group.policies)
        if not any(p in _ENFORCER for p in policies):
            return None
        for policy in policies:
            if policy in _ENFORCER and not enabled.supports(policy):
                raise UnsupportedPolicy(policy, _ENFORCER[policy])
        hosts = group.get_hosts(allow_partial=allow_partial)
    return GroupDetails(
        uuid=group.uuid,
        policies=policies,
        members=tuple(group.members),
        hosts=frozenset(hosts).union(user_group_hosts or ()),
        failed_cells=hosts.failed_cells,
    )


# --------------------------------------------------------------------------- host checks


def affinity_passes(host: str, group_hosts: Collection[str]) -> bool:
    """Pass ``host`` for an affinity group: the group has no host yet, or it is one of them."""
    return not group_hosts or host in group_hosts


def anti_affinity_passes(
    host: str, group_hosts: Collection[str], *, current_host: str | None = None
) -> bool:
    """Pass ``host`` for an anti-affinity group: no member runs there yet.

    The host already running the instance being moved (``current_host``) always passes,
    as in Nova: the instance does not conflict with itself.
    """
    return host == current_host or host not in group_hosts


def members_on_host(host_instances: Iterable[str], members: Collection[str]) -> int:
    """Count the group's members among the instances running on one host."""
    wanted = members if isinstance(members, (set, frozenset)) else set(members)
    return sum(1 for uuid in host_instances if uuid in wanted)


def soft_affinity_weight(host_instances: Iterable[str], members: Collection[str]) -> float:
    """Weigh a host for a soft-affinity group: the more members it runs, the better."""
    return float(members_on_host(host_instances, members))


def soft_anti_affinity_weight(host_instances: Iterable[str], members: Collection[str]) -> float:
    """Weigh a host for a soft-anti-affinity group: the more members it runs, the worse.

    Nova's weigher returns the negated count, so that after normalisation the host with
    the fewest members weighs most.
    """
    return -float(members_on_host(host_instances, members))
