"""The fleet check's scheduling (``maintenance.pool``): the governor told of each finish,
and what a stop request leaves running and cancels told to ``interrupts`` (fake checks)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from custode import interrupts
from custode.config.model import Config
from custode.git.runner import Git
from custode.integrity.check import CheckResult
from custode.jobs import check as check_job
from custode.jobs import fleet
from custode.maintenance import pool
from custode.scan.discovery import Repository
from custode.scan.repostate import RepoState, inspect_failed
from fixtures.hostcpu import HostCpu


def _states(n: int) -> list[RepoState]:
    def state(name: str, size: int) -> RepoState:
        repo = Repository(Path("/srv"), Path(f"/srv/{name}"), Path(f"/srv/{name}"), "bare", name)
        return replace(inspect_failed(repo, "x"), problems=(), pack_bytes=size)

    return [state(f"r{i}", i) for i in range(n)]


def _check_all(states: list[RepoState], tmp_path: Path) -> tuple[list[Any], int]:
    job = check_job.CheckJob((), Config(), tmp_path, Git(), jobs=2)
    return check_job._check_all(job, states, {}, fleet.no_bar)


class FakeChecks:
    """``_check_one`` that takes ``seconds`` (after ``before`` of its state), counting
    how many run at once."""

    def __init__(self, seconds: float, before: Callable[[RepoState], None]) -> None:
        self.seconds = seconds
        self.before = before
        self.running = self.peak = 0
        self.lock = threading.Lock()

    def __call__(self, job: Any, state: RepoState, record: Any) -> check_job.RepositoryCheck:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        began = time.time()
        try:
            self.before(state)
            time.sleep(self.seconds)
        finally:
            with self.lock:
                self.running -= 1
        result = CheckResult("ok", (), self.seconds, full=False)
        return check_job.RepositoryCheck(state, result, began)


class Told(pool.Governor):
    """The governor, with every answer it gave and every finish it was told kept."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.answers: list[bool] = []
        self.finishes = 0
        self.counting = threading.Lock()  # finished() comes from the workers, two at once

    def may_start(self, running: int) -> bool:
        answer = super().may_start(running)
        self.answers.append(answer)
        return answer

    def finished(self) -> None:
        with self.counting:  # += is a read and a write: a finish beside it could be lost
            self.finishes += 1
        super().finished()


def test_a_finished_check_is_told_to_the_governor_and_its_slot_reused_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One check uses half the host (0.5 < 0.7): a second may start beside it, so the
    slot a finish frees is never held back by a reading that still counts the check
    that finished (that held it idle for the governor's window and a poll)."""
    checks = FakeChecks(seconds=0.15, before=lambda state: None)
    host = HostCpu(checks)
    governor = Told(0.7, sample=host.sample)
    monkeypatch.setattr(pool, "Governor", lambda share: governor)
    monkeypatch.setattr(check_job, "_check_one", checks)
    stop = threading.Event()
    watcher = threading.Thread(target=host.watch, args=(stop,))
    watcher.start()
    try:
        done, stopped = _check_all(_states(12), tmp_path)
    finally:
        stop.set()
        watcher.join()
    assert len(done) == 12 and stopped == 0 and checks.peak == 2
    assert governor.finishes == 12
    assert all(governor.answers), governor.answers


def test_a_stop_request_tells_what_still_runs_and_what_was_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two checks at a time; the largest asks to stop while the next runs: the two left
    are cancelled, the one cut short is counted as stopped, and ``interrupts`` hears
    what still runs until nothing does."""
    told: list[tuple[int, int]] = []
    heard = threading.Event()
    note = interrupts.note

    def noting(*, running: int, cancelled: int) -> None:
        told.append((running, cancelled))
        heard.set()
        note(running=running, cancelled=cancelled)

    def before(state: RepoState) -> None:
        if state.relative == "r3":  # the largest: started first
            while checks.running < 2:
                time.sleep(0.005)
            interrupts.request()
        else:  # still running when the stop is first told
            heard.wait(5)

    checks = FakeChecks(seconds=0.0, before=before)
    monkeypatch.setattr(interrupts, "GRACE", 0.0)  # no git runs: its SIGKILL at once
    monkeypatch.setattr(interrupts, "note", noting)
    never = pool.Governor(1.0)  # never holds a check back: the second starts at once
    monkeypatch.setattr(pool, "Governor", lambda share: never)
    monkeypatch.setattr(check_job, "_check_one", checks)
    interrupts.reset()
    try:
        done, stopped = _check_all(_states(4), tmp_path)
        status = interrupts.status()
    finally:
        interrupts.reset()
    assert (len(done), stopped) == (0, 2)  # both finished after the request: not kept
    assert any(running for running, _ in told), told  # told while a check still ran
    assert told[-1] == (0, 2), told
    assert status == "interrupted: finishing 0, cancelled 2"
