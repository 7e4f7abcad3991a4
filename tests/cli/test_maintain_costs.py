"""``custode maintain`` predicts each task's cost: the dry run shows it, a real run records
it beside the actual time, and the next night predicts from that actual."""

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from custode.maintenance.cost import DEFAULTS, Size
from fixtures.builders import fast_import, history_stream, run_git
from fixtures.cli import CliResult

pytestmark = pytest.mark.integration
Run = Callable[..., CliResult]


def _loose_refs(repo: Path, prefix: str, count: int) -> None:
    tip = run_git(repo, "rev-parse", "refs/heads/main").strip()
    lines = "".join(f"create refs/heads/{prefix}/{i:03d} {tip}\n" for i in range(count))
    run_git(repo, "update-ref", "--stdin", input=lines.encode())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    repo = tmp_path / "root" / "refs.git"
    run_git(None, "init", "-q", "--bare", repo)
    fast_import(repo, history_stream("refs/heads/main", 20))
    _loose_refs(repo, "first", 40)  # > 16 loose refs: pack_refs
    return tmp_path / "root"


def _tasks(doc: dict[str, object]) -> dict[str, dict[str, object]]:
    (repo,) = doc["repositories"]  # type: ignore[misc]
    return {t["kind"]: t for t in repo["tasks"]}


def _history(env: dict[str, str]) -> list[tuple[str, float, dict[str, object]]]:
    db = Path(env["XDG_STATE_HOME"]) / "custode" / "state.db"
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT task, duration_s, details FROM repository_results ORDER BY id")
        return [(r[0], r[1], json.loads(r[2])) for r in rows]


def test_dry_run_shows_each_task_s_predicted_cost(custode: Run, root: Path) -> None:
    dry = custode("maintain", "--dry-run", "--json", root)
    assert dry.code == 0, dry.stderr
    tasks = _tasks(dry.json())
    assert "pack_refs" in tasks
    for task in tasks.values():
        predicted = task["predicted"]
        assert predicted["seconds"] > 0 and predicted["memory_bytes"] > 0  # type: ignore[index]
        assert predicted["basis"] == "defaults"  # type: ignore[index]
    table = custode("maintain", "--dry-run", root, env={"COLUMNS": "200"})
    assert table.code == 0, table.stderr
    assert "predicted" in table.stdout.splitlines()[0]
    row = next(line for line in table.stdout.splitlines() if "pack_refs" in line)
    seconds = tasks["pack_refs"]["predicted"]["seconds"]  # type: ignore[index]
    assert f"{seconds:.1f}s" in row and "MiB" in row


def test_a_run_records_predicted_and_actual_and_the_next_night_learns_from_it(
    custode: Run, root: Path, isolated_env: dict[str, str]
) -> None:
    first = custode("maintain", "--json", root)
    assert first.code == 0, first.stderr
    ran = _tasks(first.json())
    assert ran["pack_refs"]["outcome"] == "ok"
    for task in ran.values():
        assert task["predicted"]["seconds"] >= 0 and "seconds" in task  # type: ignore[index]
    rows = {task: (seconds, details) for task, seconds, details in _history(isolated_env)}
    actual, details = rows["pack_refs"]
    # to 0.1 ms in both: a task of a few milliseconds, at whole ones, misstates its error
    assert ran["pack_refs"]["seconds"] == round(actual, 4)
    predicted = details["predicted"]
    assert predicted["seconds"] == ran["pack_refs"]["predicted"]["seconds"]  # type: ignore[index]
    then = Size(**predicted["inputs"])  # type: ignore[index]
    assert then.refs == 41  # the sizes it was predicted from: main and 40 loose refs

    _loose_refs(root / "refs.git", "second", 60)  # the next day: more refs, loose again
    again = _tasks(custode("maintain", "--dry-run", "--json", root).json())
    second = again["pack_refs"]["predicted"]
    assert second["basis"] == "this repository"  # type: ignore[index]
    now = Size(**second["inputs"])  # type: ignore[index]
    assert now.refs == 101
    rate = DEFAULTS["pack_refs"]
    expected = actual * rate.seconds(now) / rate.seconds(then)
    assert second["seconds"] == pytest.approx(expected, abs=0.0001)  # type: ignore[index]
