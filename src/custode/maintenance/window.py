"""The nightly window: which repositories' work fits the night, from predicted costs.

Pure: it takes each repository's predicted seconds, split into the work that always runs
and its *expensive* work (a full repack), and returns what runs tonight and what waits,
with why. The night is planned as the fleet runner will run it (``maintenance.fleetrun``:
``jobs`` at once, the longest first, each started as a slot frees), so the predicted end
is the end of that schedule, not the sum divided by the jobs.

What fits is chosen by rank: a repository whose expensive work already waited comes
first (the longest waiting first), then the largest need; so every one is done on a
later night (never starved) unless it alone is longer than the window, which is said.
First the everyday work of every repository is placed; when even that does not fit,
whole repositories wait, the lowest ranked first. Then each repository's expensive work
is added in rank order where the night still ends within the window.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass

from custode.base.times import epoch
from custode.base.units import format_duration
from custode.records.state import LatestResult

#: the history's task name of a deferral's row: "skipped" each night a repository's work
#: is deferred, "ok" when a run went through it without deferring it (the wait is over)
DEFERRED = "deferred"
#: the tasks a night may defer (the others are cheap: they always run, if the night has
#: room for the repository at all)
EXPENSIVE = frozenset({"full_repack"})


@dataclass(frozen=True)
class Candidate:
    key: int  # the caller's
    need: float  # the larger, the sooner its expensive work runs (after those waiting)
    cheap: float  # predicted seconds of its other tasks
    expensive: float  # predicted seconds of its expensive tasks; 0 when none
    waiting_since: float | None = None  # when its expensive work was first deferred


@dataclass(frozen=True)
class Night:
    """What runs: ``runs`` maps each key that starts (with work left to do) to whether
    its expensive work does too, in the order to start them; ``deferred`` each key whose
    work waits (only the expensive, or all of it when not in ``runs``) with why."""

    runs: dict[int, bool]
    deferred: dict[int, str]
    predicted: float  # seconds until the last one ends, as planned


def span(seconds: Iterable[float], jobs: int) -> float:
    """When the last of ``seconds`` ends with ``jobs`` at once, the longest started first
    and each next one on the slot that frees first (as the fleet runner runs them)."""
    slots = [0.0] * max(1, jobs)
    for s in sorted(seconds, reverse=True):
        heapq.heapreplace(slots, slots[0] + s)
    return max(slots)


def _fits(size: dict[int, float], jobs: int, window: float, total: float, longest: float) -> bool:
    """Whether ``span(size)`` is within ``window``; ``total`` and ``longest`` are the sum
    and the largest of ``size``. Graham's bounds on list scheduling answer most cases
    without the schedule: never shorter than the longest or the even share, never longer
    than the even share plus the longest."""
    share = total / max(1, jobs)
    if longest > window or share > window:
        return False
    if share + longest * (1 - 1 / max(1, jobs)) <= window:
        return True
    return span(size.values(), jobs) <= window


def rank(c: Candidate) -> tuple[bool, float, float, int]:
    """Those waiting first, the longest waiting first; then the largest need."""
    waiting = c.waiting_since is not None
    return (not waiting, c.waiting_since or 0.0, -c.need, c.key)


def plan_night(candidates: Iterable[Candidate], window: float, jobs: int) -> Night:
    """The night that fits ``window`` seconds with ``jobs`` at once (see the module)."""
    ranked = sorted(candidates, key=rank)
    size = {c.key: c.cheap for c in ranked}
    deferred: dict[int, str] = {}
    whole = _limit(window)
    for c in reversed(ranked):  # the everyday work, the lowest ranked waiting first
        if span(size.values(), jobs) <= window:
            break
        del size[c.key]
        alone = c.cheap + c.expensive
        deferred[c.key] = (
            f"predicted {format_duration(alone)}, longer than the whole {whole}"
            if c.cheap > window
            else f"the night's work does not fit in the {whole}"
        )
    upgraded: set[int] = set()
    total, longest = sum(size.values()), max(size.values(), default=0.0)
    for c in ranked:
        if c.key not in size or c.expensive <= 0:
            continue
        size[c.key] += c.expensive
        if _fits(size, jobs, window, total + c.expensive, max(longest, size[c.key])):
            upgraded.add(c.key)
            total, longest = total + c.expensive, max(longest, size[c.key])
            continue
        size[c.key] -= c.expensive
        alone = c.cheap + c.expensive
        deferred[c.key] = (
            f"predicted {format_duration(alone)}, longer than the whole {whole}"
            if alone > window
            else f"predicted {format_duration(c.expensive)}: does not fit in what is left "
            f"of the {whole}"
        )
    order = sorted(size, key=lambda k: -size[k])  # the longest first, as planned
    runs = {k: k in upgraded for k in order if size[k] > 0 or k in upgraded}
    return Night(runs, deferred, span(size.values(), jobs))


def waiting(
    deferrals: Iterable[LatestResult], results: Iterable[LatestResult]
) -> dict[tuple[str, str], tuple[float, LatestResult]]:
    """(root, relative) → when its work was first deferred, and its last deferral's row,
    for each repository whose last deferral (a history row of ``deferrals``: the latest
    per repository) is still open: it deferred work (a row that ends a wait is not
    "skipped") and none of the tasks it deferred succeeded since (``results``: the
    latest result of each task per repository)."""
    done = {(r.task, r.root, r.repository): r.last_ok or 0.0 for r in results}
    out = {}
    for r in deferrals:
        if r.outcome != "skipped":
            continue
        kinds = r.details.get("tasks")
        kinds = [k for k in kinds if isinstance(k, str)] if isinstance(kinds, list) else []
        if r.at <= max((done.get((k, r.root, r.repository), 0.0) for k in kinds), default=0.0):
            continue
        try:
            since = min(r.at, epoch(str(r.details.get("first_deferred"))))
        except ValueError:
            since = r.at
        out[(r.root, r.repository)] = (since, r)
    return out


def _limit(window: float) -> str:
    return f"{format_duration(window)} window"
