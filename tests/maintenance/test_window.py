"""The nightly window: what fits a night, what waits, and that nothing waits for ever."""

import pytest

from custode.maintenance.window import Candidate, plan_night, span, waiting
from custode.records.state import LatestResult


def test_span_is_the_end_of_the_runner_s_schedule() -> None:
    assert span([], 2) == 0
    assert span([3, 3, 2, 2], 2) == 5  # not the sum, 10
    assert span([5, 1, 1, 1], 2) == 5  # the longest alone on one slot
    assert span([4, 4], 1) == 8


def test_a_window_holding_half_the_work_defers_the_rest_largest_need_first() -> None:
    fleet = [Candidate(k, need=k, cheap=1, expensive=10) for k in range(4)]
    night = plan_night(fleet, window=24, jobs=1)  # 4 of cheap work and 2 of the 4 repacks
    assert {k for k, full in night.runs.items() if full} == {3, 2}  # the largest need
    assert set(night.runs) == {0, 1, 2, 3}  # the everyday work of all of them runs
    assert set(night.deferred) == {0, 1}
    assert "does not fit in what is left of the 24s window" in night.deferred[0]
    assert night.predicted <= 24
    assert list(night.runs)[:2] == [3, 2]  # started the longest first


def test_parallel_jobs_fit_more_in_the_same_window() -> None:
    fleet = [Candidate(k, need=k, cheap=0, expensive=10) for k in range(4)]
    assert sum(plan_night(fleet, window=20, jobs=2).runs.values()) == 4
    assert sum(plan_night(fleet, window=20, jobs=1).runs.values()) == 2


def test_those_deferred_before_come_first_however_small() -> None:
    fleet = [
        Candidate(0, need=1, cheap=0, expensive=10, waiting_since=2000.0),
        Candidate(1, need=1, cheap=0, expensive=10, waiting_since=1000.0),  # waited longest
        Candidate(2, need=99, cheap=0, expensive=10),
    ]
    night = plan_night(fleet, window=10, jobs=1)
    assert night.runs == {1: True}
    assert set(night.deferred) == {0, 2}


def test_one_longer_than_the_whole_window_is_said_and_others_still_run() -> None:
    fleet = [
        Candidate(0, need=9, cheap=1, expensive=100),
        Candidate(1, need=1, cheap=1, expensive=5),
    ]
    night = plan_night(fleet, window=10, jobs=1)
    assert night.runs == {1: True, 0: False}
    assert "longer than the whole 10s window" in night.deferred[0]


def test_when_even_the_everyday_work_does_not_fit_whole_repositories_wait() -> None:
    fleet = [Candidate(k, need=k, cheap=4, expensive=0) for k in range(4)]
    night = plan_night(fleet, window=9, jobs=1)
    assert set(night.runs) == {3, 2}  # the lowest ranked wait
    assert set(night.deferred) == {0, 1}
    assert night.predicted <= 9


@pytest.mark.parametrize("nights", [9, 20])
def test_no_repository_is_starved_over_many_nights(nights: int) -> None:
    """Six repositories that need a full repack every night, a window for two: the two
    largest would run every night if need alone decided; each runs every third night."""
    need = {k: 100 - k for k in range(6)}
    since: dict[int, float] = {}
    ran = dict.fromkeys(need, 0)
    for night_no in range(nights):
        fleet = [Candidate(k, n, 0, 10, since.get(k)) for k, n in need.items()]
        night = plan_night(fleet, window=20, jobs=1)
        assert night.predicted <= 20
        for k, full in night.runs.items():
            if full:
                ran[k] += 1
                since.pop(k, None)
        for k in night.deferred:
            since.setdefault(k, float(night_no))
        assert all(night_no - s < 3 for s in since.values())  # none waits a third night
    assert min(ran.values()) >= nights // 3


def _row(
    task: str, at: float, details: dict[str, object], last_ok: float | None = None
) -> LatestResult:
    return LatestResult(task, "/srv", "a.git", at, "skipped", 0.0, details, last_ok)


def test_a_deferral_stays_open_until_its_tasks_succeed() -> None:
    deferral = _row(
        "deferred",
        5000.0,
        {"tasks": ["full_repack"], "first_deferred": "1970-01-01T00:16:40+00:00"},
    )
    assert waiting([deferral], []) == {("/srv", "a.git"): (1000.0, deferral)}
    before = _row("full_repack", 4000.0, {}, last_ok=4000.0)
    assert ("/srv", "a.git") in waiting([deferral], [before])
    after = _row("full_repack", 6000.0, {}, last_ok=6000.0)
    assert waiting([deferral], [after]) == {}
    ended = LatestResult("deferred", "/srv", "a.git", 7000.0, "ok", 0.0, {"tasks": []}, 7000.0)
    assert waiting([ended], []) == {}  # a run went through it without deferring it
    odd = _row("deferred", 5000.0, {"tasks": "full_repack", "first_deferred": "yesterday"})
    assert waiting([odd], []) == {("/srv", "a.git"): (5000.0, odd)}  # malformed: open since then
