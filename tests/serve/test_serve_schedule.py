"""``custode serve`` as the daemon: scheduled cycles, a failing job, SIGHUP, SIGTERM mid-cycle,
one instance per state directory."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from fixtures.builders import Fleet, run_git

pytestmark = [pytest.mark.integration, pytest.mark.slow]
EVERY_2S = "* * * * * */2"  # croniter: a sixth field is seconds


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


class Daemon:
    def __init__(self, env: dict[str, str], config: Path, root: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "custode", "--config", str(config), "serve", "--listen",
             "127.0.0.1:0", "--no-trace2", str(root)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        assert line.startswith("serving metrics on "), line + self.proc.stderr.read()
        self.url = line.split(" on ", 1)[1].strip()

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url, timeout=5) as r:  # noqa: S310  (127.0.0.1)
            return r.read().decode()

    def job(self) -> psutil.Process | None:
        children = psutil.Process(self.proc.pid).children()
        return next((c for c in children if "run" in c.cmdline()), None)


@pytest.fixture
def setup(tmp_path: Path, fleet: Fleet, isolated_env: dict[str, str]) -> Iterator[tuple]:
    root = tmp_path / "root"
    for name in ("loose.git", "many-packs.git", "packed.git"):
        shutil.copytree(fleet.root / name, root / name, symlinks=True)
    config = tmp_path / "custode.toml"
    config.write_text(
        f'[schedule]\ncycle = "{EVERY_2S}"\ndrill = ""\nreport = ""\nstop_grace = "60s"\n'
        "[monitoring]\nrefresh_interval = 1\nprobe_repositories = 0\n"
    )
    daemons: list[Daemon] = []

    def start() -> Daemon:
        daemons.append(Daemon(isolated_env, config, root))
        return daemons[-1]

    yield root, config, Path(isolated_env["XDG_STATE_HOME"]) / "custode", start
    for d in daemons:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def runs(state: Path) -> list[tuple[str, str]]:
    db = state / "state.db"
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT status, finished_at FROM runs WHERE command = 'run'")
        return [(r[0], r[1]) for r in rows if r[1]]


def working_on(root: Path) -> list[str]:
    """The command lines of the processes other than serve working on ``root``."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        words = p.info["cmdline"] or []
        if "serve" not in words and str(root) in " ".join(words):
            found.append(" ".join(words))
    return found


def test_scheduled_cycles_run_a_failing_job_does_not_stop_it_and_sighup_reloads(
    setup: tuple
) -> None:  # fmt: skip
    _, config, state, start = setup
    daemon = start()
    wait_for("a scheduled custode run", lambda: any(s == "ok" for s, _ in runs(state)))
    wait_for("the job in /metrics",
             lambda: 'custode_job_runs_total{job="cycle",outcome="ok"}' in daemon.metrics())  # fmt: skip
    # a job that fails (the store is a file): the daemon carries on
    blocker = config.parent / "not-a-dir"
    blocker.write_text("")
    config.write_text(config.read_text() + f'[backup]\nstore = "{blocker}"\n')
    wait_for("a failed cycle", lambda: any(s == "failed" for s, _ in runs(state)))
    wait_for("the failed job in /metrics",  # counted once the child has exited
             lambda: 'custode_job_runs_total{job="cycle",outcome="failed"}' in daemon.metrics())  # fmt: skip
    assert daemon.proc.poll() is None
    # SIGHUP: no more cycles scheduled, and a new alert rule
    text = config.read_text().replace(f'cycle = "{EVERY_2S}"', 'cycle = ""')
    config.write_text(text + '[[alerting.rules]]\nname = "Reloaded"\n'
                      'expr = "custode_build_info == 1"\nfor = "0s"\nseverity = "info"\n')  # fmt: skip
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for("the reloaded schedule",
             lambda: 'job_next_start_timestamp_seconds{job="cycle"}' not in daemon.metrics())  # fmt: skip
    wait_for("the reloaded alert rule",
             lambda: 'custode_alerts_firing{alertname="Reloaded",severity="info"} 1.0'
             in daemon.metrics())  # fmt: skip
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=90) == 0


def test_sigterm_mid_cycle_stops_cleanly_with_locks_released(setup: tuple) -> None:
    root, _, state, start = setup
    daemon = start()
    wait_for("a cycle in progress", lambda: daemon.job() is not None)
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=90) == 0
    # nothing left working on the fleet; a git just killed may take a moment to be gone
    deadline = time.monotonic() + 10
    while (left := working_on(root)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, left
    for repo in sorted(root.iterdir()):
        run_git(repo, "fsck", "--strict")
        lock = repo / "custode-lock"
        if lock.exists():
            fd = os.open(lock, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody holds it
            finally:
                os.close(fd)
    statuses = {s for s, _ in runs(state)}
    assert statuses <= {"ok", "interrupted"}, statuses


def test_one_daemon_per_state_directory(setup: tuple) -> None:
    root, config, state, start = setup
    daemon = start()
    second = subprocess.run(
        [sys.executable, "-m", "custode", "--config", str(config), "serve", "--listen",
         "127.0.0.1:0", "--no-trace2", "--no-schedule", str(root)],
        env={**os.environ, "XDG_STATE_HOME": str(state.parent)}, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert second.returncode == 11, second.stderr
    assert f"pid {daemon.proc.pid}" in second.stderr and str(state) in second.stderr
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(timeout=90) == 0
