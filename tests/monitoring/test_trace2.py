"""Live git telemetry over trace2 with real git: what is observed, and that git never waits.

Every git here runs with a temporary HOME and ``GIT_CONFIG_GLOBAL`` (and no system config),
so the machine's git config is never read or touched.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from custode.errors import LockedError, PathNotFoundError, UsageError
from custode.monitoring.histograms import OperationHistograms
from custode.monitoring.trace2 import Trace2Listener
from custode.monitoring.trace2config import config_file
from custode.monitoring.trace2sessions import Sessions
from fixtures.builders import fast_import, git_env, history_stream, run_git
from fixtures.cli import CliResult

pytestmark = pytest.mark.integration
Run = Callable[..., CliResult]
#: seconds: the most one small git command may take, traced or not. The hazard is git
#: blocking on custode's socket, which lasts until custode reads (stopped: never), so
#: this is far above the ~5 ms a traced status takes: a busy CI host may pause any one.
FAST = 10.0


# --------------------------------------------------------------------------- helpers


@dataclass
class Host:
    """A temporary HOME whose global git config sends trace2 events to ``socket``."""

    home: Path
    config: Path
    socket: Path
    repos: Path  # src.git (bare, 20 commits) and work (a clone with a work tree)

    def env(self, traced: bool = True) -> dict[str, str]:
        config = self.config if traced else self.home / "untraced.gitconfig"
        return {**git_env(), "HOME": str(self.home), "GIT_CONFIG_GLOBAL": str(config)}

    def git(self, *args: str | Path, traced: bool = True) -> tuple[subprocess.CompletedProcess[bytes], float]:  # fmt: skip
        started = time.monotonic()
        proc = subprocess.run(
            ["git", *map(str, args)], capture_output=True, env=self.env(traced), timeout=60,
            check=False,
        )  # fmt: skip
        return proc, time.monotonic() - started


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    # unix socket paths are limited to 107 bytes: keep the socket out of tmp_path
    short = Path(tempfile.mkdtemp(prefix="ct2-", dir="/tmp"))
    home, repos = tmp_path / "home", tmp_path / "repos"
    home.mkdir()
    (home / "untraced.gitconfig").write_text("")
    src = repos / "src.git"
    run_git(None, "init", "-q", "--bare", src)
    fast_import(src, history_stream("refs/heads/main", 20))
    run_git(None, "clone", "-q", src, repos / "work")
    h = Host(home, home / ".gitconfig", short / "trace2.sock", repos)
    for key, value in (
        ("trace2.eventTarget", f"af_unix:stream:{h.socket}"),
        ("trace2.eventBrief", "true"),
        ("trace2.eventNesting", "1"),
    ):
        subprocess.run(["git", "config", "--file", h.config, key, value], check=True)
    yield h
    shutil.rmtree(short, ignore_errors=True)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def durations(histograms: OperationHistograms) -> dict[str, tuple[int, float]]:
    """operation -> (count, sum of seconds) of the trace2 histogram."""
    out: dict[str, tuple[int, float]] = {}
    for family in histograms.collect():
        if family.name != "custode_git_operation_duration_seconds":
            continue
        for s in family.samples:
            if s.labels["source"] != "trace2":
                continue
            count, total = out.get(s.labels["operation"], (0, 0.0))
            if s.name.endswith("_count"):
                count = int(s.value)
            elif s.name.endswith("_sum"):
                total = s.value
            out[s.labels["operation"]] = (count, total)
    return out


def per_repository(histograms: OperationHistograms) -> dict[tuple[str, str, str], int]:
    return {
        (s.labels["root"], s.labels["repository"], s.labels["operation"]): int(s.value)
        for family in histograms.collect()
        if family.name == "custode_repository_git_operations"
        for s in family.samples
        if s.name.endswith("_total")
    }


def stale_socket(path: Path) -> None:
    """A socket file whose listener is gone (custode killed with SIGKILL)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()


# --------------------------------------------------------------------------- observed


