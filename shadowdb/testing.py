"""Helpers for testing code that uses shadowdb (shadowdb's own tests use them too)."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

__all__ = ["StatementCounter"]


class StatementCounter:
    """Count the SQL statements sent through some engines while the block runs.

    Example::

        with StatementCounter({"api": dbs.api, "cell1": dbs.cell("cell1").engine}) as n:
            InstanceGroup.get_by_uuid(ctx, uuid)
        assert n.counts["cell1"] == 0

    Attributes:
        counts: statements per engine name.
        statements: (engine name, SQL text) in the order sent.
    """

    def __init__(self, engines: dict[str, sa.Engine] | Iterable[tuple[str, sa.Engine]]) -> None:
        self._engines = dict(engines)
        self.counts: dict[str, int] = dict.fromkeys(self._engines, 0)
        self.statements: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._listeners: list[tuple[sa.Engine, Any]] = []

    def __enter__(self) -> StatementCounter:
        for name, engine in self._engines.items():

            def listener(*args: Any, _name: str = name) -> None:
                statement = args[2]
                with self._lock:
                    self.counts[_name] += 1
                    self.statements.append((_name, str(statement)))

            event.listen(engine, "before_cursor_execute", listener)
            self._listeners.append((engine, listener))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for engine, listener in self._listeners:
            event.remove(engine, "before_cursor_execute", listener)
        self._listeners.clear()

    def total(self, *names: str) -> int:
        """Return the number of statements sent through the named engines (all if none)."""
        return sum(n for name, n in self.counts.items() if not names or name in names)
