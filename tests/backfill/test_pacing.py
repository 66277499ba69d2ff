"""The forward copy's pace: ``--max-rate`` groups a second, on average since the start."""

from __future__ import annotations

import time

import pytest

from shadowdb.backfill.pacing import Pacer
from shadowdb.errors import InvalidInput


@pytest.mark.parametrize("rate", [0, -1, -0.5])
def test_a_rate_that_is_not_positive_is_bad_input(rate: float) -> None:
    with pytest.raises(InvalidInput, match="--max-rate must be a number > 0"):
        Pacer(rate)


def test_without_a_rate_the_pacer_never_sleeps() -> None:
    slept: list[float] = []
    pacer = Pacer(None, sleep=slept.append)
    for _ in range(100):
        pacer.pace(10_000)
    assert slept == []


def test_a_batch_ahead_of_the_rate_sleeps_until_the_average_is_back() -> None:
    slept: list[float] = []
    pacer = Pacer(100, sleep=slept.append)
    pacer.pace(50)  # half a second's worth, done at once
    assert len(slept) == 1 and 0.4 < slept[0] <= 0.5


def test_the_rate_is_an_average_since_the_start() -> None:
    # The recorded sleeps do not pass time: each batch owes its own share and the
    # shares before it, as a run that has slept nothing would.
    slept: list[float] = []
    pacer = Pacer(100, sleep=slept.append)
    for _ in range(3):
        pacer.pace(50)
    assert [round(s, 1) for s in slept] == [0.5, 1.0, 1.5]


def test_an_empty_batch_counts_nothing_and_sleeps_not() -> None:
    slept: list[float] = []
    pacer = Pacer(100, sleep=slept.append)
    pacer.pace(0)
    assert slept == []
    pacer.pace(50)
    assert len(slept) == 1 and slept[0] <= 0.5


def test_a_run_behind_its_rate_does_not_sleep() -> None:
    slept: list[float] = []
    pacer = Pacer(1000, sleep=slept.append)
    time.sleep(0.05)  # fifty groups' time, and only ten to pace
    pacer.pace(10)
    assert slept == []


def test_a_paced_run_takes_as_long_as_its_rate_says() -> None:
    pacer = Pacer(1000)
    started = time.monotonic()
    for _ in range(5):
        pacer.pace(20)
    assert time.monotonic() - started >= 0.1
