"""A process named by pid and start time: a pid handed on to another process is not it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from custode.base.process import process_alive, started
from custode.jobs.backupsetup import scratch


def test_a_pid_names_the_process_that_started_then_not_a_later_one() -> None:
    me = os.getpid()
    since = started(me)
    assert since is not None and started(me) == since  # every reading agrees
    assert process_alive(me) and process_alive(me, since)
    # the same pid, started at another time: the pid was handed to another process
    assert not process_alive(me, since - 60)
    assert not process_alive(me, since + 60)
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert started(gone.pid) is None
    assert not process_alive(gone.pid) and not process_alive(gone.pid, since)
    assert not process_alive(2**40) and started(2**40) is None  # no such pid at all


def test_a_killed_run_s_scratch_goes_even_when_its_pid_names_another_process_now(
    tmp_path: Path,
) -> None:
    """``run-<pid>-s<start>-…``: a scratch directory whose pid is alive but started at
    another time was a killed run's (its pid handed on); the old code kept it for good."""
    me = os.getpid()
    since = started(me)
    assert since is not None
    handed_on = tmp_path / f"run-{me}-s100-abc"  # this pid, started in 1970
    live = tmp_path / f"run-{me}-s{round(since * 100)}-abc"
    older = tmp_path / f"run-{me}-abc_12"  # named by an older custode: the pid alone
    dead = tmp_path / "run-4194305-abc"  # above any pid_max: no such process
    foreign = tmp_path / "run-notapid"
    for path in (handed_on, live, older, dead, foreign):
        path.mkdir()
    with scratch(tmp_path) as mine:
        assert mine.name.startswith(f"run-{me}-s{round(since * 100)}-")
        left = {p.name for p in tmp_path.iterdir()}
        assert left == {live.name, older.name, foreign.name, mine.name}
    assert not mine.exists()
