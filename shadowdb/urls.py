"""Parse, normalise and mask database URLs.

shadowdb accepts the URLs Nova's ``cell_mappings.database_connection`` holds
(``mysql+pymysql://``, ``postgresql://``, ``sqlite://``) and pins each backend to the
driver shadowdb ships with: PyMySQL for MySQL/MariaDB and psycopg 3 for PostgreSQL.
Passwords never leave this module unmasked except inside an engine.
"""

from __future__ import annotations

import re
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from shadowdb.errors import InvalidURL

__all__ = ["Backend", "backend_of", "mask", "mask_text", "parse_url", "sqlite_url"]

#: The driver each backend runs on, by the dialect name in a URL.
_DRIVERS = {
    "sqlite": "sqlite+pysqlite",
    "mysql": "mysql+pymysql",
    "mariadb": "mysql+pymysql",
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
}
_ACCEPTED_DRIVERS = {None, "pysqlite", "pymysql", "psycopg", "psycopg2"}

Backend = str  # "sqlite" | "mysql" | "postgresql"

_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s]*@")
#: PyMySQL and psycopg also take a password as a query parameter (``?password=``).
_PASSWORD_IN_QUERY = re.compile(r"(?P<key>[?&](?:password|passwd)=)[^&#\s'\"]*", re.IGNORECASE)
_SCHEME = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*")


def parse_url(raw: str) -> URL:
    """Parse ``raw`` into a URL on a supported backend and driver.

    Relative SQLite paths are made absolute, so a URL stored in ``cell_mappings`` means
    the same file from every working directory.

    Raises:
        InvalidURL: the text is not a URL, or names a backend or driver shadowdb lacks.
    """
    shown = _shown(raw)
    try:
        url = make_url(raw.strip())
    except (ArgumentError, ValueError) as exc:
        raise InvalidURL(shown, "not a database URL") from exc
    backend, _, driver = url.drivername.partition("+")
    if backend not in _DRIVERS:
        raise InvalidURL(shown, f"unsupported backend {backend!r} (sqlite, mysql, postgresql)")
    if (driver or None) not in _ACCEPTED_DRIVERS:
        raise InvalidURL(shown, f"unsupported driver {driver!r}")
    url = url.set(drivername=_DRIVERS[backend])
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
            url = url.set(database=str(Path(url.database).expanduser().resolve()))
    else:
        if not url.host:
            raise InvalidURL(shown, "no host")
        if "@" in url.host:
            # An unescaped "@" in the password: the rest of the password became the host.
            raise InvalidURL(shown, "an '@' in the user or password must be written %40")
        if not url.database:
            raise InvalidURL(shown, "no database name")
        try:
            _ = url.port
        except ValueError as exc:  # pragma: no cover - make_url already rejects most
            raise InvalidURL(shown, "bad port") from exc
    return url


def sqlite_url(path: Path) -> URL:
    """Return the URL of the SQLite file at ``path``."""
    return sa.URL.create("sqlite+pysqlite", database=str(path.resolve()))


def backend_of(url: URL) -> Backend:
    """Name the backend of ``url``: ``sqlite``, ``mysql`` or ``postgresql``."""
    return url.get_backend_name()


def mask(url: URL | str) -> str:
    """Render ``url`` with its password replaced by ``***``."""
    if isinstance(url, str):
        return mask_text(url)
    return mask_text(url.render_as_string(hide_password=True))


def mask_text(text: str) -> str:
    """Mask every ``scheme://user:password@`` and ``?password=`` password in free text."""
    text = _PASSWORD_IN_URL.sub(r"\g<head>***@", text)
    return _PASSWORD_IN_QUERY.sub(r"\g<key>***", text)


def _shown(raw: str) -> str:
    """Quote ``raw`` for an error message with everything before its last ``@`` hidden.

    Stricter than :func:`mask_text`: a URL being refused may be too malformed for the
    pattern (a password with a space or an unescaped ``@``, a missing slash).
    """
    text = mask_text(raw.strip())
    if "@" not in text:
        return text
    scheme, sep, _ = text.partition("://")
    host = text.rpartition("@")[2]
    return f"{scheme}://***@{host}" if sep and _SCHEME.fullmatch(scheme) else f"***@{host}"
