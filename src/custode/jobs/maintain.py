"""The maintenance job: state → plan → act → record. Each repository gets only the tasks
its state calls for, each with its reason (``maintenance.planner``); a dry run stops at
the plan and changes nothing.

The history database feeds the planner (when each repository was last fully repacked,
first maintained, its fingerprint after its last successful maintenance, so an unchanged
repository is skipped, and the last check's verdicts, so a repository in doubt is left
alone) and receives every task's result plus one ``maintain`` row per repository
maintained; every action goes to the audit log. Without the history the last check's
verdicts are unknown, so nothing is maintained (a dry run plans afresh, with a warning).

Each task's cost is predicted before it runs (``maintenance.cost``, from the history of
past runs here and on the rest of the fleet); the prediction, with the sizes it was made
from, is recorded beside the actual time and, when the runner measured it, the actual
peak memory of the task's gits; the next night's predictions learn from both. Within the
night, the tasks that finished correct the predictions of those still to start
(``cost.Calibration``): a repository's tasks are predicted again as it starts (the
prediction recorded), and the window's hold-back weighs the same correction as of the
moment it asks.

The plans run across the fleet within a budget, under the CPU governor and the pack
limits (``maintenance.fleetrun``); on SIGINT or SIGTERM no further repository starts.
With a nightly window (``maintenance.window``, ``--window``) the night is planned to fit
it (``maintenance.window``): the full repacks that do not fit wait, each recorded in the
history as a ``deferred`` row with when it was first deferred (so it ranks first the
next night), and reported with when it is due; none is an error.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, get_args

from custode.base.times import iso
from custode.base.units import counted, format_duration
from custode.config.maintenance import DAY
from custode.config.model import Config
from custode.errors import CustodeError, RepositoryError, StateUnusableError
from custode.git.runner import Git
from custode.jobs import fleet
from custode.jobs import record as history
from custode.jobs.fleet import Bar, Say
from custode.maintenance import borrowers
from custode.maintenance.cost import Calibration, CostModel, Prediction, Sample, sample_of
from custode.maintenance.doubt import TASKS as CHECK_TASKS
from custode.maintenance.doubt import doubts
from custode.maintenance.executor import ExecutionResult, PackLimits, execute
from custode.maintenance.fleetrun import Governor, cost, run_fleet
from custode.maintenance.needs import TaskKind
from custode.maintenance.planner import Plan, RepoHistory, Task, plan
from custode.maintenance.window import DEFERRED, EXPENSIVE, Candidate, plan_night, waiting
from custode.records.audit import AuditLog
from custode.records.state import LatestResult, RepositoryResult, StateDB
from custode.scan.discovery import Problem, Repository
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
    window: float | None = None  # seconds the night may take; None: maintenance.window


@dataclass(frozen=True)
class RepositoryMaintenance:
    """One repository: its plan (each task with its reason, or why none) and, once it
    ran, what came of it."""

    state: RepoState
    plan: Plan
    result: ExecutionResult | None = None  # None: a dry run, or it was not started
    #: task kind → its predicted cost (as the repository started, when it ran)
    predicted: Mapping[str, Prediction] = field(default_factory=dict)

    @property
    def tasks(self) -> tuple[Task, ...]:
        return self.plan.tasks

    def prediction(self, kind: str) -> Prediction | None:
        return self.predicted.get(kind)

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
class Deferral:
    """Work of one repository that waits for a later night (it did not fit the window)."""

    state: RepoState
    tasks: tuple[str, ...]  # the kinds deferred (all of its tasks, or its expensive ones)
    why: str
    since: float  # when this work was first deferred (epoch seconds)
    due: float  # the next night

    def to_json(self) -> dict[str, Any]:
        return {"relative": self.state.relative, "path": self.state.path,
                "tasks": list(self.tasks), "why": self.why, "deferred_since": iso(self.since),
                "due": iso(self.due)}  # fmt: skip


@dataclass(frozen=True)
class Maintenance:
    """What a maintenance did (or, in a dry run, would do), per repository in scan order."""

    dry_run: bool
    repositories: tuple[RepositoryMaintenance, ...]  # every one planned
    not_started: tuple[RepoState, ...]  # left when the budget ran out, or on an interrupt
    problems: tuple[Problem, ...]  # paths the scan could not read
    interrupted: bool
    seconds: float
    deferred: tuple[Deferral, ...] = ()  # waits for a later night: the window was full

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
            "deferred": [d.to_json() for d in self.deferred],
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
    latest = _latest(job)  # each task's and deferral's latest row, read once
    since = _waiting(latest)  # deferred work: never skipped as "unchanged"
    known = _history(job, found.states, warn, since)
    policy = job.config.maintenance
    lent = _borrowers(job, found.states, warn)
    plans = [
        (s, plan(s, policy, version, now, known.get(s.path), unsure_borrowers=unsure))
        for s, unsure in lent
    ]
    model = CostModel(_samples(latest))
    costs: dict[int, Costs] = {id(s): model.predict_all(s, p.tasks) for s, p in plans}
    broken = [(s, p) for s, p in plans if s.problems]
    for s, p in broken + [(s, p) for s, p in plans if p.in_doubt]:  # left alone: say why
        notice(f"{s.relative}: {p.skipped_reason}")
    jobs = job.jobs or policy.jobs or os.cpu_count() or 1
    window = job.window if job.window is not None else policy.window
    deferred: list[Deferral] = []
    if window is not None:
        left = max(0.0, window - (time.monotonic() - started))
        plans, deferred = _fit(plans, costs, since, window=left, jobs=jobs, now=now)
    if job.dry_run:
        planned = tuple(RepositoryMaintenance(s, p, None, costs[id(s)]) for s, p in plans)
        return Maintenance(True, planned, (), tuple(found.problems), False,
                           time.monotonic() - started, tuple(deferred))  # fmt: skip
    predicted = [_seconds(p, costs[id(s)]) for s, p in plans]
    night = _Night(plans, costs)
    with bar("maintaining") as tick:
        outcome = run_fleet(
            plans,
            job.git,
            AuditLog(job.state_dir / "audit.jsonl"),
            jobs=jobs,
            budget=job.budget,
            governor=Governor(job.cpu_share or policy.cpu_share),
            limits=PackLimits.of(policy, jobs),
            progress=tick,
            runner=night.run,
            predicted=predicted,
            estimate=night.estimate,
            window=None if window is None else max(0.0, window - (time.monotonic() - started)),
        )
    for s in outcome.held_back:  # the night ran long: what is left would overrun it
        p = next(p for t, p in plans if t is s)
        why = (f"predicted {format_duration(_seconds(p, night.now(s)))}: would overrun "
               f"what was left of the {format_duration(window or 0)} window")  # fmt: skip
        before = [d for d in deferred if d.state is s]  # its full repack may wait already
        kinds = tuple(k for d in before for k in d.tasks) + tuple(t.kind for t in p.tasks)
        deferred = [d for d in deferred if d.state is not s]
        deferred.append(Deferral(s, kinds, why, since.get((s.root, s.relative), now), now + DAY))
    results = {id(s): r for s, _, r in outcome.results}
    done = tuple(RepositoryMaintenance(s, p, results.get(id(s)), night.predicted(s))
                 for s, p in plans)  # fmt: skip
    result = Maintenance(
        dry_run=False,
        repositories=done,
        not_started=tuple(outcome.not_started),
        problems=tuple(found.problems),
        interrupted=outcome.interrupted,
        seconds=time.monotonic() - started,
        deferred=tuple(deferred),
    )
    _record(job, result, warn, since)
    return replace(result, seconds=time.monotonic() - started)  # recording included


Costs = Mapping[str, Prediction]  # a repository's predictions, by task kind


def _seconds(p: Plan, costs: Costs) -> float:
    """A plan's predicted seconds."""
    return sum(costs[t.kind].seconds for t in p.tasks if t.kind in costs)


