"""The HTTP side of ``custode serve``: a WSGI app for ``/metrics``, ``/healthz`` and the
landing page ``/``, a threaded server with optional TLS, and the thread that refreshes the
exporter.

Built from the standard library (``wsgiref``, ``socketserver``, ``ssl``): a scrape only
copies the exporter's cached exposition, so a small threaded server is plenty, and no
web framework is needed. Each connection gets the TLS context of the web config current
at that moment (certificates rotate without a restart) and is handshaken in its own thread
(a slow client never blocks ``accept``). Clients are assumed abusive: every connection has
one deadline for all of it, the request head is capped at MAX_HEAD_BYTES, credentials are
checked right after the head and before anything else, request bodies are never read, and
``connections.ConnectionTable`` keeps one client address from taking every connection.
"""

from __future__ import annotations

import gzip
import io
import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import IO, Any, Protocol, cast
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer
from wsgiref.types import StartResponse, WSGIEnvironment

from custode.interrupts import StopFlag
from custode.monitoring import trace2
from custode.serve import landing
from custode.serve.connections import Connection, ConnectionTable
from custode.serve.webconfig import WebConfig, WebConfigWatcher

log = logging.getLogger("custode.serve.http")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REALM = 'Basic realm="custode"'
STALE_AFTER_INTERVALS = 3
MIN_REFRESH_INTERVAL = 1.0
REQUEST_TIMEOUT = 10.0  # Prometheus' default scrape_timeout: a later answer is wasted anyway
MAX_CONNECTIONS = 32
MAX_CONNECTIONS_PER_CLIENT = 8
MAX_HEAD_BYTES = 16 * 1024  # Prometheus sends ~300 bytes; http.server alone allows 6.5 MB
LINGER_BYTES = 256 * 1024  # input drained after an early answer, so it is not lost to a reset
LINGER_SECONDS = 1.0


class Exporter(Protocol):
    """What the server needs of ``custode.monitoring.exporter.Exporter``."""

    last_error: str  # empty when the last refresh succeeded

    def refresh(self) -> None: ...

    def exposition(self) -> bytes: ...


