"""The cost model: what each maintenance task will take, in seconds and peak memory, before
it runs. Pure: it reads the repository's state and samples of past runs, runs nothing.

A task's cost grows with one size of the repository, its *driver*: the objects for a
full repack (deltas are reused, so on the real corpus the time followed the object count
more closely than the bytes), a loose object weighing ``LOOSE_WEIGHT`` packed ones (it is
inflated, hashed and searched for a delta, where a packed one's delta is reused); the
objects outside the largest pack for a geometric repack (it rolls up the small packs and
the loose objects, and keeps the large one), the loose objects alone for an incremental
one; the objects for a commit-graph too (its commits, whose count the cheap scan does not
know), but when one exists only ``GRAPH_REUSE`` of those it lists (git copies them
instead of parsing them) and all of those that arrived since the last repack (outside
the largest pack: custode writes the graph after each repack, so they hold the commits
it does not list yet, parsed as from scratch); the loose refs for ``pack-refs`` (each is
read, locked and deleted, where a packed one is a line rewritten: ``PACKED_REF_WEIGHT``);
cleanups cost a fixed amount. The weights matter most between the first night, on a
neglected repository, and the next.

Each prediction comes from the best basis at hand, said in ``Prediction.basis``:

* ``this repository``: the task's last run here, scaled by how much the driver changed
  since (``last * rate(now) / rate(then)``, so a fixed cost does not scale), when it did
  the same kind of work: a commit-graph written from scratch (every commit parsed) does
  not predict one written beside an existing graph (the commits it lists are copied),
  nor the other way round (``Size.same_work``). The ratio
  takes the default rate's shape, not the fleet's fit: a host's speed scales the fixed
  and the per-unit cost alike and cancels out, while the fit's split between them is the
  least certain thing it estimates (a night shared with other work, a few large
  repositories pruning old objects, set it). Only while the work is within
  ``COMPARABLE`` of that run's: scaled further, that run's circumstances would be too.
  One night is one sample: when it puts the repository within ``COMPARABLE`` of what
  the fleet's fit predicts for it, the difference is no larger than one night's noise
  (the same task on the same repository varied 1.3-1.5x over four runs of a night in
  bench/maintenance), and the prediction is the geometric mean of the two, the night's
  evidence weighed equally with the fleet's; further off, the repository is unlike the
  fleet and its own run stands;
* ``similar repositories``: a fit of ``fixed + per_unit * driver`` over the fleet's
  history of the task (Theil-Sen: the median of pairwise slopes, so one slow night on a
  busy host does not skew it), once three repositories have run it;
* ``defaults``: rates measured on the project's real corpus (docs/operations.md, "The
  nightly window", says how), for a fleet with no history at all.

Memory is predicted from the object count (pack-objects keeps a struct per object, plus
its delta window): from the task's last measured peak here (the executor records the
largest peak of its gits the runner measured, ``GitResult.peak_rss``) scaled by the
default's ``memory_fixed + memory_per_kobject * objects``, while that is within
``COMPARABLE`` as for the time (``Prediction.memory_basis``: "this repository"); else from
the defaults. The runner knows a git's peak only above custode's own (the kernel counts
custode's into it), so a small repository's tasks keep the defaults; no fleet fit is made
from peaks known only above a floor.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from math import sqrt
from statistics import median
from typing import Any, Literal

from custode.maintenance.needs import TaskKind
from custode.maintenance.planner import Repack, Task
from custode.records.state import LatestResult
from custode.scan.repostate import RepoState

Driver = Literal["bytes", "objects", "rolled", "loose", "graph", "refs", "none"]
Basis = Literal["this repository", "similar repositories", "defaults"]
MIB = 1024 * 1024
#: repositories that must have run a task before the fleet's fit replaces the defaults
MIN_FLEET = 3
#: a repository's last run predicts the next one only when the work differs by no more
#: than this factor (by the default shape); further off, what was special about that run
#: (a neglected repository's first night, a night shared with a large repack) is
#: multiplied with it, and the fleet's fit or the defaults predict better
COMPARABLE = 2.0
#: the most recent samples per task the fit reads (pairwise slopes: quadratic)
FIT_SAMPLES = 200
#: a loose object's share of a repack, in packed objects: what ``git repack -a -d --cruft``
#: took (best of 9, git 2.39) on two neglected fleet repositories (499 and 1,147 packed
#: objects, 280 and 284 loose: 0.18 and 0.14 s) against the same once repacked (779 and
#: 1,431 objects in one pack: 0.03 s each) and a 10,709-object one (0.11 s): 9 ms a
#: thousand packed objects, 0.4 to 0.5 ms a loose one (50 packed ones). custode's own task
#: gains less: between that first repack and the next night's of the same eight
#: repositories (objects from a day's pushes in new packs, themselves searched for deltas),
#: 10 to 20 fitted best (two serial rounds each, on a host shared with other work)
LOOSE_WEIGHT = 20
#: what a ``git prune`` after a repack adds, per object: it walks every reachable object
#: again (no bitmaps: DISTRUST_DERIVED), as the executor's connectivity walk does; on
#: borg's 100,000-object mirror that walk took 0.70 s, three quarters of a full repack's
#: per-object cost (0.0093 s a thousand). Without it, a first night's repack-and-prune
#: made the next night's plain repack predicted 3 to 6 times too long (the bench's
#: second night: 0.51 s predicted, 0.08 s taken)
PRUNE_WEIGHT = 0.75
#: a commit-graph written beside an existing one (``--split=replace``), as a share of one
#: written from scratch: git copies the commits (and Bloom filters) it lists and parses
#: only the new ones. In bench/maintenance, over the fixed 6 ms, a day's pushes later
#: (about 100 new commits each): requests (43,000 objects) 0.013-0.018 s against 0.305 s
#: from scratch, a share of 0.03; sqlite-utils (11,000) 0.009 s against 0.056 s, 0.07;
#: client_python (8,000) 0.010 s against 0.046 s, 0.10: the larger the repository, the
#: smaller the share the day's new commits take. 0.2, measured earlier on sqlite-utils
#: with git alone, predicted the corpus's replacements 1.5 to 3 times too long. Replayed on
#: two recorded second nights of bench/maintenance (46 tasks each, with ``same_work`` and
#: the night's calibration), 0.05 took the tasks within +-30% from 63% and 57% to 76% and
#: 74%; ``same_work`` alone, at 0.2, had moved them from 59% and 59%. The objects that
#: arrived since the last repack count whole besides (``Size.units``): over nine recorded
#: second nights, the replacements' times followed them (4.2 ms beside 196 new objects,
#: 6.8 ms beside 596, in generated repositories of 1,500-2,000 objects), and a night's
#: first replacements, before its calibration, had been predicted 1.4 to 2 times too
#: short; replayed on those nights, the tasks within +-30% went from 84% (346 of 414) to
#: 87% (361)
GRAPH_REUSE = 0.05
#: tasks of a kind that must have finished tonight before their times correct the next
#: predictions of that kind (one or two would let a single outlier decide)
CALIBRATE_AFTER = 3
#: the most recent of tonight's tasks of a kind whose times correct the next prediction.
#: Chosen offline on the recorded nights of bench/maintenance (a second night of 46 tasks
#: and a first night of 232 on the window copy, replayed in the order they started):
#: 3 and 9 took the tasks within +-30% from 48% to 61% and from 31% to 68%; all of the
#: night's tasks instead of the last 9 did no better (59%, 67%), nor did one ratio for
#: every kind (57%, 50%)
CALIBRATE_RECENT = 9


#: a packed ref's share of ``pack-refs``, in loose ones: a line of ``packed-refs`` rewritten,
#: where a loose ref is read, locked, written there and deleted. The default rate per ref
#: (measured on the corpus, mostly packed refs) was a hundredth of the rate per loose ref
#: the first nights of bench/maintenance fitted (all of its 202 generated repositories'
#: refs loose)
PACKED_REF_WEIGHT = 0.01

_COUNTS = ("bytes", "objects", "refs", "loose")


@dataclass(frozen=True)
class Size:
    """The sizes a prediction is made from (recorded with it, to scale the next one)."""

    bytes: int  # objects on disk: packs and loose objects
    objects: int  # packed and loose
    refs: int
    loose: int = 0  # of the objects; 0 in rows written before it was recorded
    graph: bool = False  # a commit-graph exists
    prune: bool = False  # the repack is followed by git prune (a walk of every object)
    loose_refs: int = 0  # of the refs, not symbolic; 0 in rows written before it was
    #: packed objects outside the largest non-cruft pack (what a geometric repack rolls
    #: up besides the loose ones); 0 in rows written before it was recorded
    rolled: int = 0

    @classmethod
    def of(cls, state: RepoState, *, prune: bool = False) -> Size:
        return cls(
            state.pack_bytes + state.loose_objects_bytes,
            state.packed_objects + state.loose_objects,
            state.refs,
            state.loose_objects,
            state.commit_graph,
            prune,
            min(state.refs, max(0, state.loose_refs - state.symbolic_refs)),
            max(0, state.packed_objects - state.base_pack_objects),
        )

    @classmethod
    def from_json(cls, data: object) -> Size | None:
        """The sizes recorded in a history row's details; None when absent or malformed."""
        if not isinstance(data, dict):
            return None
        # loose and graph are optional: rows written before they were recorded lack them
        values = [data.get(k, 0 if k == "loose" else None) for k in _COUNTS]
        graph, prune = data.get("graph", False), data.get("prune", False)
        values += [data.get("loose_refs", 0), data.get("rolled", 0)]  # optional too
        counts = [v for v in values if isinstance(v, int) and not isinstance(v, bool) and v >= 0]
        if len(counts) != len(values) or not isinstance(graph, bool) or not isinstance(prune, bool):
            return None
        size, objects, refs, loose, loose_refs, rolled = counts
        return cls(size, objects, refs, min(loose, objects), graph, prune, min(loose_refs, refs),
                   min(rolled, objects))  # fmt: skip

    def to_json(self) -> dict[str, int | bool]:
        return {"bytes": self.bytes, "objects": self.objects, "refs": self.refs,
                "loose": self.loose, "graph": self.graph, "prune": self.prune,
                "loose_refs": self.loose_refs, "rolled": self.rolled}  # fmt: skip

    def same_work(self, other: Size, driver: Driver) -> bool:
        """Whether a task of ``driver`` on ``other`` does the same kind of work as on this
        (a commit-graph: beside an existing graph in both, or from scratch in both)."""
        return driver != "graph" or self.graph == other.graph

    def units(self, driver: Driver) -> float:
        """The driver's size, in the units of a rate (MiB for bytes, thousands otherwise)."""
        match driver:
            case "bytes":
                return self.bytes / MIB
            case "objects":
                walk = PRUNE_WEIGHT * self.objects if self.prune else 0.0
                count = self.objects + (LOOSE_WEIGHT - 1) * self.loose + walk
            case "rolled":
                count = self.rolled + LOOSE_WEIGHT * self.loose
            case "loose":
                count = LOOSE_WEIGHT * self.loose
            case "graph" if self.graph:  # those it lists copied, the new ones parsed
                count = GRAPH_REUSE * self.objects + self.rolled + self.loose
            case "graph":
                count = self.objects
            case "refs":
                count = self.loose_refs + PACKED_REF_WEIGHT * (self.refs - self.loose_refs)
            case _:
                count = 0.0
        return count / 1000


