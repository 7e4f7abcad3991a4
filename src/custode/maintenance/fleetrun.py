"""Run maintenance plans across a fleet: a bounded pool, biggest first, within a budget.

Work is git-bound (the processes do the work), so a thread pool of ``jobs`` workers is
enough. Repositories are started largest-cost-first, so that the long ones do not start
last and stretch the run; once ``budget`` seconds have passed no new repository starts,
and those left are reported, never half-done. A repository that cannot be locked or
vanished mid-run fails on its own; the others carry on.

The governor keeps the host's CPU use under a share: while it is above, no further
repository starts beside those running (one always may, so the run progresses); git
itself runs under nice/ionice (see custode.git.runner), so clients are served first.

On SIGINT or SIGTERM (``custode.interrupts``) no further repository starts and those left
are reported as not started; the running ones see their git stopped and end through
the executor's own cleanup.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil

from custode import interrupts
from custode.errors import CustodeError
from custode.git.runner import Git
from custode.maintenance.executor import ExecutionResult, PackLimits, execute
from custode.maintenance.planner import Plan
from custode.records.audit import AuditLog
from custode.scan.discovery import Repository
from custode.scan.repostate import RepoState

Progress = Callable[[int, int], None]  # (repositories finished, repositories to do)
Runner = Callable[..., ExecutionResult]


class Governor:
    """Says whether another repository may start, from the host's CPU use (psutil).

    psutil measures CPU use since its previous call; a reading over a few milliseconds is
    noise (0 % or 100 %), so a reading is reused until ``window`` seconds have passed.
    """

    def __init__(
        self, share: float, sample: Callable[[], float] | None = None, window: float = 0.5
    ) -> None:
        self.share = share
        self.sample = sample or (lambda: psutil.cpu_percent(interval=None) / 100)
        self.window = window
        self.sample()  # psutil measures from the previous call: prime it
        self.last, self.at = 0.0, float("-inf")  # the first question takes a reading

    def may_start(self, running: int) -> bool:
        if running == 0:
            return True
        if time.monotonic() - self.at >= self.window:
            self.last, self.at = self.sample(), time.monotonic()
        return self.last < self.share


@dataclass(frozen=True)
class FleetRun:
    results: list[tuple[RepoState, Plan, ExecutionResult]]  # in the order given
    not_started: list[RepoState]  # left when the budget ran out, or on an interrupt
    seconds: float
    interrupted: bool = False  # a stop was requested (SIGINT, SIGTERM) during the run


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
) -> FleetRun:
    """Run every plan (``runner`` is the executor; tests give a fake one)."""
    start = time.monotonic()
    results: dict[int, ExecutionResult] = {}
    busy = [i for i, (_, p) in enumerate(items) if p.tasks]
    busy.sort(key=lambda i: cost(items[i][0]), reverse=True)
    for i, (state, p) in enumerate(items):
        if not p.tasks:
            results[i] = runner(repository_of(state), p, git, audit, now=time.time())
    slots = threading.Semaphore(max(1, jobs))
    done = [0]
    running = [0]
    lock = threading.Lock()
    finished = threading.Event()  # wakes the scheduler when a repository is done
    not_started: list[int] = []

    def one(i: int) -> ExecutionResult:
        state, p = items[i]
        try:
            return runner(repository_of(state), p, git, audit, now=time.time(), limits=limits)
        except (CustodeError, OSError) as exc:  # locked, read-only, vanished
            return ExecutionResult(state.path, "failed", str(exc), (), 0, 0, time.time(), 0.0)
        finally:
            slots.release()
            with lock:
                running[0] -= 1
                finished.set()
                done[0] += 1
                if interrupts.requested():
                    interrupts.note(running=running[0], cancelled=len(not_started))
                if progress:
                    progress(done[0], len(busy))

    futures: dict[int, Future[ExecutionResult]] = {}

    def spent() -> bool:
        return interrupts.requested() or (budget is not None and time.monotonic() - start > budget)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for i in busy:
            # a stop request must not wait for a slot
            while not (held := slots.acquire(timeout=poll)) and not interrupts.requested():
                pass
            while governor and held and not spent() and not governor.may_start(running[0]):
                finished.wait(poll)
                finished.clear()
            if not held or spent():
                if held:
                    slots.release()
                with lock:
                    not_started.append(i)
                    if interrupts.requested():
                        interrupts.note(running=running[0], cancelled=len(not_started))
                continue
            with lock:
                running[0] += 1
            futures[i] = pool.submit(one, i)
    for i, future in futures.items():
        results[i] = future.result()
    ordered = [(items[i][0], items[i][1], results[i]) for i in range(len(items)) if i in results]
    left = [items[i][0] for i in not_started]
    return FleetRun(ordered, left, time.monotonic() - start, interrupts.requested())
