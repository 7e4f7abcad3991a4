"""SIGINT and SIGTERM during a fleet command: nothing new starts, what runs is stopped
safely, the command exits 130 within seconds, and the next run needs no manual step.

Real processes on real repositories (copies of a corpus bundle clone): the command is
started, the test waits until work has visibly begun (a repository finished, or a git
running), signals it, and measures the time to its exit.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

from custode import interrupts
from custode.backup import restorejournal
from custode.base.process import process_alive
from custode.config.model import DiscoveryConfig
from custode.scan import fleet as fleet_module
from fixtures.builders import run_git
from fixtures.cli import CliResult
from fixtures.paths import CORPUS

BUNDLE = CORPUS / "requests.bundle"
# Seconds from the signal to the exit: the bound docs/hostile-inputs.md states ("less than
# 5 s"; docs/operations.md promises "within a few seconds"). Its budget: interrupts.GRACE
# (SIGTERM to SIGKILL of a git slow to die) and 3 s for the pool's shutdown, the summary
# and the interpreter's exit. Measured 0.05-1.2 s on a loaded 2-core host, no git needing
# the SIGKILL. Tied to GRACE so that a longer grace cannot make these tests flaky.
BOUND = interrupts.GRACE + 3.0
WAIT = 120.0  # for work to begin: a bound that keeps a broken run from hanging the test

Run = Callable[..., CliResult]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real repository in many packs: a maintain has a repack to do in each copy."""
    if not BUNDLE.is_file():
        pytest.skip(f"{BUNDLE} is missing (the shared corpus)")
    repo = tmp_path_factory.mktemp("source") / "requests.git"
    run_git(None, "clone", "-q", "--mirror", "--no-local", BUNDLE, repo)
    run_git(repo, "config", "--remove-section", "remote.origin")
    run_git(repo, "repack", "-a", "-d", "-q", config=["pack.packSizeLimit=1m"])
    return repo


def fleet(source: Path, where: Path, count: int) -> Path:
    root = where / "fleet"
    for n in range(count):
        shutil.copytree(source, root / f"r{n:02}.git", symlinks=True)
    return root


class Started:
    """A custode command running in its own session, its output in files."""

    def __init__(
        self, tmp: Path, env: dict[str, str], *args: str | Path,
        python: tuple[str, ...] = ("-m", "custode"),
    ) -> None:  # fmt: skip
        n = len(list(tmp.glob("stdout-*")))
        self.out, self.err = tmp / f"stdout-{n}", tmp / f"stderr-{n}"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, *python, *map(str, args)],
                stdout=out, stderr=err, env=env, start_new_session=True,
            )  # fmt: skip

    def wait_for(self, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + WAIT
        while not ready():
            if self.proc.poll() is not None:
                pytest.fail(f"custode ended ({self.proc.returncode}) before work began: "
                            f"{self.err.read_text()[-2000:]}")  # fmt: skip
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"no work began within {WAIT:g} s")
            time.sleep(0.05)

    def interrupt(self, sig: signal.Signals, *, times: int = 1) -> tuple[int, float]:
        """Signal as a terminal's Ctrl-C would (SIGINT: the process group) or a service
        manager (SIGTERM: the process); the exit status and the seconds it took."""
        sent = time.monotonic()
        for _ in range(times):
            if sig == signal.SIGINT:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
            time.sleep(0.05)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail("custode did not exit within 60 s of the signal")
        return code, time.monotonic() - sent

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    @property
    def stderr(self) -> str:
        return self.err.read_text()


@pytest.fixture
def start(tmp_path: Path, isolated_env: dict[str, str]) -> Iterator[Callable[..., Started]]:
    started: list[Started] = []

    def go(*args: str | Path) -> Started:
        s = Started(tmp_path, isolated_env, *args)
        started.append(s)
        return s

    yield go
    for s in started:  # a failed test leaves nothing running
        if s.proc.poll() is None:
            s.kill()


def data_dir(env: dict[str, str]) -> Path:
    return Path(env["XDG_DATA_HOME"]) / "custode" / "backups"


def manifests(env: dict[str, str]) -> list[Path]:
    return list(data_dir(env).rglob("manifest.json")) if data_dir(env).exists() else []


def audited(env: dict[str, str], action: str) -> bool:
    log = Path(env["XDG_STATE_HOME"]) / "custode" / "audit.jsonl"
    return log.exists() and f'"{action}' in log.read_text(errors="replace")