def test_git_commands_are_observed_with_their_repository(host: Host) -> None:
    src, work, dst = host.repos / "src.git", host.repos / "work", host.repos / "dst"
    fleet = {str(src): ("/r", "src.git"), str(work): ("/r", "work"), str(dst): ("/r", "dst")}
    histograms = OperationHistograms()
    with Trace2Listener(host.socket, histograms, repository_of=fleet.get) as listener:
        took = {}
        for name, args in {
            "status": ("-C", work, "status"),
            "for-each-ref": ("-C", src, "for-each-ref"),
            "clone": ("clone", "-q", f"file://{src}", dst),  # spawns upload-pack
        }.items():
            proc, took[name] = host.git(*args)
            assert proc.returncode == 0, proc.stderr
        # the children too: a parent's exit can be read before its child's connection is
        # accepted, and wait_idle() only waits for what was read
        every = {"status", "for-each-ref", "clone", "upload-pack", "pack-objects", "index-pack"}
        wait_for(lambda: every <= set(durations(histograms)))
        listener.wait_idle()
        seen = durations(histograms)
        repos = per_repository(histograms)
        assert (listener.dropped, listener.malformed) == (0, 0)
    for name in ("status", "for-each-ref", "clone", "upload-pack"):
        count, total = seen[name]
        assert count == 1, (name, seen)
        assert 0 < total < took.get(name, took["clone"]), (name, total, took)
    assert repos[("/r", "work", "status")] == 1
    assert repos[("/r", "dst", "clone")] == 1
    assert repos[("/r", "src.git", "upload-pack")] == 1  # from its argv: no def_repo
    assert repos[("/r", "src.git", "pack-objects")] == 1  # joined to upload-pack by sid
    assert repos[("/r", "dst", "index-pack")] == 1  # joined to the clone by sid
    assert not any(op == "for-each-ref" for _, _, op in repos)  # bare: no def_repo
    assert not host.socket.exists()  # stop() removes its socket


def test_malformed_and_incomplete_events_are_counted(host: Host) -> None:
    with Trace2Listener(host.socket, OperationHistograms()) as listener:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(str(host.socket))
            conn.sendall(
                b'not json\n{"event":"exit"}\n[1]\n\n{"event":"exit","sid":"x","t_abs":1}\n'
            )
            conn.sendall(b'{"event":"start","sid":"y",')  # then the connection closes
        wait_for(lambda: listener.malformed == 5)  # the empty line too
        assert listener.observed == 0  # an exit without its start is not observed


def test_sessions_observe_each_process_once() -> None:
    sessions = Sessions(max_operations=2)
    feed = sessions.feed
    assert feed("start", "a", {"argv": ["git", "status"]}) is None
    assert feed("cmd_name", "a", {"name": "status"}) is None
    assert feed("def_repo", "a", {"worktree": "/w"}) is None
    first = feed("exit", "a", {"t_abs": 0.5})
    assert first is not None and (first.operation, first.seconds, first.path) == (
        "status",
        0.5,
        "/w",
    )
    assert feed("atexit", "a", {"t_abs": 0.6}) is None  # one observation per process
    # a serving command with a relative path learns the repository from its child
    feed("start", "u", {"argv": ["git-upload-pack", "x.git"]})
    feed("cmd_name", "u", {"name": "upload-pack"})
    feed("def_repo", "u/c", {"worktree": "/srv/x.git"})
    served = feed("atexit", "u", {"t_abs": 1.0})  # its exit event was lost
    assert served is not None and served.path == "/srv/x.git"
    feed("cmd_name", "b", {"name": "Not A Name"})
    feed("cmd_name", "c", {"name": "third"})  # beyond max_operations
    assert [feed("exit", s, {"t_abs": 0}).operation for s in "bc"] == ["other", "other"]  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="t_abs"):
        feed("exit", "z", {})
    assert len(sessions) == 1  # only u/c, whose exit never came


def a_clone_served(feed: Callable[[str, str, dict[str, Any]], object]) -> None:
    """A clone "c" of /srv/src.git into /w/dst, and the upload-pack "c/u" serving it."""
    feed("start", "c", {"argv": ["git", "clone", "file:///srv/src.git", "dst"]})
    feed("cmd_name", "c", {"name": "clone"})
    feed("def_repo", "c", {"worktree": "/w/dst"})
    feed("start", "c/u", {"argv": ["git-upload-pack", "/srv/src.git"]})
    feed("cmd_name", "c/u", {"name": "upload-pack"})


