"""The trace2 socket under hostile input: every line is bounded in size and structure, no
line stops the listener, memory is bounded in bytes, and a thread that dies anyway is
restarted and reported in /healthz and /metrics.

Each test writes raw bytes to the real unix socket, as a misbehaving (or malicious) local
process would, and then checks that a well-formed git process is still observed.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from custode.monitoring.histograms import OperationHistograms
from custode.monitoring.trace2 import Trace2Listener
from custode.monitoring.trace2lines import MAX_DEPTH, too_deep
from custode.serve.http import MetricsApp, MetricsServer

pytestmark = pytest.mark.integration
MiB = 1 << 20
Listen = Callable[..., Trace2Listener]


@pytest.fixture
def listen() -> Iterator[Listen]:
    """Starts listeners on a short socket path (unix socket paths are limited to 107
    bytes) and stops them at the end of the test."""
    short = Path(tempfile.mkdtemp(prefix="ct2h-", dir="/tmp"))
    started: list[Trace2Listener] = []

    def start(**options: Any) -> Trace2Listener:
        listener = Trace2Listener(short / f"{len(started)}.sock", OperationHistograms(), **options)
        started.append(listener)
        listener.start()
        return listener

    yield start
    for listener in started:
        listener.stop()
    shutil.rmtree(short, ignore_errors=True)


def send(listener: Trace2Listener, *chunks: bytes) -> None:
    """One connection, as one git process: writes ``chunks`` and closes."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(listener.socket_path))
        for chunk in chunks:
            conn.sendall(chunk)


def event(kind: str, sid: str, /, **fields: Any) -> bytes:
    return json.dumps({"event": kind, "sid": sid, **fields}).encode() + b"\n"


STILL = "still-listening"  # still_listening()'s operation


def git_process(sid: str, operation: str = "status", seconds: float = 0.25) -> bytes:
    """The events custode needs of one git process."""
    return b"".join((
        event("start", sid, argv=["git", operation]),
        event("cmd_name", sid, name=operation),
        event("exit", sid, t_abs=seconds, code=0),
    ))  # fmt: skip


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def observed(listener: Trace2Listener) -> dict[str, tuple[int, float]]:
    """operation -> (count, sum of seconds) of the trace2 histogram."""
    out: dict[str, tuple[int, float]] = {}
    for family in listener.histograms.collect():
        if family.name != "custode_git_operation_duration_seconds":
            continue
        for s in family.samples:
            count, total = out.get(s.labels["operation"], (0, 0.0))
            if s.name.endswith("_count"):
                count = int(s.value)
            elif s.name.endswith("_sum"):
                total = s.value
            out[s.labels["operation"]] = (count, total)
    return out


def still_listening(listener: Trace2Listener, *, closed: bool = True) -> None:
    """A well-formed git process sent after the hostile input is observed, and (unless
    the test holds connections open) all that input is read: the connections before it
    were accepted before it, and are closed. Its operation is its own: the hostile
    input's processes may still be parsed while it waits."""

    def count() -> int:
        return observed(listener).get(STILL, (0, 0.0))[0]

    before = count()
    send(listener, git_process(f"{STILL}-{before}", STILL))
    wait_for(lambda: count() == before + 1)
    assert listener.wait_idle(closed=closed)


def held_bytes(listener: Trace2Listener) -> int:
    """What the listener holds of the lines it read: its own accounting."""
    return listener.buffered_bytes + listener.session_bytes


# --------------------------------------------------------------------------- structure


def test_deep_nesting_is_rejected_and_the_parser_carries_on(listen: Listen) -> None:
    listener = listen()
    deep = b"[" * 200_000
    send(
        listener,
        deep + b"\n",
        b'{"event":"start","sid":"d","argv":' + deep + b"\n",
        b'{"event":"exit","sid":"d","t_abs":' + b'{"a":' * 40_000 + b"\n",
        b'{"event":"def_repo","sid":"d","worktree":' + b"[" * 40 + b'"/x"' + b"]" * 40 + b"}\n",
    )
    still_listening(listener)  # the old parser thread died of RecursionError here
    # brackets inside strings (git rev-parse 'HEAD@{1}', --format=[%h]) are text
    argv = ["git", "log", "--format=" + "[{" * 200, "HEAD@{1}", '"]}\\'] * 3
    send(listener, event("start", "s", argv=argv), event("cmd_name", "s", name="log"),
         event("exit", "s", t_abs=0.5))  # fmt: skip
    wait_for(lambda: "log" in observed(listener))
    assert listener.rejected_lines == {"depth": 4}
    assert listener.restarts == {"parser": 0, "reader": 0}
    assert listener.health() is None


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