class _Night:
    """The night's calibration at work (``cost.Calibration``): each repository's tasks are
    predicted again as it starts (``started``, what is recorded), and what its tasks took
    against the model's prediction corrects those that start after it."""

    def __init__(self, plans: list[tuple[RepoState, Plan]], costs: dict[int, Costs]) -> None:
        self.plans, self.costs = plans, costs
        self.states = {id(p): s for s, p in plans}
        self.calibration = Calibration()
        self.started: dict[int, Costs] = {}  # id(state) → its predictions as it started

    def predicted(self, state: RepoState) -> Costs:
        """``state``'s predictions as it started; the model's if it did not."""
        return self.started.get(id(state), self.costs[id(state)])

    def now(self, state: RepoState) -> Costs:
        """``state``'s predictions as of now."""
        return self.calibration.apply(self.costs[id(state)])

    def estimate(self, i: int) -> float:
        """The i-th plan's predicted seconds as of now (the window's hold-back)."""
        state, p = self.plans[i]
        return _seconds(p, self.now(state))

    def run(
        self, repo: Repository, p: Plan, git: Git, audit: AuditLog | None, **kw: Any
    ) -> ExecutionResult:
        """The executor, between a prediction as the repository starts and the lesson of
        its tasks' times."""
        state = self.states[id(p)]
        model = self.costs[id(state)]
        self.started[id(state)] = self.now(state)
        result = execute(repo, p, git, audit, **kw)
        for t in result.tasks:
            if t.outcome == "ok" and t.kind in model:
                self.calibration.learn(t.kind, model[t.kind].seconds, t.duration)
        return result