def test_a_child_keeps_its_serving_parent_s_repository_when_the_parent_s_exit_is_read_first() -> (
    None
):
    """Each git writes to its own connection, so the listener can read upload-pack's exit
    before its pack-objects' (a CI run under load did): the pack-objects must count for
    the repository upload-pack served, not for the clone above it."""
    sessions = Sessions()
    feed = sessions.feed
    a_clone_served(feed)
    feed("start", "c/u/p", {"argv": ["git", "pack-objects", "--revs", "--stdout"]})
    feed("cmd_name", "c/u/p", {"name": "pack-objects"})
    served = feed("exit", "c/u", {"t_abs": 0.3})
    packed = feed("exit", "c/u/p", {"t_abs": 0.2})
    cloned = feed("exit", "c", {"t_abs": 0.4})
    assert served is not None and packed is not None and cloned is not None
    assert (served.path, packed.path, cloned.path) == ("/srv/src.git", "/srv/src.git", "/w/dst")
    # a process whose nearest ancestor is live still counts for it
    feed("start", "d", {"argv": ["git", "fetch"]})
    feed("def_repo", "d", {"worktree": "/w/d"})
    feed("cmd_name", "d/i", {"name": "index-pack"})
    indexed = feed("exit", "d/i", {"t_abs": 0.1})
    assert indexed is not None and indexed.path == "/w/d"


def test_a_child_read_after_its_parent_ended_counts_for_the_parent_s_repository() -> None:
    """A reader delayed under load accepts a child's connection only after draining its
    parent's, so upload-pack's whole stream, exit included, and even the clone's can be
    read before pack-objects' first event (CI under load did)."""
    sessions = Sessions()
    feed = sessions.feed
    a_clone_served(feed)
    served = feed("exit", "c/u", {"t_abs": 0.3})
    cloned = feed("exit", "c", {"t_abs": 0.4})
    feed("start", "c/u/p", {"argv": ["git", "pack-objects", "--revs", "--stdout"]})
    feed("cmd_name", "c/u/p", {"name": "pack-objects"})
    packed = feed("exit", "c/u/p", {"t_abs": 0.2})
    feed("start", "c/i", {"argv": ["git", "index-pack", "--stdin"]})
    feed("cmd_name", "c/i", {"name": "index-pack"})
    feed("def_repo", "c/i", {"worktree": "/w"})  # the clone's cwd
    indexed = feed("exit", "c/i", {"t_abs": 0.1})
    assert served and cloned and packed and indexed
    assert (served.path, cloned.path) == ("/srv/src.git", "/w/dst")
    assert (packed.path, indexed.path) == ("/srv/src.git", "/w/dst")
    assert len(sessions) == 0


def test_ended_processes_are_remembered_within_their_bounds() -> None:
    """The ended are bounded by count and share max_bytes with the processes in flight,
    forgotten first: a flood of ended processes never evicts one still in flight, and one
    forgotten falls back to what its child inherited when it began."""
    sessions = Sessions(max_ended=3, max_bytes=64 * 1024)
    feed = sessions.feed
    feed("cmd_name", "live", {"name": "fetch"})
    feed("def_repo", "live", {"worktree": "/w/live"})
    for n in range(10):
        feed("def_repo", f"e{n}", {"worktree": f"/w/e{n}"})
        feed("exit", f"e{n}", {"t_abs": 0})
    assert len(sessions._ended) == 3 and list(sessions._ended) == ["e7", "e8", "e9"]
    feed("cmd_name", "e0/x", {"name": "pack-objects"})
    orphan = feed("exit", "e0/x", {"t_abs": 0})
    assert orphan is not None and orphan.path is None  # e0 long forgotten, nothing inherited
    feed("cmd_name", "e9/x", {"name": "pack-objects"})
    child = feed("exit", "e9/x", {"t_abs": 0})
    assert child is not None and child.path == "/w/e9"
    # in bytes: long paths fill max_bytes; the ended go, the process in flight stays
    big = Sessions(max_ended=10_000, max_bytes=64 * 1024)
    big.feed("def_repo", "live", {"worktree": "/w/live"})
    for n in range(200):
        big.feed("def_repo", f"e{n}", {"worktree": "/w/" + "x" * 4000 + str(n)})
        big.feed("exit", f"e{n}", {"t_abs": 0})
        assert big.bytes <= 64 * 1024
    assert len(big) == 1 and big.evicted == 0 and 0 < len(big._ended) < 20
    # inherited when it began stands in for a parent forgotten since
    feed("start", "p", {"argv": ["git-upload-pack", "/srv/p.git"]})
    feed("cmd_name", "p", {"name": "upload-pack"})
    feed("cmd_name", "p/k", {"name": "pack-objects"})
    feed("exit", "p", {"t_abs": 0})
    for n in range(3):
        feed("def_repo", f"f{n}", {"worktree": f"/w/f{n}"})
        feed("exit", f"f{n}", {"t_abs": 0})
    assert "p" not in sessions._ended
    kept = feed("exit", "p/k", {"t_abs": 0})
    assert kept is not None and kept.path == "/srv/p.git"