@dataclass(frozen=True)
class Rate:
    """``fixed + per_unit * units`` seconds, and memory likewise (per thousand objects)."""

    driver: Driver
    fixed: float  # seconds
    per_unit: float  # seconds per unit of the driver
    memory_fixed: int = 0  # bytes
    memory_per_kobject: int = 0  # bytes per thousand objects

    def seconds(self, size: Size) -> float:
        return self.fixed + self.per_unit * size.units(self.driver)

    def memory(self, size: Size) -> int:
        return self.memory_fixed + int(self.memory_per_kobject * size.objects / 1000)


#: Measured with ``custode maintain --json --jobs 1`` on neglected copies of the five
#: repositories of the project's corpus (3.6 to 47 MB bundles; docs/operations.md, "The
#: nightly window", says how), fitted as the fleet's fit is; peak memory from git's own
#: commands under ``/usr/bin/time -v`` on the same copies. The kinds the corpus never
#: called for (incremental repack, multi-pack-index, cleanups) are from single git runs.
#: The full repack was measured again once it had grown its walks, the prune and bounded
#: threads: 22 second-night repacks in bench/maintenance (735 to 10,906 objects, 0.055 to
#: 0.215 s; docs/operations.md says how). ``pack-refs`` was measured again once its driver
#: became the loose refs: the first nights of bench/maintenance's window copy, 202
#: generated repositories of 34 to 610 loose refs (0.010 to 0.17 s), fitted as the fleet's
#: fit is (181 of them within +-30% of the fit). The geometric and incremental repacks
#: were priced by all the objects (0.005 s per thousand), which predicted requests'
#: geometric repack beside its 19 MB pack at 0.32 s five nights out of five, where it
#: took 0.13-0.15 s: they now cost what a full repack costs per object, over the objects
#: they roll up.
DEFAULTS: dict[str, Rate] = {
    "remove_stale_files": Rate("none", 0.005, 0.0),  # unlinks, no git
    "prune_worktrees": Rate("none", 0.02, 0.0, 4 * MIB),
    "pack_refs": Rate("refs", 0.005, 0.29, 5 * MIB),  # per 1,000 loose refs: see below
    "incremental_repack": Rate("loose", 0.10, 0.017, 4 * MIB, 500_000),  # see below
    "geometric_repack": Rate("rolled", 0.10, 0.017, 4 * MIB, 500_000),
    "full_repack": Rate("objects", 0.055, 0.017, 4 * MIB, 1_030_000),
    "write_midx": Rate("objects", 0.03, 0.0002, 5 * MIB, 80_000),
    "write_commit_graph": Rate("graph", 0.01, 0.0070, 4 * MIB, 540_000),
}


