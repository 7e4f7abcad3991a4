"""Reports from the history database: what the fleet went through over a time window.

``history.build`` reads the database once (SELECTs only, never a scan of the fleet) into
frozen dataclasses; ``render`` turns that one model into JSON, Markdown or a single
self-contained HTML file (inline SVG from ``charts``, no network resources), so the three
formats carry the same facts. Nothing here prints, exits or imports the CLI.
"""

from __future__ import annotations

from custode.report.history import build
from custode.report.model import Report
from custode.report.render import FORMATS, render

__all__ = ["FORMATS", "Report", "build", "render"]
