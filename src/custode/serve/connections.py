"""The connections of ``custode serve``: one deadline each, and who may hold how many.

A per-read timeout does not bound a request: a client that sends one byte every 20 s
never trips it. So every connection gets a deadline from the moment it is accepted, for
all of it (TLS handshake, request head, credentials check, response), and the server's
accept loop closes whatever is still open when it passes (``expire``).

Capacity is bounded twice: ``max_connections`` in all, ``per_client`` per client address
(an IPv6 client by its /64, which one host or user usually has whole). A connection is
*pending* until it has sent a complete request head with valid credentials, then
*proven*. When a new connection would go over a bound, the oldest pending connection of
that address (for the global bound: of the address holding the most) is closed to make
room; only when every connection in the way is proven is the new one refused. A real
scraper sends its head at once and is proven within a round trip, so slow-loris clients
only ever displace each other, even from the scraper's own address, while a client that
is being answered is never cut short by newcomers.

What was closed and why is counted (``collect``: ``custode_http_connections_closed_total``
by reason) and summed up in the log at most once every REPORT_EVERY seconds, so a flood
of connections cannot flood the log too.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import count

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger("custode.serve.http")

REPORT_EVERY = 60.0  # seconds between log lines summing up closed connections
REASONS = {  # label value: how the log line says it
    "per_client": "evicted for a newer connection from the same client",
    "server_full": "evicted for a newer connection while the server was full",
    "deadline": "past the request deadline",
    "refused": "refused (every connection in the way was being answered)",
}


def client_key(host: str) -> str:
    """What the per-client bound counts by: the IPv4 address, or the IPv6 /64."""
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def cut(sock: socket.socket) -> None:
    """End a connection another thread may be blocked on: its read or write fails at once.

    Only ``shutdown``, never ``close``, from here: the owning thread closes the socket,
    so its descriptor cannot be reused under it. The base class's method is called even
    for TLS sockets, whose own ``shutdown`` changes state the owning thread still uses.
    """
    with contextlib.suppress(OSError):  # already closed by the client or by its thread
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


@dataclass(eq=False)
class Connection:
    sock: socket.socket
    client: str
    deadline: float
    order: int
    proven: bool = False
    closed: threading.Event = field(default_factory=threading.Event)


class ConnectionTable:
    """The open connections; thread-safe. ``admit`` runs in the accept loop, ``prove`` and
    ``release`` in the connections' threads, ``expire`` now and then in the accept loop."""

    def __init__(
        self, *, max_connections: int, per_client: int, timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        if max_connections < 1 or per_client < 1 or timeout <= 0:
            raise ValueError("connection limits and the timeout must be positive")
        self.max_connections, self.per_client, self.timeout = max_connections, per_client, timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[Connection, None] = {}  # insertion order is accept order
        self._order = count()
        self._closed: Counter[str] = Counter(dict.fromkeys(REASONS, 0))
        self._reported_counts = Counter(self._closed)
        self._reported = clock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)

    def admit(self, sock: socket.socket, host: str) -> Connection | None:
        """Register a new connection, closing pending ones to make room if needed; None
        when every connection in the way is proven (the caller closes ``sock``)."""
        key = client_key(host)
        with self._lock:
            same = [c for c in self._open if c.client == key]
            if len(same) >= self.per_client and not self._evict(same, "per_client"):
                self._closed["refused"] += 1
                return None
            if len(self._open) >= self.max_connections and not self._evict_busiest():
                self._closed["refused"] += 1
                return None
            conn = Connection(sock, key, self._clock() + self.timeout, next(self._order))
            self._open[conn] = None
            return conn

    def prove(self, conn: Connection) -> bool:
        """The connection sent its head and credentials: keep it from eviction. False
        when it was closed meanwhile (evicted or past its deadline)."""
        with self._lock:
            if conn.closed.is_set():
                return False
            conn.proven = True
            return True

    def release(self, conn: Connection) -> None:
        """The connection's thread is done with it."""
        with self._lock:
            self._open.pop(conn, None)
            conn.closed.set()

    def expire(self) -> None:
        """Close every connection past its deadline; log what was closed, now and then."""
        now = self._clock()
        with self._lock:
            for conn in [c for c in self._open if c.deadline <= now]:
                self._close(conn, "deadline")
            new = self._closed - self._reported_counts
            summary = ""
            if new and now - self._reported >= REPORT_EVERY:
                summary = "; ".join(f"{new[why]} {REASONS[why]}" for why in REASONS if new[why])
                self._reported_counts, self._reported = Counter(self._closed), now
        if summary:
            log.warning("closed connections of abusive or slow clients: %s", summary)

    def collect(self) -> Iterator[Metric]:
        """The connections open now and those closed so far, by reason (a collector)."""
        with self._lock:
            held, closed = len(self._open), dict(self._closed)
        yield GaugeMetricFamily(
            "custode_http_connections", "Connections to custode serve open now.", value=held
        )
        family = CounterMetricFamily(
            "custode_http_connections_closed", "Connections custode serve closed early, by "
            "reason: per_client, server_full (evicted for a newer one), deadline, refused.",
            labels=["reason"],
        )  # fmt: skip
        for reason, n in closed.items():
            family.add_metric([reason], n)
        yield family

    def close_all(self) -> None:
        with self._lock:
            for conn in list(self._open):
                self._close(conn, "")

    def _evict(self, candidates: list[Connection], why: str) -> bool:
        pending = [c for c in candidates if not c.proven]
        if not pending:
            return False
        self._close(min(pending, key=lambda c: c.order), why)
        return True

    def _evict_busiest(self) -> bool:
        held = Counter(c.client for c in self._open)
        pending = [c for c in self._open if not c.proven]
        if not pending:
            return False
        busiest = max(pending, key=lambda c: (held[c.client], -c.order)).client
        return self._evict([c for c in pending if c.client == busiest], "server_full")

    def _close(self, conn: Connection, why: str) -> None:
        self._open.pop(conn, None)
        conn.closed.set()
        cut(conn.sock)
        if why:  # not at shutdown
            self._closed[why] += 1
