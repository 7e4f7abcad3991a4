"""The maintenance job: state → plan → act → record. Each repository gets only the tasks
its state calls for, each with its reason (``maintenance.planner``); a dry run stops at
the plan and changes nothing.

The history database feeds the planner (when each repository was last fully repacked,
first maintained, its fingerprint after its last successful maintenance, so an unchanged
repository is skipped, and the last check's verdicts, so a repository in doubt is left
alone) and receives every task's result plus one ``maintain`` row per repository
maintained; every action goes to the audit log. Without the history the last check's
verdicts are unknown, so nothing is maintained (a dry run plans afresh, with a warning).

The plans run across the fleet within a budget, under the CPU governor and the pack
limits (``maintenance.fleetrun``); on SIGINT or SIGTERM no further repository starts.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from custode.base.units import counted
from custode.config.model import Config
from custode.errors import CustodeError, RepositoryError, StateUnusableError
from custode.git.runner import Git
from custode.jobs import fleet
from custode.jobs import record as history
from custode.jobs.fleet import Bar, Say
from custode.maintenance import borrowers
from custode.maintenance.doubt import TASKS as CHECK_TASKS
from custode.maintenance.doubt import doubts
from custode.maintenance.executor import ExecutionResult, PackLimits
from custode.maintenance.fleetrun import Governor, run_fleet
from custode.maintenance.planner import Plan, RepoHistory, Task, plan
from custode.records.audit import AuditLog
from custode.records.state import RepositoryResult, StateDB
from custode.scan.discovery import Problem
from custode.scan.repostate import RepoState


@dataclass(frozen=True)
class MaintainJob:
    """What to maintain, and within which limits."""

    roots: tuple[Path, ...]
    config: Config
    state_dir: Path  # the scan cache, the history, the audit log
    git: Git
    dry_run: bool = False  # plan only; change nothing (not even the borrowers on record)
    force: bool = False  # plan also the repositories unchanged since their last maintenance
    jobs: int | None = None  # at the same time; None: maintenance.jobs (0: one per CPU)
    budget: float | None = None  # seconds after which no repository starts
    cpu_share: float | None = None  # None: maintenance.cpu_share


@dataclass(frozen=True)
class RepositoryMaintenance:
    """One repository: its plan (each task with its reason, or why none) and, once it
    ran, what came of it."""

    state: RepoState
    plan: Plan
    result: ExecutionResult | None = None  # None: a dry run, or it was not started

    @property
    def tasks(self) -> tuple[Task, ...]:
        return self.plan.tasks

    @property
    def skipped_reason(self) -> str | None:
        return self.plan.skipped_reason

    @property
    def broken(self) -> bool:
        """Left untouched: the scan found it broken."""
        return bool(self.state.problems)

    @property
    def in_doubt(self) -> bool:
        """Left untouched: its last check was not clean."""
        return self.plan.in_doubt

    @property
    def outcome(self) -> str:
        """ok, skipped or failed once it ran; before: planned (a dry run, or not started:
        see ``Maintenance.not_started``), or skipped (nothing to do)."""
        if self.result is None:
            return "planned" if self.plan.tasks else "skipped"
        return self.result.outcome

    @property
    def seconds(self) -> float:
        return self.result.duration if self.result else 0.0

    @property
    def reclaimed(self) -> int:
        """Bytes freed on disk (negative when the repository grew)."""
        return self.result.reclaimed if self.result else 0


@dataclass(frozen=True)
class Maintenance:
    """What a maintenance did (or, in a dry run, would do), per repository in scan order."""

    dry_run: bool
    repositories: tuple[RepositoryMaintenance, ...]  # every one planned
    not_started: tuple[RepoState, ...]  # left when the budget ran out, or on an interrupt
    problems: tuple[Problem, ...]  # paths the scan could not read
    interrupted: bool
    seconds: float

    @property
    def ran(self) -> tuple[RepositoryMaintenance, ...]:
        """Those the run went through (every one but those not started; none in a dry run)."""
        return tuple(r for r in self.repositories if r.result is not None)

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.ran if r.outcome == outcome)

    @property
    def broken(self) -> tuple[RepositoryMaintenance, ...]:
        return tuple(r for r in self.repositories if r.broken)

    @property
    def in_doubt(self) -> tuple[RepositoryMaintenance, ...]:
        return tuple(r for r in self.repositories if r.in_doubt)

    @property
    def planned(self) -> tuple[RepositoryMaintenance, ...]:
        """Those with tasks to do."""
        return tuple(r for r in self.repositories if r.tasks)

    @property
    def stopped(self) -> int:
        """Repositories whose maintenance an interrupt stopped mid-way."""
        return sum(1 for r in self.ran if r.outcome == "failed" and "interrupted" in _message(r))

    @property
    def reclaimed(self) -> int:
        return sum(r.reclaimed for r in self.ran)

    def summary(self) -> dict[str, Any]:
        """What a maintenance run did, in numbers (``--json``'s summary, the cycle's)."""
        return {
            "maintained": self.count("ok"),
            "skipped": self.count("skipped"),
            "failed": self.count("failed"),
            "not_started": [s.relative for s in self.not_started],
            "in_doubt": [m.state.relative for m in self.ran if m.in_doubt],
            "reclaimed_bytes": self.reclaimed,
            "seconds": round(self.seconds, 3),
        }


def _message(r: RepositoryMaintenance) -> str:
    return r.result.message if r.result else ""


def maintain(
    job: MaintainJob, *, notice: Say = fleet.quiet, warn: Say = fleet.quiet,
    bar: Bar = fleet.no_bar,
) -> Maintenance:  # fmt: skip
    """Plan, and unless ``job.dry_run`` run, the maintenance of every repository under
    ``job.roots``. ``notice``: each path the scan could not read, and each repository left
    untouched (broken, in doubt) with why; ``warn``: what went wrong beside the maintenance
    (history not recorded or unreadable); ``bar``: the progress display of each stage."""
    started = time.monotonic()
    job.git.lower_own_priority()  # custode too yields to the clients, before any thread starts
    version = job.git.check_version()
    found = fleet.read(job.roots, job.config, job.state_dir, bar=bar, notice=notice)
    now = time.time()
    known = _history(job, found.states, warn)
    policy = job.config.maintenance
    lent = _borrowers(job, found.states, warn)
    plans = [
        (s, plan(s, policy, version, now, known.get(s.path), unsure_borrowers=unsure))
        for s, unsure in lent
    ]
    broken = [(s, p) for s, p in plans if s.problems]
    for s, p in broken + [(s, p) for s, p in plans if p.in_doubt]:  # left alone: say why
        notice(f"{s.relative}: {p.skipped_reason}")
    if job.dry_run:
        planned = tuple(RepositoryMaintenance(s, p) for s, p in plans)
        return Maintenance(True, planned, (), tuple(found.problems), False,
                           time.monotonic() - started)  # fmt: skip
    with bar("maintaining") as tick:
        outcome = run_fleet(
            plans,
            job.git,
            AuditLog(job.state_dir / "audit.jsonl"),
            jobs=job.jobs or policy.jobs or os.cpu_count() or 1,
            budget=job.budget,
            governor=Governor(job.cpu_share or policy.cpu_share),
            limits=PackLimits.of(policy, job.jobs or policy.jobs or os.cpu_count() or 1),
            progress=tick,
        )
    results = {id(s): r for s, _, r in outcome.results}
    done = tuple(RepositoryMaintenance(s, p, results.get(id(s))) for s, p in plans)
    result = Maintenance(
        dry_run=False,
        repositories=done,
        not_started=tuple(outcome.not_started),
        problems=tuple(found.problems),
        interrupted=outcome.interrupted,
        seconds=time.monotonic() - started,
    )
    _record(job, result, warn)
    return replace(result, seconds=time.monotonic() - started)  # recording included


def _record(job: MaintainJob, done: Maintenance, warn: Say) -> None:
    """Each task's row, and the repository's own ``maintain`` row (the fingerprint skip
    reads it) when any task ran."""
    rows = []
    for m in done.ran:
        s, r = m.state, m.result
        if r is None:  # never: ran ones have a result
            continue
        started = datetime.fromtimestamp(r.started, UTC).isoformat()
        rows += [
            RepositoryResult(s.relative, s.root, t.kind, t.outcome, started, t.duration,
                             {"reason": t.reason, "message": t.message})
            for t in r.tasks
        ]  # fmt: skip
        if r.tasks:
            details = {"message": r.message, "fingerprint": r.fingerprint,
                       "reclaimed_bytes": r.reclaimed}  # fmt: skip
            rows.append(RepositoryResult(
                s.relative, s.root, "maintain", r.outcome, started, r.duration, details
            ))  # fmt: skip
    failed = done.count("failed")
    summary = {"repositories": len(done.ran), "failed": failed, "reclaimed_bytes": done.reclaimed}
    status = "partial" if failed else "ok"
    history.results(job.state_dir, "maintain", rows, status, summary, warn)


def _history(job: MaintainJob, states: list[RepoState], warn: Say) -> dict[str, RepoHistory]:
    """What the planner needs from the history database, per repository path.

    Without it custode cannot know which repositories the last check found in doubt, so
    it maintains none (exit 7); a dry run plans every repository afresh, with a warning.
    """
    try:
        with StateDB.open(history.database(job.state_dir)) as db:
            full = db.last_task_times("full_repack")
            runs = db.task_history("maintain")
            checks = doubts(db.latest_results(CHECK_TASKS))
    except CustodeError as exc:
        if not job.dry_run:
            raise StateUnusableError(
                f"not maintaining anything: the last check's verdicts cannot be read, so "
                f"a repository it found in doubt could be repacked: {exc}"
            ) from exc
        warn(f"history unreadable, planning every repository afresh: {exc}")
        return {}
    known: dict[str, RepoHistory] = {}
    for s in states:
        key = (s.root, s.relative)
        seen = runs.get(key)
        ok = seen is not None and seen.outcome == "ok" and not job.force
        known[s.path] = RepoHistory(
            last_full_repack=full.get(key),
            first_seen=seen.first if seen else None,
            last_success=seen.latest if seen and ok else None,
            fingerprint=str(seen.details.get("fingerprint", "")) if seen and ok else "",
            doubt=checks.get(os.path.normpath(s.path), ""),
        )
    return known


def _borrowers(job: MaintainJob, states: list[RepoState], warn: Say) -> list[tuple[RepoState, str]]:
    """Each state with every borrower custode can find (``maintenance.borrowers``: the
    given and the configured roots swept, excluded directories too, and the borrowers
    remembered), and why custode cannot be sure it knows them all ('' when it can). The
    borrowers found are remembered, and those gone forgotten, unless a dry run."""
    config = job.config
    if config.maintenance.cruft_expiration is None:
        return [(s, "") for s in states]  # nothing ever expires: nothing to be sure of
    swept = list(dict.fromkeys([*job.roots, *config.roots]))
    doubt = ""
    try:
        with StateDB.open(history.database(job.state_dir)) as db:
            remembered = db.remembered_borrowers()
    except CustodeError as exc:
        remembered, doubt = set(), f"the borrowers on record could not be read ({exc})"
    found = borrowers.find(swept, remembered)
    if doubt:
        found.everywhere.append(doubt)
    if not job.dry_run and (found.seen or found.gone):
        try:
            with StateDB.open(history.database(job.state_dir)) as db:
                db.remember_borrowers(found.seen)
                db.forget_borrowers(found.gone)
        except CustodeError as exc:
            warn(f"borrowers not recorded in history: {exc}")
    names = {os.path.realpath(s.git_dir): s.relative for s in states}
    return [borrowers.apply(s, found, names) for s in states]


def _repos(count: int, word: str = "repository") -> str:
    return counted(count, word, word.removesuffix("y") + "ies")


def failure(failed: int, broken: int, total: int, doubted: int = 0) -> RepositoryError | None:
    """The maintenance's failure (exit status 3): repositories that failed, or were left
    untouched as broken or in doubt (their last check was not clean); None when none."""
    parts = []
    if failed:
        parts.append(f"maintenance failed in {failed} of {_repos(total)}")
    if broken:
        were = "was" if broken == 1 else "were"
        parts.append(f"{_repos(broken, 'broken repository')} {were} left untouched")
    if doubted:
        were = "was" if doubted == 1 else "were"
        parts.append(f"{_repos(doubted)} in doubt (last check not clean) {were} left untouched")
    if not parts:
        return None
    return RepositoryError(
        f"{' and '.join(parts)}; see the messages above (custode repaired or removed nothing there)"
    )
