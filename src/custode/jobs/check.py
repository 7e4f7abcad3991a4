"""The fleet integrity check: every repository checked (``integrity.check``: connectivity,
or with ``full`` every object hashed) with its verdict, findings, format warnings, time
and what was read; recorded in the history as a ``check`` run with a row per repository.

Incremental: each repository's last sound check left a record in the history
(``StateDB.check_records``); the check reads only what changed since
(``integrity.incremental``), and keeps the new record, or drops it when the repository
is not sound (its next check is whole). ``incremental=False`` reads everything and
records afresh.

Parallel: repositories are checked on maintenance's fleet scheduler (``maintenance.pool``:
``jobs`` threads, 0: one per CPU), the largest first, and a repository starts beside the
running ones only while the host's CPU use is under ``maintenance.cpu_share`` (the same
governor, told of each finish). A check changes nothing, so there is no lock to take and
nothing for the audit log. On SIGINT or SIGTERM no further repository starts
(``custode.interrupts``: what still runs and what was cancelled is shown); one stopped
mid-way proves nothing, so its result is not kept, only counted as stopped.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from custode import interrupts
from custode.base.fsread import unfit
from custode.base.times import iso
from custode.base.units import counted
from custode.config.model import Config
from custode.errors import RepositoryError
from custode.git.runner import Git
from custode.integrity import incremental, verified
from custode.integrity.check import CheckResult, FormatWarnings
from custode.integrity.check import check as check_whole
from custode.jobs import fleet
from custode.jobs import record as history
from custode.jobs.fleet import Bar, Say
from custode.maintenance import fleetrun, pool
from custode.records.state import RepositoryResult, StateDB
from custode.scan.discovery import Problem
from custode.scan.repostate import RepoState

VERDICTS = ("ok", "corrupt", "error")
FIX = (
    "see the findings above; restore the repository from a backup or investigate — "
    "custode never repairs by deleting"
)
#: nothing corrupt: each finding says why the check could not run and its own fix (a git
#: too old for the repository's extension, a FIFO git waited on), no backup helps
FIX_ERROR = "see the findings above: each names why and the fix"


@dataclass(frozen=True)
class CheckJob:
    """What to check, and how deeply."""

    roots: tuple[Path, ...]
    config: Config
    state_dir: Path  # the scan cache, the history
    git: Git
    full: bool = False  # also hash every object, verify commit-graph and multi-pack-index
    jobs: int = 0  # repositories checked at the same time; 0: one per CPU
    incremental: bool = True  # read only what changed since the last sound check


@dataclass(frozen=True)
class RepositoryCheck:
    """One repository's check."""

    state: RepoState
    result: CheckResult
    started: float  # wall-clock (Unix time)
    record: verified.Record | None = None  # what to keep for the next check

    @property
    def read(self) -> dict[str, object]:
        """What was read: whole or incremental, and of what (``integrity.incremental``)."""
        return self.result.read

    @property
    def verdict(self) -> str:
        return self.result.verdict

    @property
    def findings(self) -> tuple[str, ...]:
        """Damage, or why the check could not run: ``<step>: <git's line>``."""
        return self.result.findings

    @property
    def warnings(self) -> FormatWarnings:
        """Format warnings in historical objects: information, not damage."""
        return self.result.warnings

    @property
    def seconds(self) -> float:
        return self.result.duration


@dataclass(frozen=True)
class FleetCheck:
    """What a check found: each repository checked, in the order checked."""

    full: bool
    repositories: tuple[RepositoryCheck, ...]
    problems: tuple[Problem, ...]  # paths the scan could not read
    found: int  # repositories the scan found
    stopped: int  # checks stopped mid-way by an interrupt (their results are not kept)
    interrupted: bool  # a stop was requested: the rest were not checked
    seconds: float

    def count(self, verdict: str) -> int:
        return sum(1 for r in self.repositories if r.verdict == verdict)

    @property
    def counts(self) -> dict[str, int]:
        return {v: self.count(v) for v in VERDICTS}

    @property
    def bad(self) -> int:
        """Repositories corrupt or not checkable."""
        return self.count("corrupt") + self.count("error")

    @property
    def with_warnings(self) -> int:
        return sum(1 for r in self.repositories if r.warnings.total)

    @property
    def incremental(self) -> int:
        """Repositories that read only what changed since their last sound check."""
        return sum(1 for r in self.repositories if r.read.get("mode") == "incremental")

    @property
    def cancelled(self) -> int:
        """Repositories never started because of an interrupt."""
        return self.found - len(self.repositories) - self.stopped

    def summary(self) -> dict[str, Any]:
        """What the check found, in numbers (``--json``'s summary, the cycle's)."""
        return {
            "repositories": len(self.repositories),
            **self.counts,
            "with_format_warnings": self.with_warnings,
            "incremental": self.incremental,
            "full": self.full,
            "seconds": round(self.seconds, 3),
        }


