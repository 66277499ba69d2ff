"""Settings: built once at the edge from the environment, nova.conf and the command line."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from shadowdb.errors import InvalidInput
from shadowdb.settings import DEFAULT_DATA_DIR, Settings


def test_diff_max_age_comes_from_the_environment() -> None:
    assert Settings().diff_max_age == 3600
    assert Settings.from_environ({"SHADOWDB_DIFF_MAX_AGE": "600"}).diff_max_age == 600
    with pytest.raises(ValueError, match="SHADOWDB_DIFF_MAX_AGE"):
        Settings.from_environ({"SHADOWDB_DIFF_MAX_AGE": "-1"})


def test_an_empty_environment_gives_the_defaults() -> None:
    assert Settings.from_environ({}) == Settings()
    assert Settings().data_dir == DEFAULT_DATA_DIR and Settings().api_url is None


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().phase_ttl = 0  # type: ignore[misc]


def test_every_shadowdb_variable_is_read(tmp_path: Path) -> None:
    settings = Settings.from_environ(
        {
            "SHADOWDB_API_URL": "sqlite:///api.sqlite",
            "SHADOWDB_DATA_DIR": str(tmp_path / "not-yet" / "data"),
            "SHADOWDB_PHASE_TTL": "0.5",
            "SHADOWDB_DIFF_MAX_AGE": "0",
            "USER": "operator",
        }
    )
    assert settings.api_url == "sqlite:///api.sqlite"
    assert settings.data_dir == tmp_path / "not-yet" / "data"  # a folder to be created
    assert settings.phase_ttl == 0.5
    assert settings.diff_max_age == 0
    assert settings.actor == "operator"


def test_the_actor_falls_back_to_logname_and_empty_variables_count_as_unset() -> None:
    assert Settings.from_environ({"LOGNAME": "root"}).actor == "root"
    assert Settings.from_environ({"USER": "", "LOGNAME": "root"}).actor == "root"
    empty = {"SHADOWDB_API_URL": "", "SHADOWDB_PHASE_TTL": "", "SHADOWDB_DATA_DIR": ""}
    assert Settings.from_environ(empty) == Settings()


def test_overrides_win_over_the_environment_unless_none() -> None:
    environ = {"SHADOWDB_API_URL": "sqlite:///env.sqlite", "SHADOWDB_PHASE_TTL": "3"}
    settings = Settings.from_environ(environ, api_url="sqlite:///arg.sqlite", phase_ttl=None)
    assert settings.api_url == "sqlite:///arg.sqlite"
    assert settings.phase_ttl == 3


@pytest.mark.parametrize("value", ["abc", "-1", "inf", "-inf", "nan", "1s"])
def test_a_phase_ttl_that_is_not_seconds_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match=rf"SHADOWDB_PHASE_TTL='{value}' is not a number"):
        Settings.from_environ({"SHADOWDB_PHASE_TTL": value})


def test_a_data_dir_through_a_file_is_refused(tmp_path: Path) -> None:
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    for folder in (a_file, a_file / "below"):
        with pytest.raises(ValueError, match=f"is not a folder: {a_file} is a file"):
            Settings.from_environ({"SHADOWDB_DATA_DIR": str(folder)})


def _conf(path: Path, api: str | None, database: str | None = None) -> str:
    lines = []
    if api:
        lines += ["[api_database]", f"connection = {api}"]
    if database:
        lines += ["[database]", f"connection = {database}"]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_the_command_line_api_url_wins_over_everything(tmp_path: Path) -> None:
    conf = _conf(tmp_path / "nova.conf", "sqlite:///conf.sqlite")
    environ = {"SHADOWDB_API_URL": "sqlite:///env.sqlite", "SHADOWDB_CONFIG_FILE": conf}
    settings = Settings.from_command_line(environ, "sqlite:///arg.sqlite", [conf])
    assert settings.api_url == "sqlite:///arg.sqlite"


def test_a_config_file_on_the_command_line_wins_over_the_environment(tmp_path: Path) -> None:
    conf = _conf(tmp_path / "nova.conf", "sqlite:///conf.sqlite", "mysql://nova:pw@db/nova")
    environ = {"SHADOWDB_API_URL": "sqlite:///env.sqlite"}
    settings = Settings.from_command_line(environ, None, [conf])
    assert settings.api_url == "sqlite:///conf.sqlite"
    assert settings.cell_url_default == "mysql://nova:pw@db/nova"
    assert settings.config_files == (conf,)


def test_the_environment_url_wins_over_an_environment_config_file(tmp_path: Path) -> None:
    first = _conf(tmp_path / "first.conf", "sqlite:///first.sqlite", "mysql://nova@db/first")
    second = _conf(tmp_path / "second.conf", None, "mysql://nova@db/second")
    files = os.pathsep.join([first, second])
    alone = Settings.from_command_line({"SHADOWDB_CONFIG_FILE": files}, None, [])
    assert alone.api_url == "sqlite:///first.sqlite"
    assert alone.cell_url_default == "mysql://nova@db/second"  # later files win
    assert alone.config_files == (first, second)
    environ = {"SHADOWDB_API_URL": "sqlite:///env.sqlite", "SHADOWDB_CONFIG_FILE": files}
    both = Settings.from_command_line(environ, None, [])
    assert both.api_url == "sqlite:///env.sqlite"
    assert both.cell_url_default == "mysql://nova@db/second"  # templates still filled


def test_no_config_file_leaves_the_environment_alone() -> None:
    settings = Settings.from_command_line({"SHADOWDB_PHASE_TTL": "1"}, None, [])
    assert settings == Settings(phase_ttl=1)


def test_a_missing_config_file_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no such file"):
        Settings.from_command_line({}, None, [str(tmp_path / "nova.conf")])


def test_the_repr_never_shows_the_cell_url_default() -> None:
    assert "hunter2" not in repr(Settings(cell_url_default="mysql://nova:hunter2@db/nova"))
