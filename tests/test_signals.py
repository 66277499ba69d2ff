"""Signals observe, never control: one namespace, documented names, receivers that cannot harm."""

from __future__ import annotations

from typing import Any

import pytest
from blinker import NamedSignal
from structlog.testing import capture_logs

from shadowdb import signals
from shadowdb.objects import InstanceGroup, RequestContext
from shadowdb.state import Phase
from tests.conftest import Topology
from tests.support.helpers import group_state, put_in_phase

SIGNALS = [name for name in signals.__all__ if name not in ("send", "signals")]


@pytest.mark.parametrize("name", SIGNALS)
def test_every_signal_is_documented_in_the_namespace_under_its_kebab_case_name(
    name: str,
) -> None:
    signal = getattr(signals, name)
    assert isinstance(signal, NamedSignal)
    assert signal.name == name.replace("_", "-")
    assert signals.signals[signal.name] is signal
    assert signal.__doc__  # the keyword arguments its receivers get


def test_the_namespace_holds_nothing_undocumented() -> None:
    assert sorted(signals.signals) == sorted(getattr(signals, n).name for n in SIGNALS)


def test_send_reaches_the_receivers_of_that_sender_with_the_keywords() -> None:
    mine, other = object(), object()
    got: list[tuple[object, dict[str, Any]]] = []
    with signals.divergence.connected_to(lambda s, **kw: got.append((s, kw)), sender=mine):
        signals.send(signals.divergence, mine, group_uuid="g1", kind="k", detail="d")
        signals.send(signals.divergence, other, group_uuid="g2", kind="k", detail="d")
    assert got == [(mine, {"group_uuid": "g1", "kind": "k", "detail": "d"})]


def test_a_receiver_that_raises_is_logged_and_ignored() -> None:
    def broken(_sender: object, **_kw: Any) -> None:
        raise RuntimeError("receiver bug")

    with signals.divergence.connected_to(broken), capture_logs() as logs:
        signals.send(signals.divergence, object(), group_uuid="g1", kind="k", detail="d")
    (event,) = [e for e in logs if e["event"] == "signal_receiver_failed"]
    assert event["signal"] == "divergence" and event["log_level"] == "error"


def test_a_raising_receiver_cannot_undo_an_acknowledged_write(topology: Topology) -> None:
    dbs = topology.dbs
    put_in_phase(dbs, Phase.DUAL_WRITE_CELL_READS)

    def broken(_sender: object, **_kw: Any) -> None:
        raise RuntimeError("receiver bug")

    ctx = RequestContext(dbs, "p1", "u1")
    group = InstanceGroup(ctx, name="web", user_id="u1", project_id="p1", policies=["affinity"])
    with signals.group_created.connected_to(broken, sender=dbs):
        group.create()
    assert group_state(dbs.api, "api", group.uuid) is not None
    assert group_state(dbs.cell("cell1").engine, "cell", group.uuid) is not None
