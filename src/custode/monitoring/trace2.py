"""Live git telemetry: trace2 events from a unix socket, as git operation durations.

Every git on the host whose global or system config names custode's socket
(``custode trace2 enable``, see ``trace2config``) connects to it and writes one JSON event
per line. Nothing custode does may slow git down, so work is split in two threads:

* the **reader** only accepts connections and drains them (non-blocking sockets, one
  epoll selector) into a bounded deque of event lines; when the deque is full, events are
  dropped and counted. It never parses, so a stalled parser cannot make git wait;
* the **parser** turns lines into sessions (one per git process, keyed by ``sid``) and,
  at ``exit`` (or ``atexit``/``signal`` when that was lost), observes the process's
  ``t_abs`` in the histograms with ``source="trace2"`` and the ``cmd_name`` as operation.

Residual risk, measured with git 2.39 on Linux: git blocks on a full stream socket. Each
connection holds about 160 unread events (git writes one event per write(2), and each
write costs ~1.3 KiB of the 208 KiB ``net.core.wmem_default``) and the backlog holds
``SOMAXCONN`` connections not yet accepted; a git process writes 10-50 events with
``eventBrief`` and ``eventNesting=1``. So git waits only if the reader thread itself is
frozen (the whole process stopped) while a git writes that many events, or that many gits
connect. When custode is down, git's connect fails and git runs untraced; see
trace2config for why not datagrams.

Which process counts for which repository: see trace2sessions.

Anything that can connect can write, so every line is hostile input, bounded in size,
structure, time and memory (trace2lines, trace2sessions): a line is at most
``max_line_bytes`` and never held whole beyond that; its nesting is checked before it is
parsed; ids, names and paths have caps; the lines between the threads and the lines
still being received are bounded by ``max_buffer_bytes``, the processes in flight by
``max_session_bytes``. A refused line is counted by reason
(``custode_trace2_lines_rejected_total``), an exception on one line costs that line only,
and a thread that dies anyway is restarted by a watchdog (trace2threads), counted in
``custode_trace2_thread_restarts_total`` and reported by ``health()``, which serve's
``/healthz`` calls.

The socket is made with mode 0600 by default: run ``custode serve`` as the user that runs
git (the git server's user). git processes that cannot connect run untraced, never slower.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import resource
import secrets
import select
import selectors
import socket
import stat
import struct
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from custode.errors import LockedError, PathNotFoundError
from custode.monitoring.histograms import OperationHistograms
from custode.monitoring.trace2config import check_socket_path
from custode.monitoring.trace2lines import REASONS, Framer, Rejected, parse_event
from custode.monitoring.trace2sessions import MAX_NAME, Observation, Sessions
from custode.monitoring.trace2threads import Threads

__all__ = ["RepositoryOf", "Trace2Listener", "health"]

log = logging.getLogger("custode.monitoring.trace2")

_PREFIX = b'{"event":"'
_NEEDED = frozenset(("start", "cmd_name", "def_repo", "exit", "atexit", "signal"))
_NEEDED_BYTES = frozenset(name.encode() for name in _NEEDED)

#: Maps a repository path git reported to (root, path relative to it), or None if the
#: path is not one of the fleet's repositories.
RepositoryOf = Callable[[str], tuple[str, str] | None]

#: git's longest needed event is ``start`` (argv): xargs passes 128 KiB by default. A longer
#: start only loses its argv, which matters for serving commands, whose argv is short.
MAX_LINE = 256 << 10
MAX_BUFFER_BYTES = 64 << 20
MAX_SESSION_BYTES = 16 << 20
LINE_OVERHEAD = 64  # what a buffered line costs beyond its bytes (object, deque slot)
READ_SIZE = 1 << 16

_ROLES = ("reader", "parser")
ERROR_LOG_EVERY = 60.0  # seconds between log lines about exceptions on lines

_LISTENER, _WAKE = object(), object()
_listening: weakref.WeakSet[Trace2Listener] = weakref.WeakSet()


def health() -> str | None:
    """Why a trace2 listener of this process cannot be trusted, or None (serve's
    ``/healthz``); a process that does not listen is healthy."""
    for listener in list(_listening):
        if (reason := listener.health()) is not None:
            return reason
    return None


class Trace2Listener:
    """Listens on ``socket_path`` and feeds ``histograms``; ``start()``, ``stop()``,
    ``collect()`` (its own counters; the histograms are collected by their owner)."""

    def __init__(
        self,
        socket_path: Path,
        histograms: OperationHistograms,
        *,
        repository_of: RepositoryOf | None = None,
        max_buffer: int = 100_000,
        max_buffer_bytes: int = MAX_BUFFER_BYTES,
        max_line_bytes: int = MAX_LINE,
        max_session_bytes: int = MAX_SESSION_BYTES,
        mode: int = 0o600,
        max_connections: int | None = None,
    ) -> None:
        self.socket_path = check_socket_path(socket_path)
        self.histograms = histograms
        self.repository_of = repository_of
        self.max_buffer = max_buffer
        # lines being received may hold half of the bytes, so that half-written lines on
        # many connections never leave no room for complete ones
        self.max_buffer_bytes = max_buffer_bytes
        self.max_line_bytes = max_line_bytes
        self.mode = mode
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.max_connections = max_connections or max(16, min(soft - 256, 65_536))
        self.received = self.dropped = self.connections = self.rejected = 0
        self.closed = 0  # connections read to their end (or given up) and closed
        self._accepting = False  # the reader is taking connections from the backlog
        self.observed = 0
        self.skipped = 0  # events a duration does not need, not parsed
        # counted by one thread each (no lock); every reason present, so a scrape can
        # iterate while a thread counts
        self._rejects = {role: dict.fromkeys(REASONS, 0) for role in _ROLES}
        self._buffer: deque[bytes] = deque()
        self._queued_in = 0  # bytes appended to _buffer, by the reader
        self._queued_out = 0  # bytes taken from it, by the parser
        self._partial_bytes = 0  # of lines being received, by the reader
        self._sessions = Sessions(max_bytes=max_session_bytes)
        self._ready = threading.Event()  # lines are waiting for the parser
        self._stopping = threading.Event()
        self._parsing = False
        self._sock: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        loops = {"reader": self._read_loop, "parser": self._parse_loop}
        self._threads = Threads(loops, self._stopping, on_death=self._died)
        self._error_logged = -ERROR_LOG_EVERY

    @property
    def restarts(self) -> dict[str, int]:
        """Times each thread ("reader", "parser") was restarted after it died."""
        return dict(self._threads.restarts)

    def health(self) -> str | None:
        """None while listening normally; else why the events cannot be trusted: a thread
        is dead, or died lately and was restarted (see trace2threads)."""
        return None if self._sock is None else self._threads.health()

    @property
    def rejected_lines(self) -> dict[str, int]:
        """Lines not used, by reason (trace2lines.REASONS), the reasons that occurred."""
        total = {r: self._rejects["reader"][r] + self._rejects["parser"][r] for r in REASONS}
        return {reason: n for reason, n in total.items() if n}

    @property
    def malformed(self) -> int:
        return sum(self.rejected_lines.values())

    @property
    def buffered_bytes(self) -> int:
        """Bytes of lines waiting for the parser and of lines still being received."""
        return self._queued_in - self._queued_out + self._partial_bytes

    @property
    def session_bytes(self) -> int:
        """Bytes held for the git processes in flight."""
        return self._sessions.bytes

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Bind the socket (clearing a stale one) and start the reader and parser threads.
        PathNotFoundError if the socket cannot be made, LockedError if another process
        listens on it."""
        if self._sock is not None:
            return
        self._sock = self._bind()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._spare = os.open(os.devnull, os.O_RDONLY)  # freed to shed a connection at EMFILE
        self._selector.register(self._sock, selectors.EVENT_READ, _LISTENER)
        self._selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self._stopping.clear()
        self._threads.start()
        _listening.add(self)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop both threads, close every connection (git carries on untraced) and remove
        the socket file if it is still ours. Events not yet parsed are discarded."""
        if self._sock is None:
            return
        _listening.discard(self)
        self._stopping.set()
        self._ready.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._threads.join(timeout)
        for key in list(self._selector.get_map().values()):
            with contextlib.suppress(OSError):
                key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()
        self._wake_w.close()
        os.close(self._spare)
        with contextlib.suppress(OSError):
            st = os.stat(self.socket_path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.socket_path)
        self._sock = None
        self._buffer.clear()
        self._queued_out = self._queued_in
        self._partial_bytes = 0

    def __enter__(self) -> Trace2Listener:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_idle(self, timeout: float = 10.0, *, closed: bool = False) -> bool:
        """Wait until every event read so far is parsed (for tests and shutdown); with
        ``closed``, first until every connection made so far, accepted or still in the
        backlog, is read to its end (one is drained 64 KiB at a time, in turn with the
        others, so a later one can be read whole first). False if ``timeout`` passed
        first: a git still running holds its connection open."""
        deadline = time.monotonic() + timeout
        while (closed and not self._all_closed()) or self._buffer or self._parsing:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def _all_closed(self) -> bool:
        """No connection is open or waiting in the backlog. Read from another thread, in
        this order: the backlog (a poll of the listening socket), then whether the reader
        is accepting, then the counts, so a connection the reader takes meanwhile is seen
        in one of them."""
        sock = self._sock
        if sock is not None:
            try:
                if select.select([sock], [], [], 0)[0]:
                    return False
            except (OSError, ValueError):  # closed by stop() meanwhile
                return True
        return not self._accepting and self.closed >= self.connections

    # ------------------------------------------------------------------ the socket

    def _bind(self) -> socket.socket:
        path = self.socket_path
        private = not self.mode & 0o077
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700 if private else 0o755)
        except OSError as exc:
            raise PathNotFoundError(
                f"cannot create the trace2 socket directory {path.parent}: {exc.strerror}; "
                "choose another socket path (--socket or trace2.socket)"
            ) from None
        if not os.access(path.parent, os.W_OK | os.X_OK):
            raise PathNotFoundError(
                f"cannot create the trace2 socket {path}: {path.parent} is not writable by "
                "this user; choose another socket path (--socket or trace2.socket)"
            )
        _clear_stale(path)
        # Bind under a private name, set the mode, then link: no moment with looser
        # permissions, and link (unlike rename) fails if another custode got there first.
        # as short as the final name: an AF_UNIX path is limited to 107 bytes
        tmp = path.with_name(f".{secrets.token_hex(max(1, (len(path.name) - 1) // 2))}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            sock.bind(os.fspath(tmp))
            os.chmod(tmp, self.mode)
            sock.listen(socket.SOMAXCONN)
            sock.setblocking(False)
            try:
                os.link(tmp, path)
            except FileExistsError:
                _clear_stale(path)  # raises LockedError if the winner is alive
                os.link(tmp, path)
            st = os.stat(path)
            self._inode = (st.st_dev, st.st_ino)
        except OSError as exc:
            sock.close()
            raise PathNotFoundError(
                f"cannot create the trace2 socket {path}: {exc.strerror}; choose another "
                "socket path (--socket or trace2.socket)"
            ) from None
        except BaseException:
            sock.close()
            raise
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return sock

    # ------------------------------------------------------------------ reader thread

    def _read_loop(self) -> None:
        listening = self._sock
        while listening is not None and not self._stopping.is_set():
            for key, _ in self._selector.select(timeout=1.0):
                if key.data is _LISTENER:
                    self._accept(listening)
                elif key.data is _WAKE:
                    return
                else:
                    conn, framer = key.fileobj, key.data
                    try:
                        self._drain(conn, framer)  # type: ignore[arg-type]
                    except Exception:  # a bug on one connection costs that connection
                        log.exception("trace2: error reading a connection; closing it")
                        self._rejects["reader"]["error"] += 1
                        self._close(conn, framer)  # type: ignore[arg-type]

    def _accept(self, listening: socket.socket) -> None:
        self._accepting = True  # see _all_closed
        try:
            self._accept_all(listening)
        finally:
            self._accepting = False

    def _accept_all(self, listening: socket.socket) -> None:
        while True:
            try:
                conn, _ = listening.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self._shed(listening)
                    continue
                return
            if len(self._selector.get_map()) - 2 >= self.max_connections:
                conn.close()  # git's next write fails (EPIPE) and it runs untraced
                self.rejected += 1
                continue
            conn.setblocking(False)
            self._selector.register(conn, selectors.EVENT_READ, Framer(self.max_line_bytes))
            self.connections += 1

    def _shed(self, listening: socket.socket) -> None:
        """Out of file descriptors: accept one connection on the spare and close it."""
        os.close(self._spare)
        try:
            listening.accept()[0].close()
            self.rejected += 1
        except OSError:
            time.sleep(0.01)  # nothing to take; do not spin
        finally:
            self._spare = os.open(os.devnull, os.O_RDONLY)

    def _drain(self, conn: socket.socket, framer: Framer) -> None:
        try:
            data = conn.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn, framer)
            return
        held = len(framer.partial)
        others = self._partial_bytes - held
        lines, too_long, dropped = framer.feed(data, self.max_buffer_bytes // 2 - others)
        self._partial_bytes += len(framer.partial) - held
        self._rejects["reader"]["too_long"] += too_long
        self.dropped += dropped
        if not lines:
            return
        self.received += len(lines)
        budget = self.max_buffer_bytes - self.max_buffer_bytes // 2
        queued = self._queued_in - self._queued_out  # only this thread appends
        for line in lines:
            cost = len(line) + LINE_OVERHEAD
            if len(self._buffer) >= self.max_buffer or queued + cost > budget:
                self.dropped += 1
                continue
            self._buffer.append(line)
            queued += cost
            self._queued_in += cost
        self._ready.set()

    def _close(self, conn: socket.socket, framer: Framer) -> None:
        self._partial_bytes -= len(framer.partial)
        if framer.close():
            self._rejects["reader"]["truncated"] += 1  # git was killed mid-event
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn)
        conn.close()
        self.closed += 1

    # ------------------------------------------------------------------ parser thread

    def _parse_loop(self) -> None:
        while not self._stopping.is_set():
            self._ready.wait(1.0)
            self._ready.clear()
            while self._buffer and not self._stopping.is_set():
                self._parsing = True
                line = self._buffer.popleft()
                self._queued_out += len(line) + LINE_OVERHEAD
                try:
                    self._handle(line)
                except Exception as exc:  # a bug on one line costs that line
                    self._rejects["parser"]["error"] += 1
                    self._log_error(exc)
            self._parsing = False

    def _died(self, role: str) -> None:
        if role == "parser" and self._parsing:
            self._rejects["parser"]["error"] += 1  # the line in flight is lost
            self._parsing = False

    def _log_error(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._error_logged >= ERROR_LOG_EVERY:  # a flood of them: one a minute
            self._error_logged = now
            log.error("trace2: a line could not be handled; counted as rejected (error)",
                      exc_info=exc)  # fmt: skip

    def _handle(self, line: bytes) -> None:
        # most events (regions, data, ancestry) say nothing a duration needs: skip them
        # unparsed, which keeps custode's CPU (shared with the git it measures) low
        if line.startswith(_PREFIX):
            end = line.find(b'"', len(_PREFIX), len(_PREFIX) + MAX_NAME + 1)
            if end > 0 and line[len(_PREFIX) : end] not in _NEEDED_BYTES:
                self.skipped += 1
                return
        try:
            observation = self._event(line)
        except Rejected as exc:
            self._rejects["parser"][exc.reason] += 1
            return
        if observation is not None:
            root, repository = self._repository(observation.path) or (None, None)
            self.histograms.observe(
                observation.operation, observation.seconds, source="trace2",
                repository=repository, root=root,
            )  # fmt: skip
            self.observed += 1

    def _event(self, line: bytes) -> Observation | None:
        event = parse_event(line)
        name, sid = event.get("event"), event.get("sid")
        if not isinstance(name, str) or not isinstance(sid, str) or not sid:
            raise Rejected("type", "no event name or sid")
        if len(name) > MAX_NAME:
            raise Rejected("field", f"event name longer than {MAX_NAME} characters")
        if name not in _NEEDED:
            self.skipped += 1
            return None
        return self._sessions.feed(name, sid, event)

    def _repository(self, path: str | None) -> tuple[str, str] | None:
        if path is None or self.repository_of is None:
            return None
        path = path.rstrip("/")
        alternative = path.removesuffix("/.git") if path.endswith("/.git") else path + ".git"
        return self.repository_of(path) or self.repository_of(alternative)

    # ------------------------------------------------------------------ metrics

    def collect(self) -> Iterator[Metric]:
        def counter(name: str, doc: str, value: int) -> CounterMetricFamily:
            return CounterMetricFamily(f"custode_trace2_{name}", doc, value=value)

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"custode_trace2_{name}", doc, value=value)

        yield counter("events_total", "trace2 events read from git processes.", self.received)
        yield counter(
            "events_dropped_total",
            "trace2 events dropped to stay within the buffer's bounds (the parser fell "
            "behind, or too many half-written lines): git never waits.",
            self.dropped,
        )
        yield counter(
            "events_malformed_total",
            "Lines on the trace2 socket that were not complete trace2 events.",
            self.malformed,
        )
        rejected = CounterMetricFamily(
            "custode_trace2_lines_rejected", "Lines on the trace2 socket not used, by reason: "
            "too_long, truncated, encoding, json, depth, type, field (over a cap), error.",
            labels=["reason"],
        )  # fmt: skip
        for reason in REASONS:
            value = self._rejects["reader"][reason] + self._rejects["parser"][reason]
            rejected.add_metric([reason], value)
        yield rejected
        yield counter("connections_total", "git processes that connected.", self.connections)
        yield counter(
            "connections_rejected_total",
            "git processes turned away (connection limit, no file descriptors): untraced.",
            self.rejected,
        )
        yield counter("processes_total", "git processes observed to their exit.", self.observed)
        yield counter(
            "processes_evicted_total",
            "git processes in flight forgotten to stay within trace2's memory bound.",
            self._sessions.evicted,
        )
        yield gauge("buffered_events", "Events waiting to be parsed.", len(self._buffer))
        yield gauge(
            "buffer_bytes",
            "Bytes of lines waiting to be parsed or still being received.",
            self.buffered_bytes,
        )
        yield gauge("processes_in_flight", "git processes seen but not yet exited.",
                    len(self._sessions))  # fmt: skip
        yield gauge("process_bytes", "Bytes held for git processes in flight and lately ended.",
                    self._sessions.bytes)  # fmt: skip
        restarts = CounterMetricFamily(
            "custode_trace2_thread_restarts", "trace2 threads restarted after they died.",
            labels=["thread"],
        )  # fmt: skip
        running = GaugeMetricFamily(
            "custode_trace2_thread_running", "1 while a trace2 thread runs.", labels=["thread"]
        )
        for role in _ROLES:
            restarts.add_metric([role], self._threads.restarts[role])
            running.add_metric([role], int(self._threads.running(role)))
        yield restarts
        yield running
        yield gauge("listening", "1 while the trace2 socket is open.", int(bool(self._sock)))


def _clear_stale(path: Path) -> None:
    """Remove a socket nobody listens on; LockedError if someone does."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise PathNotFoundError(
            f"{path} exists and is not a socket: remove it or choose another socket path "
            "(--socket or trace2.socket)"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(os.fspath(path))
    except ConnectionRefusedError:  # stale: its listener is gone
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except FileNotFoundError:
        return
    except TimeoutError:  # backlog full: very much alive
        pass
    except OSError as exc:
        raise PathNotFoundError(
            f"cannot check whether {path} is in use: {exc.strerror}; remove it or choose "
            "another socket path (--socket or trace2.socket)"
        ) from None
    finally:
        pid = _peer_pid(probe)
        probe.close()
    who = f"process {pid}" if pid else "another process"
    raise LockedError(
        f"{who} is already listening on {path} (another custode serve?): stop it or choose "
        "another socket path (--socket or trace2.socket)"
    )


def _peer_pid(sock: socket.socket) -> int | None:
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):  # not connected, or not Linux
        return None
    pid: int = struct.unpack("3i", raw)[0]
    return pid or None
