"""``custode serve`` against abusive clients, with real sockets on 127.0.0.1.

Slow-loris clients (a request head trickled one byte at a time, so no single read ever
times out), a flood of wrong passwords, oversized heads and clients that never read the
answer: a scraper keeps getting ``/metrics``, each connection ends by its deadline, and one
client address cannot take the whole server. Linux routes all of 127.0.0.0/8 to the
loopback interface, so 127.0.0.2 serves as "another client address".
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import pytest

from custode.serve.connections import ConnectionTable, client_key
from custode.serve.http import MetricsApp, MetricsServer
from custode.serve.webconfig import WebConfigWatcher, load_web_config

PASSWORD = "s3cret pass"  # noqa: S105 (a test password)
HEAD = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"
OTHER = "127.0.0.2"  # another client address on the loopback interface


@dataclass
class CountingExporter:
    text: bytes = b"# TYPE fake gauge\nfake 1.0\n"
    last_error: str = ""
    expositions: int = 0

    def refresh(self) -> None:
        pass

    def exposition(self) -> bytes:
        self.expositions += 1
        return self.text


@dataclass
class Server:
    port: int
    url: str
    exporter: CountingExporter
    table: ConnectionTable

    def closed(self) -> dict[str, float]:
        """custode_http_connections_closed_total by reason."""
        return {
            sample.labels["reason"]: sample.value
            for family in self.table.collect()
            for sample in family.samples
            if sample.name == "custode_http_connections_closed_total"
        }


@dataclass
class Servers:
    started: list[MetricsServer] = field(default_factory=list)

    def start(
        self, *, exporter: CountingExporter | None = None, web: Path | None = None,
        **limits: float,
    ) -> Server:  # fmt: skip
        exporter = exporter or CountingExporter()
        watcher = WebConfigWatcher(load_web_config(web), check_every=0) if web else None
        app = MetricsApp(exporter, lambda: None, watcher.current if watcher else None)
        server = MetricsServer(("127.0.0.1", 0), app, web=watcher, **limits)  # type: ignore[arg-type]
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self.started.append(server)
        return Server(server.server_port, server.url, exporter, server.table)


@pytest.fixture
def servers() -> Iterator[Servers]:
    made = Servers()
    yield made
    for server in made.started:
        server.shutdown()
        server.server_close()


def connect(port: int, source: str = "127.0.0.1", *, rcvbuf: int = 0) -> socket.socket:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.settimeout(30)  # a hang guard: every bound a test checks is below it
    sock.connect(("127.0.0.1", port))
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed ``sock`` (EOF or reset waiting), without blocking."""
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class Trickle:
    """Slow-loris clients: each connection sends the start of a request head, then one
    byte of a header that never ends every ``every`` seconds, so no read ever times out."""

    def __init__(self, port: int, count: int, *, source: str = "127.0.0.1", every: float = 0.3):
        self.socks = [connect(port, source) for _ in range(count)]
        for sock in self.socks:
            self._send(sock, HEAD + b"X-Slow: ")
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> None:
        with contextlib.suppress(OSError):  # closed by the server: what the tests look for
            sock.send(data, socket.MSG_DONTWAIT)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            for sock in self.socks:
                self._send(sock, b"a")

    def still_open(self) -> int:
        return sum(not closed_by_server(sock) for sock in self.socks)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for sock in self.socks:
            sock.close()


