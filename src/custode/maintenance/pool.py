"""The one fleet scheduler: repositories started on a bounded pool, in a given order, under
the CPU governor, a deadline and SIGINT/SIGTERM. Maintenance (``maintenance.fleetrun``)
and the fleet check (``jobs.check``) both run on it, so neither keeps its own copy.

Work is git-bound (the processes do the work), so a thread pool of ``jobs`` workers is
enough. Items start in the order given (the caller's: largest first), each once a slot
is free and, beside running ones, only while the governor allows; once the deadline has
passed or a stop was requested (``custode.interrupts``) no further item starts and
those left are returned as not started, never half-done. A caller's ``hold`` test, asked
at the moment an item would start, may hold it back instead (the nightly window); a
later item may still start. A finished item is told to the governor before its slot is
freed, so the next question takes a reading that does not count it (see ``Governor``).

While a stop is requested, ``interrupts.note`` is kept told what still runs and what
was cancelled (the progress display shows it); the running items see their git stopped
and end through their own cleanup.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import psutil

from custode import interrupts

T = TypeVar("T")
Progress = Callable[[int, int], None]  # (items finished, items to do)


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
class Scheduled(Generic[T]):
    """What ran: each started item's result by its index, and those that did not start,
    in the order given."""

    results: dict[int, T]
    not_started: list[int]  # the deadline passed, or a stop was requested
    held_back: list[int] = field(default_factory=list)  # the caller's hold test said so


def schedule(
    order: Sequence[int],
    work: Callable[[int], T],
    *,
    jobs: int = 1,
    governor: Governor | None = None,
    deadline: float | None = None,
    hold: Callable[[int], bool] | None = None,
    progress: Progress | None = None,
    poll: float = 0.5,
) -> Scheduled[T]:
    """Run ``work(i)`` for each ``i`` of ``order``, at most ``jobs`` at once, started in
    that order (module docstring). ``deadline``: the ``time.monotonic()`` after which no
    item starts; ``hold(i)``: asked when ``i`` would start, True holds it back;
    ``progress``: told after each finish; ``poll``: seconds between looks at the stop
    while waiting for a slot or the governor. An exception ``work`` raises is raised here
    once every started item has finished."""
    return _Run(order, work, jobs=max(1, jobs), governor=governor, deadline=deadline, hold=hold,
                progress=progress, poll=poll).run()  # fmt: skip


class _Run(Generic[T]):
    """One ``schedule`` call: its slots and counts, shared with the workers."""

    def __init__(
        self,
        order: Sequence[int],
        work: Callable[[int], T],
        *,
        jobs: int,
        governor: Governor | None,
        deadline: float | None,
        hold: Callable[[int], bool] | None,
        progress: Progress | None,
        poll: float,
    ) -> None:
        self.order, self.work, self.jobs = order, work, jobs
        self.governor, self.deadline, self.hold = governor, deadline, hold
        self.progress, self.poll = progress, poll
        self.slots = threading.Semaphore(jobs)
        self.lock = threading.Lock()  # the counts and not_started, and progress's calls
        self.freed = threading.Event()  # wakes a wait for the governor at each finish
        self.running = self.done = 0
        self.not_started: list[int] = []
        self.held_back: list[int] = []

    def run(self) -> Scheduled[T]:
        futures: dict[int, Future[T]] = {}
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            for i in self.order:
                if not self._may_start():
                    with self.lock:
                        self.not_started.append(i)
                        self._note()
                elif self.hold and self.hold(i):
                    self.slots.release()
                    self.held_back.append(i)
                else:
                    with self.lock:
                        self.running += 1
                    futures[i] = pool.submit(self._one, i)
            pending: set[Future[T]] = set(futures.values())
            while pending:  # a stop requested now is told before the first finish
                with self.lock:
                    self._note()
                _, pending = wait(pending, timeout=self.poll, return_when=FIRST_COMPLETED)
        results = {i: future.result() for i, future in futures.items()}
        return Scheduled(results, self.not_started, self.held_back)

    def _stopped(self) -> bool:
        """No further item starts: a stop was requested, or the deadline passed."""
        return interrupts.requested() or (
            self.deadline is not None and time.monotonic() > self.deadline
        )

    def _may_start(self) -> bool:
        """Wait for a free slot (held on True) and the governor's leave; False once
        stopped, the slot given back. A stop request waits at most a poll for a slot."""
        while not self._stopped():
            if self.slots.acquire(timeout=self.poll):
                break
        else:
            return False
        while self.governor and not self._stopped():
            self.freed.clear()  # before asking: a finish while asking is not missed
            if self.governor.may_start(self.running):
                break
            self.freed.wait(self.poll)
        if self._stopped():
            self.slots.release()
            return False
        return True

    def _one(self, i: int) -> T:
        try:
            return self.work(i)
        finally:
            try:
                # told and ticked before the slot is free: a stop the tick requests (a
                # caller's display, a test) is seen before the next start
                with self.lock:
                    self.running -= 1
                    self.done += 1
                    self._note()
                    if self.progress:
                        self.progress(self.done, len(self.order))
                if self.governor:
                    self.governor.finished()  # before the slot is free (class docstring)
            finally:  # whatever raised, the slot is free: the run must not hang
                self.slots.release()
                self.freed.set()

    def _note(self) -> None:
        """Tell ``interrupts`` what runs and what was cancelled, once a stop is requested
        (called under the lock)."""
        if interrupts.requested():
            interrupts.note(running=self.running, cancelled=len(self.not_started))