@pytest.mark.parametrize("inner", [
    "[{", "]}", '\\"[', '\\\\', '\\\\"', 'a\\\\\\"[{[{', "caf\u00e9 [[[[", "\u2028{",
])  # fmt: skip
@pytest.mark.parametrize("depth", [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1])
def test_depth_check_reads_strings_as_json_does(inner: str, depth: int) -> None:
    """Brackets, escaped quotes and escaped backslashes inside strings are text."""
    inside = json.dumps({"k" + inner * 20: [inner * 30, 1]}, ensure_ascii=False)
    line = ("[" * (depth - 2) + inside + "]" * (depth - 2)).encode()
    real = _depth(json.loads(line))
    assert real == depth
    assert too_deep(line, MAX_DEPTH) == (real > MAX_DEPTH), (real, line[:80])


def test_huge_session_id_is_rejected_at_once(listen: Listen) -> None:
    """A 400,000-character sid kept the old parser busy for 50 s (each event walked every
    ancestor, copying the sid at each level): such a line is now over the line cap, and a
    shorter one is refused by the cap on ids before any walk."""
    listener = listen()
    send(
        listener,
        event("start", "/" * 400_000, argv=["git", "status"]),  # the line
        event("start", "/" * 200_000, argv=["git", "status"]),
        event("cmd_name", "x/" * 100_000, name="status"),
        event("cmd_name", "n", name="n" * 200_000),  # a huge operation name
        event("start" + "t" * 100_000, "e"),  # a huge event name
        event("def_repo", "w", worktree="/" + "w" * 100_000),  # longer than any path
    )
    still_listening(listener)
    assert listener.rejected_lines == {"too_long": 1, "field": 5}
    assert len(listener._sessions) == 0  # nothing of the rejected lines is kept


def test_odd_bytes_and_wrong_types_are_rejected_with_a_reason(listen: Listen) -> None:
    listener = listen()
    send(
        listener,
        b'{"event":"start","sid":"\xff\xfe"}\n',  # not UTF-8
        '{"event":"exit","sid":"u","t_abs":1}'.encode("utf-16"),  # git writes UTF-8 only
        b"\n",
        b"not json\n",
        b'{"event":"exit","sid":"j","t_abs":1\n',
        b"\x00\x00\x00\n",
        b"\n",  # empty
        b"[1]\n",
        b'"a string"\n',
        b'{"event":1,"sid":"t"}\n',
        b'{"event":"exit","sid":["t"],"t_abs":1}\n',
        b'{"event":"exit"}\n',
        b'{"event":"exit","sid":""}\n',
    )
    # a started process whose exit carries a duration that is not one: never observed
    for sid, t_abs in (("nan", b"NaN"), ("inf", b"Infinity"), ("big", b"1e999"),
                       ("neg", b"-1"), ("str", b'"0.5"'), ("bool", b"true"),
                       ("digits", b"1" + b"0" * 400)):  # fmt: skip
        send(
            listener,
            event("start", sid, argv=["git", "fetch"]),
            event("cmd_name", sid, name="fetch"),
            b'{"event":"exit","sid":"' + sid.encode() + b'","t_abs":' + t_abs + b"}\n",
        )
    still_listening(listener)
    assert listener.wait_idle()
    assert "fetch" not in observed(listener)  # the old listener observed NaN and Infinity
    count, total = observed(listener)[STILL]
    assert (count, math.isfinite(total)) == (1, True)
    assert listener.rejected_lines == {"encoding": 2, "json": 4, "type": 13}
    assert listener.malformed == 19


def test_line_without_newline_then_eof(listen: Listen) -> None:
    listener = listen(max_line_bytes=4096)
    send(listener, b'{"event":"start","sid":"y",')  # git killed mid-event
    send(listener, b"z" * 10_000)  # over-long, then EOF: counted once, as too long
    still_listening(listener)
    assert listener.rejected_lines == {"truncated": 1, "too_long": 1}
    assert listener.buffered_bytes == 0  # nothing of the closed connections is held


def test_listen_summary_names_the_reasons(isolated_env: dict[str, str]) -> None:
    short = Path(tempfile.mkdtemp(prefix="ct2h-", dir="/tmp"))
    sock = short / "t.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "custode", "trace2", "listen", "--socket", str(sock)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=isolated_env, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        assert proc.stderr.readline() == f"listening on {sock}\n"
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(str(sock))
            conn.sendall(b"[" * 100_000 + b"\n{oops\n" + git_process("ok"))
        proc.send_signal(signal.SIGTERM)  # at once: what was sent before is still read
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(short, ignore_errors=True)
    assert (proc.returncode, err) == (0, "")
    assert out == (
        "1 git process observed; events: 5 received, 0 dropped, 2 malformed (1 json, 1 depth)\n"
    )


