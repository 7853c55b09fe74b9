"""Logging for contd_nb's loggers.

The loggers: ``contd_nb.core`` (engine: restores, resumes, snapshots), ``contd_nb.core.leases``
(acquire, takeover, release decisions), ``contd_nb.core.replay`` (replay, attempts, retry
decisions), ``contd_nb.sdk``, ``contd_nb.notebook``, ``contd_nb.observability``, ``contd_nb.cli``.
DEBUG explains lease, replay and retry decisions. Records carry ids, step names, counts and
error types, never step results, inputs or variables (payloads stay in the journal).

    from contd_nb.observability.logging_setup import configure_logging
    configure_logging("INFO")           # or configure_logging(debug=True)

The standard library works as well: ``logging.getLogger("contd_nb.core").setLevel("DEBUG")``.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

__all__ = ["LOGGERS", "configure_logging"]

LOGGERS = ("contd_nb.core", "contd_nb.core.leases", "contd_nb.core.replay", "contd_nb.sdk",
           "contd_nb.notebook", "contd_nb.observability", "contd_nb.cli")
FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_MARK = "_contd_nb_handler"


def _level(level: int | str) -> int:
    if isinstance(level, int) and not isinstance(level, bool):
        return level
    if isinstance(level, str):
        value = logging.getLevelName(level.strip().upper())
        if isinstance(value, int):
            return value
    from ..sdk.errors import ConfigurationError

    raise ConfigurationError(f"log level {level!r} is not valid: DEBUG, INFO, WARNING, ERROR "
                             "or CRITICAL (or a logging level number)")


def configure_logging(level: int | str | None = "INFO", debug: bool = False,
                      stream: TextIO | None = None) -> logging.Logger:
    """Set the ``contd_nb`` logger's level (DEBUG when ``debug``) and give it one handler
    writing to ``stream`` (stderr). Calling it again changes the level, not the handlers."""
    lvl = logging.DEBUG if debug else _level("INFO" if level is None else level)
    root = logging.getLogger("contd_nb")
    root.setLevel(lvl)
    for name in LOGGERS:  # let a level set earlier on a child not hide the new one
        logging.getLogger(name).setLevel(logging.NOTSET)
    handler = next((h for h in root.handlers if getattr(h, _MARK, False)), None)
    if handler is None:
        handler = logging.StreamHandler(stream or sys.stderr)
        setattr(handler, _MARK, True)
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
    elif stream is not None and isinstance(handler, logging.StreamHandler):
        handler.setStream(stream)
    handler.setLevel(lvl)
    return root
