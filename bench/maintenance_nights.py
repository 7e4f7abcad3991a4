"""The nights after the first for ``bench/maintenance``: a day's pushes to a copy, and what
``custode maintain --json`` says about them (the cost model's predictions against the
actual seconds, the work a window deferred).

The JSON fields read here are being added to custode as the benchmark is written, so they
are read tolerantly: a missing field is reported as missing, never a crash.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from make_fleet import Git, history

PUSH_SERIAL = 900_000  # the pushed commits' serials: far from the fleet's own


def push_day(git: Git, repo: Path, rng: random.Random, day: int) -> None:
    """A day's pushes to one bare repository, as a server receives them: two to four
    bigger pushes kept as packs (20-40 commits each, on new branches), one or two small
    ones left loose (3-8 commits each) and a few new tags (loose refs). Deterministic for
    the same ``rng`` state."""
    head = git(repo, "rev-parse", "HEAD^{commit}").strip()
    serial = PUSH_SERIAL + day * 10_000
    pushes = [(True, rng.randrange(20, 41)) for _ in range(rng.randrange(2, 5))]
    pushes += [(False, rng.randrange(3, 9)) for _ in range(rng.randrange(1, 3))]
    for i, (pack, commits) in enumerate(pushes):
        branch = f"refs/heads/day{day}-{'feature' if pack else 'fix'}-{i}"
        git.fast_import(repo, history(branch, commits, start=serial, parent=head), pack=pack)
        serial += commits
    tip = git(repo, "rev-parse", f"refs/heads/day{day}-feature-0").strip()
    tags = "".join(f"create refs/tags/day{day}-{i} {tip}\n" for i in range(rng.randrange(1, 4)))
    git(repo, "update-ref", "--stdin", input=tags.encode())


@dataclass(frozen=True)
class CostAccuracy:
    tasks: int  # tasks with an actual time
    predicted: int  # of which with a predicted time
    within: int  # of which the actual time is within the tolerance of the prediction
    within_slack: int  # ... or within ``slack`` seconds of it (information only)
    worst: tuple[str, ...] = ()  # the furthest off, for whoever tunes the model

    @property
    def share(self) -> float | None:
        """Share of the tasks whose prediction held; None when nothing was predicted."""
        return self.within / self.tasks if self.predicted and self.tasks else None


def _tasks(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for repo in doc.get("repositories") or []:
        name = str(repo.get("relative") or repo.get("path") or "?")
        out.extend((name, t) for t in (repo.get("tasks") or []) if isinstance(t, dict))
    return out


def cost_accuracy(doc: dict[str, Any], tolerance: float, slack: float) -> CostAccuracy:
    """Over the tasks ``maintain --json`` ran: how many have ``"predicted": {"seconds": s}``
    and how many of those took within ``tolerance`` (0.3 = +-30%) of ``s``. A task with
    no prediction counts as a miss."""
    ran = [(n, t) for n, t in _tasks(doc) if isinstance(t.get("seconds"), int | float)]
    within = within_slack = predicted = 0
    off: list[tuple[float, str]] = []
    for name, task in ran:
        guess = task.get("predicted")
        seconds = guess.get("seconds") if isinstance(guess, dict) else None
        if not isinstance(seconds, int | float):
            continue
        predicted += 1
        actual = float(task["seconds"])
        error = abs(actual - seconds)
        within += error <= tolerance * seconds
        within_slack += error <= max(tolerance * seconds, slack)
        ratio = actual / seconds if seconds > 0 else float("inf")
        off.append((error, f"{name} {task.get('kind')}: {seconds:.3f}s predicted, "
                           f"{actual:.3f}s actual ({ratio:.2f}x)"))  # fmt: skip
    worst = tuple(text for _e, text in sorted(off, reverse=True)[:5])
    return CostAccuracy(len(ran), predicted, within, within_slack, worst)


def deferred(doc: dict[str, Any]) -> tuple[int, list[str]]:
    """How much work a window left for later, found wherever the JSON puts it: a top-level
    or summary key naming deferral (a list, a mapping or a count), a repository or task
    whose outcome is ``deferred``. Returns the count and where it was found; (0, []) when
    nothing was deferred or the JSON has no such field."""
    found: dict[str, int] = {}

    def count(value: object) -> int:
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, list | dict):
            return len(value)
        return 0

    summary = doc.get("summary")
    for where, mapping in (("", doc), ("summary.", summary if isinstance(summary, dict) else {})):
        for key, value in mapping.items():
            if "defer" in key.lower():
                found[f"{where}{key}"] = count(value)
    repos = [r for r in doc.get("repositories") or [] if isinstance(r, dict)]
    outcomes = sum(1 for r in repos if str(r.get("outcome", "")).lower() == "deferred")
    flagged = sum(1 for r in repos if r.get("deferred"))
    tasks = sum(1 for _n, t in _tasks(doc) if str(t.get("outcome", "")).lower() == "deferred")
    for key, n in (("repositories[].outcome", outcomes), ("repositories[].deferred", flagged),
                   ("tasks[].outcome", tasks)):  # fmt: skip
        if n:
            found[key] = n
    return max(found.values(), default=0), sorted(found)


#: the directories of a scratch that hold custode's state (history, scan cache, config)
STATE_DIRS = ("xdg_config_home", "xdg_state_home", "xdg_cache_home", "xdg_data_home")


class NightStart:
    """A night's start kept aside: the repositories under ``root`` and custode's state in
    ``scratch``, copied to ``keep``, so the same night can be run again from it, in the same
    place (history keys repositories by their path). ``done`` puts the first run's
    outcome back."""

    def __init__(self, root: Path, scratch: Path, keep: Path) -> None:
        self.root, self.scratch, self.keep = root, scratch, keep
        shutil.rmtree(keep, ignore_errors=True)
        keep.mkdir(parents=True)
        self._copy(root, scratch, keep / "start")
        self.first: Path | None = None

    @staticmethod
    def _copy(root: Path, scratch: Path, dest: Path) -> None:
        shutil.copytree(root, dest / "repos", symlinks=True)
        for name in STATE_DIRS:
            shutil.copytree(scratch / name, dest / name, symlinks=True)

    def _move(self, dest: Path) -> None:
        dest.mkdir(parents=True)
        self.root.rename(dest / "repos")
        for name in STATE_DIRS:
            (self.scratch / name).rename(dest / name)

    def _restore(self, source: Path, *, move: bool) -> None:
        if self.root.exists():
            shutil.rmtree(self.root)
        for name in STATE_DIRS:
            shutil.rmtree(self.scratch / name, ignore_errors=True)
        put: Callable[[Path, Path], object] = (
            Path.rename if move else lambda a, b: shutil.copytree(a, b, symlinks=True)
        )
        put(source / "repos", self.root)
        for name in STATE_DIRS:
            put(source / name, self.scratch / name)

    def again(self, night: Callable[[], bytes]) -> bytes:
        """Run ``night`` once more from the start (the first run's outcome kept aside)."""
        if self.first is None:
            self.first = self.keep / "first"
            self._move(self.first)
        self._restore(self.keep / "start", move=False)
        os.sync()  # the copy's writeback would otherwise slow the night it is measured in
        return night()

    def done(self) -> None:
        """The first run's outcome back in place; the copies removed."""
        if self.first is not None:
            self._restore(self.first, move=True)
        shutil.rmtree(self.keep, ignore_errors=True)


@dataclass(frozen=True)
class Repeatability:
    nights: int  # runs of the same night from the same start, the first included
    tasks: int  # tasks that ran in every one of them
    ceiling: float  # share of the first run's times within the tolerance of the median
    model: float  # share of the first run's predictions within the tolerance of the median
    spread: float  # median over tasks of largest / smallest time across the runs
    rows: tuple[tuple[str, str, float | None, float, float], ...] = ()  # per task: name,
    # kind, predicted, the first run's time, the median time (for whoever tunes the model)


def repeatability(first: dict[str, Any], repeats: list[dict[str, Any]], tolerance: float
                  ) -> Repeatability:  # fmt: skip
    """What the host's noise leaves a prediction: over the tasks that ran in ``first`` and
    in each of ``repeats`` (the same night from the same start), the share of the first
    run's times within ``tolerance`` of the task's median time over all runs (what the
    best possible prediction would score), and the share of the first run's predictions
    within ``tolerance`` of that median."""
    runs = [first, *repeats]
    times: list[dict[tuple[str, str], float]] = []
    for doc in runs:
        times.append({(n, str(t.get("kind"))): float(t["seconds"]) for n, t in _tasks(doc)
                      if isinstance(t.get("seconds"), int | float)})  # fmt: skip
    guesses = {(n, str(t.get("kind"))): t.get("predicted") for n, t in _tasks(first)}
    common = [k for k in times[0] if all(k in t for t in times[1:])]
    ceiling = model = 0
    spreads = []
    rows = []
    for key in common:
        seen = [t[key] for t in times]
        typical = median(seen)
        ceiling += abs(times[0][key] - typical) <= tolerance * typical
        guess = guesses.get(key)
        seconds = guess.get("seconds") if isinstance(guess, dict) else None
        if isinstance(seconds, int | float):
            model += abs(seconds - typical) <= tolerance * typical
        spreads.append(max(seen) / min(seen) if min(seen) > 0 else float("inf"))
        predicted = float(seconds) if isinstance(seconds, int | float) else None
        rows.append((key[0], key[1], predicted, times[0][key], typical))
    n = len(common)
    return Repeatability(len(runs), n, ceiling / n if n else 0.0, model / n if n else 0.0,
                         median(spreads) if spreads else 0.0, tuple(rows))  # fmt: skip