@pytest.fixture
def trickle() -> Iterator[Callable[..., Trickle]]:
    made: list[Trickle] = []

    def start(port: int, count: int, **kwargs: object) -> Trickle:
        made.append(Trickle(port, count, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield start
    for t in made:
        t.close()


def scrape(
    port: int, *, source: str = "127.0.0.1", auth: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> tuple[int, float]:  # fmt: skip
    """One GET /metrics from ``source``: the status and the seconds it took. A refused or
    dropped connection raises, as it fails a Prometheus scrape."""
    began = time.monotonic()
    sock = connect(port, source)
    if tls is not None:
        sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
    with sock:
        extra = f"Authorization: Basic {auth}\r\n".encode() if auth else b""
        sock.sendall(HEAD + extra + b"Connection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1."), f"no HTTP answer: {data[:200]!r}"
    return int(data.split()[1]), time.monotonic() - began


def wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --------------------------------------------------------------------------- slow clients


def test_one_client_is_an_ipv4_address_or_an_ipv6_64() -> None:
    """An IPv6 host has a /64 to pick addresses from: counting by address would let it
    open max_connections_per_client connections from each of 2**64 of them."""
    assert (
        client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    )
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("fe80::1%eth0") == "fe80::/64"


def test_scraper_answered_while_40_clients_trickle_from_its_own_address(
    servers: Servers, trickle: Callable[..., Trickle]
) -> None:
    """The issue's case: 40 connections trickling one byte at a time used to hold every
    slot ("too many connections"); now a client address keeps at most
    max_connections_per_client connections waiting for their head (the oldest make
    room), so a scraper on the same host still gets in."""
    server = servers.start()  # the defaults: 32 connections, 8 per client address
    slow = trickle(server.port, 40)
    time.sleep(1)  # a few bytes trickled on each connection
    for _ in range(5):
        status, seconds = scrape(server.port)
        assert status == 200
        assert seconds < 5
    assert slow.still_open() <= 8


def test_scraper_from_another_address_while_one_address_trickles(
    servers: Servers, trickle: Callable[..., Trickle]
) -> None:
    server = servers.start(max_connections_per_client=4)
    slow = trickle(server.port, 40, source=OTHER)
    time.sleep(1)
    assert wait_until(lambda: slow.still_open() <= 4, 10)  # the rest were closed
    for _ in range(5):
        status, seconds = scrape(server.port)
        assert (status, seconds < 5) == (200, True)
    assert server.exporter.expositions == 5
    assert server.closed()["per_client"] >= 36  # counted, for custode_http_* metrics


def test_full_server_makes_room_for_a_new_client(
    servers: Servers, trickle: Callable[..., Trickle]
) -> None:
    """Every slot taken by clients still sending their head, from several addresses: the
    oldest of the busiest address is closed for a newcomer, not the newcomer."""
    server = servers.start(max_connections=6, max_connections_per_client=4)
    first = trickle(server.port, 4, source=OTHER)
    second = trickle(server.port, 2, source="127.0.0.3")
    time.sleep(0.5)
    status, _ = scrape(server.port)
    assert status == 200
    assert first.still_open() == 3 and second.still_open() == 2


def test_a_trickling_connection_is_closed_at_the_request_deadline(
    servers: Servers, trickle: Callable[..., Trickle]
) -> None:
    """A byte every 0.05 s never trips a per-read timeout; the whole request's deadline
    (here 3 s, from accept) closes it anyway. The per-read timeout is the request timeout
    too: only a trickle stalled for nearly all of it would let a read time out first (the
    connection then ends uncounted), so the bytes come far more often than that."""
    began = time.monotonic()
    server = servers.start(request_timeout=3.0)
    slow = trickle(server.port, 3, every=0.05)
    assert wait_until(lambda: slow.still_open() == 0, 30)
    assert time.monotonic() - began >= 3.0  # not before the deadline
    assert server.exporter.expositions == 0
    assert server.closed()["deadline"] == 3


def test_a_client_that_does_not_read_the_answer_is_cut_at_the_deadline(
    servers: Servers,
) -> None:
    """The deadline covers the response too: a client that asks for a large exposition and
    stops reading loses its connection by then instead of holding a thread."""
    exporter = CountingExporter(text=b"x" * (16 << 20))
    began = time.monotonic()
    server = servers.start(exporter=exporter, request_timeout=5.0)
    sock = connect(server.port, rcvbuf=4096)
    with sock:
        sock.sendall(HEAD + b"\r\n")
        assert select.select([sock], [], [], 30)[0]  # the answer began (or the connection ended)
        # not reading: the connection is cut, by the deadline or by its write's own timeout
        # (the same 5 s, from a moment later), either way not before 5 s after accept
        assert wait_until(lambda: len(server.table) == 0, 30)
        assert time.monotonic() - began >= 5.0
        received = 0
        try:
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
    assert 0 < received < len(exporter.text)


def test_an_oversized_request_head_is_refused_early(servers: Servers) -> None:
    """A request head is capped (16 KiB); http.server alone reads 100 lines of 64 KiB."""
    server = servers.start()
    sock = connect(server.port)
    with sock:
        filler = b"".join(b"X-Fill-%d: %s\r\n" % (i, b"y" * 8000) for i in range(5))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # answered early
            sock.sendall(HEAD + filler + b"\r\n")
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    assert data.split(b"\r\n", 1)[0] == b"HTTP/1.0 431 Request Header Fields Too Large"
    assert server.exporter.expositions == 0


def test_tls_clients_that_never_finish_the_handshake(
    servers: Servers, trickle: Callable[..., Trickle], tmp_path: Path
) -> None:
    """The handshake is part of the request: 40 connections that send one byte of a TLS
    record and then trickle neither block a TLS scraper nor outlive the deadline."""
    cert, key = self_signed(tmp_path)
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n")
    server = servers.start(web=web, request_timeout=10.0)
    stuck = [connect(server.port) for _ in range(40)]
    try:
        for sock in stuck:
            sock.sendall(b"\x16")  # the first byte of a ClientHello, and nothing more
        time.sleep(0.5)
        context = ssl.create_default_context(cafile=str(cert))
        status, seconds = scrape(server.port, tls=context)
        # well before the 10 s deadline: handshaken in the accept loop, the stuck
        # connections would keep the scraper out until they timed out, if ever
        assert (status, seconds < 8) == (200, True)
        assert wait_until(lambda: not any(not closed_by_server(s) for s in stuck), 30)
    finally:
        for sock in stuck:
            sock.close()


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key, and the key (PEM files)."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                         serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path


# --------------------------------------------------------------------------- authentication


def test_wrong_password_flood_does_not_starve_a_scraper(servers: Servers, tmp_path: Path) -> None:
    """40 clients from one address send wrong passwords as fast as they can. Each costs a
    bcrypt check (~50 ms at cost 10, one at a time): a connection counts as a client's
    only once its credentials are checked, so the flood stays within its address's share
    and the scraper's own check waits behind a handful of them at most."""
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    server = servers.start(web=web, request_timeout=20.0)
    good = base64.b64encode(f"prometheus:{PASSWORD}".encode()).decode()
    bad = base64.b64encode(b"prometheus:guess").decode()
    stop = threading.Event()

    def guess() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError, AssertionError):  # closed to make room: again
                scrape(server.port, source=OTHER, auth=bad)

    flood = [threading.Thread(target=guess, daemon=True) for _ in range(40)]
    for thread in flood:
        thread.start()
    try:
        time.sleep(1)
        for _ in range(5):
            status, seconds = scrape(server.port, auth=good)
            assert (status, seconds < 15) == (200, True)  # well before the 20 s deadline
    finally:
        stop.set()
        for thread in flood:
            thread.join(30)
    assert server.exporter.expositions == 5
