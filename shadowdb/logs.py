"""Route shadowdb's structlog events: to the host's ``logging`` as a library, to stderr as the CLI.

Every module logs through ``structlog.get_logger(__name__)``. What happens to an event
depends on who runs shadowdb:

* **Imported by a service** (nova-api, the scheduler): shadowdb configures nothing the
  host owns. If the host has not configured structlog itself, :func:`library_defaults`
  (run when ``shadowdb`` is imported) points structlog at the standard library, as
  structlog documents for code that runs inside an application using ``logging``: each
  event becomes a record of the logger named after its module (``shadowdb.journals``, ...)
  with the event name as its message and the context in its ``extra`` keys, filtered,
  formatted and handled however the host configured ``logging``. No handler is added,
  no level is set and nothing is written to stdout. A host that configures structlog
  (before or after the import) keeps its own configuration.
* **The command line** (:func:`configure_cli`): events are rendered by structlog itself
  on stderr, pretty on a terminal and JSON otherwise (stdout is the command's output).

Passwords in URLs are masked on both paths.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

__all__ = ["configure_cli", "library_defaults", "mask_passwords"]


def mask_passwords(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Mask the password of every URL in an event's string values (a structlog processor)."""
    # Imported here: ``import shadowdb`` loads this module, and must not load SQLAlchemy
    # (which :mod:`shadowdb.urls` needs) before the command line can answer a Ctrl-C.
    from shadowdb import urls

    for key, value in event.items():
        if isinstance(value, str):
            event[key] = urls.mask_text(value)
    return event


def _filter_by_level(
    logger: Any, name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # A host that later swaps only structlog's logger factory keeps these processors:
    # they must not assume a standard-library logger.
    if isinstance(logger, logging.Logger):
        return structlog.stdlib.filter_by_level(logger, name, event)
    return event


_KEY_VALUE = structlog.processors.KeyValueRenderer(key_order=["event"])


def _to_logging(logger: Any, name: str, event: MutableMapping[str, Any]) -> Any:
    if isinstance(logger, logging.Logger):
        # The event name becomes the message, the context the record's ``extra`` keys.
        return structlog.stdlib.render_to_log_kwargs(logger, name, event)
    return _KEY_VALUE(logger, name, event)


def library_defaults() -> None:
    """Send structlog's events to the standard library's ``logging``, unless the host chose.

    Run on ``import shadowdb``. structlog left unconfigured prints every event to stdout,
    which is no place for a library's events: a host that configured only ``logging``
    gets them there instead, as records of ``shadowdb.*`` loggers. A host that configured
    structlog is left alone.
    """
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            # Skip the processing of an event the host's logging would drop anyway.
            _filter_by_level,
            structlog.contextvars.merge_contextvars,
            mask_passwords,
            _to_logging,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: the command line reconfigures after the import.
        cache_logger_on_first_use=False,
    )


def configure_cli(debug: bool, stream: TextIO) -> None:
    """Render events on ``stream`` (stderr): pretty on a terminal, JSON otherwise.

    Only the command line calls this: it owns its process's output.
    """
    level = logging.DEBUG if debug else logging.WARNING
    renderer: Any
    if stream.isatty():
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            mask_passwords,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