def git_running_in(root: Path) -> list[str]:
    """Every process working on the fleet (git, by its arguments or its directory)."""
    found = []
    for p in psutil.process_iter(["cmdline", "cwd"]):
        try:
            words = " ".join(p.info["cmdline"] or []) + " " + (p.info["cwd"] or "")
        except (psutil.Error, TypeError):
            continue
        if str(root) in words and p.pid != os.getpid():
            found.append(words)
    return found


def assert_consistent(root: Path) -> None:
    """No git left running, no objects-dir holder left, no custode lock held."""
    deadline = time.monotonic() + 5  # the kernel reaps a killed git's children at once
    while (left := git_running_in(root)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, left
    assert not list(root.rglob("tmp_obj_custode_keepdir*"))
    for lock in root.rglob("custode-lock"):
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises when still held
        finally:
            os.close(fd)


def assert_interrupted(code: int, seconds: float, stderr: str) -> None:
    assert code == 130, stderr[-2000:]
    assert seconds < BOUND, f"exited {seconds:.1f} s after the signal"
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("custode: interrupted"), stderr[-2000:]


def git_child(s: Started, command: str = "") -> bool:
    """Whether a git runs under ``s`` (one running ``command``, e.g. ``fsck``, when given:
    the first git of a command is often a short ``git version``)."""
    try:
        children = psutil.Process(s.proc.pid).children(recursive=True)
    except psutil.Error:
        return False
    for c in children:
        try:
            argv = c.cmdline()
        except psutil.Error:  # ended meanwhile
            continue
        if argv and Path(argv[0]).name.startswith("git") and (not command or command in argv):
            return True
    return False


def readers(marks: Path, parent: int) -> set[str]:
    """The processes other than ``parent`` that have begun reading a repository (each
    slowed read leaves a file named by its process id in ``marks``)."""
    return {p.name for p in marks.iterdir()} - {str(parent)} if marks.is_dir() else set()


# -- backup ------------------------------------------------------------------------------


def test_sigint_during_a_backup_stops_within_seconds_and_the_next_backup_completes(
    source: Path, tmp_path: Path, start: Callable[..., Started], custode: Run,
    isolated_env: dict[str, str],
) -> None:  # fmt: skip
    root = fleet(source, tmp_path, 6)
    s = start("backup", root, "--jobs", "2", "--json")
    s.wait_for(lambda: bool(manifests(isolated_env)))  # one repository is done
    code, seconds = s.interrupt(signal.SIGINT)
    assert_interrupted(code, seconds, s.stderr)
    assert "cancelled" in s.stderr.strip().splitlines()[-1]
    assert_consistent(root)
    # what was stored is whole: the snapshot lists only complete repositories
    listed = custode("snapshots", "--json")
    assert listed.code == 0, listed.stderr
    assert custode("verify", "--level", "quick").code == 0
    again = custode("backup", root, "--json")
    assert again.code == 0, again.stderr
    assert again.json()["summary"]["failed"] == 0
    assert again.json()["summary"]["repositories"] == 6
    # a full verify of that store, stopped in its turn, leaves it as whole as it was
    v = start("verify", "--level", "full")
    v.wait_for(lambda: git_child(v))
    code, seconds = v.interrupt(signal.SIGTERM)
    assert_interrupted(code, seconds, v.stderr)
    assert_consistent(root)
    assert custode("verify", "--level", "quick").code == 0


def test_sigterm_during_a_backup_stops_within_seconds_leaving_a_whole_store(
    source: Path, tmp_path: Path, start: Callable[..., Started], custode: Run,
    isolated_env: dict[str, str],
) -> None:  # fmt: skip
    root = fleet(source, tmp_path, 6)
    s = start("backup", root, "--jobs", "2")
    s.wait_for(lambda: bool(manifests(isolated_env)))
    code, seconds = s.interrupt(signal.SIGTERM)
    assert_interrupted(code, seconds, s.stderr)
    assert_consistent(root)
    snaps = custode("snapshots", "--json")
    assert snaps.code == 0, snaps.stderr
    verified = custode("verify", "--level", "quick")
    assert verified.code == 0, verified.stderr
    # no scratch left behind by the interrupted run
    assert not list((Path(isolated_env["XDG_STATE_HOME"]) / "custode" / "scratch").glob("run-*"))


def test_a_second_sigint_exits_at_once_and_still_stops_every_git(
    source: Path, tmp_path: Path, start: Callable[..., Started], custode: Run
) -> None:
    root = fleet(source, tmp_path, 6)
    s = start("backup", root, "--jobs", "2")
    s.wait_for(lambda: git_child(s))
    code, seconds = s.interrupt(signal.SIGINT, times=2)
    assert code == 130, s.stderr[-2000:]
    assert seconds < BOUND
    assert_consistent(root)
    assert custode("snapshots", "--json").code == 0


def test_sigint_during_a_restore_stops_within_seconds_and_the_same_command_finishes_it(
    source: Path, tmp_path: Path, start: Callable[..., Started], custode: Run
) -> None:
    root = fleet(source, tmp_path, 8)
    assert custode("backup", root).code == 0
    out = tmp_path / "restored"
    s = start("restore", "--to", out, "--jobs", "1")
    s.wait_for((out / restorejournal.NAME).exists)  # one repository is in place
    code, seconds = s.interrupt(signal.SIGINT)
    assert_interrupted(code, seconds, s.stderr)
    last = s.stderr.strip().splitlines()[-1]
    assert "cancelled" in last and "run the same custode restore again" in last, last
    assert "--force" not in last, last
    assert_consistent(out)
    finished = {p.name: p.stat().st_ino for p in out.glob("*.git")}
    assert finished, "nothing was restored before the signal"
    # the same command finishes the job: the finished ones kept, every repository whole
    again = custode("restore", "--to", out, "--json")
    assert again.code == 0, again.stderr
    assert sorted(again.json()["already_restored"]) == sorted(finished)
    assert {n: (out / n).stat().st_ino for n in finished} == finished  # not redone
    restored = sorted(p.name for p in out.rglob("*.git") if (p / "objects").is_dir())
    assert restored == [f"r{n:02}.git" for n in range(8)]
    for name in restored:
        run_git(next(out.rglob(name)), "fsck", "--connectivity-only", "--no-progress")


# -- status --------------------------------------------------------------------------------


def tiny_fleet(where: Path, count: int) -> Path:
    """``count`` minimal bare repositories (written directly: thousands in a second)."""
    root = where / "tiny"
    for n in range(count):
        repo = root / f"g{n // 100:02}" / f"r{n:04}.git"
        for sub in ("objects/pack", "objects/info", "refs/heads", "refs/tags"):
            (repo / sub).mkdir(parents=True)
        (repo / "HEAD").write_text("ref: refs/heads/main\n")
        (repo / "config").write_text("[core]\n\trepositoryformatversion = 0\n\tbare = true\n")
    return root


# custode with each repository's read slowed to SLOW seconds: a scan of a large fleet on
# a busy disk, at test size. Everything else is the real command in a real process. Each
# slowed read marks its process in a directory (see readers).
SLOW = 0.05


def slow_custode(marks: Path) -> str:
    return (
        "import os, time, custode.scan.fleet as f; real = f.inspect\n"
        f"def slow(*a):\n    open(os.path.join({str(marks)!r}, str(os.getpid())), 'a').close()\n"
        f"    time.sleep({SLOW!r})\n    return real(*a)\n"
        "f.inspect = slow\nfrom custode.cli import main\nmain()\n"
    )


def test_sigint_during_status_stops_its_scan_within_seconds_and_the_next_status_completes(
    tmp_path: Path, isolated_env: dict[str, str], custode: Run
) -> None:
    root = tiny_fleet(tmp_path, 512)  # four chunks of 128: 6.4 s each in a worker
    # a chunk outlasts the bound: a worker that read its chunk to the end would fail it
    assert fleet_module.CHUNK * SLOW > BOUND + 1
    marks = tmp_path / "reading"
    marks.mkdir()
    s = Started(
        tmp_path, isolated_env, "status", root, "--rescan", "--json",
        python=("-c", slow_custode(marks)),
    )  # fmt: skip
    try:
        s.wait_for(lambda: len(readers(marks, s.proc.pid)) >= 2)  # both workers in a chunk
        code, seconds = s.interrupt(signal.SIGINT)
    finally:
        if s.proc.poll() is None:
            s.kill()
    assert_interrupted(code, seconds, s.stderr)
    assert_consistent(root)
    again = custode("status", root, "--json")
    assert again.code == 0, again.stderr
    assert len(again.json()["repositories"]) == 512


def test_a_stop_request_ends_a_scan_whose_chunks_run_in_workers_within_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM reaches the parent alone (a service manager's kill): its workers, deep in
    a chunk, must stop too."""
    root = tiny_fleet(tmp_path, 256)  # two chunks of 128, none read in the parent
    pause = 0.1  # a chunk takes 12.8 s: a worker that reads its chunk to the end fails BOUND
    assert fleet_module.CHUNK * pause > 2 * BOUND
    marks = tmp_path / "reading"
    marks.mkdir()
    real = fleet_module.inspect

    def slow(*args: Any) -> Any:  # runs in the forked workers
        (marks / str(os.getpid())).touch()
        time.sleep(pause)
        return real(*args)

    monkeypatch.setattr(fleet_module, "inspect", slow)
    interrupts.reset()
    requested: list[float] = []
    scanned = threading.Event()

    def stop() -> None:  # once both workers are inside their chunks
        deadline = time.monotonic() + WAIT
        while len(readers(marks, os.getpid())) < 2 and not scanned.is_set():
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        requested.append(time.monotonic())
        interrupts.request()

    stopper = threading.Thread(target=stop)
    stopper.start()
    try:
        with pytest.raises(interrupts.Interrupted):
            fleet_module.scan([root], DiscoveryConfig(), workers=2)
        took = time.monotonic() - requested[0]
    finally:
        scanned.set()
        stopper.join()
        interrupts.reset()
    assert len(readers(marks, os.getpid())) == 2, "the chunks were not read in two workers"
    # The command's bound: the scan is stopped as a part of a command that must exit within
    # it (measured 0.06 s; a worker deaf to the stop would take about 12 s).
    assert took < BOUND, f"the scan ended {took:.1f} s after the request"


# -- maintain, check, run ----------------------------------------------------------------


def test_sigterm_during_maintain_stops_the_repacks_and_the_next_maintain_succeeds(
    source: Path, tmp_path: Path, start: Callable[..., Started], custode: Run,
    isolated_env: dict[str, str],
) -> None:  # fmt: skip
    root = fleet(source, tmp_path, 8)
    s = start("maintain", root, "--jobs", "2")
    s.wait_for(lambda: audited(isolated_env, "maintain.geometric_repack"))
    code, seconds = s.interrupt(signal.SIGTERM)
    assert_interrupted(code, seconds, s.stderr)
    assert "cancelled" in s.stderr.strip().splitlines()[-1]
    assert_consistent(root)
    for repo in root.iterdir():
        # A pack-objects stopped while writing leaves its tmp_pack_* (git 2.39 does not
        # register it for removal on a signal; seen under CI load). custode must not
        # delete a young one (a concurrent fetch or gc may be writing it): its stale-file
        # rule removes it after maintenance.stale_temp_age. Only such files may be left.
        pack = repo / "objects" / "pack"
        left = [p.name for p in pack.iterdir()
                if not p.name.startswith(("pack-", "multi-pack-index"))]  # fmt: skip
        assert all(n.startswith(("tmp_pack_", "tmp_idx_", "tmp_rev_")) for n in left), left
        for packfile in pack.glob("pack-*.pack"):  # every pack git reads is whole
            assert packfile.with_suffix(".idx").exists(), packfile
    again = custode("maintain", root)
    assert again.code == 0, again.stderr
    assert custode("check", root).code == 0


def test_sigterm_during_a_full_check_stops_its_fsck_within_seconds(
    source: Path, tmp_path: Path, start: Callable[..., Started], custode: Run,
    isolated_env: dict[str, str],
) -> None:  # fmt: skip
    root = fleet(source, tmp_path, 6)
    s = start("check", "--full", root, "--json")
    s.wait_for(lambda: git_child(s, "fsck"))  # inside an fsck (1-2 s each here)
    code, seconds = s.interrupt(signal.SIGTERM)
    assert_interrupted(code, seconds, s.stderr)
    assert "corrupt" not in s.stderr  # a stopped fsck is not a verdict
    assert_consistent(root)
    assert custode("check", root).code == 0


def test_sigint_during_run_ends_the_stage_and_runs_no_later_stage(
    source: Path, tmp_path: Path, start: Callable[..., Started], custode: Run,
    isolated_env: dict[str, str],
) -> None:  # fmt: skip
    root = fleet(source, tmp_path, 4)
    s = start("run", root, "--json", "--drill", "0")
    s.wait_for(lambda: bool(manifests(isolated_env)))  # inside the backup stage
    code, seconds = s.interrupt(signal.SIGINT)
    assert code == 130, s.stderr[-2000:]
    assert seconds < BOUND, f"exited {seconds:.1f} s after the signal"
    stages = {st["name"]: st for st in json.loads(Path(s.out).read_text())["stages"]}
    assert stages["backup"]["outcome"] == "interrupted"
    assert all(stages[n]["outcome"] == "skipped" for n in ("verify", "forget") if n in stages)
    assert "report" not in stages
    assert_consistent(root)
    assert custode("snapshots", "--json").code == 0


# -- the mechanism -----------------------------------------------------------------------


def test_a_request_cancels_what_is_queued_and_waits_for_what_runs() -> None:
    """No timing: the queued tasks wait until all but the one running (if it had started
    by the request) are cancelled; a task that timed out instead returns False."""
    interrupts.reset()
    go = threading.Event()
    deadline = time.monotonic() + 30  # a broken harvest fails, it does not hang

    def task() -> bool:
        return go.wait(max(0.0, deadline - time.monotonic()))

    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(lambda: True)
            queued = [pool.submit(task) for _ in range(5)]

            def release(_: object) -> None:  # once those behind the running one are cancelled
                if all(f.done() for f in queued[1:]):
                    go.set()

            for future in queued[1:]:  # they never start: queued[0] holds the only worker
                future.add_done_callback(release)
            got = []
            for n, future in enumerate(interrupts.harvest([first, *queued])):
                got.append(future)
                if n == 0:
                    break
            interrupts.request()
            assert interrupts.status().startswith("interrupted: finishing")
            rest = list(interrupts.harvest(queued))
        assert got == [first]
        assert len(rest) <= 1  # the one that had started by then, if any
        assert all(f.result() for f in rest), "it ran to the deadline: nothing was cancelled"
        assert sum(1 for f in queued if f.cancelled()) >= 4
        with pytest.raises(interrupts.Interrupted):
            interrupts.check("the rest")
    finally:
        interrupts.reset()
    assert interrupts.status() == ""


def test_a_forgotten_request_kills_no_git_started_later(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that runs one command after another (serve's jobs, tests) resets the
    request: its pending SIGKILL must not reach a git the next command starts."""
    # a forgotten SIGKILL would fire long after the later git is registered; a cancelled
    # one costs no wait (its timer ends at once)
    monkeypatch.setattr(interrupts, "GRACE", 2.0)
    interrupts.reset()
    before = set(threading.enumerate())
    interrupts.request()
    new = [t for t in threading.enumerate() if t not in before]
    timers = [t for t in new if isinstance(t, threading.Timer)]  # its pending SIGKILL
    assert timers
    interrupts.reset()
    later = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        with interrupts.child(later.pid):
            for timer in timers:  # cancelled, or past the grace (a forgotten one fired)
                timer.join(timeout=30)
                assert not timer.is_alive()
            with contextlib.suppress(subprocess.TimeoutExpired):
                later.wait(timeout=1.0)  # a SIGKILL sent is delivered within it
            assert later.poll() is None, "the forgotten request's SIGKILL killed a later git"
    finally:
        later.kill()
        later.wait()
        interrupts.reset()


# A custode process at the moment a git is started but not yet registered (Popen has
# returned; interrupts.child has not run): two SIGINTs then end it. Prints the pids of
# that git, of a registered one, and of a worker-like child in custode's own group.
WINDOW = """
import os, signal, subprocess, sys, time
from custode import interrupts
interrupts.install()
quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}  # hold no pipe of ours
unregistered = subprocess.Popen(["sleep", "60"], process_group=0, **quiet)
registered = subprocess.Popen(["sleep", "60"], process_group=0, **quiet)
worker = subprocess.Popen(["sleep", "60"], **quiet)  # custode's own group: not a git
from custode.base.process import started
with interrupts.child(registered.pid):
    for child in (unregistered, registered, worker):  # a pid with its start: pids are reused
        print(child.pid, started(child.pid), flush=True)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.1)  # the handler runs between bytecodes; the sleep is only a cushion
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(60)
"""


def test_a_second_sigint_stops_a_git_started_but_not_yet_registered(
    isolated_env: dict[str, str],
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", WINDOW], env=isolated_env, capture_output=True, text=True,
        timeout=60, start_new_session=True, check=False,
    )  # fmt: skip
    unregistered, registered, worker = (
        (int(pid), float(since)) for pid, since in map(str.split, proc.stdout.splitlines())
    )

    def running(child: tuple[int, float]) -> bool:
        if not process_alive(*child):
            return False
        with contextlib.suppress(psutil.Error):
            return psutil.Process(child[0]).status() != psutil.STATUS_ZOMBIE
        return False

    try:
        assert proc.returncode == 130, proc.stderr
        assert "interrupted again: stopped at once" in proc.stderr
        for child in (unregistered, registered):
            deadline = time.monotonic() + 10
            while running(child):
                assert time.monotonic() < deadline, f"git {child[0]} left running"
                time.sleep(0.05)
        # not a git's group: a worker in custode's own group dies with its parent's group
        # (the terminal sends it the signal), never by a kill of a group it does not lead
        assert running(worker)
    finally:
        for child in (unregistered, registered, worker):
            if process_alive(*child):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child[0], signal.SIGKILL)
