"""The fleet runner's scheduling: pool bound, order, budget and CPU governor (fake executor).

The budget and the window are measured on a fake clock that the fake work moves on, so
their arithmetic is exact whatever the host's load; that so many ran at once is shown by
holding them on a barrier until they all have started, not by how long they sleep."""

import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from custode.git.runner import Git
from custode.maintenance import fleetrun, pool
from custode.maintenance.executor import ExecutionResult
from custode.maintenance.fleetrun import Governor, run_fleet
from custode.maintenance.planner import Plan, Task
from custode.scan.discovery import Repository
from custode.scan.repostate import RepoState, inspect_failed
from fixtures.hostcpu import HostCpu


def _state(name: str, size: int) -> RepoState:
    repo = Repository(Path("/srv"), Path(f"/srv/{name}"), Path(f"/srv/{name}"), "bare", name)
    return replace(inspect_failed(repo, "x"), problems=(), pack_bytes=size)


def _items(sizes: dict[str, int]) -> list[tuple[RepoState, Plan]]:
    task = Task("pack_refs", "12 loose refs > 10")
    return [(_state(n, s), Plan(f"/srv/{n}", (task,))) for n, s in sizes.items()]


class Clock:
    """``time.monotonic`` for the fleet runner and the pool, faked: it moves only as the
    fake work moves it on (from the workers, so under a lock)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.lock = threading.Lock()

    def monotonic(self) -> float:
        with self.lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The fake clock in place of the real one for the budget and the window (no
    governor: its waits are on the real clock, and ``sleep`` is missing on purpose)."""
    fake = Clock()
    monkeypatch.setattr(fleetrun, "time", SimpleNamespace(monotonic=fake.monotonic, time=time.time))
    monkeypatch.setattr(pool, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


class FakeRunner:
    """The executor, faked: each repository takes ``seconds``, on ``clock`` when given
    (moved on at once) else slept; the first ``together`` started wait at a barrier until
    all of them have started (so they ran at once, whatever the host's load)."""

    def __init__(
        self, seconds: float = 0.05, clock: Clock | None = None, together: int = 0
    ) -> None:
        self.seconds = seconds
        self.clock = clock
        self.together = together
        self.barrier = threading.Barrier(together, timeout=30) if together else None
        self.order: list[str] = []
        self.running = self.peak = 0
        self.lock = threading.Lock()
        self.started = threading.Condition(self.lock)  # notified at each start

    def __call__(
        self, repo: Repository, plan: Plan, git: Any, audit: Any, **kw: Any
    ) -> ExecutionResult:
        with self.lock:
            self.order.append(repo.relative)
            self.running += 1
            self.peak = max(self.peak, self.running)
            first = len(self.order) <= self.together
            self.started.notify_all()
        if self.barrier and first:
            self.barrier.wait()
        if self.clock:
            self.clock.advance(self.seconds)
        else:
            time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
        return ExecutionResult(str(repo.path), "ok", "done", (), 10, 4, kw["now"], self.seconds)


class InTurn(Governor):
    """A governor that never holds back for the CPU, but lets a repository start only
    once each let start before it has reached the runner: the runner's order is then
    the order they were started in (pool threads may otherwise reach it in any order)."""

    def __init__(self, runner: FakeRunner) -> None:
        super().__init__(1.0, sample=lambda: 0.0)
        self.runner = runner
        self.let = 0

    def may_start(self, running: int) -> bool:
        with self.runner.started:
            arrived = self.runner.started.wait_for(
                lambda: len(self.runner.order) >= self.let, timeout=30
            )
        assert arrived, (self.let, self.runner.order)
        self.let += 1
        return True


def test_largest_first_and_pool_bound() -> None:
    runner = FakeRunner(together=2)  # the first two run at once: the pool has two slots
    items = _items({"small": 1, "huge": 1000, "medium": 50, "big": 500, "tiny": 0})
    run = run_fleet(items, Git(), None, jobs=2, runner=runner, governor=InTurn(runner))
    assert runner.order == ["huge", "big", "medium", "small", "tiny"]
    assert runner.peak == 2  # never a third beside them (each is 0.05 s long)
    assert [s.relative for s, _, _ in run.results] == ["small", "huge", "medium", "big", "tiny"]
    assert run.not_started == []


def test_budget_leaves_the_rest_unstarted(clock: Clock) -> None:
    """Each takes 0.3 s of a 0.5 s budget: the second starts at 0.3 s, none at 0.6 s."""
    runner = FakeRunner(seconds=0.3, clock=clock)
    items = _items({f"r{i}": i for i in range(6)})
    run = run_fleet(items, Git(), None, jobs=1, budget=0.5, runner=runner)
    assert runner.order == ["r5", "r4"]
    assert [s.relative for s in run.not_started] == ["r3", "r2", "r1", "r0"]
    assert len(run.results) == 2


def test_governor_holds_back_new_repositories_while_the_cpu_is_busy() -> None:
    runner = FakeRunner(seconds=0.05)
    busy = Governor(0.7, sample=lambda: 0.95)
    run = run_fleet(_items({f"r{i}": i for i in range(5)}), Git(), None, jobs=4,
                    governor=busy, runner=runner, poll=0.01)  # fmt: skip
    assert runner.peak == 1  # one at a time: the run still progresses
    assert len(run.results) == 5
    idle = Governor(0.7, sample=lambda: 0.10)
    runner = FakeRunner(seconds=0.0, together=4)  # held back, the barrier would time out
    run_fleet(_items({f"r{i}": i for i in range(4)}), Git(), None, jobs=4,
              governor=idle, runner=runner, poll=0.01)  # fmt: skip
    assert runner.peak == 4


class Answers(Governor):
    """The governor, with every answer it gave kept."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.answers: list[bool] = []

    def may_start(self, running: int) -> bool:
        answer = super().may_start(running)
        self.answers.append(answer)
        return answer


def test_a_finished_repository_does_not_hold_back_the_next() -> None:
    """One repository uses half the host (0.5 < 0.7): a second may start beside it, so
    a slot freed by a finish is never held back by a reading that still counts the
    repository that finished (1.0: it kept the slot idle for a window and a poll)."""
    runner = FakeRunner(seconds=0.15)
    host = HostCpu(runner)
    stop = threading.Event()
    watcher = threading.Thread(target=host.watch, args=(stop,))
    watcher.start()
    governor = Answers(0.7, sample=host.sample)
    try:
        run = run_fleet(_items({f"r{i}": i for i in range(12)}), Git(), None, jobs=2,
                        governor=governor, runner=runner)  # fmt: skip
    finally:
        stop.set()
        watcher.join()
    assert len(run.results) == 12 and runner.peak == 2
    assert all(governor.answers), governor.answers


def test_a_share_of_one_never_holds_back() -> None:
    assert Governor(1.0, sample=lambda: 1.0).may_start(running=3)
    assert not Governor(0.7, sample=lambda: 1.0).may_start(running=3)


def test_a_repository_predicted_to_overrun_the_window_is_not_started(clock: Clock) -> None:
    runner = FakeRunner(seconds=0.05, clock=clock)
    items = _items({"long": 1, "short": 2, "shorter": 3})
    run = run_fleet(items, Git(), None, jobs=1, runner=runner, window=1.0,
                    predicted=[5.0, 0.3, 0.2])  # fmt: skip
    assert runner.order == ["short", "shorter"]  # the longest predicted first, then bytes
    assert [s.relative for s in run.held_back] == ["long"]
    assert run.not_started == []


def test_the_window_left_is_measured_as_the_run_goes(clock: Clock) -> None:
    """Each is predicted 0.3 s but takes 0.4 s: the third, at 0.8 s, would end past the
    window (by the predictions alone all three fit: 0.9 s)."""
    runner = FakeRunner(seconds=0.4, clock=clock)
    items = _items({f"r{i}": i for i in range(3)})
    run = run_fleet(items, Git(), None, jobs=1, runner=runner, window=1.0,
                    predicted=[0.3, 0.3, 0.3])  # fmt: skip
    assert runner.order == ["r2", "r1"]
    assert [s.relative for s in run.held_back] == ["r0"]  # by bytes the smallest, last


def test_the_window_asks_each_repository_s_estimate_as_it_would_start(clock: Clock) -> None:
    """Each is predicted 0.3 s (the order), but once one has run the night's calibrated
    estimate says 2.0 s: asked as each would start, the rest would end past the window."""
    runner = FakeRunner(seconds=0.05, clock=clock)
    asked: list[int] = []

    def estimate(i: int) -> float:
        asked.append(i)
        return 2.0 if runner.order else 0.3

    items = _items({f"r{i}": i for i in range(4)})
    run = run_fleet(items, Git(), None, jobs=1, runner=runner, window=1.0,
                    predicted=[0.3] * 4, estimate=estimate)  # fmt: skip
    assert runner.order == ["r3"]  # by bytes the largest first
    assert [s.relative for s in run.held_back] == ["r2", "r1", "r0"]
    assert asked == [3, 2, 1, 0] and run.not_started == []
