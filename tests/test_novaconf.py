"""nova.conf: the API URL from ``[api_database]``, templated cell URLs filled as Nova fills them.

The template cases are Nova's own (``nova/tests/unit/objects/test_cell_mapping.py``,
``test_formatted_*``): shadowdb must give the URL Nova's services give. The cutover at the
end runs on MariaDB driven by nothing but a ``nova.conf`` with a real password in it, and
no output of any command shows that password.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from shadowdb import models
from shadowdb.cli import ExitCode
from shadowdb.databases import connect, reader
from shadowdb.errors import InvalidInput
from shadowdb.novaconf import fill_template, read_config_files
from shadowdb.settings import Settings
from shadowdb.testing import write_legacy_cells
from tests.conftest import FreshDatabases
from tests.support.cli import Cli, text

#: Nova's test template (every substitution, with text around each).
_NOVA_TEMPLATE = (
    "{scheme}://not{username}:{password}@{hostname}:1{port}/{path}?{query}&flavor=coolranch"
    "#{fragment}"
)


@pytest.mark.parametrize(
    ("default", "template", "expected"),
    [
        (
            "sqlite://bob:s3kret@localhost:123/nova?munchies=doritos#baz",
            _NOVA_TEMPLATE,
            "sqlite://notbob:s3kret@localhost:1123/nova?munchies=doritos&flavor=coolranch#baz",
        ),
        (
            "rabbit://alice:n0ts3kret@otherhost:456,bob:s3kret@localhost:123/nova?munchies=doritos#baz",
            "{scheme}://not{username2}:{password1}@{hostname2}:1{port1}/{path}?{query}"
            "&flavor=coolranch#{fragment}",
            "rabbit://notbob:n0ts3kret@localhost:1456/nova?munchies=doritos&flavor=coolranch#baz",
        ),
        (
            "rabbit://alice:n0ts3kret@otherhost:456,bob:s3kret@[1:2::7]:123/nova?munchies=doritos#baz",
            "{scheme}://not{username2}:{password1}@[{hostname2}]:1{port1}/{path}?{query}"
            "&flavor=coolranch#{fragment}",
            "rabbit://notbob:n0ts3kret@[1:2::7]:1456/nova?munchies=doritos&flavor=coolranch#baz",
        ),
        (
            "rabbit://alice@otherhost,bob:s3kret@localhost:123/nova?munchies=doritos#baz",
            "{scheme}://not{username1}:{password2}@{hostname2}:1{port2}/{path}?{query}"
            "&flavor=coolranch#{fragment}",
            "rabbit://notalice:s3kret@localhost:1123/nova?munchies=doritos&flavor=coolranch#baz",
        ),
        (
            "rabbit://otherhost,bob:s3kret@localhost:123/nova?munchies=doritos#baz",
            "{scheme}://not{username2}:{password2}@{hostname1}:1{port2}/{path}?{query}"
            "&flavor=coolranch#{fragment}",
            "rabbit://notbob:s3kret@otherhost:1123/nova?munchies=doritos&flavor=coolranch#baz",
        ),
        (  # the form operators use: one database server, the cell's own schema
            "mysql+pymysql://nova:p%40ss@db.example.org:3306/nova?charset=utf8",
            "{scheme}://{username}:{password}@{hostname}:{port}/nova_cell1?{query}",
            "mysql+pymysql://nova:p%40ss@db.example.org:3306/nova_cell1?charset=utf8",
        ),
    ],
    ids=["db", "multi1", "multi1-ipv6", "multi2", "multi3", "operator"],
)
def test_templates_are_filled_as_nova_fills_them(
    default: str, template: str, expected: str
) -> None:
    assert fill_template(template, default, "cell1") == expected


def test_a_template_with_nothing_to_fill_it_names_the_cell() -> None:
    with pytest.raises(InvalidInput, match=r"^cell 'cell1': .*template.*--config-file"):
        fill_template("{scheme}://{username}:{password}@{hostname}/c1", None, "cell1")
    with pytest.raises(InvalidInput, match=r"^cell 'cell1': cannot fill .*KeyError 'nothing'"):
        fill_template("mysql://{nothing}/c1", "mysql://u:p@h/nova", "cell1")


def _write(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def test_later_files_win_and_bad_files_are_one_line(tmp_path: Path) -> None:
    first = _write(
        tmp_path / "nova.conf",
        "[DEFAULT]\ndebug = true\n[api_database]\nconnection = mysql://a:pw1@h/api\n"
        "[database]\nconnection = mysql://a:pw1@h/nova\n",
    )
    second = _write(
        tmp_path / "override.conf", "[api_database]\nconnection = mysql://b:pw2@h/api\n"
    )
    conf = read_config_files([str(first), str(second)])
    assert conf.api_connection == "mysql://b:pw2@h/api"
    assert conf.database_connection == "mysql://a:pw1@h/nova"
    assert conf.files == (str(first), str(second))
    empty = read_config_files([str(_write(tmp_path / "empty.conf", "[DEFAULT]\n"))])
    assert (empty.api_connection, empty.database_connection) == (None, None)
    with pytest.raises(InvalidInput, match=r"no such file"):
        read_config_files([str(tmp_path / "missing.conf")])
    broken = _write(tmp_path / "broken.conf", "[api_database\nconnection = x\n")
    with pytest.raises(InvalidInput, match=r"^config file .*broken\.conf") as err:
        read_config_files([str(broken)])
    assert "\n" not in str(err.value)


@pytest.fixture
def cli(cli_here: Cli) -> Cli:
    return cli_here


@pytest.mark.sqlite
def test_a_broken_config_file_is_named_as_a_config_file(cli: Cli, tmp_path: Path) -> None:
    broken = _write(tmp_path / "broken.conf", "[api_database\nconnection = x\n")
    for path in (broken, tmp_path / "missing.conf"):
        run = cli("status", "--config-file", str(path))
        assert run.code == ExitCode.BAD_INPUT
        assert run.only_error().startswith(f"config file '{path}'"), run.err


def test_the_config_file_gives_the_api_url_and_the_environment_names_it_too(
    fresh: FreshDatabases, cli: Cli, tmp_path: Path
) -> None:
    conf = _write(tmp_path / "nova.conf", f"[api_database]\nconnection = {text(fresh.api_url)}\n")
    cli.ok("db", "sync", "--config-file", str(conf))
    cli.ok(
        "cell",
        "add",
        "cell1",
        text(fresh.cell_urls["cell1"]),
        "--create",
        "--config-file",
        str(conf),
    )
    listed = cli.ok("cell", "list", "--format", "json", env={"SHADOWDB_CONFIG_FILE": str(conf)})
    assert [c["name"] for c in listed.json()] == ["cell1"]
    # Nothing was created where the API URL would default to.
    assert not (tmp_path / "data").exists()
    # --api-url still wins over the file.
    other = cli("status", "--config-file", str(conf), "--api-url", "sqlite:///nowhere/api.sqlite")
    assert other.code == ExitCode.OPERATIONAL and "nowhere" in other.only_error()


def test_a_templated_cell_without_a_config_file_is_one_line(
    fresh: FreshDatabases, cli: Cli, tmp_path: Path
) -> None:
    api = text(fresh.api_url)
    cli.ok("db", "sync", "--api-url", api)
    template = "{scheme}://{username}:{password}@{hostname}/cell1"
    engine = sa.create_engine(fresh.api_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(
            models.api_cell_mappings.insert().values(
                uuid=str(uuid.uuid4()),
                name="cell1",
                transport_url="none:///",
                database_connection=template,
            )
        )
    engine.dispose()
    run = cli("cell", "list", "--api-url", api)
    assert run.code == ExitCode.BAD_INPUT
    assert run.only_error().startswith("cell 'cell1': its database_connection is a template")
    # A cell add of a template with nothing to fill it writes nothing either.
    add = cli("cell", "add", "cell2", template, "--api-url", api)
    assert add.code == ExitCode.BAD_INPUT and "cell 'cell2'" in add.only_error()


_USER, _PASSWORD = "shadowdb_conf", "Zq9-cutover-s3cret"


@pytest.fixture
def with_password(fresh: FreshDatabases) -> Iterator[FreshDatabases]:
    """The fresh MariaDB databases, reached as a user with a real password."""
    admin = fresh.server.admin
    with admin.begin() as conn:
        conn.execute(
            sa.text(f"CREATE USER IF NOT EXISTS '{_USER}'@'%' IDENTIFIED BY '{_PASSWORD}'")
        )
        conn.execute(sa.text(f"GRANT ALL PRIVILEGES ON *.* TO '{_USER}'@'%'"))
    yield fresh
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP USER IF EXISTS '{_USER}'@'%'"))


@pytest.mark.parametrize("backend", [pytest.param("mysql", marks=pytest.mark.mysql)], indirect=True)
def test_a_nova_conf_drives_a_whole_cutover_on_mariadb_and_never_shows_its_password(
    with_password: FreshDatabases, cli: Cli, tmp_path: Path, settings: Settings
) -> None:
    fresh = with_password

    def nova_url(url: sa.URL) -> str:
        # As nova.conf spells it: pymysql, utf8, the password in the URL.
        return url.set(
            drivername="mysql+pymysql",
            username=_USER,
            password=_PASSWORD,
            query={"charset": "utf8"},
        ).render_as_string(hide_password=False)

    conf = _write(
        tmp_path / "nova.conf",
        "[DEFAULT]\ntransport_url = rabbit://guest:guest@localhost:5672/\n"
        f"[api_database]\nconnection = {nova_url(fresh.api_url)}\n"
        f"[database]\nconnection = {nova_url(fresh.cell_urls['cell1'])}\n",
    )
    template = "{scheme}://{username}:{password}@{hostname}:{port}/{path}?{query}"
    flags = ("--config-file", str(conf))
    outputs: list[str] = []

    def run(*argv: str) -> None:
        done = cli(*argv, *flags)
        outputs.append(done.out + done.err)
        assert done.code == ExitCode.OK, f"{argv}: {done.out}\n{done.err}"

    run("db", "sync")
    run("cell", "add", "cell1", template)
    run("db", "sync")
    with connect(
        nova_url(fresh.api_url),
        settings=Settings(cell_url_default=nova_url(fresh.cell_urls["cell1"])),
    ) as dbs:
        written = write_legacy_cells(dbs, groups=60, seed=5)
        with reader(dbs.api) as conn:
            stored = conn.scalar(sa.select(models.api_cell_mappings.c.database_connection))
        assert stored == template  # as given: each service fills it from its own nova.conf
        assert dbs.cell("cell1").url.database == fresh.cell_urls["cell1"].database
    for argv in (
        ("cell", "list"),
        ("status",),
        ("phase", "set", "dual-write-cell-reads"),
        ("backfill",),
        ("diff-report",),
        ("phase", "set", "dual-write-api-reads"),
        ("diff-report", "--format", "json"),
        ("phase", "set", "api-only"),
        ("cleanup", "--yes"),
        ("phase", "history", "--debug"),
    ):
        run(*argv)
    engine = sa.create_engine(fresh.api_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        migrated = set(conn.scalars(sa.select(models.api_groups.c.uuid)))
    engine.dispose()
    assert migrated == {g.uuid for g in written if not g.deleted}
    assert all(_PASSWORD not in output for output in outputs)
    assert any("***" in output for output in outputs)  # the URLs shown were masked
