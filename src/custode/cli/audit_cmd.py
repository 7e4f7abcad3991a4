"""``custode audit``: check and read the hash-chained audit log."""

from __future__ import annotations

from collections import deque
from dataclasses import asdict
from pathlib import Path

import click
from rich.table import Table

from custode.base.units import counted
from custode.cli.app import App
from custode.errors import EXIT_CODES_SEE, IntegrityError
from custode.records.audit import AuditLog


def _log(app: App) -> AuditLog:
    return AuditLog(app.state_dir() / "audit.jsonl")


@click.group(epilog=EXIT_CODES_SEE)
def audit() -> None:
    """Check and read the audit log of every action custode took."""


@audit.command(epilog=EXIT_CODES_SEE)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def verify(app: App, as_json: bool) -> None:
    """Check every entry, the hash chain and the head file of the audit log, and its
    anchor in the history database (so a log deleted with its head file is noticed)."""
    log = _log(app)
    report = log.verify()
    if as_json:
        app.print_json(
            {
                "path": str(report.path),
                "entries": report.entries,
                "ok": report.ok,
                "problems": report.problems,
                "notes": report.notes,
            }
        )
    elif report.ok:
        notes = "".join(f"; {note}" for note in report.notes)
        app.out.print(
            f"audit log {report.path}: {counted(report.entries, 'entry', 'entries')}, chain "
            f"intact{notes}",
            markup=False,
            highlight=False,
        )
    else:
        for problem in report.problems:
            app.err.print(problem, markup=False, highlight=False)
    if not report.ok:
        raise IntegrityError(_failure(report.path, log.head_path, len(report.problems)))


def _failure(path: Path, head: Path, count: int) -> str:
    problems = "1 problem" if count == 1 else f"{count} problems"
    return (
        f"audit log {path} failed verification: {problems}; the log was edited, damaged or lost; "
        f"keep a copy for investigation, then start a new log by moving {path.name} and "
        f"{head.name} aside"
    )


@audit.command(epilog=EXIT_CODES_SEE)
@click.option(
    "--last", "last", type=click.IntRange(min=1), default=20, show_default=True,
    help="How many of the most recent entries to show.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
@click.pass_obj
def show(app: App, last: int, as_json: bool) -> None:
    """Show the most recent entries of the audit log."""
    log = _log(app)
    entries = deque(log.entries(), maxlen=last)
    if as_json:
        app.print_json([asdict(entry) for entry in entries])
        return
    if not entries:
        app.out.print(f"audit log {log.path} is empty", markup=False, highlight=False)
        return
    table = Table("seq", "time", "action", "target")
    for entry in entries:
        table.add_row(str(entry.seq), entry.time[:19].replace("T", " "), entry.action, entry.target)
    app.out.print(table)
