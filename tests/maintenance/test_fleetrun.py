"""The fleet runner's scheduling: pool bound, order, budget and CPU governor (fake executor)."""

import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from custode.git.runner import Git
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


class FakeRunner:
    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds
        self.order: list[str] = []
        self.running = self.peak = 0
        self.lock = threading.Lock()

    def __call__(
        self, repo: Repository, plan: Plan, git: Any, audit: Any, **kw: Any
    ) -> ExecutionResult:
        with self.lock:
            self.order.append(repo.relative)
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(self.seconds)
        with self.lock:
            self.running -= 1
        return ExecutionResult(str(repo.path), "ok", "done", (), 10, 4, kw["now"], self.seconds)


def test_largest_first_and_pool_bound() -> None:
    runner = FakeRunner()
    items = _items({"small": 1, "huge": 1000, "medium": 50, "big": 500, "tiny": 0})
    run = run_fleet(items, Git(), None, jobs=2, runner=runner)
    assert runner.order[:2] == ["huge", "big"]
    assert runner.peak == 2
    assert [s.relative for s, _, _ in run.results] == ["small", "huge", "medium", "big", "tiny"]
    assert run.not_started == []


def test_budget_leaves_the_rest_unstarted() -> None:
    runner = FakeRunner(seconds=0.3)
    items = _items({f"r{i}": i for i in range(6)})
    run = run_fleet(items, Git(), None, jobs=1, budget=0.5, runner=runner)
    assert 1 <= len(runner.order) <= 3
    assert len(run.results) + len(run.not_started) == 6
    assert {s.relative for s in run.not_started}.isdisjoint(runner.order)


def test_governor_holds_back_new_repositories_while_the_cpu_is_busy() -> None:
    runner = FakeRunner(seconds=0.05)
    busy = Governor(0.7, sample=lambda: 0.95)
    run = run_fleet(_items({f"r{i}": i for i in range(5)}), Git(), None, jobs=4,
                    governor=busy, runner=runner, poll=0.01)  # fmt: skip
    assert runner.peak == 1  # one at a time: the run still progresses
    assert len(run.results) == 5
    idle = Governor(0.7, sample=lambda: 0.10)
    runner = FakeRunner(seconds=0.1)
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


def test_a_repository_predicted_to_overrun_the_window_is_not_started() -> None:
    runner = FakeRunner(seconds=0.05)
    items = _items({"long": 1, "short": 2, "shorter": 3})
    run = run_fleet(items, Git(), None, jobs=1, runner=runner, window=1.0,
                    predicted=[5.0, 0.3, 0.2])  # fmt: skip
    assert runner.order == ["short", "shorter"]  # the longest predicted first, then bytes
    assert [s.relative for s in run.held_back] == ["long"]
    assert run.not_started == []


def test_the_window_left_is_measured_as_the_run_goes() -> None:
    """Each is predicted 0.3 s but takes 0.4 s: the third would end past the window."""
    runner = FakeRunner(seconds=0.4)
    items = _items({f"r{i}": i for i in range(3)})
    run = run_fleet(items, Git(), None, jobs=1, runner=runner, window=1.0,
                    predicted=[0.3, 0.3, 0.3])  # fmt: skip
    assert len(runner.order) == 2
    assert [s.relative for s in run.held_back] == ["r0"]  # by bytes the smallest, last


def test_the_window_asks_each_repository_s_estimate_as_it_would_start() -> None:
    """Each is predicted 0.3 s (the order), but once one has run the night's calibrated
    estimate says 2.0 s: asked as each would start, the rest would end past the window."""
    runner = FakeRunner(seconds=0.05)
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