@dataclass(frozen=True)
class Sample:
    """One past successful run of a task: its time and the sizes it was predicted from."""

    kind: str
    repository: tuple[str, str]  # (root, relative), as history keys repositories
    at: float  # when it ran (epoch seconds): the latest per repository is "the last run"
    seconds: float
    size: Size
    memory_bytes: int | None = None  # its gits' largest measured peak; None: not measured


@dataclass(frozen=True)
class Prediction:
    seconds: float
    memory_bytes: int
    basis: Basis
    size: Size  # the sizes it was made from
    memory_basis: Basis = "defaults"  # "this repository": scaled from a measured peak
    #: the factor tonight's finished tasks put on the model's seconds (``Calibration``)
    calibration: float = 1.0

    def to_json(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 4), "memory_bytes": self.memory_bytes,
                "basis": self.basis, "memory_basis": self.memory_basis,
                "calibration": round(self.calibration, 3),
                "inputs": self.size.to_json()}  # fmt: skip


def theil_sen(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """(intercept, slope) of ``y = a + b·x`` through ``points``, robustly: the median of the
    pairwise slopes, then the median intercept; both at least 0 (a task cannot take less
    than nothing). None without two distinct x."""
    slopes = [
        (y2 - y1) / (x2 - x1)
        for i, (x1, y1) in enumerate(points)
        for x2, y2 in points[i + 1 :]
        if x2 != x1
    ]
    if not slopes:
        return None
    slope = max(0.0, median(slopes))
    return max(0.0, median(y - slope * x for x, y in points)), slope


class CostModel:
    """Predicts tasks' costs from ``samples`` (any order; those of unknown kinds ignored)."""

    def __init__(self, samples: Iterable[Sample] = (), defaults: dict[str, Rate] | None = None):
        self.defaults = DEFAULTS if defaults is None else defaults
        latest: dict[tuple[str, tuple[str, str]], Sample] = {}
        for s in samples:
            key = (s.kind, s.repository)
            if s.kind in self.defaults and (key not in latest or s.at > latest[key].at):
                latest[key] = s
        self.last = latest
        self.fleet: dict[str, Rate] = {}
        for kind, rate in self.defaults.items():
            mine = sorted((s for (k, _), s in latest.items() if k == kind), key=lambda s: -s.at)
            if len(mine) < MIN_FLEET:
                continue
            points = [(s.size.units(rate.driver), s.seconds) for s in mine[:FIT_SAMPLES]]
            fit = theil_sen(points) if rate.driver != "none" else (median(y for _, y in points), 0)
            if fit is not None:
                self.fleet[kind] = Rate(rate.driver, fit[0], fit[1], rate.memory_fixed,
                                        rate.memory_per_kobject)  # fmt: skip

    def rate(self, kind: str) -> Rate:
        """The fleet's fit of ``kind``, else the default."""
        return self.fleet.get(kind) or self.defaults[kind]

    def predict(self, state: RepoState, kind: TaskKind | str, *, prune: bool = False) -> Prediction:
        """``kind``'s cost on ``state``, from the best basis at hand (see the module);
        ``prune``: the repack is followed by ``git prune``."""
        size = Size.of(state, prune=prune)
        return self.predict_size(size, kind, (state.root, state.relative))

    def predict_size(self, size: Size, kind: str, repository: tuple[str, str]) -> Prediction:
        """``kind``'s cost on a repository (root, relative) of ``size``."""
        rate = self.rate(kind)
        memory = rate.memory(size)
        memory_basis: Basis = "defaults"
        last = self.last.get((kind, repository))
        if last is not None:
            shape = self.defaults[kind]  # see the module: the ratio needs the shape only
            if last.memory_bytes is not None:
                grown = _ratio(shape.memory(size), shape.memory(last.size))
                if comparable(grown):
                    memory, memory_basis = int(last.memory_bytes * grown), "this repository"
            scale = _ratio(shape.seconds(size), shape.seconds(last.size))
            if comparable(scale) and size.same_work(last.size, shape.driver):
                own = self._shrunk(kind, size, max(0.0, last.seconds * scale))
                return Prediction(own, memory, "this repository", size, memory_basis)
        basis: Basis = "similar repositories" if kind in self.fleet else "defaults"
        return Prediction(max(0.0, rate.seconds(size)), memory, basis, size, memory_basis)

    def _shrunk(self, kind: str, size: Size, own: float) -> float:
        """``own`` (a last run here, scaled), halfway (geometrically) to the fleet's fit when
        within ``COMPARABLE`` of it (see the module); as it is otherwise, or with no fit."""
        fit = self.fleet.get(kind)
        typical = fit.seconds(size) if fit is not None else 0.0
        if typical > 0 and comparable(own / typical):
            return sqrt(own * typical)
        return own

    def predict_all(self, state: RepoState, tasks: Iterable[Task]) -> dict[str, Prediction]:
        """Each of a plan's ``tasks``, by kind (a plan holds one task of each kind)."""
        return {t.kind: self.predict(state, t.kind, prune=prunes(t)) for t in tasks}


class Calibration:
    """One night's correction of the model's seconds, learnt from the tasks it finished
    (see the module). Thread-safe: the fleet's workers learn while the scheduler asks."""

    def __init__(self) -> None:
        self._ratios: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def learn(self, kind: str, predicted: float, actual: float) -> None:
        """A task of ``kind`` finished in ``actual`` seconds; the model (uncorrected) had
        predicted ``predicted``. A prediction of nothing teaches nothing."""
        if predicted > 0 and actual >= 0:
            with self._lock:
                ratios = self._ratios.setdefault(kind, deque(maxlen=CALIBRATE_RECENT))
                ratios.append(actual / predicted)

    def factor(self, kind: str) -> float:
        """What the next prediction of ``kind`` is multiplied by: 1 until enough are known."""
        with self._lock:
            ratios = list(self._ratios.get(kind, ()))
        if len(ratios) < CALIBRATE_AFTER:
            return 1.0
        return min(COMPARABLE, max(1 / COMPARABLE, median(ratios)))

    def apply(self, predictions: Mapping[str, Prediction]) -> dict[str, Prediction]:
        """``predictions`` (by kind, as the model made them) corrected as of now."""
        out = {}
        for kind, p in predictions.items():
            f = self.factor(kind)
            out[kind] = replace(p, seconds=p.seconds * f, calibration=f) if f != 1.0 else p
        return out


def comparable(ratio: float) -> bool:
    """Whether two costs whose ratio is ``ratio`` are within ``COMPARABLE`` of each other."""
    return 1 / COMPARABLE <= ratio <= COMPARABLE


def _ratio(now: float, then: float) -> float:
    """``now / then``; 1 when ``then`` is nothing (a fixed cost only: nothing to scale)."""
    return now / then if then > 0 else 1.0


def prunes(task: Task) -> bool:
    """Whether ``task`` runs ``git prune`` after its repack."""
    return isinstance(task.args, Repack) and task.args.prune


def sample_of(row: LatestResult) -> Sample | None:
    """A task's history row as a sample: None when it failed, or does not say the sizes
    it ran on (rows written before the cost model), or its time is not a number. Its
    measured peak (``memory_bytes``) is optional: rows before it, and tasks whose gits'
    peaks were not measured, lack it."""
    predicted = row.details.get("predicted")
    size = Size.from_json(predicted.get("inputs") if isinstance(predicted, dict) else None)
    if row.outcome != "ok" or size is None or not row.duration_s >= 0:
        return None
    peak = row.details.get("memory_bytes")
    measured = peak if isinstance(peak, int) and not isinstance(peak, bool) and peak > 0 else None
    return Sample(row.task, (row.root, row.repository), row.at, float(row.duration_s), size,
                  measured)  # fmt: skip
