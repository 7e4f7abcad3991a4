"""``custode maintain --window``: a fleet of real small repositories whose full repacks are
predicted (from an injected history) to take 100 s each, in a window that holds two: the
first night does what fits and defers the rest, the next night does those first."""

import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from custode.records.state import RepositoryResult, StateDB
from fixtures.builders import age_packs, fast_import, history_stream, run_git
from fixtures.cli import CliResult

pytestmark = pytest.mark.integration
Run = Callable[..., CliResult]
DAY = 86400
INJECTED = 100.0  # seconds each full repack is predicted to take


def _neglected(repo: Path, commits: int) -> None:
    """Three packs written a month ago and no commit-graph: a full repack is due."""
    run_git(None, "init", "-q", "--bare", repo)
    for run in range(3):
        parent = "refs/heads/main^0" if run else None
        fast_import(repo, history_stream("refs/heads/main", commits, start=run * commits,
                                         parent=parent, files=commits))  # fmt: skip
    age_packs(repo, 30 * DAY)


def _inject(custode: Run, env: dict[str, str], root: Path, *only: str) -> None:
    """A past full repack of INJECTED seconds on each repository (or ``only`` those) as
    it is now: the cost model predicts INJECTED for the next one (this repository's last
    run, at the same size)."""
    states = custode("status", "--json", "--rescan", root).json()["repositories"]
    states = [s for s in states if not only or s["relative"] in only]
    state_dir = Path(env["XDG_STATE_HOME"]) / "custode"
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    when = datetime.fromtimestamp(0, UTC).isoformat()  # long ago: no cooldown
    rows = [
        RepositoryResult(s["relative"], s["root"], "full_repack", "ok", when, INJECTED, {
            "predicted": {"inputs": {
                "bytes": s["pack_bytes"] + s["loose_objects_bytes"],
                "objects": s["packed_objects"] + s["loose_objects"], "refs": s["refs"]}}})
        for s in states
    ]  # fmt: skip
    with StateDB.open(state_dir / "state.db") as db:
        run = db.begin_run("maintain")
        db.record_results(run, rows)
        db.finish_run(run, "ok", {})


def _night(custode: Run, root: Path) -> dict[str, object]:
    result = custode("maintain", "--json", "--jobs", "1", "--window", "250s", root)
    assert result.code == 0, result.stderr
    doc: dict[str, object] = result.json()
    return doc


def _full(doc: dict[str, object]) -> set[str]:
    return {r["relative"] for r in doc["repositories"]  # type: ignore[attr-defined]
            if any(t["kind"] == "full_repack" for t in r["tasks"])}  # fmt: skip


def _deferred(doc: dict[str, object]) -> dict[str, dict[str, object]]:
    return {d["relative"]: d for d in doc["deferred"]}  # type: ignore[attr-defined]


