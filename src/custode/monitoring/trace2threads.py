"""The trace2 listener's threads, kept alive: each loop runs in its own thread, and a
watchdog restarts one that died, at a bounded rate.

A loop should never end by an exception (the listener contains each line's and each
connection's), so a death is a bug: it is logged with its traceback, the thread is
restarted after 1 s (doubling up to a minute while it keeps dying soon after each
restart), counted, and reported by ``health()`` while it is down and for ``REPORT_FOR``
seconds after (serve's ``/healthz`` answers 503 with that line).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from custode.base.units import counted

__all__ = ["REPORT_FOR", "Threads"]

log = logging.getLogger("custode.monitoring.trace2")

RESTART_DELAY, MAX_RESTART_DELAY = 1.0, 60.0  # seconds
STABLE_AFTER = 60.0  # a thread that ran this long before it died restarts after 1 s again
REPORT_FOR = 600.0  # seconds health() reports a restart
WATCH_EVERY = 0.2  # seconds


@dataclass(frozen=True)
class _Death:
    at: float  # time.monotonic()
    what: str  # the exception, one line


class Threads:
    """``loops`` by role ("reader", "parser"), run until ``stopping`` is set;
    ``on_death(role)`` runs in a thread that dies, before it ends."""

    def __init__(
        self, loops: dict[str, Callable[[], None]], stopping: threading.Event, *,
        on_death: Callable[[str], None] | None = None,
    ) -> None:  # fmt: skip
        self.loops = loops
        self.stopping = stopping
        self.on_death = on_death
        self.restarts = dict.fromkeys(loops, 0)
        self._threads: dict[str, threading.Thread] = {}
        self._watchdog: threading.Thread | None = None
        self._deaths: dict[str, _Death] = {}
        self._started_at = dict.fromkeys(loops, 0.0)
        self._delay = dict.fromkeys(loops, RESTART_DELAY)
        self._restart_at = dict.fromkeys(loops, 0.0)

    def start(self) -> None:
        for role in self.loops:
            self._spawn(role)
        self._watchdog = threading.Thread(target=self._watch, name="trace2-watchdog",
                                          daemon=True)  # fmt: skip
        self._watchdog.start()

    def join(self, timeout: float) -> None:
        """Wait for the threads once ``stopping`` is set: the watchdog first, so that it
        restarts nothing."""
        if self._watchdog is not None:
            self._watchdog.join(timeout)
        for thread in self._threads.values():
            thread.join(timeout)

    def running(self, role: str) -> bool:
        thread = self._threads.get(role)
        return thread is not None and thread.is_alive()

    def health(self) -> str | None:
        """None, or why: a thread is dead, or died in the last REPORT_FOR seconds."""
        now = time.monotonic()
        for role in self.loops:
            death = self._deaths.get(role)
            if death is None:
                continue
            ago = now - death.at
            stopped = f"the trace2 {role} thread stopped ({death.what}) {ago:.0f}s ago"
            if not self.running(role):
                return f"{stopped} and is not running; it is restarted at most every " \
                    f"{self._delay[role]:.0f}s, see custode's log"  # fmt: skip
            if ago <= REPORT_FOR:
                times = counted(self.restarts[role], "restart")
                return f"{stopped} and was restarted ({times} since listening began); see " \
                    "custode's log"  # fmt: skip
        return None

    def _spawn(self, role: str) -> None:
        thread = threading.Thread(target=self._run, args=(role,), name=f"trace2-{role}",
                                  daemon=True)  # fmt: skip
        self._started_at[role] = time.monotonic()
        self._threads[role] = thread
        thread.start()

    def _run(self, role: str) -> None:
        try:
            self.loops[role]()
        except BaseException as exc:  # the watchdog restarts it; say why it died
            now = time.monotonic()
            if self.on_death is not None:
                self.on_death(role)
            # dying again soon after a restart doubles the wait: a bounded restart rate
            again = role in self._deaths and now - self._started_at[role] < STABLE_AFTER
            delay = min(2 * self._delay[role], MAX_RESTART_DELAY) if again else RESTART_DELAY
            self._delay[role] = delay
            self._restart_at[role] = now + delay
            what = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            self._deaths[role] = _Death(now, what)
            log.error("the trace2 %s thread stopped (%s); restarting it in %.0fs", role, what,
                      delay, exc_info=exc)  # fmt: skip

    def _watch(self) -> None:
        while not self.stopping.wait(WATCH_EVERY):
            for role in self.loops:
                if self.running(role) or time.monotonic() < self._restart_at[role]:
                    continue
                # counted before it starts: whoever sees the new thread's work sees the
                # restart counted (the test of a restart found 0 under load otherwise)
                self.restarts[role] += 1
                try:
                    self._spawn(role)
                except RuntimeError as exc:  # no thread to be had: try again later
                    self.restarts[role] -= 1
                    log.error("cannot restart the trace2 %s thread: %s", role, exc)
                    self._restart_at[role] = time.monotonic() + self._delay[role]
                    continue