class Refresher:
    """Calls ``exporter.refresh()`` now and then every ``interval`` seconds, in a thread.

    Scrapes never wait for it: they read the exporter's last exposition. ``health()``
    says why the data cannot be trusted: the last refresh failed, or none has succeeded
    for more than STALE_AFTER_INTERVALS intervals (counted from start before the first).
    """

    def __init__(
        self, exporter: Exporter, interval: float, *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.exporter = exporter
        self.interval = max(interval, MIN_REFRESH_INTERVAL)
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started = self._last_ok = clock()
        self._succeeded = False
        self._error = ""
        self._thread: threading.Thread | None = None
        self.after: list[Callable[[], None]] = []  # run after each refresh (alert rules)

    def start(self) -> None:
        self._started = self._clock()
        self._thread = threading.Thread(target=self._run, name="custode-refresh", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop refreshing; waits up to ``timeout`` for a refresh in progress."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def refresh_once(self) -> None:
        try:
            self.exporter.refresh()
            error = self.exporter.last_error
        except Exception as exc:  # refresh() should never raise; keep serving if it does
            log.exception("metrics refresh failed")
            error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._error = error
            if not error:
                self._last_ok, self._succeeded = self._clock(), True
        for hook in self.after:
            try:
                hook()
            except Exception:  # an alerting bug must not stop the metrics
                log.exception("after-refresh step failed")

    def health(self) -> str | None:
        """None when healthy, else the reason (one line)."""
        with self._lock:
            error, last_ok, succeeded = self._error, self._last_ok, self._succeeded
        if error:
            return f"the last refresh failed: {error}"
        age = self._clock() - (last_ok if succeeded else self._started)
        limit = STALE_AFTER_INTERVALS * self.interval
        if age <= limit:
            return None
        bound = f"more than {STALE_AFTER_INTERVALS} refresh intervals of {self.interval:g}s"
        if succeeded:
            return f"the last successful refresh was {age:.0f}s ago ({bound})"
        return f"no refresh has finished in {age:.0f}s ({bound})"

    def _run(self) -> None:
        while not self._stop.is_set():
            began = self._clock()
            self.refresh_once()
            if self._stop.wait(max(0.0, self.interval - (self._clock() - began))):
                return


class MetricsApp:
    """The WSGI app of the routes, and the basic-auth check (when configured) that the
    server makes of every request, whatever its path, before calling it."""

    def __init__(
        self, exporter: Exporter, health: Callable[[], str | None],
        web: Callable[[], WebConfig] | None = None,
    ) -> None:  # fmt: skip
        self.exporter, self.health, self.web = exporter, health, web
        self.landing = landing.landing_page()

    def authorized(self, header: str | None, client: str, abandoned: Callable[[], bool]) -> bool:
        """Whether the Authorization header ``header`` lets the request in (always, without
        basic auth); ``client`` is whom to queue the check with (one check at a time
        each), ``abandoned`` says the connection was closed: skip the costly check."""
        auth = self.web().auth if self.web is not None else None
        return auth is None or auth.check(header, client=client, abandoned=abandoned)

    def unauthorized(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        """The answer to a request that ``authorized`` refused."""
        extra = [("WWW-Authenticate", REALM)]
        return self._respond(environ, start_response, "401 Unauthorized", b"unauthorized\n", extra)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        return self._respond(environ, start_response, *self._route(environ))

    def _respond(
        self, environ: WSGIEnvironment, start_response: StartResponse, status: str,
        body: bytes, extra: list[tuple[str, str]],
    ) -> Iterable[bytes]:  # fmt: skip
        web = self.web() if self.web is not None else None
        headers = [("Server", "custode"), *(web.headers if web else ()), *extra]
        if not any(name == "Content-Type" for name, _ in headers):
            headers.append(("Content-Type", "text/plain; charset=utf-8"))
        start_response(status, [*headers, ("Content-Length", str(len(body)))])
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    def _route(self, environ: WSGIEnvironment) -> tuple[str, bytes, list[tuple[str, str]]]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if path not in ("/", "/metrics", "/healthz"):
            return "404 Not Found", b"not found\n", []
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", b"use GET\n", [("Allow", "GET, HEAD")]
        if path == "/":
            return "200 OK", self.landing, [("Content-Type", landing.CONTENT_TYPE)]
        if path == "/healthz":
            reason = self.health() or trace2.health()  # a dead or restarted trace2 thread
            if reason is None:
                return "200 OK", b"ok\n", []
            return "503 Service Unavailable", f"{reason}\n".encode(), []
        return self._metrics(environ)

    def _metrics(self, environ: WSGIEnvironment) -> tuple[str, bytes, list[tuple[str, str]]]:
        try:
            body = self.exporter.exposition()
        except Exception:  # a bug in a collector: say so, keep serving
            log.exception("metrics exposition failed")
            return "500 Internal Server Error", b"exposition failed\n", []
        headers = [("Content-Type", CONTENT_TYPE)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = gzip.compress(body, compresslevel=6)
            headers += [("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")]
        return "200 OK", body, headers


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT`` or ``:PORT`` (all IPv4 interfaces); ValueError if not."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError("expected HOST:PORT with a port from 0 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("put an IPv6 address in brackets, as [::1]:9877")
    return host or "0.0.0.0", int(port_text)  # noqa: S104 (":PORT" asks for every interface)


def resolve(host: str, port: int) -> tuple[socket.AddressFamily, str]:
    """The address family and numeric address to bind; OSError if the host is unknown."""
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    return family, str(sockaddr[0])


class _Handler(WSGIRequestHandler):
    """One request per connection (HTTP/1.0 answers), read and checked in this order: TLS
    handshake, request head (at most MAX_HEAD_BYTES), credentials; only then is the
    connection proven and the app called. The body, if any, is never read."""

    server: MetricsServer
    server_version = "custode"

    def __init__(
        self, request: Any, client_address: Any, server: MetricsServer, conn: Connection
    ) -> None:
        self.conn = conn
        self.linger = False
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        self.request.settimeout(self.server.request_timeout)  # no read outlasts the deadline
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()
        super().setup()

    def handle(self) -> None:
        head = self._read_head()
        if head is None:
            return
        self.raw_requestline, rest = head
        rfile, self.rfile = self.rfile, io.BytesIO(rest)  # parse_request reads the headers
        try:
            parsed = self.parse_request()
        finally:
            self.rfile = rfile
        if not parsed:  # it sent an error answer
            self.linger = True
            return
        self.linger = bool(
            self.headers.get("Content-Length") or self.headers.get("Transfer-Encoding")
        )
        app = self.server.metrics
        credentials = self.headers.get("Authorization")
        if not app.authorized(credentials, self.conn.client, self.conn.closed.is_set):
            self._run(app.unauthorized)
        elif self.server.table.prove(self.conn):
            self._run(app)

    def _run(self, app: Any) -> None:
        out = cast("IO[bytes]", self.wfile)
        handler = ServerHandler(self.rfile, out, self.get_stderr(), self.get_environ())
        handler.request_handler = self  # type: ignore[attr-defined]  # for its log lines
        handler.run(app)

    def _read_head(self) -> tuple[bytes, bytes] | None:
        """The request line and the header lines up to the blank one; None when the client
        left, or sent more than MAX_HEAD_BYTES (answered 414 or 431)."""
        lines: list[bytes] = []
        size = 0
        while True:
            line = self.rfile.readline(MAX_HEAD_BYTES - size + 1)
            size += len(line)
            if not line:
                return None
            if size > MAX_HEAD_BYTES:
                self.requestline = self.request_version = self.command = ""
                self.linger = True
                self.send_error(431 if lines else 414)
                return None
            lines.append(line)
            if len(lines) > 1 and line in (b"\r\n", b"\n"):
                return lines[0], b"".join(lines[1:])

    def finish(self) -> None:
        super().finish()
        if self.linger:
            self._drain()

    def _drain(self) -> None:
        """After answering before the client finished sending: read a little of what it
        still sends, briefly, so that closing with unread input does not reset the
        connection before the client has read the answer."""
        try:
            self.request.shutdown(socket.SHUT_WR)
            self.request.settimeout(LINGER_SECONDS)
            deadline, drained = time.monotonic() + LINGER_SECONDS, 0
            while drained < LINGER_BYTES and time.monotonic() < deadline:
                data = self.request.recv(65536)
                if not data:
                    return
                drained += len(data)
        except OSError:  # ssl.SSLError too: a reset or timeout ends the courtesy
            return

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class MetricsServer(WSGIServer):
    """A WSGI server on one address, a thread per connection, speaking TLS when the web
    config says so; ``ConnectionTable`` bounds the connections and their time."""

    allow_reuse_address = True  # rebinding over TIME_WAIT; a live listener still fails
    allow_reuse_port = False
    request_queue_size = 64

    def __init__(
        self, address: tuple[str, int], app: MetricsApp, *, web: WebConfigWatcher | None = None,
        max_connections: int = MAX_CONNECTIONS,
        max_connections_per_client: int = MAX_CONNECTIONS_PER_CLIENT,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:  # fmt: skip
        """Binds and listens at once: OSError (errno EADDRINUSE …) if it cannot."""
        family, host = resolve(*address)
        self.address_family = family
        self.web = web
        self.metrics = app
        self.request_timeout = request_timeout
        self.table = ConnectionTable(
            max_connections=max_connections, per_client=max_connections_per_client,
            timeout=request_timeout,
        )  # fmt: skip
        # the handler is made with its Connection in _connection, not by finish_request
        super().__init__((host, address[1]), _Handler)  # type: ignore[arg-type]
        self.set_app(app)

    @property
    def tls(self) -> bool:
        return self.web is not None and self.web.config.ssl_context is not None

    @property
    def url(self) -> str:
        host, port = self.server_name, self.server_port
        shown = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{shown}:{port}"

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host up in DNS (getfqdn), which can hang.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = host.decode() if isinstance(host, bytes) else str(host)
        self.server_port = int(port)
        self.setup_environ()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        context = self.web.current().ssl_context if self.web is not None else None
        if context is not None:  # the handshake happens in the connection's thread
            sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        conn = self.table.admit(request, client_address[0])
        if conn is None:  # every connection in the way is being answered
            self.shutdown_request(request)
            return
        threading.Thread(
            target=self._connection, args=(request, client_address, conn),
            name="custode-http-conn", daemon=True,
        ).start()  # fmt: skip

    def _connection(self, request: Any, client_address: Any, conn: Connection) -> None:
        try:
            _Handler(request, client_address, self, conn)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.table.release(conn)
            self.shutdown_request(request)

    def service_actions(self) -> None:
        # serve_forever calls this at least every poll interval (0.5 s in serve_until)
        self.table.expire()

    def server_close(self) -> None:
        self.table.close_all()
        super().server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Failed handshakes, resets and deadlines are the client's business, not a log line.
        log.debug("connection from %s failed", client_address[0], exc_info=True)


def serve_until(server: MetricsServer, refresher: Refresher, stop: StopFlag) -> None:
    """Refresh and serve until ``stop`` is set (by a signal handler), then close cleanly:
    stop accepting, let the refresh in progress finish (briefly), close the socket."""
    refresher.start()
    thread = threading.Thread(target=server.serve_forever, args=(0.5,), name="custode-http")
    thread.start()
    try:
        # wake up now and then: a signal delivered to another thread (the kernel picks any
        # thread when the main one has one pending, e.g. SIGCHLD from a job) runs its Python
        # handler only once the main thread executes again
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
        refresher.stop()