def test_the_window_defers_what_does_not_fit_and_the_next_night_does_it_first(
    custode: Run, isolated_env: dict[str, str], tmp_path: Path
) -> None:
    root = tmp_path / "root"
    for name, commits in (("a.git", 4), ("b.git", 6), ("c.git", 8), ("d.git", 10)):
        _neglected(root / name, commits)
    _inject(custode, isolated_env, root)
    dry = custode("maintain", "--dry-run", "--json", "--jobs", "1", "--window", "250s", root)
    assert dry.code == 0, dry.stderr
    assert set(_deferred(dry.json())) == {"a.git", "b.git"}

    first = _night(custode, root)
    assert _full(first) == {"c.git", "d.git"}  # the two the window holds: the largest need
    deferred = _deferred(first)
    assert set(deferred) == {"a.git", "b.git"}  # the rest waits: reported, exit status 0
    for d in deferred.values():
        assert d["tasks"] == ["full_repack"]
        assert "does not fit in what is left of the 4m10s window" in d["why"]  # type: ignore[operator]
        due = datetime.fromisoformat(d["due"]).timestamp()  # type: ignore[arg-type]
        assert abs(due - (datetime.now(UTC).timestamp() + DAY)) < 600  # the next night
    assert first["summary"]["deferred"] == first["deferred"]  # type: ignore[index]
    assert {r["relative"]: r["outcome"] for r in first["repositories"]}["a.git"] == "ok"  # type: ignore[attr-defined]

    # the next night a larger repository needs a full repack too: those waiting go first
    _neglected(root / "e.git", 14)
    _inject(custode, isolated_env, root, "e.git")
    assert _deferred(custode("maintain", "--dry-run", "--json", root).json()) == {}  # no window
    second = _night(custode, root)
    assert _full(second) == {"a.git", "b.git"}
    assert set(_deferred(second)) == {"e.git"}
    third = _night(custode, root)
    assert _full(third) == {"e.git"} and third["deferred"] == []

    db = Path(isolated_env["XDG_STATE_HOME"]) / "custode" / "state.db"
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT repository, outcome, details FROM repository_results "
                            "WHERE task = 'deferred' ORDER BY id").fetchall()  # fmt: skip
    waits = [r[0] for r in rows if r[1] == "skipped"]
    assert waits == ["a.git", "b.git", "e.git"]  # one row per repository per night deferred
    assert all(json.loads(r[2])["first_deferred"] for r in rows if r[1] == "skipped")
    assert [r[0] for r in rows if r[1] == "ok"] == ["a.git", "b.git", "e.git"]  # each wait ended


def _small_and_large(custode: Run, isolated_env: dict[str, str], tmp_path: Path) -> Path:
    """Two neglected repositories, each with a full repack injected as 100 s."""
    root = tmp_path / "root"
    for name, commits in (("small.git", 4), ("large.git", 10)):
        _neglected(root / name, commits)
    _inject(custode, isolated_env, root)
    return root


def test_the_text_output_names_what_waits_and_when_it_is_due(
    custode: Run, isolated_env: dict[str, str], tmp_path: Path
) -> None:
    root = _small_and_large(custode, isolated_env, tmp_path)
    result = custode("maintain", "--jobs", "1", "--window", "150s", root,
                     env={"COLUMNS": "200"})  # fmt: skip
    assert result.code == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("deferred: "))
    due = datetime.fromtimestamp(datetime.now(UTC).timestamp() + DAY, UTC).date().isoformat()
    assert line.startswith(f"deferred: small.git: full_repack due {due}T")
    assert "1 deferred (window)" in result.stdout.splitlines()[-1]


def test_run_and_the_report_say_what_was_deferred_from_the_configured_window(
    custode: Run, isolated_env: dict[str, str], tmp_path: Path
) -> None:
    root = _small_and_large(custode, isolated_env, tmp_path)
    config = Path(isolated_env["XDG_CONFIG_HOME"]) / "custode" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('[maintenance]\nwindow = "150s"\njobs = 1\n')
    run = custode("run", "--drill", "0", root, env={"COLUMNS": "200"})
    assert run.code == 0, run.stdout + run.stderr
    assert "0 failed, 1 deferred (window)" in run.stdout
    assert "small.git: full_repack deferred, due " in run.stderr
    report = custode("report", "--format", "md")
    assert report.code == 0, report.stderr
    deferred = report.stdout[report.stdout.index("Deferred to a later night") :]
    assert "`small.git` | full_repack | predicted " in deferred
    assert "large.git" not in deferred
    html = custode("report", "--format", "html").stdout
    assert "Deferred to a later night" in html and "<code>small.git</code>" in html
    # another tool repacks it meanwhile: once custode finds no full repack due, no wait
    run_git(root / "small.git", "repack", "-q", "-a", "-d")
    config.write_text("[maintenance]\njobs = 1\n")
    again = custode("maintain", "--json", root)
    assert again.code == 0, again.stderr
    assert _full(again.json()) == set()
    assert "Deferred to a later night" not in custode("report", "--format", "md").stdout
