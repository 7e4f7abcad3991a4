"""Each maintenance task's actual peak memory: measured by the git runner, recorded in the
history beside the prediction (and in ``maintain --json``), and learnt by the cost model;
and its gits' CPU seconds beside its time."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from custode.maintenance.cost import COMPARABLE, DEFAULTS, CostModel, Sample, Size, sample_of
from custode.records.state import LatestResult
from fixtures.builders import fast_import, history_stream, run_git
from fixtures.cli import CliResult

Run = Callable[..., CliResult]
MIB = 1024 * 1024
#: a blob pack-objects holds whole while it writes it: above custode's own peak (some
#: 40 MiB), so that the kernel's figure is git's (``custode.git.runner``)
BLOB = 96 * MIB
#: custode started by a small process that forks it (``sh``, in the background): a
#: process's peak counts in that of the one it was forked from, at exec too, so custode
#: started straight from this test's worker (which may hold hundreds of MiB in a long
#: run) would count the worker's peak as its own, and no git below it is measured.
#: Started the way cron or systemd start it, its own peak is its own.
FRESH = ("sh", "-c", '"$@" & wait $!', "sh")


def _history(env: dict[str, str]) -> dict[str, dict[str, object]]:
    db = Path(env["XDG_STATE_HOME"]) / "custode" / "state.db"
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT task, details FROM repository_results ORDER BY id")
        return {task: json.loads(details) for task, details in rows}


def _tasks(doc: dict[str, object]) -> dict[str, dict[str, object]]:
    (repo,) = doc["repositories"]  # type: ignore[misc]
    return {t["kind"]: t for t in repo["tasks"]}


@pytest.mark.integration
def test_a_repack_s_measured_peak_is_recorded_and_the_next_night_predicts_from_it(
    custode: Run, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    repo = tmp_path / "root" / "big.git"
    run_git(None, "init", "-q", "--bare", repo)
    fast_import(repo, history_stream("refs/heads/main", 300), pack=False)  # 1,200 loose
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        f.truncate(BLOB)  # zeros: a loose object of 100 KB
    blob = run_git(repo, "hash-object", "-w", "--no-filters", "--", big).strip()
    run_git(repo, "update-ref", "refs/tags/big", blob)

    first = custode("maintain", "--json", tmp_path / "root", prefix=FRESH)
    assert first.code == 0, first.stderr
    ran = _tasks(first.json())
    repack = ran["full_repack"]
    assert repack["outcome"] == "ok"
    peak = repack["memory_bytes"]
    assert isinstance(peak, int) and BLOB <= peak < BLOB + 256 * MIB
    history = _history(isolated_env)
    recorded = history["full_repack"]
    assert recorded["memory_bytes"] == peak  # beside the prediction it is checked against
    # and the CPU its gits used (deflating 96 MiB is not free): beside the time
    cpu = repack["cpu_seconds"]
    assert isinstance(cpu, float) and cpu > 0.01 and recorded["cpu_seconds"] == cpu
    assert ran["write_commit_graph"]["cpu_seconds"] >= 0  # measured whatever its peak
    # each task its own gits': the commit-graph's stayed below custode's own, unmeasured
    assert ran["write_commit_graph"]["outcome"] == "ok"
    assert "memory_bytes" not in ran["write_commit_graph"]
    assert "memory_bytes" not in history["write_commit_graph"]
    predicted = recorded["predicted"]
    assert predicted["memory_basis"] == "defaults"  # type: ignore[index]
    assert predicted["memory_bytes"] < BLOB  # type: ignore[index]  (the object count's)
    then = Size(**predicted["inputs"])  # type: ignore[index]

    # the next day: a push's worth of loose objects calls for a repack again
    fast_import(repo, history_stream("refs/heads/next", 275, start=300), pack=False)
    again = custode("maintain", "--dry-run", "--json", tmp_path / "root")
    assert again.code == 0, again.stderr
    second = _tasks(again.json())["full_repack"]["predicted"]
    assert second["memory_basis"] == "this repository"  # type: ignore[index]
    now = Size(**second["inputs"])  # type: ignore[index]
    rate = DEFAULTS["full_repack"]
    expected = int(peak * rate.memory(now) / rate.memory(then))
    assert second["memory_bytes"] == expected > peak  # type: ignore[index]


def _row(details: dict[str, object]) -> LatestResult:
    return LatestResult("full_repack", "/srv", "a.git", 100.0, "ok", 1.5, details, None)


INPUTS = {"bytes": 50 * MIB, "objects": 100_000, "refs": 10}


def test_a_history_row_with_a_measured_peak_is_a_sample_with_it() -> None:
    sample = sample_of(_row({"predicted": {"inputs": INPUTS}, "memory_bytes": 97 * MIB}))
    assert sample is not None and sample.memory_bytes == 97 * MIB
    for peak in (None, "97", True, -1, 0):  # rows before it, or not measured: no peak
        details: dict[str, object] = {"predicted": {"inputs": INPUTS}}
        if peak is not None:
            details["memory_bytes"] = peak
        old = sample_of(_row(details))
        assert old is not None and old.memory_bytes is None and old.seconds == 1.5


def _sample(objects: int, memory: int | None) -> Sample:
    return Sample("full_repack", ("/srv", "a.git"), 1.0, 2.0, Size(50 * MIB, objects, 10),
                  memory)  # fmt: skip


def test_memory_is_predicted_from_the_last_measured_peak_scaled_by_the_objects() -> None:
    rate = DEFAULTS["full_repack"]
    then, grown = Size(50 * MIB, 100_000, 10), Size(60 * MIB, 130_000, 10)
    model = CostModel([_sample(100_000, 200 * MIB)])
    p = model.predict_size(grown, "full_repack", ("/srv", "a.git"))
    assert p.memory_basis == "this repository"
    assert p.memory_bytes == int(200 * MIB * rate.memory(grown) / rate.memory(then))
    assert p.to_json()["memory_basis"] == "this repository"
    # another repository, an unmeasured last run, or work too different: the defaults
    other = model.predict_size(grown, "full_repack", ("/srv", "b.git"))
    unmeasured = CostModel([_sample(100_000, None)]).predict_size(
        grown, "full_repack", ("/srv", "a.git")
    )
    far = Size(60 * MIB, int(100_000 * COMPARABLE * 1.5), 10)
    beyond = model.predict_size(far, "full_repack", ("/srv", "a.git"))
    for q, size in ((other, grown), (unmeasured, grown), (beyond, far)):
        assert q.memory_basis == "defaults" and q.memory_bytes == rate.memory(size)
