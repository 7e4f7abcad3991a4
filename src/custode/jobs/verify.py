"""The verify job: a store checked at a chosen depth (``quick``, ``full``, ``drill``:
``backup/verify.py``), and its standing for this machine (a store that went back in
time, or that two machines write under one host name, fails: ``backup/guard.py``); per
file the problems with the snapshots and repositories they affect, per repository drilled
whether its restore passed and how long it took.

On SIGINT or SIGTERM it stops between two items and records nothing
(``custode.interrupts``); otherwise the history gets a ``verify`` run with a
``restore_drill`` row per repository drilled, the audit log an entry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from custode import interrupts
from custode.backup.catalog import load
from custode.backup.crypto import Identity
from custode.backup.freshness import future_note
from custode.backup.guard import standing
from custode.backup.manifest import Snapshot
from custode.backup.store import Store
from custode.backup.verify import Drill, Problem, Report, add_standing
from custode.backup.verify import verify as verify_store
from custode.base.units import counted
from custode.errors import IntegrityError
from custode.git.runner import Git
from custode.jobs import backupsetup
from custode.jobs import record as history
from custode.jobs.restore import check_identity
from custode.records.state import RepositoryResult

Say = Callable[[str], None]

LEVELS = ("quick", "full", "drill")


def _quiet(message: str) -> None:
    pass


def _no_progress(done: int, total: int) -> None:
    pass


@dataclass(frozen=True)
class VerifyJob:
    """What to verify, how deeply."""

    store: Store
    host: str
    state_dir: Path  # custode's own: the store's lineage, the history, the audit log
    git: Git
    scratch: Path  # where drills restore (a run directory is made and removed in it)
    level: str = "quick"  # one of LEVELS
    identities: Sequence[Identity] = ()  # full and drill decrypt
    identity_file: Path | None = None  # named when it cannot decrypt them (checked first)
    sample: int | None = None  # drill: this many repositories at random; None: all
    own_host: bool = True  # ``host`` is the name this machine backs up under
    accept_rollback: bool = False  # remember the store's present state as the latest


@dataclass(frozen=True)
class VerifyResult:
    """What a verify found."""

    level: str
    store: str
    host: str
    report: Report  # what was checked: counts, problems, drills
    rollback: str  # the store went back in time (also among the problems), or ""
    clash: str  # another machine writes under this host name (also a problem), or ""
    future: list[Snapshot] = field(default_factory=list)  # dated ahead of this clock
    seconds: float = 0.0
    interrupted: str = ""  # what was not done when an interrupt stopped it; "" if none

    @property
    def ok(self) -> bool:
        return self.report.ok

    @property
    def problems(self) -> list[Problem]:
        return self.report.problems

    @property
    def drills(self) -> list[Drill]:
        return self.report.drills

    @property
    def failed_drills(self) -> list[Drill]:
        return [d for d in self.report.drills if not d.ok]

    def summary(self) -> dict[str, Any]:
        """The history's and audit log's record of it (and ``--json``'s summary)."""
        r = self.report
        return {
            "level": r.level,
            "store": self.store,
            "host": self.host,
            "ok": r.ok,
            "snapshots": r.snapshots,
            "manifests": r.manifests,
            "files": r.files,
            "bytes_read": r.bytes_read,
            "restored": r.restored,
            "problems": len(r.problems),
            "drills": len(r.drills),
            "drills_failed": len(self.failed_drills),
            "drill_seconds_max": round(max((d.seconds for d in r.drills), default=0.0), 3),
            "seconds": round(self.seconds, 3),
        }

    def findings(self) -> list[str]:
        """One line per damaged file (with what it affects) and per failed drill."""
        lines = []
        for p in self.problems:
            affected = ", ".join(sorted(p.repositories)[:5]) or "-"
            snaps = ", ".join(sorted(p.snapshots)[:3]) or "-"
            lines.append(f"{p.key}: {p.message} (snapshots: {snaps}; repositories: {affected})")
        lines += [f"drill {d.repository}: {d.message}" for d in self.failed_drills]
        return lines

    def failure(self) -> IntegrityError | None:
        """Problems in the store or failed restore drills (exit status 4); None when none."""
        if self.ok:
            return None
        failed_drills = len(self.failed_drills)
        return IntegrityError(
            f"verify ({self.level}) found {counted(len(self.problems), 'problem')}"
            + (f" and {counted(failed_drills, 'failed restore drill')}" if failed_drills else "")
            + " in the store; see the messages above"
        )


def verify(
    job: VerifyJob,
    *,
    warn: Say = _quiet,
    progress: Callable[[int, int], None] = _no_progress,
) -> VerifyResult:
    """Verify ``job.store`` at ``job.level``. ``warn``: what went wrong beside the check
    (a damaged lineage file, snapshots dated in the future); ``progress``: (done, total)
    items of the phase running. Identities that cannot decrypt the backups are refused
    once, naming ``job.identity_file`` (``UsageError``), before anything else is read."""
    started = time.monotonic()
    store, host, level = job.store, job.host, job.level
    catalog = load(store, host)
    keys = list(job.identities)
    if keys and job.identity_file and catalog.snapshots and catalog.snapshots[-1].entries:
        check_identity(store, catalog.snapshots[-1].entries[0].manifest, keys,
                       job.identity_file)  # fmt: skip

    def step(phase: str, done: int, total: int) -> None:
        progress(done, total)
        # between two items: what ran was stopped (its git too), nothing is recorded
        interrupts.check(f"verify ({level}): {phase} {done} of {total} done, the rest")

    with backupsetup.scratch(job.scratch) as scratch:
        try:
            report = verify_store(store, catalog, level, git=job.git, identities=keys,
                                  scratch=scratch, sample=job.sample,
                                  progress=step)  # fmt: skip
        except interrupts.Interrupted as exc:
            return VerifyResult(level, store.url, host, Report(level), "", "",
                                seconds=time.monotonic() - started,
                                interrupted=exc.message)  # fmt: skip
    found = standing(job.state_dir, store.url, host, catalog, own_host=job.own_host,
                     warn=warn, accept=job.accept_rollback)  # fmt: skip
    add_standing(report, found, host)
    now = datetime.now(UTC)
    for snap in found.future:
        warn(future_note(snap, now))
    result = VerifyResult(
        level=level,
        store=store.url,
        host=host,
        report=report,
        rollback=found.rollback,
        clash=found.clash,
        future=list(found.future),
        seconds=time.monotonic() - started,
    )
    summary = result.summary()
    history.results(job.state_dir, "verify", _rows(result), "ok" if result.ok else "failed",
                    summary, warn)  # fmt: skip
    history.audit(job.state_dir, "verify", store.url, summary, warn)
    return result


def _rows(result: VerifyResult) -> list[RepositoryResult]:
    """The history's row per repository drilled."""
    now = datetime.now(UTC).isoformat()
    return [
        RepositoryResult(
            d.repository,
            f"{result.store}#{result.host}",
            "restore_drill",
            "ok" if d.ok else "failed",
            now,
            d.seconds,
            {"snapshot": d.snapshot, "message": d.message},
        )
        for d in result.report.drills
    ]
