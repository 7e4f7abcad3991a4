"""The nightly cycle called as the core (``custode.jobs.cycle``), without click, on real
repositories: every stage comes back with its job's typed result and the summary its
command's ``--json`` gives, the stages' messages reach the callbacks, and the rules hold
(a store the backup cannot reach: nothing verified or forgotten, and why; a history
that cannot be used: no maintenance). ``custode run`` only shows the result."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from custode import interrupts
from custode.config.model import Config, load_config
from custode.jobs import cycle as cycle_job
from custode.jobs.backup import BackupResult
from custode.jobs.check import FleetCheck
from custode.jobs.forget import ForgetResult
from custode.jobs.maintain import Maintenance
from custode.jobs.report import ReportResult
from custode.jobs.verify import VerifyResult
from custode.records.state import StateDB
from fixtures.builders import Fleet

pytestmark = pytest.mark.integration
RUN_CMD = Path(__file__).parents[2] / "src" / "custode" / "cli" / "run_cmd.py"
TYPES = {"check": FleetCheck, "maintain": Maintenance, "backup": BackupResult,
         "verify": VerifyResult, "drill": VerifyResult, "forget": ForgetResult,
         "report": ReportResult}  # fmt: skip


class Said:
    """What the cycle told, per callback."""

    def __init__(self) -> None:
        self.notices: list[str] = []
        self.warnings: list[str] = []
        self.echoed: list[str] = []

    def run(self, job: cycle_job.CycleJob) -> cycle_job.CycleResult:
        return cycle_job.cycle(job, notice=self.notices.append, warn=self.warnings.append,
                               echo=self.echoed.append)  # fmt: skip


@pytest.fixture(autouse=True)
def _no_stop_request() -> None:
    interrupts.reset()


@pytest.fixture
def root(tmp_path: Path, fleet: Fleet) -> Path:
    root = tmp_path / "root"
    for repo in (fleet.packed, fleet.loose):
        shutil.copytree(repo, root / repo.name, symlinks=True)
    return root


def job(
    tmp_path: Path, root: Path, *, store: Path | None = None, drill: int = 1
) -> cycle_job.CycleJob:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[state]\ndirectory = "{tmp_path / "state"}"\n'
        f'[backup]\nstore = "{store or tmp_path / "store"}"\n'
        f'identity = "{tmp_path / "keys" / "identity.txt"}"\nhost = "cyclehost"\nkeep_last = 3\n'
    )
    loaded: Config = load_config(config, required=True)
    return cycle_job.CycleJob((root,), loaded, tmp_path / "state", drill, tmp_path / "reports")


def test_every_stage_returns_its_typed_result_and_its_summary(tmp_path: Path, root: Path) -> None:
    said = Said()
    done = said.run(job(tmp_path, root))
    assert done.code == 0, [(s.name, s.message) for s in done.stages]
    assert [s.name for s in done.stages] == list(TYPES)
    for stage in done.stages:
        assert isinstance(stage.result, TYPES[stage.name]), stage.name
        assert stage.outcome == "ok" and stage.summary and stage.seconds > 0
    check = done.stage("check")
    assert check is not None and isinstance(check.result, FleetCheck)
    assert check.summary == check.result.summary() and check.summary["ok"] == 2
    backup = done.stage("backup")
    assert backup is not None and isinstance(backup.result, BackupResult)
    assert backup.result.snapshot is not None and backup.summary["new"] == 2
    drill = done.stage("drill")
    assert drill is not None and drill.summary["drills"] == 1 and drill.summary["level"] == "drill"
    forget = done.stage("forget")
    assert forget is not None and set(forget.summary["reasons"]) == set(forget.summary["kept"])
    report = Path(done.stages[-1].summary["file"])
    assert report.is_file() and "<svg" in report.read_text()
    model = done.stages[-1].result.model  # about the night's roots, not the config's (none)
    assert not model.scope.everything and list(model.scope.roots) == [str(root)]
    assert said.echoed == [f"wrote {report}"]
    assert any("created the backup key" in n for n in said.notices)  # the key, made at first use
    with StateDB.open(tmp_path / "state" / "state.db") as db:
        [run] = [r for r in db.runs() if r.command == "run"]
    assert [s["name"] for s in run.summary["stages"]] == list(TYPES)


def test_a_store_the_backup_cannot_reach_is_neither_verified_nor_forgotten(
    tmp_path: Path, root: Path
) -> None:
    (tmp_path / "plain-file").write_text("not a directory\n")
    said = Said()
    done = said.run(job(tmp_path, root, store=tmp_path / "plain-file" / "store"))
    stages = {s.name: s for s in done.stages}
    assert stages["backup"].outcome == "failed" and stages["backup"].result is None
    assert any(n.startswith("backup: ") for n in said.notices), said.notices
    for name in ("verify", "drill", "forget"):
        assert stages[name].outcome == "skipped" and stages[name].result is None
        assert stages[name].skipped == "the backup reached no store"
    assert stages["check"].outcome == "ok" and stages["maintain"].outcome == "ok"
    assert stages["report"].outcome == "ok"  # the night is still reported
    assert done.code == stages["backup"].code != 0


def test_a_history_that_cannot_be_used_leaves_maintenance_not_run(
    tmp_path: Path, root: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.db").write_bytes(b"not a database, whatever it says\n" * 512)
    said = Said()
    done = said.run(job(tmp_path, root, drill=0))
    stages = {s.name: s for s in done.stages}
    assert stages["check"].outcome == "ok" and isinstance(stages["check"].result, FleetCheck)
    maintain = stages["maintain"]
    assert maintain.code == 7 and maintain.result is None
    assert maintain.message.startswith("not run: the check's verdicts are not in the history")
    assert any(n.startswith("maintain: not run: ") for n in said.notices)
    assert stages["backup"].outcome == "ok" and stages["backup"].summary["new"] == 2
    assert list(stages)[-1] == "record" and done.code == 7


def test_run_cmd_only_shows_the_cycle() -> None:
    """``custode run`` calls the core: no other command, no click invoke, no captured
    stdout."""
    source = RUN_CMD.read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
    assert "custode.jobs.cycle" in imported
    assert not any(name.endswith("_cmd") or "_cmd." in name for name in imported), imported
    for marker in ("invoke(", "redirect_stdout", "importlib", "json.loads"):
        assert marker not in source, marker
