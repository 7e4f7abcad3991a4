"""End to end: a repository corrupted on disk makes the shipped integrity alert fire from
the exporter's samples, and repairing it resolves the alert."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from test_alerts import alertmanager  # noqa: F401  (a fixture: a real Alertmanager)

from custode.config.alerting import AlertingConfig
from custode.config.model import Config
from custode.monitoring.alerting import Alert, AlertEngine
from custode.monitoring.exporter import Exporter
from fixtures.builders import Fleet, run_git
from fixtures.cli import CliResult

pytestmark = pytest.mark.integration
Run = Callable[..., CliResult]


class Sink:
    failed_total = 0
    dropped_total = 0

    def __init__(self) -> None:
        self.sent: list[list[Alert]] = []

    def notify(self, alerts: Sequence[Alert], now: float) -> None:
        self.sent.append(list(alerts))


def corrupted(fleet: Fleet, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A root of packed.git and loose.git, loose.git missing its tip commit's tree (moved
    to ``aside``; moving it back repairs it): (root, the object's path, aside)."""
    root = tmp_path / "root"
    for name in ("packed.git", "loose.git"):
        shutil.copytree(fleet.root / name, root / name, symlinks=True)
    broken = root / "loose.git"
    tree = run_git(broken, "rev-parse", "refs/heads/main^{tree}").strip()
    obj = broken / "objects" / tree[:2] / tree[2:]
    aside = tmp_path / "object"
    obj.rename(aside)
    return root, obj, aside


def test_corrupted_repository_fires_and_repaired_resolves(
    custode: Run, fleet: Fleet, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    root, obj, aside = corrupted(fleet, tmp_path)

    exporter = Exporter(
        roots=[root],
        config=Config(),
        state_dir=Path(isolated_env["XDG_STATE_HOME"]) / "custode",
        probes=False,
    )
    sink = Sink()
    engine = AlertEngine(AlertingConfig(), sink)

    def evaluate() -> list[Alert]:
        exporter.refresh()
        assert exporter.last_error == ""
        return [a for a in engine.evaluate(exporter.samples(), time.time())
                if a.name == "CustodeIntegrityCheckFailed"]  # fmt: skip

    assert custode("check", root).code == 3
    (fired,) = evaluate()
    assert fired.state == "firing"
    assert (fired.labels["root"], fired.labels["repository"]) == (str(root), "loose.git")
    assert fired.labels["severity"] == "critical"
    assert fired.annotations["summary"] == f"Integrity check failed for loose.git (root {root})"
    assert fired in sink.sent[-1]
    assert [a.state for a in evaluate()] == ["firing"]  # renewed while it holds

    aside.rename(obj)  # repaired
    assert custode("check", root).code == 0
    (resolved,) = evaluate()
    assert (resolved.state, resolved.labels["repository"]) == ("resolved", "loose.git")
    assert resolved.active_at == fired.active_at
    assert evaluate() == []
    families = {f.name: f for f in engine.collect()}
    firing = {s.labels["alertname"]: s.value for s in families["custode_alerts_firing"].samples}
    assert firing["CustodeIntegrityCheckFailed"] == 0


def test_custode_serve_sends_the_alert_to_a_real_alertmanager_and_resolves_it(
    custode: Run,
    fleet: Fleet,
    tmp_path: Path,
    isolated_env: dict[str, str],
    alertmanager: str,  # noqa: F811  (the fixture imported above)
) -> None:
    """The whole path: custode serve refreshes, evaluates the shipped rules and posts to
    Alertmanager's v2 API; Alertmanager shows the alert for the corrupted repository as
    active, and no longer once the repository is repaired and checked again."""
    root, obj, aside = corrupted(fleet, tmp_path)
    assert custode("check", root).code == 3
    config = tmp_path / "custode.toml"
    config.write_text(
        "[monitoring]\nrefresh_interval = 1\nprobe_repositories = 0\n"
        f'[alerting]\nalertmanagers = ["{alertmanager}"]\n'
    )
    serve = subprocess.Popen(
        [sys.executable, "-m", "custode", "--config", str(config), "serve", "--listen",
         "127.0.0.1:0", str(root)],
        env=isolated_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def active() -> list[dict]:
        url = f"{alertmanager}/api/v2/alerts?active=true"
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310  (http on 127.0.0.1)
            alerts = json.load(r)
        return [a for a in alerts if a["labels"].get("alertname") == "CustodeIntegrityCheckFailed"
                and a["status"]["state"] == "active"]  # fmt: skip

    def wait_for(predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 30
        while not predicate():
            if serve.poll() is not None:
                pytest.fail(f"custode serve exited: {serve.stderr.read() if serve.stderr else ''}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            time.sleep(0.3)

    try:
        wait_for(lambda: bool(active()), "the alert to reach Alertmanager")
        (alert,) = active()
        assert alert["labels"]["repository"] == "loose.git"
        assert alert["labels"]["severity"] == "critical"
        aside.rename(obj)
        assert custode("check", root).code == 0
        wait_for(lambda: not active(), "the alert to be resolved")
    finally:
        serve.terminate()
        serve.wait(timeout=30)
    assert serve.returncode == 0
    # and the history keeps it: the report counts it fired and resolved
    report = custode("report", "--since", "1h", "--format", "json")
    assert report.code == 0, report.stderr
    alerts = report.json()["alerts"]
    assert alerts["recorded"]
    (count,) = [a for a in alerts["counts"] if a["name"] == "CustodeIntegrityCheckFailed"]
    assert (count["fired"], count["resolved"], count["firing_now"]) == (1, 1, 0)
    assert {e["subject"] for e in alerts["events"]} == {"loose.git"}
