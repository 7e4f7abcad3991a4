"""Run maintenance plans across a fleet: a bounded pool, biggest first, within a budget.

Work is git-bound (the processes do the work), so a thread pool of ``jobs`` workers is
enough. Repositories are started largest-cost-first, so that the long ones do not start
last and stretch the run; once ``budget`` seconds have passed no new repository starts,
and those left are reported, never half-done. A repository that cannot be locked or
vanished mid-run fails on its own; the others carry on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from custode.audit import AuditLog
from custode.discovery import Repository
from custode.errors import CustodeError
from custode.git import Git
from custode.maintenance.executor import ExecutionResult, PackLimits, execute
from custode.maintenance.planner import Plan
from custode.repostate import RepoState

Progress = Callable[[int, int], None]  # (repositories finished, repositories to do)


@dataclass(frozen=True)
class FleetRun:
    results: list[tuple[RepoState, Plan, ExecutionResult]]  # in the order given
    not_started: list[RepoState]  # left when the budget ran out
    seconds: float


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
) -> FleetRun:
    start = time.monotonic()
    results: dict[int, ExecutionResult] = {}
    busy = [i for i, (_, p) in enumerate(items) if p.tasks]
    busy.sort(key=lambda i: cost(items[i][0]), reverse=True)
    for i, (state, p) in enumerate(items):
        if not p.tasks:
            results[i] = execute(repository_of(state), p, git, audit, now=time.time())
    slots = threading.Semaphore(max(1, jobs))
    done = [0]
    lock = threading.Lock()
    not_started: list[int] = []

    def one(i: int) -> ExecutionResult:
        state, p = items[i]
        try:
            return execute(repository_of(state), p, git, audit, now=time.time(), limits=limits)
        except (CustodeError, OSError) as exc:  # locked, read-only, vanished
            return ExecutionResult(state.path, "failed", str(exc), (), 0, 0, time.time(), 0.0)
        finally:
            slots.release()
            with lock:
                done[0] += 1
                if progress:
                    progress(done[0], len(busy))

    futures: dict[int, Future[ExecutionResult]] = {}
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for i in busy:
            slots.acquire()
            if budget is not None and time.monotonic() - start > budget:
                slots.release()
                not_started.append(i)
                continue
            futures[i] = pool.submit(one, i)
    for i, future in futures.items():
        results[i] = future.result()
    ordered = [(items[i][0], items[i][1], results[i]) for i in range(len(items)) if i in results]
    return FleetRun(ordered, [items[i][0] for i in not_started], time.monotonic() - start)
