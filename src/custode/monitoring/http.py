"""The HTTP side of ``custode serve``: a WSGI app for ``/metrics`` and ``/healthz``, a
threaded server with optional TLS, and the thread that refreshes the exporter.

Built from the standard library (``wsgiref``, ``socketserver``, ``ssl``): a scrape only
copies the exporter's cached exposition, so a small threaded server is plenty, and no
web framework is needed. Each connection gets the TLS context of the web config current
at that moment (certificates rotate without a restart), is handshaken in its own thread
(a slow client never blocks ``accept``), and has a time limit. Connections beyond
``max_connections`` are closed at once rather than queued behind a slow one.
"""

from __future__ import annotations

import gzip
import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from custode.monitoring.webconfig import WebConfig, WebConfigWatcher

log = logging.getLogger("custode.monitoring.http")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REALM = 'Basic realm="custode"'
STALE_AFTER_INTERVALS = 3
MIN_REFRESH_INTERVAL = 1.0


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
    """The WSGI app: basic auth (when configured) on every path, then the routes."""

    def __init__(
        self, exporter: Exporter, health: Callable[[], str | None],
        web: Callable[[], WebConfig] | None = None,
    ) -> None:  # fmt: skip
        self.exporter, self.health, self.web = exporter, health, web

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        web = self.web() if self.web is not None else None
        headers = [("Server", "custode"), *(web.headers if web else ())]
        status, body, extra = self._route(environ, web)
        headers += extra
        if not any(name == "Content-Type" for name, _ in headers):
            headers.append(("Content-Type", "text/plain; charset=utf-8"))
        start_response(status, [*headers, ("Content-Length", str(len(body)))])
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    def _route(
        self, environ: WSGIEnvironment, web: WebConfig | None
    ) -> tuple[str, bytes, list[tuple[str, str]]]:
        auth = web.auth if web is not None else None
        if auth is not None and not auth.check(environ.get("HTTP_AUTHORIZATION")):
            return "401 Unauthorized", b"unauthorized\n", [("WWW-Authenticate", REALM)]
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if path not in ("/metrics", "/healthz"):
            return "404 Not Found", b"not found\n", []
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", b"use GET\n", [("Allow", "GET, HEAD")]
        if path == "/healthz":
            reason = self.health()
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
    timeout = 30.0  # per connection: a slow or silent client cannot hold a thread for long
    server_version = "custode"

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(self.timeout)
            self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class MetricsServer(socketserver.ThreadingMixIn, WSGIServer):
    """A threaded WSGI server on one address, speaking TLS when the web config says so."""

    daemon_threads = True
    allow_reuse_address = True  # rebinding over TIME_WAIT; a live listener still fails
    allow_reuse_port = False
    request_queue_size = 64

    def __init__(
        self, address: tuple[str, int], app: WSGIApplication, *,
        web: WebConfigWatcher | None = None, max_connections: int = 32,
    ) -> None:  # fmt: skip
        """Binds and listens at once: OSError (errno EADDRINUSE …) if it cannot."""
        family, host = resolve(*address)
        self.address_family = family
        self.web = web
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__((host, address[1]), _Handler)
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
        if not self._slots.acquire(blocking=False):
            log.warning("too many connections; closing one from %s", client_address[0])
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Failed handshakes, resets and timeouts are the client's business, not a log line.
        log.debug("connection from %s failed", client_address[0], exc_info=True)


def serve_until(server: MetricsServer, refresher: Refresher, stop: threading.Event) -> None:
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
