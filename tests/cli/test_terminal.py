"""Progress on a terminal; quiet structured logs when not on one."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.builders import Fleet
from fixtures.cli import on_terminal

pytestmark = pytest.mark.integration


@pytest.mark.skipif(not shutil.which("script"), reason="script (util-linux) is not installed")
def test_progress_bar_on_a_terminal(fleet: Fleet, isolated_env: dict[str, str]) -> None:
    proc = on_terminal(["status", fleet.root], isolated_env, columns=200, timeout=120)
    assert proc.returncode == 0, proc.stdout
    assert "reading repositories" in proc.stdout  # the (transient) progress bar was drawn
    assert "\x1b[" in proc.stdout  # coloured table
    assert "created the history database" in proc.stdout  # a readable notice, not JSON
    assert '{"time"' not in proc.stdout


def test_structured_logs_and_no_progress_off_a_terminal(
    fleet: Fleet, isolated_env: dict[str, str]
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "custode", "status", str(fleet.root)],
        capture_output=True, text=True, env=isolated_env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "reading repositories" not in proc.stderr + proc.stdout
    assert "\x1b[" not in proc.stdout
    logs = [json.loads(line) for line in proc.stderr.splitlines()]
    assert logs and all({"time", "level", "logger", "message"} <= set(entry) for entry in logs)
    state = Path(isolated_env["XDG_STATE_HOME"]) / "custode" / "state.db"
    assert logs[0]["message"] == f"created the history database {state}"
