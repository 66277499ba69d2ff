"""Groups as values: what makes two copies the same group, defined once."""

from __future__ import annotations

import dataclasses
import datetime as dt
from types import SimpleNamespace

import pytest

from shadowdb import models
from shadowdb.records import (
    COMPARED_FIELDS,
    COPIED_FIELDS,
    GROUP_COLUMNS,
    GroupRecord,
    to_second,
)

WHEN = dt.datetime(2026, 1, 2, 3, 4, 5)
RECORD = GroupRecord(
    id=1,
    uuid="g1",
    name="web",
    user_id="u1",
    project_id="p1",
    policies=("anti-affinity",),
    members=("i1", "i2"),
    created_at=WHEN,
    updated_at=None,
)


def test_to_second_drops_the_microseconds_only() -> None:
    assert to_second(WHEN.replace(microsecond=999_999)) == WHEN
    assert to_second(WHEN) == WHEN
    assert to_second(None) is None


def test_a_record_is_built_from_a_group_row_and_its_children() -> None:
    row = SimpleNamespace(
        id=1, uuid="g1", name="web", user_id="u1", project_id="p1", created_at=WHEN, updated_at=None
    )
    built = GroupRecord.of(row, iter(["anti-affinity"]), iter(["i1", "i2"]))
    assert built == RECORD


def test_the_group_columns_exist_on_every_group_table() -> None:
    for table in (models.api_groups, models.cell_groups):
        assert set(GROUP_COLUMNS) <= set(table.c.keys())


def test_a_copy_is_compared_on_its_data_and_carries_its_update_time_too() -> None:
    assert set(COMPARED_FIELDS) == {"name", "user_id", "project_id", "created_at"}
    assert set(COPIED_FIELDS) == {*COMPARED_FIELDS, "updated_at"}


def test_the_database_id_and_updated_at_do_not_make_another_group() -> None:
    elsewhere = dataclasses.replace(RECORD, id=99, updated_at=WHEN + dt.timedelta(days=1))
    assert RECORD.same_data(elsewhere)


def test_lists_compare_as_sets_and_created_at_to_the_second() -> None:
    other = dataclasses.replace(
        RECORD,
        members=("i2", "i1", "i1"),
        created_at=WHEN.replace(microsecond=123_456),
    )
    assert RECORD.same_data(other) and other.same_data(RECORD)


@pytest.mark.parametrize(
    "change",
    [
        {"uuid": "g2"},
        {"name": "db"},
        {"name": None},
        {"user_id": "u2"},
        {"project_id": "p2"},
        {"created_at": WHEN + dt.timedelta(seconds=1)},
        {"created_at": None},
        {"policies": ("affinity",)},
        {"members": ("i1",)},
        {"members": ("i1", "i2", "i3")},
    ],
)
def test_any_compared_difference_is_another_group(change: dict[str, object]) -> None:
    other = dataclasses.replace(RECORD, **change)  # type: ignore[arg-type]
    assert not RECORD.same_data(other)
    assert not other.same_data(RECORD)
