"""Reports from the history database: what the fleet went through over a time window.

``history.build`` reads the database once (SELECTs only, never a scan of the fleet) into
frozen dataclasses; ``render`` turns that one model into JSON, Markdown or a single
self-contained HTML file (inline SVG from ``charts``, no network resources), so the three
formats carry the same facts. Nothing here prints, exits or imports the CLI. Import
``custode.report.history.build`` and ``custode.report.render.render`` directly.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["FORMATS", "Report", "build"]
_WHERE = {"build": "history", "Report": "model", "FORMATS": "render"}


def __getattr__(name: str) -> Any:
    """Lazy: the config imports ``custode.report.email``, which must not load Jinja2 into
    every command's start-up."""
    if name in _WHERE:
        return getattr(importlib.import_module(f"custode.report.{_WHERE[name]}"), name)
    raise AttributeError(name)