def test_children_read_after_their_parents_ended_count_for_the_served_repository(
    host: Host, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Real git, with the reader held back until the clone is over (a busy host): every
    connection waits in the backlog, and the listener reads the clone's and upload-pack's
    streams whole before their children's."""
    gate = threading.Event()

    class Held(selectors.DefaultSelector):
        def select(self, timeout: float | None = None) -> list[Any]:
            gate.wait(30)
            return super().select(timeout)

    monkeypatch.setattr(selectors, "DefaultSelector", Held)
    src, dst = host.repos / "src.git", host.repos / "dst"
    fleet = {str(src): ("/r", "src.git"), str(dst): ("/r", "dst")}
    histograms = OperationHistograms()
    with Trace2Listener(host.socket, histograms, repository_of=fleet.get) as listener:
        proc, _ = host.git("clone", "-q", f"file://{src}", dst)
        assert proc.returncode == 0, proc.stderr
        assert listener.received == 0  # nothing was read while the clone ran
        gate.set()
        every = {"clone", "upload-pack", "pack-objects", "index-pack", "rev-list"}
        wait_for(lambda: every <= set(durations(histograms)))
        assert listener.wait_idle(closed=True)
        repos = per_repository(histograms)
    assert repos == {
        ("/r", "dst", "clone"): 1,
        ("/r", "src.git", "upload-pack"): 1,
        ("/r", "src.git", "pack-objects"): 1,
        ("/r", "dst", "index-pack"): 1,
        ("/r", "dst", "rev-list"): 1,  # the clone's connectivity check
    }


# --------------------------------------------------------------------------- git never waits


@pytest.mark.parametrize("state", ["no socket file", "stale socket file"])
def test_git_unchanged_when_custode_is_down(host: Host, state: str) -> None:
    if state == "stale socket file":
        stale_socket(host.socket)
    work = host.repos / "work"
    for args in (("status",), ("for-each-ref",), ("log", "--oneline", "-3"), ("fsck",)):
        plain, _ = host.git("-C", work, *args, traced=False)
        traced, took = host.git("-C", work, *args)
        assert (traced.returncode, traced.stdout, traced.stderr) == (
            plain.returncode, plain.stdout, plain.stderr,
        ), args  # fmt: skip
        assert took < FAST, (args, took)
    proc, took = host.git("clone", "-q", f"file://{host.repos / 'src.git'}", host.repos / "c2")
    assert (proc.returncode, proc.stderr, took < FAST) == (0, b"", True)


def test_git_unchanged_when_custode_is_busy(host: Host) -> None:
    """The parser is stalled; the reader keeps draining into a buffer of 10, dropping."""
    stall = threading.Event()
    listener = Trace2Listener(host.socket, OperationHistograms(), max_buffer=10)
    listener._handle = lambda line: stall.wait(60)  # type: ignore[method-assign]
    work = host.repos / "work"
    plain, _ = host.git("-C", work, "status", traced=False)
    listener.start()
    try:
        slowest = 0.0
        started = time.monotonic()
        for _ in range(200):
            proc, took = host.git("-C", work, "status")
            assert (proc.returncode, proc.stdout, proc.stderr) == (0, plain.stdout, plain.stderr)
            slowest = max(slowest, took)
        total = time.monotonic() - started
        wait_for(lambda: listener.connections == 200)
        assert slowest < FAST, slowest
        assert total < 200 * 0.25, total
        assert listener.dropped > 0 and len(listener._buffer) <= 10
        # everything read was dropped, is buffered, or is the one line the parser holds
        wait_for(lambda: listener.received == listener.dropped + 10 + 1)
    finally:
        stall.set()
        listener.stop()


def test_git_unchanged_while_custode_is_stopped(host: Host, isolated_env: dict[str, str]) -> None:
    """``trace2 listen`` frozen with SIGSTOP: connections wait in the backlog, each git's
    events in its socket buffer; git finishes, and custode reads them all once resumed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "custode", "trace2", "listen", "--socket", str(host.socket)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=isolated_env, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        assert proc.stderr.readline() == f"listening on {host.socket}\n"
        proc.send_signal(signal.SIGSTOP)
        for _ in range(30):
            git, took = host.git("-C", host.repos / "work", "status")
            assert git.returncode == 0 and took < FAST, took
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)  # at once: it reads the backlog before it stops
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert out.startswith("30 git processes observed; events: "), out
    assert out.endswith(" 0 dropped, 0 malformed\n"), out
    assert not host.socket.exists()


# --------------------------------------------------------------------------- the socket


def test_socket_in_use_stale_or_not_a_socket(host: Host, custode: Run) -> None:
    with Trace2Listener(host.socket, OperationHistograms()):
        message = (
            f"process {os.getpid()} is already listening on {host.socket} (another custode "
            "serve?): stop it or choose another socket path (--socket or trace2.socket)"
        )
        with pytest.raises(LockedError) as raised:
            Trace2Listener(host.socket, OperationHistograms()).start()
        assert str(raised.value) == message
        result = custode("trace2", "listen", "--socket", host.socket)
        assert (result.code, result.stderr) == (11, f"custode: {message}\n")
    stale_socket(host.socket)
    histograms = OperationHistograms()
    with Trace2Listener(host.socket, histograms) as listener:  # the stale socket is replaced
        host.git("-C", host.repos / "work", "status")
        wait_for(lambda: listener.observed == 1)
    host.socket.write_text("not a socket")
    with pytest.raises(PathNotFoundError, match=r"exists and is not a socket: remove it"):
        Trace2Listener(host.socket, OperationHistograms()).start()
    with pytest.raises(UsageError, match="longer than 107 bytes"):
        Trace2Listener(Path("/tmp") / ("x" * 110), OperationHistograms())


@pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv (util-linux) is not installed")
def test_socket_directory_not_writable(host: Host, custode: Run) -> None:
    locked = host.socket.parent / "locked"
    locked.mkdir(mode=0o555)
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:  # root ignores file modes: drop the capability that lets it
        prefix = ("setpriv", "--inh-caps=-all", "--bounding-set=-dac_override", "--")
    try:
        direct = custode("trace2", "listen", "--socket", locked / "t.sock", prefix=prefix)
        below = custode("trace2", "listen", "--socket", locked / "sub" / "t.sock", prefix=prefix)
    finally:
        locked.chmod(0o755)
    assert (direct.code, direct.stderr) == (4, (
        f"custode: cannot create the trace2 socket {locked / 't.sock'}: {locked} is not "
        "writable by this user; choose another socket path (--socket or "
        "trace2.socket)\n"
    ))  # fmt: skip
    assert (below.code, below.stderr) == (4, (
        f"custode: cannot create the trace2 socket directory {locked / 'sub'}: Permission "
        "denied; choose another socket path (--socket or trace2.socket)\n"
    ))  # fmt: skip


def test_socket_mode(host: Host) -> None:
    with Trace2Listener(host.socket, OperationHistograms()):
        assert host.socket.stat().st_mode & 0o777 == 0o600
    with Trace2Listener(host.socket, OperationHistograms(), mode=0o660):
        assert host.socket.stat().st_mode & 0o777 == 0o660
    assert not list(host.socket.parent.iterdir())  # no temporary name left behind


# --------------------------------------------------------------------------- enable / disable


def test_enable_disable_round_trip(host: Host, custode: Run) -> None:
    config = host.home / "global.gitconfig"
    config.write_text("[user]\n\tname = Someone\n")
    env = {"HOME": str(host.home), "GIT_CONFIG_GLOBAL": str(config)}
    sock = host.socket

    def get(key: str) -> str:
        return subprocess.run(
            ["git", "config", "--file", config, "--get", key], capture_output=True, text=True,
            check=False,
        ).stdout.strip()  # fmt: skip

    result = custode("trace2", "enable", "--socket", sock, env=env)
    assert (result.code, result.stdout) == (0, (
        f"trace2 events of every git reading {config} now go to {sock}; run 'custode serve' "
        "to receive them\n"
    )), result.stderr  # fmt: skip
    assert [get(k) for k in ("trace2.eventTarget", "trace2.eventBrief", "trace2.eventNesting")] == [
        f"af_unix:stream:{sock}", "true", "1",
    ]  # fmt: skip
    again = custode("trace2", "enable", "--global", "--socket", sock, env=env)
    assert (again.code, "already go to" in again.stdout) == (0, True)

    histograms = OperationHistograms()  # the config enable wrote works
    with Trace2Listener(sock, histograms) as listener:
        proc = subprocess.run(["git", "-C", host.repos / "work", "status"], capture_output=True,
                              env={**git_env(), **env}, check=False)  # fmt: skip
        assert proc.returncode == 0
        wait_for(lambda: "status" in durations(histograms))
        assert listener.dropped == 0

    result = custode("trace2", "disable", "--socket", sock, env=env)
    assert (result.code, result.stdout) == (
        0, f"removed custode's trace2 target (af_unix:stream:{sock}) from {config}\n",
    )  # fmt: skip
    assert config.read_text() == "[user]\n\tname = Someone\n"
    result = custode("trace2", "disable", "--socket", sock, env=env)
    assert (result.code, result.stdout) == (
        0,
        f"trace2 is not enabled in {config}: nothing to do\n",
    )


def test_enable_and_disable_leave_another_target_alone(host: Host, custode: Run) -> None:
    config = host.home / "global.gitconfig"
    config.write_text("[trace2]\n\teventTarget = /var/log/git-trace\n")
    env = {"HOME": str(host.home), "GIT_CONFIG_GLOBAL": str(config)}
    enable = custode("trace2", "enable", "--socket", host.socket, env=env)
    assert (enable.code, enable.stderr) == (2, (
        f"custode: trace2.eventTarget in {config} is already '/var/log/git-trace', not "
        f"custode's socket {host.socket}: remove it (git config --file {config} --unset "
        "trace2.eventTarget) or pass its socket with --socket\n"
    ))  # fmt: skip
    disable = custode("trace2", "disable", "--socket", host.socket, env=env)
    assert disable.code == 2 and "left as it is" in disable.stderr
    assert config.read_text() == "[trace2]\n\teventTarget = /var/log/git-trace\n"


def test_enable_with_an_explicit_file(host: Host, custode: Run) -> None:
    target = host.home / "etc" / "gitconfig"
    env = host.env()
    result = custode("trace2", "enable", "--system", "--file", target, "--socket", host.socket,
                     env=env)  # fmt: skip
    assert result.code == 0, result.stderr
    assert f"af_unix:stream:{host.socket}" in target.read_text()
    assert (
        custode("trace2", "disable", "--file", target, "--socket", host.socket, env=env).code == 0
    )
    assert "eventTarget" not in target.read_text()


def test_config_file_follows_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GIT_CONFIG_GLOBAL", raising=False)
    monkeypatch.delenv("GIT_CONFIG_SYSTEM", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_file("global") == tmp_path / ".gitconfig"  # neither exists
    (tmp_path / "xdg" / "git").mkdir(parents=True)
    (tmp_path / "xdg" / "git" / "config").write_text("")
    assert config_file("global") == tmp_path / "xdg" / "git" / "config"
    (tmp_path / ".gitconfig").write_text("")
    assert config_file("global") == tmp_path / ".gitconfig"  # git writes here if it exists
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "g"))
    assert config_file("global") == tmp_path / "g"
    assert config_file("system") == Path("/etc/gitconfig")


def test_custode_serve_exports_what_git_reports(
    host: Host, isolated_env: dict[str, str], tmp_path: Path
) -> None:
    """The whole path: custode serve listens on trace2.socket, git reports to it, and the
    operations appear in /metrics as source="trace2", per repository for the fleet's own."""
    config = tmp_path / "custode.toml"
    config.write_text(f'[trace2]\nsocket = "{host.socket}"\n[monitoring]\nrefresh_interval = 1\n')
    serve = subprocess.Popen(
        [sys.executable, "-m", "custode", "--config", str(config), "serve", "--listen",
         "127.0.0.1:0", str(host.repos)],
        env=isolated_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert serve.stderr is not None
        line = serve.stderr.readline()
        assert line.startswith("serving metrics on http://"), line
        url = line.split(" on ", 1)[1].strip()
        wait_for(host.socket.exists)

        def exported() -> str:
            try:
                with urllib.request.urlopen(url, timeout=30) as r:  # noqa: S310  (127.0.0.1)
                    return r.read().decode()
            except OSError:
                return ""

        # a first refresh: a scan, slower on a busy host (test_serve allows it 90 s too)
        wait_for(lambda: "custode_repository_size_bytes{" in exported(), timeout=90)
        for _ in range(3):
            proc, _ = host.git("-C", host.repos / "work", "status", "--short")
            assert proc.returncode == 0
        host.git("-C", host.repos / "src.git", "for-each-ref")
        wait_for(lambda: 'operation="status",source="trace2"} 3.0' in exported(), timeout=60)
        text = exported()
        assert "custode_trace2_listening 1.0" in text
        assert f'operation="status",repository="work",root="{host.repos}"' in text
    finally:
        serve.terminate()
        serve.wait(timeout=30)
    assert serve.returncode == 0
    assert not host.socket.exists()  # removed on a clean stop
