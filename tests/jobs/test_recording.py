"""Recording happens in the core, the same way for every entry point: ``custode run`` and
``custode serve`` forget history older than ``state.keep_history`` (as ``custode status``
always did), and ``run`` records the observations the report's verdicts come from."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from custode.records.state import Observation, StateDB
from fixtures.builders import Fleet
from fixtures.cli import CliResult
from fixtures.system import stop

Run = Callable[..., CliResult]
OLD = (datetime.now(UTC) - timedelta(days=400)).isoformat(timespec="microseconds")


@pytest.fixture
def root(tmp_path: Path, fleet: Fleet) -> Path:
    root = tmp_path / "root"
    for repo in (fleet.packed, fleet.loose):
        shutil.copytree(repo, root / repo.name, symlinks=True)
    return root


@pytest.fixture
def state_dir(isolated_env: dict[str, str]) -> Path:
    state = Path(isolated_env["XDG_STATE_HOME"]) / "custode"
    state.mkdir(parents=True, mode=0o700)
    return state


@pytest.fixture
def old_history(state_dir: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """History 400 days old (keep_history is 90 days by default): a status run with an
    observation of packed.git that its next observation supersedes, a maintain run with a
    result, and host samples."""
    monkeypatch.setattr("custode.records.state.utcnow", lambda: OLD)
    with StateDB.open(state_dir / "state.db") as db:
        run = db.begin_run("status")
        db.record_observations(run, [_observation(root, "packed.git")])
        db.finish_run(run, "ok", {})
        run = db.begin_run("maintain")
        db.finish_run(run, "ok", {})
        for _ in range(3):
            db.record_host_sample(0.5, 0.5, 1.0)


def _observation(root: Path, name: str) -> Observation:
    return Observation(repository=name, root=str(root), verdict="attention", loose_objects=1,
                       loose_objects_bytes=1, packs=1, pack_bytes=1, loose_refs=1,
                       size_bytes=1, fingerprint="an old fingerprint", reasons="old",
                       observed_at=OLD)  # fmt: skip


def _rows(state_dir: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{state_dir / 'state.db'}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _old(state_dir: Path) -> dict[str, int]:
    """How many rows of each table are as old as OLD."""
    counts = {}
    for table, column in (("runs", "started_at"), ("observations", "observed_at"),
                          ("host_samples", "taken_at")):  # fmt: skip
        rows = _rows(state_dir, f"SELECT COUNT(*) FROM {table} WHERE {column} <= '{OLD}'")  # noqa: S608
        counts[table] = int(rows[0][0])  # type: ignore[call-overload]
    return counts


@pytest.mark.integration
def test_run_forgets_history_older_than_keep_history(
    custode: Run, root: Path, state_dir: Path, old_history: None
) -> None:
    assert _old(state_dir) == {"runs": 2, "observations": 1, "host_samples": 3}
    result = custode("run", "--drill", "0", root)
    assert result.code == 0, result.stderr
    assert _old(state_dir) == {"runs": 0, "observations": 0, "host_samples": 0}
    commands = {r[0] for r in _rows(state_dir, "SELECT command FROM runs")}
    assert {"check", "maintain", "backup", "status", "run"} <= commands  # today's are kept


@pytest.mark.integration
def test_run_records_the_observations_the_reports_verdicts_come_from(
    custode: Run, root: Path, state_dir: Path
) -> None:
    result = custode("run", "--drill", "0", root)  # no custode status, ever
    assert result.code == 0, result.stderr
    observed = {
        r[0]: (r[1], r[2])
        for r in _rows(state_dir, "SELECT repository, verdict, loose_objects FROM observations")
    }
    # as the night left them: loose.git's 3,040 loose objects were packed by maintenance
    assert observed == {"packed.git": ("ok", 0), "loose.git": ("ok", 0)}
    report = custode("report", "--format", "json")
    assert report.code == 0, report.stderr
    fleet = report.json()["fleet"]
    assert (fleet["repositories"], fleet["ok"], fleet["unobserved"]) == (2, 2, 0)
    assert fleet["observed_at"] is not None


@pytest.mark.integration
def test_serve_forgets_history_older_than_keep_history(
    isolated_env: dict[str, str], root: Path, state_dir: Path, old_history: None
) -> None:
    assert _old(state_dir)["host_samples"] == 3
    with _serving(isolated_env, root):
        deadline = time.monotonic() + 60
        # serve observes nothing: packed.git's latest observation (and its run) is kept
        while _old(state_dir) != {"runs": 1, "observations": 1, "host_samples": 0}:
            assert time.monotonic() < deadline, f"never forgotten: {_old(state_dir)}"
            time.sleep(0.2)
        while not _rows(state_dir, "SELECT 1 FROM host_samples"):  # its own are recorded
            assert time.monotonic() < deadline, "no host sample recorded"
            time.sleep(0.2)


@pytest.mark.integration
def test_status_still_forgets_history_older_than_keep_history(
    custode: Run, root: Path, state_dir: Path, old_history: None
) -> None:
    assert custode("status", root).code == 0
    assert _old(state_dir) == {"runs": 0, "observations": 0, "host_samples": 0}


def test_serve_prunes_at_most_once_per_interval(tmp_path: Path) -> None:
    from custode.jobs.record import HostSamples
    from custode.monitoring.view import HostView

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    now = [0.0]
    samples = HostSamples(0.0, every=3600.0, clock=lambda: now[0])  # keep nothing
    host = HostView(0.25, 0.5, (1.0, 1.0, 1.0))
    with StateDB.open(state / "state.db") as db:
        samples(db, host)  # the first refresh prunes, then records its sample
        now[0] = 3599.0
        samples(db, host)  # not an hour yet: the first sample stays
    assert _rows(state, "SELECT COUNT(*) FROM host_samples") == [(2,)]
    with StateDB.open(state / "state.db") as db:
        now[0] = 3600.0
        samples(db, host)  # an hour on: both earlier samples are forgotten
    assert _rows(state, "SELECT COUNT(*) FROM host_samples") == [(1,)]


@contextmanager
def _serving(env: dict[str, str], root: Path) -> Iterator[None]:
    """``custode serve`` on a free port of 127.0.0.1, refreshing every second."""
    config = Path(env["XDG_CONFIG_HOME"]) / "serve.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text('[monitoring]\nrefresh_interval = "1s"\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "custode", "--config", str(config), "serve", "--listen",
         "127.0.0.1:0", "--no-schedule", "--no-trace2", str(root)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=env,
    )  # fmt: skip
    try:
        yield
        assert proc.poll() is None, f"custode serve exited {proc.returncode}"
    finally:
        stop(proc)
