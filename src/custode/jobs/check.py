"""The fleet integrity check: every repository checked (``integrity.check``: connectivity,
or with ``full`` every object hashed), one after another, with its verdict, findings,
format warnings and time; recorded in the history as a ``check`` run with a row per
repository.

Serial: git's own fsck already uses the disk hard. A check changes nothing, so there is
no lock to take and nothing for the audit log. On SIGINT or SIGTERM no further
repository starts (``custode.interrupts``); one stopped mid-way proves nothing, so its
result is not kept, only counted as stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from custode import interrupts
from custode.base.units import counted
from custode.config.model import Config
from custode.errors import RepositoryError
from custode.git.runner import Git
from custode.integrity import check as integrity
from custode.integrity.check import CheckResult, FormatWarnings
from custode.jobs import fleet
from custode.jobs import record as history
from custode.jobs.fleet import Bar, Say
from custode.records.state import RepositoryResult
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


@dataclass(frozen=True)
class RepositoryCheck:
    """One repository's check."""

    state: RepoState
    result: CheckResult
    started: float  # wall-clock (Unix time)

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
    def cancelled(self) -> int:
        """Repositories never started because of an interrupt."""
        return self.found - len(self.repositories) - self.stopped

    def summary(self) -> dict[str, Any]:
        """What the check found, in numbers (``--json``'s summary, the cycle's)."""
        return {
            "repositories": len(self.repositories),
            **self.counts,
            "with_format_warnings": self.with_warnings,
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
    done, stopped = _check_all(found.states, job.git, job.full, bar)
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


def _check_all(
    states: list[RepoState], git: Git, full: bool, bar: Bar
) -> tuple[list[RepositoryCheck], int]:
    """One repository after another; on SIGINT or SIGTERM stop (the checks so far, and 1
    when a check was stopped mid-way: its result proves nothing and is not kept)."""
    done: list[RepositoryCheck] = []
    with bar("checking repositories") as tick:
        for state in states:
            if interrupts.requested():
                return done, 0
            began = time.time()
            try:
                result = integrity.check(state, git, full=full)
            except interrupts.Interrupted:
                return done, 1
            if interrupts.requested():
                return done, 1
            done.append(RepositoryCheck(state, result, began))
            tick(len(done), len(states))
    return done, 0


def _record(job: CheckJob, done: list[RepositoryCheck], warn: Say) -> None:
    task = "check-full" if job.full else "check"
    rows = [
        RepositoryResult(
            repository=c.state.relative,
            root=c.state.root,
            task=task,
            outcome="ok" if c.result.ok else "failed",
            started_at=datetime.fromtimestamp(c.started, UTC).isoformat(),
            duration_s=c.seconds,
            details=details(c.result),
        )
        for c in done
    ]
    bad = sum(1 for c in done if not c.result.ok)
    summary = {"repositories": len(done), "failed": bad, "full": job.full}
    history.results(job.state_dir, "check", rows, "partial" if bad else "ok", summary, warn)


def details(result: CheckResult) -> dict[str, Any]:
    """The history record: the verdict and findings, and format warnings if there are any
    (``ok`` outcome and verdict still mean sound)."""
    data: dict[str, Any] = {"verdict": result.verdict, "findings": list(result.findings)}
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
