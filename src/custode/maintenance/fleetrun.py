"""Run maintenance plans across a fleet: a bounded pool, biggest first, within a budget.

Work is git-bound (the processes do the work), so a thread pool of ``jobs`` workers is
enough. Repositories are started largest-cost-first (by their predicted seconds when
given, else by the bytes a repack reads), so that the long ones do not start last and
stretch the run; once ``budget`` seconds have passed no new repository starts, and those
left are reported, never half-done. With a ``window``, a repository whose predicted time
would overrun what is left of it (by the actual elapsed time) is not started: it is
held back and reported, and a shorter one after it may still start. A repository that
cannot be locked or vanished mid-run fails on its own; the others carry on.

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
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
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
    A reading over a time when one of ours ran that has finished (``finished``) counts
    CPU no longer used, and kept the freed slot idle for a window and a poll (on 2 CPUs,
    one repository uses half: most starts waited so). So a finish starts a new reading:
    one that held back is dropped, and the next question waits only for the new one to
    be ``settle`` seconds long; one that let repositories start stays for its window (a
    finish only lowers the use). A share of 1.0 never holds a repository back: the host
    cannot be above all of its CPUs.
    """

    def __init__(
        self,
        share: float,
        sample: Callable[[], float] | None = None,
        window: float = 0.5,
        settle: float = 0.1,
    ) -> None:
        self.share = share
        self.sample = sample or (lambda: psutil.cpu_percent(interval=None) / 100)
        self.window = window
        self.settle = settle
        self._lock = threading.Lock()  # finished() comes from the workers
        self.sample()  # psutil measures from the previous call: prime it
        self.began = float("-inf")  # when the reading under way began (after a finish)
        self.last, self.at = 0.0, float("-inf")  # the first question takes a reading

    def finished(self) -> None:
        """A repository finished: start a new reading (see the class docstring)."""
        with self._lock:
            self.sample()
            self.began = time.monotonic()
            if self.last >= self.share:
                self.at = float("-inf")

    def may_start(self, running: int) -> bool:
        if running == 0 or self.share >= 1.0:
            return True
        while True:
            with self._lock:
                now = time.monotonic()
                if now - self.at < self.window:
                    return self.last < self.share
                wait = self.began + self.settle - now
                if wait <= 0:
                    self.last, self.at = self.sample(), time.monotonic()
                    return self.last < self.share
            time.sleep(wait)


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
) -> FleetRun:
    """Run every plan (``runner`` is the executor; tests give a fake one). ``predicted``:
    each item's predicted seconds; ``window``: seconds from now that no repository may
    be predicted to run past (needs ``predicted``)."""
    start = time.monotonic()
    busy = _order(items, predicted)
    results = {i: runner(repository_of(s), p, git, audit, now=time.time())
               for i, (s, p) in enumerate(items) if not p.tasks}  # fmt: skip
    slots = threading.Semaphore(max(1, jobs))
    done, running = [0], [0]  # finished, running (shared with the workers)
    lock = threading.Lock()
    finished = threading.Event()  # wakes the scheduler when a repository is done
    not_started: list[int] = []
    held_back: list[int] = []  # predicted to overrun the window

    def one(i: int) -> ExecutionResult:
        state, p = items[i]
        try:
            return runner(repository_of(state), p, git, audit, now=time.time(), limits=limits)
        except (CustodeError, OSError) as exc:  # locked, read-only, vanished
            return ExecutionResult(state.path, "failed", str(exc), (), 0, 0, time.time(), 0.0)
        finally:
            _free(slots, governor)
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
            if (
                window is not None
                and predicted
                and time.monotonic() - start + predicted[i] > window
            ):
                slots.release()
                held_back.append(i)
                continue
            with lock:
                running[0] += 1
            futures[i] = pool.submit(one, i)
    results.update({i: future.result() for i, future in futures.items()})
    ordered = [(items[i][0], items[i][1], results[i]) for i in range(len(items)) if i in results]
    return FleetRun(ordered, [items[i][0] for i in not_started], time.monotonic() - start,
                    interrupts.requested(), [items[i][0] for i in held_back])  # fmt: skip


def _free(slots: threading.Semaphore, governor: Governor | None) -> None:
    """A repository finished: the governor hears it before its slot is free, so the next
    question takes a reading that does not count it."""
    if governor:
        governor.finished()
    slots.release()


def _order(items: list[tuple[RepoState, Plan]], predicted: Sequence[float] | None) -> list[int]:
    """The items with tasks, the longest first: by predicted seconds, else by bytes."""
    busy = [i for i, (_, p) in enumerate(items) if p.tasks]
    if predicted is None:
        return sorted(busy, key=lambda i: cost(items[i][0]), reverse=True)
    return sorted(busy, key=lambda i: (predicted[i], cost(items[i][0])), reverse=True)
