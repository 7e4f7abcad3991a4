"""The report job: the fleet's history over a time window (``custode.report.history``),
rendered as HTML, Markdown or JSON, optionally written atomically to a file, and sent by
email as ``[email]`` configures.

It reads only what the other jobs recorded; it never scans the fleet, and it does not
create the history database just to read it (an empty history gives a report that says
so). It is about one fleet: the job's roots, else the configured ones, else every root
the history recorded. ``custode report`` and the nightly cycle call it; they say what it
wrote or sent.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path

from custode.base.atomicfile import write_atomically
from custode.config.model import Config
from custode.errors import PathNotFoundError, UsageError
from custode.jobs import record
from custode.records.state import StateDB
from custode.report.email import send_report
from custode.report.history import build
from custode.report.model import Report, Targets
from custode.report.render import render

FORMATS = ("html", "md", "json")
_SUFFIXES = {".html": "html", ".htm": "html", ".md": "md", ".markdown": "md", ".json": "json"}


def format_for(output: Path | None) -> str:
    """The format a file's suffix calls for; Markdown when printed or unknown."""
    return _SUFFIXES.get(output.suffix.lower(), "md") if output else "md"


@dataclass(frozen=True)
class ReportJob:
    """Which window of the history, in which format, written where."""

    config: Config
    state_dir: Path  # the history
    since: float  # seconds back from now
    fmt: str = "md"  # one of FORMATS
    output: Path | None = None  # written atomically there; None: only returned
    roots: tuple[Path, ...] = ()  # the fleet; () the configured roots (none: all recorded)

    @property
    def fleet(self) -> tuple[Path, ...]:
        return self.roots or tuple(self.config.roots)


@dataclass(frozen=True)
class ReportResult:
    """The report: its model, and its text in the job's format."""

    model: Report
    fmt: str
    text: str
    output: Path | None  # the file it was written to, if any

    def as_format(self, fmt: str) -> str:
        return self.text if fmt == self.fmt else render(self.model, fmt)


def require_mail(config: Config) -> None:
    """Refuse to promise an email no server is configured to send."""
    if config.email.smtp_host is None:
        raise UsageError(
            "--email needs a mail server: set email.smtp_host, email.sender and "
            "email.recipients in the config"
        )


def report(job: ReportJob, *, now: float | None = None) -> ReportResult:
    """Build the report from the history, render it, and write it to ``job.output``."""
    targets = Targets(resource_ratio=job.config.maintenance.cpu_share)
    path = record.database(job.state_dir)
    now = time.time() if now is None else now
    roots = [str(r.expanduser()) for r in job.fleet]
    if path.exists():
        with StateDB.open(path) as db:
            model = build(db, since_seconds=job.since, now=now, targets=targets, roots=roots)
    else:  # no history yet: say so, and do not create the database just to read it
        model = build(None, since_seconds=job.since, now=now, targets=targets, roots=roots)
    text = render(model, job.fmt)
    if job.output is not None:
        _write(job.output, text)
    return ReportResult(model, job.fmt, text, job.output)


def send(config: Config, result: ReportResult) -> None:
    """Email the report: HTML with a Markdown alternative, as ``[email]`` configures."""
    host = config.backup.host or socket.gethostname().split(".")[0]
    send_report(config.email, result.as_format("html"), result.as_format("md"), host=host)


def _write(output: Path, text: str) -> None:
    """Atomically: a reader sees the old report or the new one, never half of one."""
    try:
        write_atomically(output, text)
    except OSError as exc:
        raise PathNotFoundError(
            f"cannot write the report to {output}: {exc.strerror or exc}; check that its "
            "directory exists and is writable"
        ) from None
