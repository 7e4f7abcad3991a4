"""Logging: readable lines on a terminal, JSON lines (structured logs) otherwise."""

from __future__ import annotations

import logging
import sys
from typing import TextIO


def configure(*, interactive: bool, debug: bool) -> None:
    root = logging.getLogger("custode")
    root.handlers.clear()
    root.propagate = False
    root.setLevel(logging.DEBUG if debug else logging.INFO if interactive else logging.WARNING)
    handler: logging.Handler
    # Each formatter is imported in its branch: a run needs only one of them.
    if interactive:
        from rich.logging import RichHandler

        handler = RichHandler(show_time=False, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = _JsonLines(sys.stderr)
    root.addHandler(handler)


class _JsonLines(logging.StreamHandler[TextIO]):
    """One JSON object a line. Its formatter is made at the first record: most runs log
    nothing, and python-json-logger is a measurable part of start-up."""

    def format(self, record: logging.LogRecord) -> str:
        if self.formatter is None:
            from pythonjsonlogger.json import JsonFormatter

            self.setFormatter(
                JsonFormatter(
                    "%(asctime)s %(levelname)s %(name)s %(message)s",
                    rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                )
            )
        return super().format(record)
