"""Database URLs: each backend pinned to shadowdb's driver, passwords masked everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from shadowdb.errors import InvalidInput, InvalidURL
from shadowdb.urls import backend_of, mask, mask_text, parse_url, sqlite_url


@pytest.mark.parametrize(
    ("raw", "driver", "backend"),
    [
        ("mysql://nova:pw@db/nova", "mysql+pymysql", "mysql"),
        ("mysql+pymysql://nova:pw@db:3306/nova?charset=utf8", "mysql+pymysql", "mysql"),
        ("mariadb://nova:pw@db/nova", "mysql+pymysql", "mysql"),
        ("postgresql://nova@db/nova", "postgresql+psycopg", "postgresql"),
        ("postgresql+psycopg2://nova@db/nova", "postgresql+psycopg", "postgresql"),
        ("postgres://nova@db/nova", "postgresql+psycopg", "postgresql"),
        ("sqlite:///:memory:", "sqlite+pysqlite", "sqlite"),
        ("  sqlite+pysqlite:////tmp/api.sqlite  ", "sqlite+pysqlite", "sqlite"),
    ],
)
def test_every_backend_runs_on_the_driver_shadowdb_ships(
    raw: str, driver: str, backend: str
) -> None:
    url = parse_url(raw)
    assert url.drivername == driver
    assert backend_of(url) == backend


def test_the_rest_of_a_server_url_is_kept() -> None:
    url = parse_url("mysql://nova:p%40ss@db.example.org:3307/nova_cell1?charset=utf8")
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "nova",
        "p@ss",
        "db.example.org",
        3307,
        "nova_cell1",
    )
    assert dict(url.query) == {"charset": "utf8"}


def test_a_relative_sqlite_path_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = parse_url("sqlite:///data/api.sqlite")
    assert url.database == str(tmp_path.resolve() / "data" / "api.sqlite")


@pytest.mark.parametrize("raw", ["sqlite:///:memory:", "sqlite:///file:api?mode=memory&uri=true"])
def test_in_memory_and_uri_sqlite_databases_are_left_alone(raw: str) -> None:
    url = parse_url(raw)
    assert url.database is not None and not url.database.startswith("/")


def test_sqlite_url_names_the_resolved_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = sqlite_url(Path("cell1.sqlite"))
    assert url.drivername == "sqlite+pysqlite"
    assert url.database == str(tmp_path.resolve() / "cell1.sqlite")
    assert parse_url(url.render_as_string()) == url


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("not a url", "not a database URL"),
        ("oracle://nova:pw@db/nova", "unsupported backend 'oracle'"),
        ("mysql+mysqldb://nova:pw@db/nova", "unsupported driver 'mysqldb'"),
        ("mysql:///nova", "no host"),
        ("postgresql://nova:pw@db", "no database name"),
        ("mysql://nova:p@ss@db/nova", "written %40"),
    ],
)
def test_a_url_shadowdb_cannot_use_is_refused_with_the_reason(raw: str, why: str) -> None:
    with pytest.raises(InvalidURL, match=why) as caught:
        parse_url(raw)
    assert isinstance(caught.value, InvalidInput)


@pytest.mark.parametrize(
    "raw",
    [
        "oracle://nova:hunter2@db/nova",
        "mysql://nova:hun@ter2@db/nova",  # an unescaped "@": the pattern cannot find the end
        "oracle://nova:hunter 2@db/nova",  # a space: no URL pattern matches it
        "oracle://nova@db/nova?password=hunter2&x=1",
        "mysql:/nova:hunter2@db/nova",  # a missing slash
    ],
)
def test_a_refused_url_never_shows_its_password(raw: str) -> None:
    with pytest.raises(InvalidURL) as caught:
        parse_url(raw)
    assert "hunter" not in caught.value.url
    assert "hunter" not in str(caught.value)


def test_mask_hides_the_password_of_a_url_object_and_of_text() -> None:
    url = parse_url("mysql://nova:hunter2@db/nova")
    assert mask(url) == "mysql+pymysql://nova:***@db/nova"
    assert mask("postgresql://nova:hunter2@db/nova") == "postgresql://nova:***@db/nova"
    assert mask("sqlite:////tmp/api.sqlite") == "sqlite:////tmp/api.sqlite"


def test_mask_text_finds_every_password_in_free_text() -> None:
    text = (
        "cell1 mysql+pymysql://nova:s3cret@db1/nova and cell2 postgresql://nova:0ther@db2/nova, "
        "cell3 mysql://nova@db3/nova?charset=utf8&PASSWORD=third&x=1 "
        "cell4 mysql://nova@db4/nova?passwd=fourth"
    )
    masked = mask_text(text)
    for secret in ("s3cret", "0ther", "third", "fourth"):
        assert secret not in masked
    assert "mysql+pymysql://nova:***@db1/nova" in masked
    assert "?charset=utf8&PASSWORD=***&x=1" in masked
    assert masked.endswith("?passwd=***")


def test_mask_text_leaves_text_without_a_password_unchanged() -> None:
    text = "mysql://nova@db/nova?charset=utf8 and user@example.org"
    assert mask_text(text) == text
