"""Stopping a fleet command on SIGINT or SIGTERM: start nothing new, stop what runs, exit 130.

The first signal sets one event. Every fleet loop checks it before it starts a repository
and cancels what is queued; every git child still running is stopped (SIGTERM to its
process group, SIGKILL after a grace): git removes its own lock and temporary files on
SIGTERM, the workers' finally blocks release custode's locks and holders, and a backup
stores a repository's manifest only after all its data, so what was stopped leaves
nothing that names incomplete data. The command then reports what was done and exits 130.
A second signal kills the children and exits at once.

Only the main thread receives signals, so the handler must not raise there (a raise in
the middle of a ``with ThreadPoolExecutor`` would wait for every queued repository):
it only sets the event and signals the children.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any, TypeVar

from custode.errors import CustodeError, ExitCode

T = TypeVar("T")

GRACE = 2.0  # seconds between SIGTERM and SIGKILL to a running git
POLL = 0.2  # how often a waiting loop looks at the event

_event = threading.Event()
_lock = threading.RLock()  # re-entrant: the signal handler may run while its thread holds it
_groups: set[int] = set()  # process groups of the git children running now
_status = {"running": 0, "cancelled": 0}
_timers: list[threading.Timer] = []  # the SIGKILL after GRACE of each request


class Interrupted(CustodeError):
    """SIGINT or SIGTERM stopped the command; the message says what was done."""

    exit_code = ExitCode.INTERRUPTED


def requested() -> bool:
    return _event.is_set()


def check(what: str = "") -> None:
    """Raise Interrupted when a stop was requested (``what`` names what is not started)."""
    if _event.is_set():
        raise Interrupted(f"interrupted{f': {what} not started' if what else ''}")


def install() -> None:
    """Handle SIGINT and SIGTERM in this process (from the main thread only)."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _handle)
        atexit.unregister(_exiting)  # once, however many commands a process runs
        atexit.register(_exiting)


def _exiting() -> None:
    """At exit Python puts back the default handlers: a second signal then would turn the
    exit status 130 into death by signal. Once stopping, with every git gone, ignore it."""
    if _event.is_set():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)


def reset() -> None:
    """Forget a request (a process that runs commands one after another, and tests),
    with its pending SIGKILL: it must not reach a git a later command starts."""
    with _lock:
        for timer in _timers:
            timer.cancel()
        _timers.clear()
    _event.clear()
    _status.update(running=0, cancelled=0)


def request() -> None:
    """What the first signal does: set the event and stop every running git."""
    _event.set()
    for pgid in _running():
        _signal_group(pgid, signal.SIGTERM)
    timer = threading.Timer(GRACE, _kill_all)
    timer.daemon = True
    with _lock:
        _timers.append(timer)
    timer.start()


def note(*, running: int, cancelled: int) -> None:
    """What a fleet loop has left running and has cancelled (shown by ``status``)."""
    _status.update(running=running, cancelled=cancelled)


def status() -> str:
    """``interrupted: finishing N, cancelled M`` once a stop was requested, else ""."""
    if not _event.is_set():
        return ""
    return f"interrupted: finishing {_status['running']}, cancelled {_status['cancelled']}"


@contextlib.contextmanager
def child(pgid: int) -> Iterator[None]:
    """Register a running git's process group, so that a stop request reaches it (one
    started after the request is stopped at once)."""
    with _lock:
        _groups.add(pgid)
    if _event.is_set():
        _signal_group(pgid, signal.SIGTERM)
    try:
        yield
    finally:
        with _lock:
            _groups.discard(pgid)


def harvest(futures: Iterable[Future[T]]) -> Iterator[Future[T]]:
    """Yield futures as they complete, like ``as_completed``; once a stop is requested,
    those not yet started are cancelled (never yielded) and those running are waited for
    (their git was stopped)."""
    pending = set(futures)
    cancelled = 0
    while pending:
        if _event.is_set():
            for future in list(pending):
                if future.cancel():
                    pending.discard(future)
                    cancelled += 1
            note(running=len(pending), cancelled=cancelled)
        done, pending = wait(pending, timeout=POLL, return_when=FIRST_COMPLETED)
        yield from done


def summary(command: str, done: int, stopped: int, cancelled: int, *, again: str = "") -> str:
    """The one line an interrupted fleet command ends with (exit 130); ``again`` says how
    to finish the work when running the same command again is not enough."""
    return (
        f"interrupted: {command} finished {done}, stopped {stopped}, cancelled {cancelled} "
        f"repositories; {again or f'run custode {command} again for the rest'}"
    )


def _running() -> list[int]:
    with _lock:
        return list(_groups)


def _kill_all() -> None:
    for pgid in _running():
        _signal_group(pgid, signal.SIGKILL)


def _handle(signum: int, frame: Any) -> None:
    if not _event.is_set():
        request()
        return
    # a second signal: the person will not wait; leave no git behind, exit now
    _kill_all()
    for pgid in _child_groups():  # one started but not yet registered, too
        _signal_group(pgid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        sys.stderr.write("\ncustode: interrupted again: stopped at once\n")
        sys.stderr.flush()
    os._exit(int(ExitCode.INTERRUPTED))


def _child_groups() -> list[int]:
    """The process groups led by a descendant of this process: every git runs in its
    own (``child`` registers it only once ``Popen`` has returned). A worker process in
    custode's own group leads none, and neither does what git itself starts."""
    try:
        import psutil  # noqa: PLC0415  (only on a second signal: start-up)

        descendants = psutil.Process().children(recursive=True)
    except Exception:  # exiting anyway: best effort
        return []
    groups = []
    for process in descendants:
        with contextlib.suppress(OSError):
            if os.getpgid(process.pid) == process.pid:
                groups.append(process.pid)
    return groups


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class StopFlag:
    """A stop set by a signal handler and waited for by the main thread, without a lock.

    A ``threading.Event`` deadlocks there: ``Event.wait`` holds the event's lock at
    moments, and a handler that runs in such a moment (the main thread runs it, between
    two bytecodes) blocks on ``Event.set`` for ever: the lock is its own thread's. Seen
    as ``trace2 listen`` ignoring SIGTERM once in a loaded test run.
    """

    SLICE = 0.05  # seconds: how late a wait sees the flag set

    def __init__(self) -> None:
        self._set = False

    def set(self, *_: object) -> None:
        """Set the flag (usable as the signal handler itself)."""
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        """Sleep until the flag is set or ``timeout`` seconds passed; whether it is set."""
        end = time.monotonic() + timeout
        while not self._set and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, self.SLICE))
        return self._set
