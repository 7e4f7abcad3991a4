"""A job's row in the history database and its audit-log entry, written the same way
for every entry point; a record that cannot be written is a warning, never the job's
failure (the job's own outcome stands)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from custode.errors import CustodeError
from custode.records.audit import AuditLog
from custode.records.state import RepositoryResult, StateDB

Warn = Callable[[str], None]


def audit(state_dir: Path, action: str, target: str, details: dict[str, Any], warn: Warn) -> None:
    """One entry in ``audit.jsonl``: what was done to ``target``."""
    try:
        AuditLog(state_dir / "audit.jsonl").append(action, target, details)
    except CustodeError as exc:
        warn(f"{action} not written to the audit log: {exc}")


def record(  # noqa: PLR0917
    state_dir: Path,
    command: str,
    rows: Sequence[RepositoryResult],
    status: str,
    summary: dict[str, Any],
    warn: Warn,
) -> None:
    """One run of ``command`` in ``state.db``, with a result row per repository."""
    try:
        with StateDB.open(state_dir / "state.db") as db:
            run = db.begin_run(command)
            db.record_results(run, list(rows))
            db.finish_run(run, status, summary)
    except CustodeError as exc:
        warn(f"{command} results not recorded in history: {exc}")
