"""Hold the settings of one shadowdb process, built once at the edge.

The CLI builds :class:`Settings` from its arguments and the environment; an embedding
service builds it from its own configuration. No module reads the environment or a file
at import time.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from shadowdb import novaconf

__all__ = ["DEFAULT_DATA_DIR", "Settings"]

#: Where the embedded SQLite databases live, relative to the working directory.
DEFAULT_DATA_DIR = Path("shadowdb-data")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Configure how shadowdb reaches its databases and paces phase changes.

    Attributes:
        api_url: URL of the API database; ``None`` means the embedded SQLite file
            ``<data_dir>/api.sqlite``.
        data_dir: folder of the embedded SQLite databases.
        phase_ttl: seconds a process may serve a cached phase to *reads* (a read-latency
            setting: every write is fenced by the database it writes, whatever the
            cache says; see docs/protocol.md).
        write_grace: the usual length, in seconds, of one object write: diff-report
            spaces its re-checks of a differing key this far apart.
        connect_timeout: seconds to wait when connecting to a server database.
        actor: who is acting, recorded in the phase history.
        diff_max_age: seconds a clean diff-report stays good enough for ``phase set``
            into ``dual-write-api-reads`` or ``api-only`` (counted from its start).
        cell_url_default: what templated cell URLs are filled from: Nova's
            ``[database] connection`` (:mod:`shadowdb.novaconf`); ``None``: a templated
            cell URL is an error.
        config_files: the ``nova.conf`` files these settings were read from.
    """

    api_url: str | None = None
    data_dir: Path = DEFAULT_DATA_DIR
    phase_ttl: float = 2.0
    write_grace: float = 1.0
    connect_timeout: float = 5.0
    actor: str = "shadowdb"
    diff_max_age: float = 3600.0
    cell_url_default: str | None = dataclasses.field(default=None, repr=False)
    config_files: tuple[str, ...] = ()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], **overrides: object) -> Settings:
        """Build settings from ``SHADOWDB_*`` variables, then apply ``overrides``.

        Recognised: ``SHADOWDB_API_URL``, ``SHADOWDB_DATA_DIR``, ``SHADOWDB_PHASE_TTL``,
        ``SHADOWDB_DIFF_MAX_AGE``.
        """
        values: dict[str, object] = {}
        if environ.get("SHADOWDB_API_URL"):
            values["api_url"] = environ["SHADOWDB_API_URL"]
        if environ.get("SHADOWDB_DATA_DIR"):
            values["data_dir"] = _folder(environ, "SHADOWDB_DATA_DIR")
        if environ.get("SHADOWDB_PHASE_TTL"):
            values["phase_ttl"] = _seconds(environ, "SHADOWDB_PHASE_TTL")
        if environ.get("SHADOWDB_DIFF_MAX_AGE"):
            values["diff_max_age"] = _seconds(environ, "SHADOWDB_DIFF_MAX_AGE")
        user = environ.get("USER") or environ.get("LOGNAME")
        if user:
            values["actor"] = user
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def from_command_line(
        cls, environ: Mapping[str, str], api_url: str | None, config_files: Sequence[str]
    ) -> Settings:
        """Build settings from a command line's options, nova.conf, then the environment.

        The API URL is the first of ``api_url`` (``--api-url``), ``[api_database]
        connection`` of the ``config_files`` (``--config-file``), ``$SHADOWDB_API_URL``,
        that of the ``$SHADOWDB_CONFIG_FILE`` files, and the embedded SQLite file.

        Raises:
            ValueError: a ``SHADOWDB_*`` variable holds a value that is not allowed.
            InvalidInput: a nova.conf file cannot be read.
        """
        files = list(config_files)
        from_command_line = bool(files)
        if not files and environ.get("SHADOWDB_CONFIG_FILE"):
            files = [p for p in environ["SHADOWDB_CONFIG_FILE"].split(os.pathsep) if p]
        conf = novaconf.read_config_files(files) if files else None
        if (
            conf is not None
            and api_url is None
            and (from_command_line or not environ.get("SHADOWDB_API_URL"))
        ):
            api_url = conf.api_connection
        return cls.from_environ(
            environ,
            api_url=api_url,
            cell_url_default=conf.database_connection if conf else None,
            config_files=conf.files if conf else None,
        )


def _folder(environ: Mapping[str, str], name: str) -> Path:
    """Read ``environ[name]`` as a folder: one that exists, or may be created.

    A path through a file would fail later, half-way through ``db sync``.
    """
    raw = environ[name]
    path = Path(raw)
    for ancestor in (path, *path.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise ValueError(f"{name}={raw!r} is not a folder: {ancestor} is a file")
            break
    return path


def _seconds(environ: Mapping[str, str], name: str) -> float:
    """Read ``environ[name]`` as a finite, non-negative number of seconds.

    A negative or infinite phase TTL would make ``phase set`` skip or never end its drain
    wait, so it is refused like any other value that is not a number.
    """
    raw = environ[name]
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}={raw!r} is not a number of seconds >= 0")
    return value
