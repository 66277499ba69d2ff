"""Run the shadowdb command line in-process and take before/after pictures of databases.

Used by ``test_cli.py`` and ``test_cli_errors.py``: :class:`Cli` calls
:func:`shadowdb.cli.main` with its own stdout, stderr and environment; :func:`snapshot`
dumps every row of every table of some databases, plus the files under a folder, so a test
can prove that a refused command wrote nothing.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import os
import pty
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL

from shadowdb import cli

ERROR_PREFIX = "shadowdb: error: "


@dataclasses.dataclass(frozen=True)
class Run:
    """What one command line printed and returned."""

    argv: tuple[str, ...]
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    def only_error(self) -> str:
        """Return the message of the single stderr line, checking there is nothing else."""
        lines = self.err.splitlines()
        assert len(lines) == 1, f"{self.argv}: expected one stderr line, got {self.err!r}"
        assert self.out == "", f"{self.argv}: nothing expected on stdout, got {self.out!r}"
        if _json_requested(self.argv):
            # --format json: the error is a JSON object too, with the exit code.
            error = json.loads(lines[0])
            assert error == {"error": error["error"], "exit_code": self.code}, lines[0]
            assert isinstance(error["error"], str)
            return error["error"]
        assert lines[0].startswith(ERROR_PREFIX), lines[0]
        return lines[0][len(ERROR_PREFIX) :]


def _json_requested(argv: Sequence[str]) -> bool:
    pairs = itertools.pairwise(argv)
    return "--format=json" in argv or any(a == "--format" and b == "json" for a, b in pairs)


@dataclasses.dataclass
class Cli:
    """Call :func:`shadowdb.cli.main` with a fixed base environment."""

    environ: dict[str, str]

    def __call__(self, *argv: str, env: Mapping[str, str] | None = None) -> Run:
        out, err = io.StringIO(), io.StringIO()
        environ = {**self.environ, **(env or {})}
        code = cli.main(list(argv), stdout=out, stderr=err, environ=environ)
        return Run(tuple(argv), code, out.getvalue(), err.getvalue())

    def ok(self, *argv: str, env: Mapping[str, str] | None = None) -> Run:
        """Run a command that must succeed quietly (nothing on stderr without --debug)."""
        run = self(*argv, env=env)
        assert run.code == cli.ExitCode.OK, f"{argv} -> {run.code}: {run.err}"
        if "--debug" not in argv:
            assert run.err == "", f"{argv}: unexpected stderr {run.err!r}"
        return run


def text(url: URL) -> str:
    """Render ``url`` with its password, as an operator would type it."""
    return url.render_as_string(hide_password=False)


def table_rows(output: str) -> list[list[str]]:
    """Return the body rows of the rich table in ``output``, cells stripped."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in output.splitlines()
        if line.startswith("│")
    ]


_engines: dict[str, sa.Engine] = {}


def _engine(url: URL) -> sa.Engine:
    if url.get_backend_name() == "sqlite":
        return sa.create_engine(url, poolclass=sa.pool.NullPool)
    # One pooled engine per server database: snapshots are taken twice per test.
    key = text(url)
    if key not in _engines:
        _engines[key] = sa.create_engine(url, pool_pre_ping=True, pool_size=1)
    return _engines[key]


def dispose_engines() -> None:
    """Close the connections :func:`snapshot` keeps open."""
    while _engines:
        _engines.popitem()[1].dispose()


def dump_database(url: URL) -> dict[str, list[str]] | None:
    """Every row of every table of the database at ``url`` (None: no such SQLite file)."""
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").exists():
        return None  # connecting would create the file
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            quote = conn.dialect.identifier_preparer.quote
            return {
                name: sorted(
                    repr(tuple(row))
                    for row in conn.execute(sa.text(f"SELECT * FROM {quote(name)}"))
                )
                for name in sa.inspect(conn).get_table_names()
            }
    finally:
        if url.get_backend_name() == "sqlite":
            engine.dispose()


def dump_files(folder: Path) -> list[str]:
    """Every file and folder under ``folder``, relative to it.

    Contents are compared as table dumps, not bytes: opening a SQLite file may rewrite its
    header (shadowdb turns on WAL mode, which persists) without writing any row.
    """
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


@dataclasses.dataclass(frozen=True)
class Snapshot:
    databases: dict[str, dict[str, list[str]] | None]
    files: list[str]


def snapshot(urls: Iterable[URL], folder: Path) -> Snapshot:
    """Picture the databases at ``urls`` and the files under ``folder``."""
    return Snapshot({text(u): dump_database(u) for u in urls}, dump_files(folder))


def assert_unchanged(before: Snapshot, after: Snapshot, what: Sequence[str]) -> None:
    assert after.files == before.files, f"{what}: files changed"
    for url, tables in before.databases.items():
        assert after.databases[url] == tables, f"{what}: {url} changed"


#: CSI and OSC escape sequences (colours, cursor moves, hiding the cursor).
ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[()][0-9A-B]")


def terminal_env(base: Mapping[str, str], columns: int = 80) -> dict[str, str]:
    """Return ``base`` as a terminal of ``columns`` columns would see it (colours allowed)."""
    env = dict(base)
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "CI"):
        env.pop(name, None)
    return {**env, "TERM": "xterm-256color", "COLUMNS": str(columns), "LINES": "40"}


def run_on_terminal(argv: Sequence[str], env: Mapping[str, str]) -> tuple[int, str, str]:
    """Run ``argv`` with stdout on a pseudo-terminal; return its code, screen text and stderr.

    The screen text has its escape sequences removed and its line ends made ``\\n``.
    """
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=subprocess.PIPE,
        )
    finally:
        os.close(slave)  # ours: the child keeps its own copy, and EOF comes with its exit
    chunks: list[bytes] = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        proc.wait(timeout=120)
        assert proc.stderr is not None
        err = proc.stderr.read().decode("utf-8", "replace")
        proc.stderr.close()
    screen = ESCAPES.sub("", b"".join(chunks).decode("utf-8", "replace"))
    return proc.returncode, screen.replace("\r\n", "\n"), err
