"""Read what shadowdb needs from ``nova.conf``, and fill templated cell URLs as Nova does.

``nova-manage`` finds the API database in ``[api_database] connection``, and a cell
mapping's ``database_connection`` may be a template (``{scheme}://{username}:
{password}@{hostname}/{path}?{query}``) that each service fills from its own
``[database] connection`` (Nova's ``CellMapping.format_db_url``, read from
``nova/objects/cell_mapping.py``). shadowdb reads both the way Nova does: the files are
parsed by oslo.config, Nova's own configuration library (several files, the later
ones winning, as ``--config-file`` does for every OpenStack service), and a template is
filled with the same substitutions, including oslo.messaging's ``host1,host2`` form
(``{username1}``, ``{hostname2}``...).

Where Nova logs an error and goes on with the unfilled text, shadowdb stops: a template
with no ``[database] connection`` to fill it is one clear error naming the cell.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib import parse

from shadowdb.errors import InvalidInput

__all__ = ["NovaConf", "fill_template", "is_template", "read_config_files"]


@dataclasses.dataclass(frozen=True)
class NovaConf:
    """The options shadowdb reads from ``nova.conf``.

    Attributes:
        files: the files read, in order (later ones win).
        api_connection: ``[api_database] connection``, or None.
        database_connection: ``[database] connection``, or None: what templated cell
            URLs are filled from.
    """

    files: tuple[str, ...]
    api_connection: str | None
    database_connection: str | None


def read_config_files(paths: Sequence[str]) -> NovaConf:
    """Parse ``paths`` as oslo.config does for Nova's services; later files win.

    Raises:
        InvalidInput: a file does not exist, cannot be read, or is not valid
            (one line, naming the file).
    """
    from oslo_config import cfg

    files = tuple(str(Path(p).expanduser()) for p in paths)
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise InvalidInput(f"config file {name!r}: no such file")
    conf = cfg.ConfigOpts()
    for group in ("api_database", "database"):
        conf.register_opts([cfg.StrOpt("connection", secret=True)], group=group)
    try:
        conf(args=[], project="nova", default_config_files=list(files), use_env=False)
    except cfg.ConfigFileParseError as err:
        raise InvalidInput(f"config file {err.config_file!r}: {err.msg}") from err
    except (cfg.Error, OSError) as err:
        raise InvalidInput(f"config files {', '.join(files)}: {err}") from err
    try:
        api = conf.api_database.connection
        database = conf.database.connection
    except cfg.Error as err:  # a bad $reference in a value, for instance
        raise InvalidInput(f"config files {', '.join(files)}: {err}") from err
    return NovaConf(files, api or None, database or None)


def is_template(url: str) -> bool:
    """Say whether a cell mapping's URL is a template to fill (Nova's test: a ``{``)."""
    return "{" in url


def _netloc(netloc: str) -> dict[str, Any]:
    """Split ``user:pass@host:port`` the way Nova's ``_parse_netloc`` does."""
    userpass, _, hostport = netloc.partition("@") if "@" in netloc else ("", "", netloc)
    host, port = hostport, None
    if hostport.startswith("["):  # [v6]:port
        host, _, rest = hostport[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    elif hostport.count(":") == 1:
        host, _, raw_port = hostport.partition(":")
        port = int(raw_port) if raw_port.isdigit() else None
    user, _, password = userpass.partition(":")
    return {
        "username": user,
        "password": password if ":" in userpass else None,
        "hostname": host,
        "port": port,
    }


def fill_template(template: str, default: str | None, cell: str) -> str:
    """Fill a templated cell URL from ``default`` (``[database] connection``).

    The substitutions are Nova's: ``scheme``, ``username``, ``password``, ``hostname``,
    ``port``, ``path`` (without its leading ``/``), ``query``, ``fragment``, and for a
    comma-separated host list the same names numbered from 1.

    Raises:
        InvalidInput: no ``default`` to fill it from, or the template names something
            Nova does not provide (one line, naming the cell; no password shown).
    """
    if default is None:
        raise InvalidInput(
            f"cell {cell!r}: its database_connection is a template ({template}) and no "
            "[database] connection is configured to fill it: pass --config-file nova.conf "
            "(or set SHADOWDB_CONFIG_FILE)"
        )
    url = parse.urlparse(default)
    try:
        port = url.port
    except ValueError:  # "h1:1,h2:2": no single port
        port = None
    subs: dict[str, Any] = {
        "username": url.username,
        "password": url.password,
        "hostname": url.hostname,
        "port": port,
        "scheme": url.scheme,
        "query": url.query,
        "fragment": url.fragment,
        "path": url.path.lstrip("/"),
    }
    if "," in url.netloc:
        for index, netloc in enumerate(url.netloc.split(","), start=1):
            for key, value in _netloc(netloc).items():
                subs[f"{key}{index}"] = value
    try:
        return template.format(**subs)
    except (KeyError, IndexError, ValueError) as err:
        raise InvalidInput(
            f"cell {cell!r}: cannot fill its database_connection template ({template}): "
            f"{type(err).__name__} {err}"
        ) from err
