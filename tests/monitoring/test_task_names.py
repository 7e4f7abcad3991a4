"""Maintenance task names have one source, the planner's ``TaskKind``: every kind the
planner can produce, recorded in the history as ``custode maintain`` records it, reaches
``custode_repository_task_last_success_timestamp_seconds``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import get_args

from prometheus_client.parser import text_string_to_metric_families

from custode.config.model import Config
from custode.maintenance.planner import TaskKind
from custode.monitoring.exporter import Exporter
from custode.records.state import RepositoryResult, StateDB
from fixtures.builders import run_git

METRIC = "custode_repository_task_last_success_timestamp_seconds"
STARTED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_every_task_kind_reaches_the_task_freshness_metric(tmp_path: Path) -> None:
    root, state_dir = tmp_path / "root", tmp_path / "state"
    run_git(None, "init", "-q", "--bare", root / "r.git")
    state_dir.mkdir()
    kinds = get_args(TaskKind)
    assert {"incremental_repack", "write_midx", "write_commit_graph"} <= set(kinds)
    with StateDB.open(state_dir / "state.db") as db:
        run = db.begin_run("maintain")
        # as maintain records a task: the repository, its root, the task's kind, outcome
        db.record_results(run, [
            RepositoryResult("r.git", str(root), kind, "ok", STARTED.isoformat(), 0.5,
                             {"reason": "a test", "message": ""})
            for kind in kinds
        ])  # fmt: skip
        db.finish_run(run, "ok", {"repositories": 1, "failed": 0, "reclaimed_bytes": 0})
    exporter = Exporter(roots=[root], config=Config(), state_dir=state_dir, probes=False)
    exporter.refresh()
    assert exporter.last_error == ""
    text = exporter.exposition().decode()
    found = {
        s.labels["task"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == METRIC and s.labels["repository"] == "r.git"
    }
    assert found == dict.fromkeys(kinds, STARTED.timestamp())
