"""Failed database calls: which errors count as one, and the one line each is told in."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from shadowdb.errors import DatabaseUnreachable, GroupNotFound, OperationalError, SchemaError
from shadowdb.failures import DB_FAILURES, one_line
from shadowdb.transactions import database_errors
from tests.conftest import Topology


def test_a_driver_error_is_a_database_failure_on_every_backend(topology: Topology) -> None:
    with pytest.raises(DB_FAILURES) as caught, topology.dbs.api.connect() as conn:
        conn.execute(sa.text("SELECT no_such_column FROM no_such_table"))
    assert isinstance(caught.value, sa.exc.DBAPIError)
    line = one_line(caught.value)
    assert "\n" not in line and line.startswith(f"{type(caught.value).__name__}: ")


def test_a_translated_driver_error_is_a_database_failure_too(topology: Topology) -> None:
    with (
        pytest.raises(DB_FAILURES) as caught,
        database_errors("API database"),
        topology.dbs.api.connect() as conn,
    ):
        conn.execute(sa.text("SELECT no_such_column FROM no_such_table"))
    assert isinstance(caught.value, OperationalError)


def test_shadowdb_s_operational_errors_count_and_others_do_not() -> None:
    assert isinstance(DatabaseUnreachable("cell cell1", "refused"), DB_FAILURES)
    assert isinstance(SchemaError("API database", "old"), DB_FAILURES)
    assert not isinstance(GroupNotFound("g1"), DB_FAILURES)
    assert not isinstance(ValueError("x"), DB_FAILURES)


def test_one_line_keeps_the_type_and_the_first_line() -> None:
    err = RuntimeError("  lost connection\n[SQL: SELECT 1]\n(Background on this error)  ")
    assert one_line(err) == "RuntimeError: lost connection"


def test_one_line_of_an_error_without_a_message_is_its_type() -> None:
    assert one_line(TimeoutError()) == "TimeoutError: TimeoutError"
    assert one_line(RuntimeError("  \n ")) == "RuntimeError: RuntimeError"


def test_one_line_masks_passwords() -> None:
    err = OperationalError("can't reach mysql+pymysql://nova:hunter2@db/nova?password=hunter2")
    line = one_line(err)
    assert "hunter2" not in line
    assert line == "OperationalError: can't reach mysql+pymysql://nova:***@db/nova?password=***"


def test_one_line_is_at_most_500_characters() -> None:
    assert len(one_line(RuntimeError("x" * 2000))) == 500