# --------------------------------------------------------------------------- size


def test_line_length_cap_is_exact(listen: Listen) -> None:
    """A line of exactly max_line_bytes (without its newline) is read; one byte more is
    not, wherever the reads split it."""
    cap = 8192
    listener = listen(max_line_bytes=cap)

    def start_of(sid: str, size: int) -> bytes:
        line = event("start", sid, argv=["git", "status", ""])[:-1]
        pad = size - len(line)
        return event("start", sid, argv=["git", "status", "p" * pad])

    for sid, size, piece in (("fits", cap, 1000), ("over", cap + 1, 1000), ("over2", cap + 1, 1)):
        line = start_of(sid, size)
        assert len(line) == size + 1
        send(listener, *(line[i : i + piece] for i in range(0, len(line), piece)),
             event("cmd_name", sid, name="status"), event("exit", sid, t_abs=0.1))  # fmt: skip
    # the processes whose start was rejected are still observed (by cmd_name and exit)
    wait_for(lambda: listener.observed == 3 and listener.malformed == 2)
    assert listener.rejected_lines == {"too_long": 2}


def test_over_long_line_is_never_held_whole(listen: Listen) -> None:
    """32 MiB without a newline: read and thrown away in bounded pieces."""
    listener = listen(max_line_bytes=64 * 1024)
    piece = b"a" * (256 * 1024)
    tracemalloc.start()
    try:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(str(listener.socket_path))
            for _ in range(128):
                conn.sendall(piece)
            conn.sendall(b"\n" + git_process("after"))
            wait_for(lambda: listener.observed == 1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 * MiB, peak  # the old listener held up to 1 MiB of it, and copies
    assert listener.rejected_lines == {"too_long": 1}


def test_buffer_is_bounded_in_bytes_while_the_parser_is_stalled(listen: Listen) -> None:
    stall = threading.Event()
    listener = listen(max_buffer_bytes=1 * MiB)
    listener._handle = lambda line: stall.wait(60)  # type: ignore[method-assign]
    try:
        line = event("region_enter", "r", pad="r" * 100_000)
        send(listener, line * 100)  # 10 MB of lines
        wait_for(lambda: listener.received == 100)
        wait_for(lambda: listener.received == listener.dropped + len(listener._buffer) + 1)
        assert sum(map(len, listener._buffer)) <= 1 * MiB  # the old listener held 10 MB
        assert listener.buffered_bytes <= 1 * MiB
        assert listener.dropped >= 89
        # everything read was dropped, is buffered, or is the one line the parser holds
        assert listener.received == listener.dropped + len(listener._buffer) + 1
    finally:
        stall.set()
    wait_for(lambda: listener.buffered_bytes == 0)


def test_many_connections_holding_partial_lines_stay_within_bytes(listen: Listen) -> None:
    """Half-written lines on many connections count against the same byte budget."""
    listener = listen(max_buffer_bytes=1 * MiB, max_line_bytes=256 * 1024)
    conns = []
    try:
        for _ in range(40):
            conn = socket.socket(socket.AF_UNIX)
            conn.connect(str(listener.socket_path))
            conn.sendall(b'{"event":"start","sid":"p","pad":"' + b"p" * 100_000)
            conns.append(conn)
        wait_for(lambda: listener.connections == 40)
        wait_for(lambda: listener.dropped >= 30)  # partial lines beyond the budget
        assert listener.buffered_bytes <= 1 * MiB
        still_listening(listener, closed=False)  # the 40 are still open
    finally:
        for conn in conns:
            conn.close()
    wait_for(lambda: listener.buffered_bytes == 0)
    # the lines that did not fit were dropped as they grew; the others ended at EOF
    wait_for(lambda: listener.dropped + listener.rejected_lines.get("truncated", 0) == 40)
    assert listener.dropped >= 30


def test_sessions_are_bounded_in_bytes(listen: Listen) -> None:
    """2,000 git processes that never exit, each with a long (but acceptable) sid: the
    oldest are forgotten once their bytes exceed max_session_bytes."""
    listener = listen(max_session_bytes=256 * 1024)
    lines = b"".join(
        event("start", f"{i:04d}-" + "s" * 990, argv=["git", "upload-pack", "/srv/" + "r" * 900])
        + event("cmd_name", f"{i:04d}-" + "s" * 990, name="upload-pack")
        for i in range(2000)
    )
    send(listener, lines)
    wait_for(lambda: listener.received == 4000)
    assert listener.wait_idle()
    assert 0 < len(listener._sessions) < 2000  # the old listener held all 2,000
    assert sum(map(len, listener._sessions._live)) <= 256 * 1024  # sids held, whatever counted
    assert listener.session_bytes <= 256 * 1024
    assert listener.rejected_lines == {}
    still_listening(listener)


def test_many_events_with_big_ids_stay_within_bytes(listen: Listen) -> None:
    """The issue's case scaled down: 2,000 events with 20 kB ids (40 MB) kept every id in
    memory; now each is rejected and the peak stays near the buffer's byte budget."""
    listener = listen(max_buffer_bytes=2 * MiB)
    tracemalloc.start()
    try:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(str(listener.socket_path))
            for i in range(2000):
                sid = f"{i:05d}" + "i" * 20_000
                conn.sendall(event("start", sid, argv=["git", "status"]))
        wait_for(lambda: listener.received == 2000)
        assert listener.wait_idle(30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(listener._sessions) == 0  # the old listener kept every id
    assert peak < 8 * MiB, peak
    assert held_bytes(listener) == 0
    assert listener.rejected_lines == {"field": 2000 - listener.dropped}
    still_listening(listener)


# --------------------------------------------------------------------------- survival


def test_an_exception_on_a_line_is_contained(listen: Listen) -> None:
    """A bug on one line (here: the repository lookup raising) costs that line only."""
    calls: list[str] = []

    def broken(path: str) -> tuple[str, str] | None:
        calls.append(path)
        if len(calls) == 1:
            raise RuntimeError("lookup failed")
        return None

    listener = listen(repository_of=broken)
    send(listener, event("def_repo", "b", worktree="/srv/b"), git_process("b"))
    wait_for(lambda: listener.malformed == 1)
    still_listening(listener)
    assert listener.rejected_lines == {"error": 1}
    assert listener.restarts == {"parser": 0, "reader": 0}


class _Crash(BaseException):
    """Escapes any ``except Exception``: the thread that meets it dies."""


class _Exposition:
    """The exporter's side of /metrics, for the listener alone."""

    last_error = ""

    def __init__(self, listener: Trace2Listener) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(listener)

    def refresh(self) -> None:
        pass

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310  (127.0.0.1)
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def crash_once(listener: Trace2Listener, method: str) -> threading.Event:
    """Make the listener's ``method`` raise once (its thread dies); set when it has."""
    original = getattr(listener, method)
    crashed = threading.Event()

    def crash(*args: Any) -> Any:
        if not crashed.is_set():
            crashed.set()
            raise _Crash("injected")
        return original(*args)

    setattr(listener, method, crash)
    return crashed


def test_a_restart_is_counted_before_the_new_thread_does_any_work(listen: Listen) -> None:
    """The count is raised before the new thread starts: a slow watchdog (a busy machine)
    must not let the restarted thread's work be seen with the restart uncounted."""
    listener = listen()
    threads = listener._threads
    spawn = threads._spawn

    def slow_spawn(role: str) -> None:
        spawn(role)
        time.sleep(0.5)  # the watchdog descheduled right after starting the thread

    threads._spawn = slow_spawn  # type: ignore[method-assign]
    crashed = crash_once(listener, "_handle")
    send(listener, event("start", "lost"))
    wait_for(crashed.is_set)
    still_listening(listener)  # the restarted parser has done work
    assert listener.restarts["parser"] == 1


@pytest.mark.parametrize("thread", ["parser", "reader"])
def test_a_dead_thread_is_restarted_and_reported(listen: Listen, thread: str) -> None:
    listener = listen()
    crashed = crash_once(listener, "_handle" if thread == "parser" else "_drain")
    server = MetricsServer(("127.0.0.1", 0), MetricsApp(_Exposition(listener), lambda: None))
    serving = threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True)
    serving.start()
    try:
        send(listener, event("start", "lost"))  # the thread dies on it
        wait_for(crashed.is_set)
        still_listening(listener)
        assert listener.restarts == {"parser": 0, "reader": 0, thread: 1}
        reason = listener.health()
        assert reason is not None
        assert reason.startswith(f"the trace2 {thread} thread stopped ("), reason
        assert "_Crash: injected" in reason and "was restarted" in reason
        status, body = _get(f"{server.url}/healthz")
        assert (status, body) == (503, f"{reason}\n")
        status, body = _get(f"{server.url}/metrics")
        assert status == 200
        assert f'custode_trace2_thread_restarts_total{{thread="{thread}"}} 1.0' in body
        assert f'custode_trace2_thread_running{{thread="{thread}"}} 1.0' in body
    finally:
        server.shutdown()
        server.server_close()
