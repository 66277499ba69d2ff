"""Hold the forward copy to ``--max-rate`` groups a second, on average since the start."""

from __future__ import annotations

import time
from collections.abc import Callable

from shadowdb.errors import InvalidInput

__all__ = ["Pacer"]


class Pacer:
    """Sleep after a batch for as long as the run is ahead of its rate (no rate: never)."""

    def __init__(
        self, max_rate: float | None = None, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        if max_rate is not None and max_rate <= 0:
            raise InvalidInput("--max-rate must be a number > 0")
        self.max_rate = max_rate
        self._sleep = sleep
        self._started = time.monotonic()
        self._rows = 0

    def pace(self, rows: int) -> None:
        """Count ``rows`` more groups and sleep until the average rate is back to the limit."""
        if self.max_rate is None or rows == 0:
            return
        self._rows += rows
        due = self._started + self._rows / self.max_rate
        delay = due - time.monotonic()
        if delay > 0:
            self._sleep(delay)