def _fit(
    plans: list[tuple[RepoState, Plan]], costs: dict[int, Costs],
    since: dict[tuple[str, str], float], *, window: float, jobs: int, now: float,
) -> tuple[list[tuple[RepoState, Plan]], list[Deferral]]:  # fmt: skip
    """The plans cut to the night that fits ``window`` (``maintenance.window``), and the
    work deferred: a repository's expensive tasks, or all of its tasks."""
    candidates = []
    for i, (s, p) in enumerate(plans):
        if p.tasks:
            predicted = costs[id(s)]
            cheap = sum(predicted[t.kind].seconds for t in p.tasks if t.kind not in EXPENSIVE)
            dear = sum(predicted[t.kind].seconds for t in p.tasks if t.kind in EXPENSIVE)
            candidates.append(Candidate(i, cost(s), cheap, dear, since.get((s.root, s.relative))))
    night = plan_night(candidates, window, jobs)
    fitted, deferred = [], []
    for i, (s, p) in enumerate(plans):
        why = night.deferred.get(i)
        if why is None:
            fitted.append((s, p))
            continue
        whole = i not in night.runs
        kinds = tuple(t.kind for t in p.tasks if whole or t.kind in EXPENSIVE)
        deferred.append(Deferral(s, kinds, why, since.get((s.root, s.relative), now), now + DAY))
        rest = tuple(t for t in p.tasks if t.kind not in kinds)
        skipped = None if rest else f"deferred to the next night: {why}"
        fitted.append((s, replace(p, tasks=rest, skipped_reason=skipped)))
    return fitted, deferred


def _latest(job: MaintainJob) -> list[LatestResult]:
    """The latest row of each task and of each deferral, per repository (the cost model's
    samples, the waits still open); none when the history is unreadable: the planning
    already warned, or refused."""
    try:
        with StateDB.open(history.database(job.state_dir)) as db:
            return db.latest_results([DEFERRED, *get_args(TaskKind)])
    except CustodeError:
        return []


