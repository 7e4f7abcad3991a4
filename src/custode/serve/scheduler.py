"""The daemon's schedule: jobs at cron times, each a child ``custode`` process.

A job runs as its own process (``custode run``, ``custode verify --level drill``…), so a
job that fails or crashes never takes the daemon down, and each reads the config afresh.
One job runs at a time; a job due while another runs waits for it (a cycle that overruns
is not started twice). Stopping sends the running job SIGTERM — ``custode run`` then ends
its current stage cleanly and records itself as interrupted — and waits for it up to a
grace period before SIGKILL. git processes custode started release their repository locks
when they end (the locks are ``flock``s the kernel drops).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from croniter import croniter  # type: ignore[import-untyped]
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from custode.config.schedule import ScheduleConfig
from custode.errors import outcome

log = logging.getLogger("custode.serve.scheduler")


@dataclass
class Job:
    name: str
    cron: str
    argv: list[str]  # after "custode [--config FILE]"


@dataclass
class _State:
    last_start: float = 0.0
    last_code: int | None = None
    runs: dict[str, int] = field(default_factory=dict)  # outcome -> count


class Scheduler:
    def __init__(self, jobs: Sequence[Job], *, config_path: Path | None, grace: float,
                 env: dict[str, str] | None = None) -> None:  # fmt: skip
        self._jobs = list(jobs)
        self.config_path, self.grace, self.env = config_path, grace, env
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._state: dict[str, _State] = {job.name: _State() for job in jobs}
        self._thread = threading.Thread(target=self._loop, name="custode-scheduler", daemon=True)
        self._due = self._next_times(time.time())

    def start(self) -> None:
        self._thread.start()

    def replace(self, jobs: Sequence[Job], grace: float) -> None:
        """New jobs (after a config reload): the running one is left to finish."""
        with self._lock:
            self._jobs, self.grace = list(jobs), grace
            for job in jobs:
                self._state.setdefault(job.name, _State())
            self._due = self._next_times(time.time())
        self._wake.set()

    def stop(self) -> int | None:
        """Stop scheduling; ask a running job to stop, wait up to the grace, then kill."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            child = self._child
        code = None
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                code = child.wait(self.grace)
            except subprocess.TimeoutExpired:
                log.warning("job did not stop within %.0f s; killing it", self.grace)
                child.kill()
                code = child.wait()
        self._thread.join(timeout=5)
        return code

    def _next_times(self, now: float) -> dict[str, float]:
        return {job.name: croniter(job.cron, datetime.fromtimestamp(now)).get_next(float)
                for job in self._jobs if job.cron}  # fmt: skip

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                due = dict(self._due)
            if not due:
                self._wake.wait(60)
                self._wake.clear()
                continue
            name = min(due, key=lambda n: due[n])
            delay = due[name] - time.time()
            if delay > 0:
                self._wake.wait(min(delay, 60))
                self._wake.clear()
                continue
            job = next((j for j in self._jobs if j.name == name), None)
            with self._lock:
                self._due = self._next_times(time.time())
            if job is not None:
                self._run(job)

    def _run(self, job: Job) -> None:
        config = ["--config", str(self.config_path)] if self.config_path else []
        argv = [sys.executable, "-m", "custode", *config, *job.argv]
        state = self._state[job.name]
        state.last_start = time.time()
        log.info("starting scheduled job %s", job.name)
        try:
            with self._lock:
                if self._stop.is_set():
                    return
                self._child = subprocess.Popen(argv, env=self.env, stdin=subprocess.DEVNULL,
                                               stdout=subprocess.DEVNULL)  # fmt: skip
            code = self._child.wait()
        except OSError as exc:  # the job could not start: count it, keep the daemon
            log.warning("scheduled job %s could not start: %s", job.name, exc)
            code = -1
        finally:
            with self._lock:
                self._child = None
        state.last_code = code
        ended = outcome(code)  # -1 (not started) or a signal's -N: failed
        state.runs[ended] = state.runs.get(ended, 0) + 1
        log.info("scheduled job %s ended with exit status %s", job.name, code)

    def collect(self) -> Iterator[Metric]:
        start = GaugeMetricFamily(
            "custode_job_last_start_timestamp_seconds", "When each job last started.",
            labels=["job"],
        )  # fmt: skip
        code = GaugeMetricFamily(
            "custode_job_last_exit_code", "Exit status of each job's last run.", labels=["job"]
        )
        runs = CounterMetricFamily(
            "custode_job_runs", "Scheduled job runs by outcome.", labels=["job", "outcome"]
        )
        upcoming = GaugeMetricFamily(
            "custode_job_next_start_timestamp_seconds", "When each job starts next.",
            labels=["job"],
        )  # fmt: skip
        with self._lock:
            due = dict(self._due)
        for name, state in sorted(self._state.items()):
            if state.last_start:
                start.add_metric([name], state.last_start)
            if state.last_code is not None:
                code.add_metric([name], state.last_code)
            for ended, n in sorted(state.runs.items()):
                runs.add_metric([name, ended], n)
            if name in due:
                upcoming.add_metric([name], due[name])
        yield start
        yield code
        yield runs
        yield upcoming


def jobs_from(
    schedule: ScheduleConfig, roots: Sequence[Path], report_dir: Path, *, email: bool = False
) -> list[Job]:
    """The jobs of ``schedule``; with ``email`` the report job also mails the report."""
    root_args = [str(r) for r in roots]
    mail = ["--email"] if email else []
    return [
        Job("cycle", schedule.cycle, ["run", *root_args]),
        Job("drill", schedule.drill, ["verify", "--level", "drill"]),
        Job("report", schedule.report, ["report", *root_args, "--since", "1d", "--format",
                                        "html", "-o",
                                        str(report_dir / "custode-report-daily.html"), *mail]),
    ]  # fmt: skip
