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

The socket is made with mode 0600 by default: run ``custode serve`` as the user that runs
git (the git server's user). git processes that cannot connect run untraced, never slower.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import secrets
import selectors
import socket
import stat
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from custode.errors import LockedError, PathNotFoundError
from custode.monitoring.histograms import OperationHistograms
from custode.monitoring.trace2config import check_socket_path
from custode.monitoring.trace2sessions import Sessions

__all__ = ["RepositoryOf", "Trace2Listener"]

_PREFIX = b'{"event":"'
_NEEDED = frozenset((b"start", b"cmd_name", b"def_repo", b"exit", b"atexit", b"signal"))

#: Maps a repository path git reported to (root, path relative to it), or None if the
#: path is not one of the fleet's repositories.
RepositoryOf = Callable[[str], tuple[str, str] | None]

MAX_LINE = 1 << 20  # an event longer than this is not git's: skipped, counted malformed


@dataclass
class _Connection:
    partial: bytes = b""
    skipping: bool = False  # inside an over-long line: drop up to the next newline


_LISTENER, _WAKE = object(), object()


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
        mode: int = 0o600,
        max_connections: int | None = None,
    ) -> None:
        self.socket_path = check_socket_path(socket_path)
        self.histograms = histograms
        self.repository_of = repository_of
        self.max_buffer = max_buffer
        self.mode = mode
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.max_connections = max_connections or max(16, min(soft - 256, 65_536))
        self.received = self.dropped = self.connections = self.rejected = 0
        self.observed = 0
        self.skipped = 0  # events a duration does not need, not parsed
        self._malformed = [0, 0]  # by the reader (truncated lines), by the parser
        self._buffer: deque[bytes] = deque()
        self._sessions = Sessions()
        self._ready = threading.Event()  # lines are waiting for the parser
        self._stopping = threading.Event()
        self._parsing = False
        self._sock: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._threads: list[threading.Thread] = []

    @property
    def malformed(self) -> int:
        return sum(self._malformed)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Bind the socket (clearing a stale one) and start the reader and parser threads.
        PathNotFoundError if the socket cannot be made, LockedError if another process
        listens on it."""
        if self._sock is not None:
            return
        self._sock = sock = self._bind()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._spare = os.open(os.devnull, os.O_RDONLY)  # freed to shed a connection at EMFILE
        self._selector.register(self._sock, selectors.EVENT_READ, _LISTENER)
        self._selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        self._stopping.clear()
        self._threads = [
            threading.Thread(
                target=self._read_loop, args=(sock,), name="trace2-reader", daemon=True
            ),
            threading.Thread(target=self._parse_loop, name="trace2-parser", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop both threads, close every connection (git carries on untraced) and remove
        the socket file if it is still ours. Events not yet parsed are discarded."""
        if self._sock is None:
            return
        self._stopping.set()
        self._ready.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        for thread in self._threads:
            thread.join(timeout)
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

    def __enter__(self) -> Trace2Listener:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every event read so far is parsed (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        while self._buffer or self._parsing:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

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

    def _read_loop(self, listening: socket.socket) -> None:
        while not self._stopping.is_set():
            for key, _ in self._selector.select(timeout=1.0):
                if key.data is _LISTENER:
                    self._accept(listening)
                elif key.data is _WAKE:
                    return
                else:
                    self._drain(key.fileobj, key.data)  # type: ignore[arg-type]

    def _accept(self, listening: socket.socket) -> None:
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
            self._selector.register(conn, selectors.EVENT_READ, _Connection())
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

    def _drain(self, conn: socket.socket, state: _Connection) -> None:
        try:
            data = conn.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if state.partial:
                self._malformed[0] += 1  # git was killed mid-event
            self._selector.unregister(conn)
            conn.close()
            return
        lines = data.split(b"\n")
        lines[0] = state.partial + lines[0]
        state.partial = lines.pop()
        if state.skipping and lines:
            lines.pop(0)  # the tail of the over-long line
            state.skipping = False
        if len(state.partial) > MAX_LINE:
            state.partial, state.skipping = b"", True
            self._malformed[0] += 1
        if not lines:
            return
        self.received += len(lines)
        room = self.max_buffer - len(self._buffer)  # only this thread appends
        if room < len(lines):
            self.dropped += len(lines) - max(room, 0)
            lines = lines[: max(room, 0)]
        self._buffer.extend(lines)
        self._ready.set()

    # ------------------------------------------------------------------ parser thread

    def _parse_loop(self) -> None:
        while not self._stopping.is_set():
            self._ready.wait(1.0)
            self._ready.clear()
            while self._buffer and not self._stopping.is_set():
                self._parsing = True
                self._handle(self._buffer.popleft())
            self._parsing = False

    def _handle(self, line: bytes) -> None:
        # most events (regions, data, ancestry) say nothing a duration needs: skip them
        # unparsed, which keeps custode's CPU (shared with the git it measures) low
        if line.startswith(_PREFIX):
            end = line.find(b'"', len(_PREFIX))
            if end > 0 and line[len(_PREFIX) : end] not in _NEEDED:
                self.skipped += 1
                return
        try:
            event = json.loads(line)
            name, sid = event["event"], event["sid"]
            if not isinstance(name, str) or not isinstance(sid, str) or not sid:
                raise ValueError("not a trace2 event")
            observation = self._sessions.feed(name, sid, event)
        except (ValueError, TypeError, KeyError):
            self._malformed[1] += 1
            return
        if observation is not None:
            root, repository = self._repository(observation.path) or (None, None)
            self.histograms.observe(
                observation.operation, observation.seconds, source="trace2",
                repository=repository, root=root,
            )  # fmt: skip
            self.observed += 1

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

        yield counter("events_total", "trace2 events read from git processes.", self.received)
        yield counter(
            "events_dropped_total",
            "trace2 events dropped because the parser fell behind (git never waits).",
            self.dropped,
        )
        yield counter(
            "events_malformed_total",
            "Lines on the trace2 socket that were not complete trace2 events.",
            self.malformed,
        )
        yield counter("connections_total", "git processes that connected.", self.connections)
        yield counter(
            "connections_rejected_total",
            "git processes turned away (connection limit, no file descriptors): untraced.",
            self.rejected,
        )
        yield counter("processes_total", "git processes observed to their exit.", self.observed)
        yield GaugeMetricFamily(
            "custode_trace2_buffered_events", "Events waiting to be parsed.", len(self._buffer)
        )
        yield GaugeMetricFamily(
            "custode_trace2_listening", "1 while the trace2 socket is open.", int(bool(self._sock))
        )


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
