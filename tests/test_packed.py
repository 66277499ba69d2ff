"""Lists packed in one value (MariaDB/MySQL): every way a list can come back wrong fails."""

from __future__ import annotations

import pytest

from shadowdb.errors import OperationalError
from shadowdb.packed import TERMINATOR, unpack

T = TERMINATOR


def test_whole_lists_unpack_in_order() -> None:
    assert unpack(f"b{T}a{T}{T}", 3, "members", "db") == ["b", "a", ""]
    assert unpack(None, 0, "members", "db") == []


@pytest.mark.parametrize(
    ("value", "count"),
    [
        (f"aaa{T}bb", 2),  # cut inside the last value
        (f"aaa{T}", 2),  # cut on a value's end: a whole value missing
        (f"a{T}b{T}c{T}", 2),  # a value holding the terminator
        ("", 1),  # cut before anything
        (None, 1),
    ],
)
def test_a_list_cut_short_or_malformed_is_an_error(value: str | None, count: int) -> None:
    with pytest.raises(OperationalError, match=r"list of \d+ members came back cut short"):
        unpack(value, count, "members", "db")
