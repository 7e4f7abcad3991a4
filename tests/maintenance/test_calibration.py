"""A night corrects its own predictions (``cost.Calibration``): the tasks that finished
correct the prediction of those that start after them, and the corrected prediction is
the one recorded (history, ``--json``)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from custode.config.model import load_config
from custode.git.runner import Git
from custode.jobs import maintain as maintain_job
from custode.maintenance import cost
from fixtures.builders import fast_import, history_stream, run_git

pytestmark = pytest.mark.integration

#: a full repack predicted at 5 s, whatever the size: a host ten times faster than the
#: model, as far as tonight is concerned
SLOW = cost.Rate("objects", 5.0, 0.0, 4 * cost.MIB, 0)


def test_the_tasks_a_night_finished_correct_the_predictions_of_those_after_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(cost.DEFAULTS, "full_repack", SLOW)
    root = tmp_path / "root"
    for i in range(6):  # 240 to 340 loose objects, no pack: each gets a full repack
        repo = root / f"r{i}.git"
        run_git(None, "init", "-q", "--bare", repo)
        fast_import(repo, history_stream("refs/heads/main", 60 + 5 * i), pack=False)
    config_file = tmp_path / "custode.toml"
    config_file.write_text(
        f'[state]\ndirectory = "{tmp_path / "state"}"\n[git]\nnice = 0\nionice = "none"\n'
        "[maintenance]\nloose_objects = 100\n"
    )
    config = load_config(config_file, required=True)
    assert config.state.directory is not None
    job = maintain_job.MaintainJob((root,), config, config.state.directory,
                                   Git.from_config(config.git), jobs=1)  # fmt: skip

    done = maintain_job.maintain(job)

    assert done.count("ok") == 6
    with sqlite3.connect(config.state.directory / "state.db") as db:
        found = db.execute(
            "SELECT details FROM repository_results WHERE task = 'full_repack' ORDER BY id"
        ).fetchall()
    started = sorted((m.result.started, m.state.relative) for m in done.ran if m.result)
    predicted = {m.state.relative: m.predicted["full_repack"] for m in done.ran}
    factors = [predicted[name].calibration for _, name in started]
    # one at a time: the first three as the model said; then, each repack having taken
    # far less than 5 s, the rest at 5 s times the bound on a correction (COMPARABLE)
    assert factors == [1.0] * 3 + [1 / cost.COMPARABLE] * 3
    assert predicted[started[-1][1]].seconds == pytest.approx(5.0 / cost.COMPARABLE)
    recorded = sorted(json.loads(d)["predicted"]["calibration"] for (d,) in found)
    assert recorded == [0.5] * 3 + [1.0] * 3
