"""Recording what a job did in the history database (``<state_dir>/state.db``): the one
place that writes a run row, the observations of the fleet and the host samples, and
forgets history older than ``state.keep_history``, the same way for every entry point.

A job matters more than its record (a backup that ran is not undone by a busy database),
so a failure to record only warns (``<what> not recorded: …``) and is journaled
(``custode.records.problems``), where ``custode run`` finds which of its stages lost their
records. The first use says it created the database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from custode.errors import CustodeError
from custode.records.audit import AuditLog
from custode.records.state import Observation, RepositoryResult, StateDB

if TYPE_CHECKING:  # types only: a backup or restore records without loading the scanner
    from custode.maintenance.health import Health
    from custode.monitoring.view import HostView
    from custode.scan.repostate import RepoState

log = logging.getLogger("custode")

_T = TypeVar("_T")

#: serve prunes the history at most this often (a refresh comes every minute or so)
PRUNE_EVERY_S = 3600.0


def database(state_dir: Path) -> Path:
    return state_dir / "state.db"


def record(
    state_dir: Path, write: Callable[[StateDB], _T], *, failure: str = "history not recorded"
) -> _T | None:
    """``write(db)`` on the history database, opened and closed around it; its result, or
    None when the database could not be used (then ``failure: <why>`` is logged)."""
    path = database(state_dir)
    new = not path.exists()
    try:
        with StateDB.open(path) as db:
            result = write(db)
    except CustodeError as exc:
        log.warning("%s: %s", failure, exc)
        return None
    if new:
        log.warning("created the history database %s", path)
    return result


def results(  # noqa: PLR0917
    state_dir: Path,
    command: str,
    rows: Sequence[RepositoryResult],
    status: str,
    summary: dict[str, Any],
    warn: Callable[[str], None],
) -> None:
    """One run of ``command`` with a result row per repository (what a job did to each)."""

    def write(db: StateDB) -> None:
        run = db.begin_run(command)
        db.record_results(run, list(rows))
        db.finish_run(run, status, summary)

    try:
        with StateDB.open(database(state_dir)) as db:
            write(db)
    except CustodeError as exc:
        warn(f"{command} results not recorded in history: {exc}")


def audit(
    state_dir: Path, action: str, target: str, details: dict[str, Any],
    warn: Callable[[str], None],
) -> None:  # fmt: skip
    """One entry in ``audit.jsonl``: what was done to ``target`` (a failure only warns)."""
    try:
        AuditLog(state_dir / "audit.jsonl").append(action, target, details)
    except CustodeError as exc:
        warn(f"{action} not written to the audit log: {exc}")


def finished_run(db: StateDB, command: str, status: str, summary: dict[str, Any]) -> int:
    """One run row of ``command``, finished with ``status`` and ``summary``."""
    run = db.begin_run(command)
    db.finish_run(run, status, summary)
    return run


def observed(db: StateDB, rows: Sequence[tuple[RepoState, Health]], status: str) -> int:
    """A ``status`` run row with an observation of each repository that changed (its
    fingerprint or verdict) since its last one: history is a log of changes, not a row per
    repository per scan. The row is a ``status`` one whichever command scanned (status,
    run): the report reads when the fleet was last observed from these. Returns how many
    changed."""
    run = db.begin_run("status")
    last = db.latest_fingerprints()
    changed = [
        (s, h) for s, h in rows if last.get((s.root, s.relative)) != (s.fingerprint, h.verdict)
    ]
    db.record_observations(run, (observation(s, h) for s, h in changed))
    db.finish_run(run, status, {"repositories": len(rows), "changed": len(changed)})
    return len(changed)


def observation(s: RepoState, h: Health) -> Observation:
    return Observation(
        repository=s.relative,
        root=s.root,
        verdict=h.verdict,
        loose_objects=s.loose_objects,
        loose_objects_bytes=s.loose_objects_bytes,
        packs=s.packs,
        pack_bytes=s.pack_bytes,
        loose_refs=s.loose_refs,
        size_bytes=s.size_bytes,
        fingerprint=s.fingerprint,
        reasons="; ".join(r.text for r in h.reasons),
    )


def prune(db: StateDB, keep_history: float, now: datetime | None = None) -> int:
    """Forget what is older than ``keep_history`` seconds (runs with their results, host
    samples, alert events, observations but each repository's latest). Returns the number
    of runs forgotten."""
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=keep_history)
    return db.forget_before(cutoff.isoformat(timespec="microseconds"))


class HostSamples:
    """What serve's refreshes record: each refresh's host sample, and (at most once per
    ``every`` seconds, starting with the first) the pruning by ``state.keep_history`` that
    a daemon adding a sample a minute would otherwise never get. Called with the database
    the refresh has open; its errors are the refresh's to report."""

    def __init__(
        self, keep_history: float, *, every: float = PRUNE_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.keep_history, self.every, self._clock = keep_history, every, clock
        self._pruned: float | None = None

    def __call__(self, db: StateDB, host: HostView) -> None:
        now = self._clock()
        if self._pruned is None or now - self._pruned >= self.every:
            prune(db, self.keep_history)
            self._pruned = now
        db.record_host_sample(host.cpu_ratio, host.memory_ratio, host.load[0])
