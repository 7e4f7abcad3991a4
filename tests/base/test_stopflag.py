"""The stop flag of ``trace2 listen`` and ``serve``: set by a signal handler that runs in
the very thread waiting on it. A ``threading.Event`` could deadlock there (its wait holds
its lock at moments; a handler running then blocks on ``set`` for ever): once in a loaded
CI run ``trace2 listen`` ignored SIGTERM for 30 s. The race itself cannot be forced; these
run the handler inside the wait, the moment that deadlocked."""

from __future__ import annotations

import signal
import time

import pytest

from custode import interrupts
from custode.interrupts import StopFlag


def test_a_handler_that_runs_inside_the_wait_ends_it(monkeypatch: pytest.MonkeyPatch) -> None:
    flag = StopFlag()
    real = time.sleep
    calls = []

    def sleep(seconds: float) -> None:  # the handler runs between two slices of the wait
        calls.append(seconds)
        flag.set(signal.SIGTERM, None)
        real(0)

    monkeypatch.setattr(interrupts.time, "sleep", sleep)
    started = time.monotonic()
    assert flag.wait(10.0) is True
    assert time.monotonic() - started < 1.0 and len(calls) == 1


def test_a_real_signal_during_the_wait_ends_it() -> None:
    flag = StopFlag()
    previous = signal.signal(signal.SIGALRM, flag.set)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        started = time.monotonic()
        assert flag.wait(5.0) is True
        assert time.monotonic() - started < 1.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert StopFlag().wait(0.01) is False  # unset: the wait ends by its timeout