def _waiting(latest: list[LatestResult]) -> dict[tuple[str, str], float]:
    """(root, relative) → when its deferred work was first deferred, for each repository
    whose last deferral is still open (``maintenance.window.waiting``)."""
    rows = [r for r in latest if r.task == DEFERRED]
    results = [r for r in latest if r.task != DEFERRED]
    return {key: since for key, (since, _) in waiting(rows, results).items()}


def _record(
    job: MaintainJob, done: Maintenance, warn: Say, waiting: dict[tuple[str, str], float]
) -> None:
    """Each task's row, and the repository's own ``maintain`` row (the fingerprint skip
    reads it) when any task ran; each deferral's row, with when it was first deferred;
    and a row that ends the wait of each repository ``waiting`` that this run went
    through without deferring it (its work was done, or is no longer needed)."""
    rows = []
    for m in done.ran:
        s, r = m.state, m.result
        if r is None:  # never: ran ones have a result
            continue
        started = iso(r.started, "auto")
        rows += [
            RepositoryResult(s.relative, s.root, t.kind, t.outcome, started, t.duration,
                             _details(t.reason, t.message, m.prediction(t.kind),
                                      t.memory_bytes, t.cpu_seconds))
            for t in r.tasks
        ]  # fmt: skip
        if r.tasks:
            details = {"message": r.message, "fingerprint": r.fingerprint,
                       "reclaimed_bytes": r.reclaimed}  # fmt: skip
            rows.append(RepositoryResult(
                s.relative, s.root, "maintain", r.outcome, started, r.duration, details
            ))  # fmt: skip
    now = iso(time.time())
    rows += [
        RepositoryResult(d.state.relative, d.state.root, DEFERRED, "skipped", now, 0.0,
                         {"tasks": list(d.tasks), "why": d.why,
                          "first_deferred": iso(d.since), "due": iso(d.due)})
        for d in done.deferred
    ]  # fmt: skip
    still = {id(d.state) for d in done.deferred}
    rows += [
        RepositoryResult(m.state.relative, m.state.root, DEFERRED, "ok", now, 0.0,
                         {"tasks": [], "why": "no longer deferred"})
        for m in done.ran
        if (m.state.root, m.state.relative) in waiting and id(m.state) not in still
    ]  # fmt: skip
    failed = done.count("failed")
    summary = {"repositories": len(done.ran), "failed": failed,
               "reclaimed_bytes": done.reclaimed, "deferred": len(done.deferred)}  # fmt: skip
    status = "partial" if failed else "ok"
    history.results(job.state_dir, "maintain", rows, status, summary, warn)


def _details(
    reason: str, message: str, predicted: Prediction | None, memory: int | None = None,
    cpu: float | None = None,
) -> dict[str, Any]:  # fmt: skip
    """A task row's details: with its prediction and the sizes it was made from, the peak
    memory its gits were measured at (``memory_bytes``, absent when not measured), which
    the next night's prediction scales (``maintenance.cost``), and their CPU seconds
    (``cpu_seconds``: far below the task's time, it waited for the host)."""
    details: dict[str, Any] = {"reason": reason, "message": message}
    if predicted is not None:
        details["predicted"] = predicted.to_json()
    if memory is not None:
        details["memory_bytes"] = memory
    if cpu is not None:
        details["cpu_seconds"] = round(cpu, 3)
    return details


def _samples(latest: list[LatestResult]) -> list[Sample]:
    """The cost model's samples: each task's latest successful run per repository (none
    from an unreadable history: the defaults)."""
    rows = (r for r in latest if r.task != DEFERRED)
    return [s for s in map(sample_of, rows) if s is not None]


def _history(
    job: MaintainJob, states: list[RepoState], warn: Say, waiting: dict[tuple[str, str], float]
) -> dict[str, RepoHistory]:
    """What the planner needs from the history database, per repository path. One with
    work ``waiting`` (deferred by the window) is planned afresh, however unchanged.

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
        ok = seen is not None and seen.outcome == "ok" and not job.force and key not in waiting
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
