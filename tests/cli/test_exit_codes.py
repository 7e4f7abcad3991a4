"""What each exit status means, decided once (``custode.errors``): every status has an
outcome, and ``custode run`` (its JSON and its history row) and ``custode serve``'s job
metric say the same outcome for the same status."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from custode.cli import run_cmd
from custode.cli.app import App
from custode.errors import EXIT_CODES_HELP, OUTCOMES, SEVERITY, ExitCode, outcome, worst
from custode.jobs.cycle import Stage, record_run
from custode.records.state import StateDB
from custode.serve import scheduler

#: statuses a job can end with that are not ExitCodes: not started, killed by SIGTERM
FOREIGN = (-1, -15, 99)


def test_every_exit_code_has_an_outcome_a_severity_and_a_line_of_help() -> None:
    assert set(OUTCOMES) == set(ExitCode)
    assert sorted(SEVERITY) == sorted(ExitCode)  # each once
    assert SEVERITY[0] == ExitCode.INTERRUPTED and SEVERITY[-1] == ExitCode.OK
    for code in ExitCode:
        assert f" {int(code)} " in f" {EXIT_CODES_HELP}", code


def test_outcomes_and_the_worst_status() -> None:
    assert [outcome(c) for c in (0, 3, 130, 1, 7)] == [
        "ok", "partial", "interrupted", "failed", "failed"
    ]  # fmt: skip
    assert all(outcome(c) == "failed" for c in FOREIGN)
    assert worst([0, 3, 7]) == ExitCode.STATE
    assert worst([0, 130, 6]) == ExitCode.INTERRUPTED
    assert worst([0, 0]) == ExitCode.OK
    assert worst([99]) == ExitCode.ERROR


class _App(App):
    """custode's application object, its JSON kept instead of printed."""

    printed: list[Any]

    def print_json(self, obj: Any) -> None:
        self.printed.append(obj)


def _scheduled(code: int, monkeypatch: pytest.MonkeyPatch) -> str:
    """The outcome ``custode serve`` counts for a scheduled job that exits with ``code``."""

    class Child:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def wait(self) -> int:
            return code

    fake = SimpleNamespace(Popen=Child, DEVNULL=subprocess.DEVNULL)
    monkeypatch.setattr(scheduler, "subprocess", fake)
    job = scheduler.Job("cycle", "0 3 * * *", ["run"])
    sched = scheduler.Scheduler([job], config_path=None, grace=1.0)
    sched._run(job)
    [runs] = [m for m in sched.collect() if m.name == "custode_job_runs"]
    [sample] = [s for s in runs.samples if s.name == "custode_job_runs_total"]
    assert sample.value == 1
    return str(sample.labels["outcome"])


@pytest.mark.parametrize("code", [*(int(c) for c in ExitCode), *FOREIGN])
def test_run_and_serve_give_a_status_the_same_outcome(
    code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = outcome(code)
    config = tmp_path / "custode.toml"
    config.write_text(f'[state]\ndirectory = "{tmp_path / "state"}"\n')
    app = _App(config_path=config)
    app.printed = []
    stages = [Stage("check", code=code)]
    run_cmd._show(app, stages, code, 1.0, as_json=True)
    [shown] = app.printed
    assert shown["stages"][0]["outcome"] == expected
    record_run(app.state_dir(), app.config.state.keep_history, stages, code, 1.0)
    with StateDB.open(tmp_path / "state" / "state.db") as db:
        [recorded] = db.runs()
    assert recorded.status == expected
    assert recorded.summary["stages"][0]["outcome"] == expected
    assert _scheduled(code, monkeypatch) == expected
