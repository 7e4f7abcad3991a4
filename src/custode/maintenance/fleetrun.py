"""Run maintenance plans across a fleet: biggest first, within a budget and a window.

The scheduling is ``maintenance.pool``'s, the one the fleet check runs on too: a pool of
``jobs`` workers, the CPU governor, SIGINT and SIGTERM. This module gives it the order
and the tests. Repositories are started largest-cost-first (by their predicted seconds
when given, else by the bytes a repack reads), so that the long ones do not start last
and stretch the run; once ``budget`` seconds have passed no new repository starts, and
those left are reported, never half-done. With a ``window``, a repository whose
predicted time (``estimate``'s as of its start when given: the night's calibrated
prediction) would overrun what is left of it (by the actual elapsed time) is not
started: it is held back and reported, and a shorter one after it may still start. A
repository that cannot be locked or vanished mid-run fails on its own; the others carry
on.

The governor keeps the host's CPU use under a share: while it is above, no further
repository starts beside those running (one always may, so the run progresses); git
itself runs under nice/ionice (see custode.git.runner), so clients are served first.

On SIGINT or SIGTERM (``custode.interrupts``) no further repository starts and those left
are reported as not started; the running ones see their git stopped and end through
the executor's own cleanup.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from custode import interrupts
from custode.errors import CustodeError
from custode.git.runner import Git
from custode.maintenance import pool
from custode.maintenance.executor import ExecutionResult, PackLimits, execute
from custode.maintenance.planner import Plan
from custode.maintenance.pool import Governor
from custode.records.audit import AuditLog
from custode.scan.discovery import Repository
from custode.scan.repostate import RepoState

__all__ = ["FleetRun", "Governor", "Progress", "Runner", "cost", "repository_of", "run_fleet"]

Progress = pool.Progress  # (repositories finished, repositories to do)
Runner = Callable[..., ExecutionResult]


@dataclass(frozen=True)
class FleetRun:
    results: list[tuple[RepoState, Plan, ExecutionResult]]  # in the order given
    not_started: list[RepoState]  # left when the budget ran out, or on an interrupt
    seconds: float
    interrupted: bool = False  # a stop was requested (SIGINT, SIGTERM) during the run
    #: not started: each predicted to overrun what was left of the window
    held_back: list[RepoState] = field(default_factory=list)


def cost(state: RepoState) -> int:
    """What a repack will have to read: the objects, packed and loose."""
    return state.pack_bytes + state.loose_objects_bytes


def repository_of(state: RepoState) -> Repository:
    return Repository(
        root=Path(state.root),
        path=Path(state.path),
        git_dir=Path(state.git_dir),
        kind=state.kind,  # type: ignore[arg-type]
        relative=state.relative,
    )


def run_fleet(
    items: list[tuple[RepoState, Plan]],
    git: Git,
    audit: AuditLog | None,
    *,
    jobs: int = 1,
    budget: float | None = None,
    limits: PackLimits | None = None,
    progress: Progress | None = None,
    governor: Governor | None = None,
    runner: Runner = execute,
    poll: float = 0.5,
    predicted: Sequence[float] | None = None,
    window: float | None = None,
    estimate: Callable[[int], float] | None = None,
) -> FleetRun:
    """Run every plan (``runner`` is the executor; tests give a fake one). ``predicted``:
    each item's predicted seconds (the order); ``window``: seconds from now that no
    repository may be predicted to run past; ``estimate``: item i's predicted seconds
    as of its start (this night's calibrated prediction), asked when it would start;
    None: ``predicted[i]``."""
    start = time.monotonic()
    busy = _order(items, predicted)
    results = {i: runner(repository_of(s), p, git, audit, now=time.time())
               for i, (s, p) in enumerate(items) if not p.tasks}  # fmt: skip
    guess = estimate or (predicted.__getitem__ if predicted else None)

    def one(i: int) -> ExecutionResult:
        state, p = items[i]
        try:
            return runner(repository_of(state), p, git, audit, now=time.time(), limits=limits)
        except (CustodeError, OSError) as exc:  # locked, read-only, vanished
            return ExecutionResult(state.path, "failed", str(exc), (), 0, 0, time.time(), 0.0)

    hold = None if window is None or guess is None else _overruns(start, window, guess)
    run = pool.schedule(busy, one, jobs=jobs, governor=governor, hold=hold, progress=progress,
                        deadline=None if budget is None else start + budget, poll=poll)  # fmt: skip
    results.update(run.results)
    ordered = [(items[i][0], items[i][1], results[i]) for i in range(len(items)) if i in results]
    return FleetRun(ordered, [items[i][0] for i in run.not_started], time.monotonic() - start,
                    interrupts.requested(), [items[i][0] for i in run.held_back])  # fmt: skip


def _overruns(start: float, window: float, guess: Callable[[int], float]) -> Callable[[int], bool]:
    """The hold-back test: item i, started now, is predicted to end past the window (by
    the time actually left of it, and its prediction as of now)."""

    def overruns(i: int) -> bool:
        return time.monotonic() - start + guess(i) > window

    return overruns


def _order(items: list[tuple[RepoState, Plan]], predicted: Sequence[float] | None) -> list[int]:
    """The items with tasks, the longest first: by predicted seconds, else by bytes."""
    busy = [i for i, (_, p) in enumerate(items) if p.tasks]
    if predicted is None:
        return sorted(busy, key=lambda i: cost(items[i][0]), reverse=True)
    return sorted(busy, key=lambda i: (predicted[i], cost(items[i][0])), reverse=True)