def check(
    job: CheckJob, *, notice: Say = fleet.quiet, warn: Say = fleet.quiet, bar: Bar = fleet.no_bar
) -> FleetCheck:
    """Check every repository under ``job.roots``. ``notice``: each path the scan could not
    read; ``warn``: what went wrong beside the check (history not recorded); ``bar``: the
    progress display of each stage."""
    started = time.monotonic()
    job.git.lower_own_priority()  # custode too yields to the clients, before any thread starts
    job.git.check_version()
    found = fleet.read(job.roots, job.config, job.state_dir, bar=bar, notice=notice)
    records = _records(job, found.states) if job.incremental else {}
    done, stopped = _check_all(job, found.states, records, bar)
    if done:
        _record(job, done, warn)
    return FleetCheck(
        full=job.full,
        repositories=tuple(done),
        problems=tuple(found.problems),
        found=len(found.states),
        stopped=stopped,
        interrupted=interrupts.requested(),
        seconds=time.monotonic() - started,
    )


def _records(job: CheckJob, states: list[RepoState]) -> dict[tuple[str, str], verified.Record]:
    """Each repository's record of its last sound check (none when the history cannot be
    read: every check is then whole)."""
    if not states or not history.database(job.state_dir).exists():
        return {}
    keys = [(s.root, s.relative) for s in states]
    raw = history.record(job.state_dir, lambda db: db.check_records(keys),
                         failure="check records not read; checking in whole") or {}  # fmt: skip
    parsed = {key: verified.from_json(data) for key, data in raw.items()}
    return {key: r for key, r in parsed.items() if r is not None}


def _check_one(job: CheckJob, state: RepoState, record: verified.Record | None) -> RepositoryCheck:
    began = time.time()
    if unfit(state.problems):
        # a FIFO or a giant where git expects a small file: integrity.check's whole
        # check, under the doubt timeout, and no record
        whole = check_whole(state, job.git, full=job.full)
        read: dict[str, object] = {"mode": "whole", "why": incremental.ASKED_WHOLE}
        return RepositoryCheck(state, replace(whole, read=read), began, None)
    # the scan found no file at all in the loose-object directories (each is a loose
    # object or garbage): the test of whether anything changed need not list them again
    no_loose = state.loose_objects == 0 and state.garbage_files == 0
    out = incremental.check(Path(state.git_dir), job.git, full=job.full, record=record,
                            incremental=job.incremental, no_loose=no_loose)  # fmt: skip
    return RepositoryCheck(state, out.result, began, out.record)


def _check_all(
    job: CheckJob,
    states: list[RepoState],
    records: dict[tuple[str, str], verified.Record],
    bar: Bar,
) -> tuple[list[RepositoryCheck], int]:
    """Every repository on the fleet scheduler, largest first (module docstring); the
    checks done, in the scan's order, and how many were stopped mid-way by SIGINT or
    SIGTERM (their results prove nothing and are not kept)."""
    order = sorted(range(len(states)), key=lambda i: -fleetrun.cost(states[i]))

    def one(i: int) -> RepositoryCheck | None:
        """The check, or None when a stop request cut it short."""
        state = states[i]
        try:
            checked = _check_one(job, state, records.get((state.root, state.relative)))
        except interrupts.Interrupted:
            return None
        return None if interrupts.requested() else checked

    with bar("checking repositories") as tick:
        run = pool.schedule(order, one, jobs=job.jobs or os.cpu_count() or 1, progress=tick,
                            governor=pool.Governor(job.config.maintenance.cpu_share))  # fmt: skip
    done = {i: c for i, c in run.results.items() if c is not None}
    return [done[i] for i in sorted(done)], len(run.results) - len(done)


def _record(job: CheckJob, done: list[RepositoryCheck], warn: Say) -> None:
    task = "check-full" if job.full else "check"
    rows = [
        RepositoryResult(
            repository=c.state.relative,
            root=c.state.root,
            task=task,
            outcome="ok" if c.result.ok else "failed",
            started_at=iso(c.started, "auto"),
            duration_s=c.seconds,
            details=details(c.result),
        )
        for c in done
    ]
    bad = sum(1 for c in done if not c.result.ok)
    summary = {"repositories": len(done), "failed": bad, "full": job.full}
    history.results(job.state_dir, "check", rows, "partial" if bad else "ok", summary, warn)
    kept = [(c.state.root, c.state.relative, c.record.to_json() if c.record else None)
            for c in done]  # fmt: skip

    def save(db: StateDB) -> bool:
        db.save_check_records(kept)
        return True

    if history.record(job.state_dir, save, failure="check records not saved") is None:
        warn("check records not saved: the next check reads everything again")


def details(result: CheckResult) -> dict[str, Any]:
    """The history record: the verdict and findings, and format warnings if there are any
    (``ok`` outcome and verdict still mean sound)."""
    data: dict[str, Any] = {"verdict": result.verdict, "findings": list(result.findings)}
    if result.read:
        data["read"] = result.read
    if result.warnings.total:
        data["warnings"] = result.warnings.to_json()
    return data


def failure(result: FleetCheck) -> RepositoryError | None:
    """The check's failure (exit status 3): a repository corrupt or not checkable, or a
    path that could not be read; None when there is none."""
    counts, bad = result.counts, result.bad
    if not (bad or result.problems):
        return None
    parts = []
    if counts["corrupt"]:
        parts.append(f"{counts['corrupt']} corrupt")
    if counts["error"]:
        parts.append(f"{counts['error']} could not be checked")
    if result.problems:
        parts.append(counted(len(result.problems), "unreadable path"))
    return RepositoryError(
        f"{bad} of {counted(len(result.repositories), 'repository', 'repositories')} failed "
        "the integrity check "
        f"({', '.join(parts)}); {FIX if counts['corrupt'] else FIX_ERROR}"
    )
