"""``custode serve``: the HTTP layer with a fake exporter, then the real command in a
subprocess (metrics, health, basic auth, TLS, bad inputs) and a real Prometheus scraping it.
"""

from __future__ import annotations

import base64
import datetime
import gzip
import http.client as http_client
import ipaddress
import os
import queue
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from custode.errors import ConfigError
from custode.serve.http import CONTENT_TYPE, MetricsApp, MetricsServer, Refresher, parse_listen
from custode.serve.webconfig import BasicAuth, WebConfigWatcher, load_web_config
from fixtures.builders import Fleet
from fixtures.system import need, start_prometheus, stop

integration = pytest.mark.integration
PASSWORD = "s3cret pass"  # noqa: S105 (a test password)
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()  # cost 4: fast tests


# --------------------------------------------------------------------------- helpers


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def get(
    url: str, *, user: str | None = None, password: str = "", context: ssl.SSLContext | None = None,
    method: str = "GET", headers: dict[str, str] | None = None,
) -> Response:  # fmt: skip
    request = urllib.request.Request(url, method=method, headers=headers or {})  # noqa: S310
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as r:  # noqa: S310
            return Response(r.status, dict(r.headers), r.read())
    except urllib.error.HTTPError as exc:
        return Response(exc.code, dict(exc.headers), exc.read())


@dataclass
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def client_context(self, *, with_cert: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        if with_cert:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all from it."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out = tmp_path_factory.mktemp("certs")
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                         serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
        return path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("custode test CA")).issuer_name(name("custode test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    (out / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def leaf(
        cn: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]
    ) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256())
        )  # fmt: skip
        cert_path = out / f"{cn}.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, write_key(key, out / f"{cn}-key.pem")

    server = leaf("server", ExtendedKeyUsageOID.SERVER_AUTH,
                  [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])  # fmt: skip
    client = leaf("client", ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName("prometheus")])
    return Certs(out / "ca.pem", *server, *client)


# --------------------------------------------------------------------------- the HTTP layer


@dataclass
class FakeExporter:
    text: bytes = b"# TYPE fake gauge\nfake 1.0\n"
    last_error: str = ""
    refreshes: int = 0
    fail_with: Exception | None = None

    def refresh(self) -> None:
        self.refreshes += 1
        if self.fail_with is not None:
            raise self.fail_with

    def exposition(self) -> bytes:
        return self.text


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class InProcess:
    exporter: FakeExporter = field(default_factory=FakeExporter)
    servers: list[MetricsServer] = field(default_factory=list)

    def start(
        self, *, health: Callable[[], str | None] = lambda: None, web: Path | None = None,
        max_connections: int = 32,
    ) -> str:  # fmt: skip
        watcher = WebConfigWatcher(load_web_config(web), check_every=0) if web else None
        app = MetricsApp(self.exporter, health, watcher.current if watcher else None)
        server = MetricsServer(("127.0.0.1", 0), app, web=watcher, max_connections=max_connections)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self.servers.append(server)
        return server.url


@pytest.fixture
def http() -> Iterator[InProcess]:
    served = InProcess()
    yield served
    for server in served.servers:
        server.shutdown()
        server.server_close()


def test_metrics_healthz_and_everything_else(http: InProcess) -> None:
    url = http.start()
    metrics = get(f"{url}/metrics")
    assert (metrics.status, metrics.body) == (200, http.exporter.text)
    assert metrics.headers["Content-Type"] == CONTENT_TYPE
    zipped = get(f"{url}/metrics", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped.body) == http.exporter.text
    assert (get(f"{url}/healthz").status, get(f"{url}/healthz").body) == (200, b"ok\n")
    head = get(f"{url}/metrics", method="HEAD")
    assert (head.status, head.body, head.headers["Content-Length"]) == (
        200,
        b"",
        str(len(http.exporter.text)),
    )
    assert get(f"{url}/").status == 200  # the landing page: test_serve_landing.py
    assert get(f"{url}/index.html").status == 404
    assert get(f"{url}/metrics/x").status == 404
    post = get(f"{url}/metrics", method="POST")
    assert (post.status, post.headers["Allow"]) == (405, "GET, HEAD")


def test_healthz_says_why_it_is_unhealthy(http: InProcess) -> None:
    clock = Clock()
    exporter = FakeExporter()
    refresher = Refresher(exporter, 10, clock=clock)
    url = http.start(health=refresher.health)
    refresher.refresh_once()
    assert get(f"{url}/healthz").status == 200
    clock.now += 31
    stale = get(f"{url}/healthz")
    assert stale.status == 503
    assert (
        stale.body
        == b"the last successful refresh was 31s ago (more than 3 refresh intervals of 10s)\n"
    )
    refresher.refresh_once()
    assert get(f"{url}/healthz").status == 200
    exporter.last_error = "history unreadable: database is locked"
    refresher.refresh_once()
    failed = get(f"{url}/healthz")
    assert (failed.status, failed.body) == (
        503,
        b"the last refresh failed: history unreadable: database is locked\n",
    )
    exporter.last_error, exporter.fail_with = "", RuntimeError("boom")
    refresher.refresh_once()  # refresh() must not raise, but the server survives if it does
    assert get(f"{url}/healthz").body == b"the last refresh failed: RuntimeError: boom\n"


def test_healthz_before_the_first_refresh_finishes() -> None:
    clock = Clock()
    refresher = Refresher(FakeExporter(), 60, clock=clock)
    assert refresher.health() is None
    clock.now += 181
    assert (
        refresher.health()
        == "no refresh has finished in 181s (more than 3 refresh intervals of 60s)"
    )


def test_refresher_refreshes_in_the_background_and_stops() -> None:
    exporter = FakeExporter()
    refresher = Refresher(exporter, 1.0)
    refresher.start()
    deadline = time.monotonic() + 10
    while exporter.refreshes < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    refresher.stop()
    assert exporter.refreshes >= 2
    seen = exporter.refreshes
    time.sleep(1.2)
    assert exporter.refreshes == seen


def test_basic_auth(http: InProcess, tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  alice: '{HASH}'\n")
    url = http.start(web=web)
    for status, kwargs in (
        (401, {}),
        (401, {"user": "alice", "password": "wrong"}),
        (401, {"user": "bob", "password": PASSWORD}),
        (401, {"headers": {"Authorization": "Basic !!!"}}),
        (401, {"headers": {"Authorization": "Bearer x"}}),
        (200, {"user": "alice", "password": PASSWORD}),
    ):
        for path in ("/metrics", "/healthz"):
            response = get(url + path, **kwargs)  # type: ignore[arg-type]
            assert response.status == status, (path, kwargs)
            if status == 401:
                assert response.headers["WWW-Authenticate"] == 'Basic realm="custode"'
    assert get(f"{url}/nothing").status == 401  # auth first: no information about paths


def test_basic_auth_caches_successes_only_briefly() -> None:
    clock = Clock()
    auth = BasicAuth({"alice": HASH.encode()}, ttl=60, clock=clock)
    header = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    wrong = "Basic " + base64.b64encode(b"alice:nope").decode()
    calls: list[bytes] = []
    original = auth._bcrypt
    auth._bcrypt = lambda password, stored: calls.append(password) or original(password, stored)  # type: ignore[method-assign]
    assert auth.check(header) and auth.check(header)
    assert len(calls) == 1
    assert not auth.check(wrong) and not auth.check(wrong)
    assert len(calls) == 3  # failures are never cached
    clock.now += 61
    assert auth.check(header)
    assert len(calls) == 4
    long = "Basic " + base64.b64encode(b"alice:" + b"x" * 100).decode()
    assert not auth.check(long)


def test_web_config_changes_apply_without_restart(http: InProcess, tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  alice: '{HASH}'\n")
    url = http.start(web=web)
    assert get(f"{url}/metrics", user="alice", password=PASSWORD).status == 200
    web.write_text(f"basic_auth_users:\n  bob: '{HASH}'\n")
    os.utime(web, ns=(time.time_ns() + 10**9,) * 2)
    assert get(f"{url}/metrics", user="alice", password=PASSWORD).status == 401
    assert get(f"{url}/metrics", user="bob", password=PASSWORD).status == 200
    web.write_text("basic_auth_users: [")  # broken: the previous config stays
    os.utime(web, ns=(time.time_ns() + 2 * 10**9,) * 2)
    assert get(f"{url}/metrics", user="bob", password=PASSWORD).status == 200


def test_tls_and_client_certificates(http: InProcess, tmp_path: Path, certs: Certs) -> None:
    web = tmp_path / "web.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: {certs.server_cert}\n  key_file: {certs.server_key}\n"
        f"  client_ca_file: {certs.ca}\n  client_auth_type: RequireAndVerifyClientCert\n"
        "  min_version: TLS13\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n"
    )
    url = http.start(web=web)
    assert url.startswith("https://127.0.0.1:")
    ok = get(f"{url}/metrics", context=certs.client_context(with_cert=True))
    assert (ok.status, ok.headers["X-Frame-Options"]) == (200, "deny")
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        get(f"{url}/metrics", context=certs.client_context())
    with pytest.raises((urllib.error.URLError, ConnectionError, http_client.HTTPException)):
        get(url.replace("https:", "http:") + "/metrics")
    assert get(f"{url}/healthz", context=certs.client_context(with_cert=True)).status == 200


def test_connections_over_the_limit_are_closed_at_once(http: InProcess) -> None:
    url = http.start(max_connections=2)
    port = int(url.rsplit(":", 1)[1])
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    try:
        time.sleep(0.2)
        for sock in silent[:2]:  # over the limit: the oldest silent ones make room at once
            sock.settimeout(5)
            assert sock.recv(1) == b""
    finally:
        for sock in silent:
            sock.close()
    deadline = time.monotonic() + 5
    while True:  # the slots of closed connections come back
        try:
            assert get(f"{url}/healthz").status == 200
            break
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:9877", ("127.0.0.1", 9877)),
        ("[::1]:0", ("::1", 0)),
        (":9100", ("0.0.0.0", 9100)),  # noqa: S104
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["9877", "host:", "host:port", "::1:9877", "h:70000"])
def test_parse_listen_refuses(value: str) -> None:
    with pytest.raises(ValueError, match=r"HOST:PORT|brackets"):
        parse_listen(value)


# --------------------------------------------------------------------------- web config errors

BAD_CONFIGS = {
    "unknown key": ("tls_server_confg: {}\n", "tls_server_confg: unknown key; known keys here: "),
    "unknown nested key": ("tls_server_config:\n  certfile: a\n", "tls_server_config.certfile: unknown key"),
    "bad YAML": ("basic_auth_users: [\n", "is not valid YAML: "),
    "not a mapping": ("- a\n", "is not a mapping of settings (got list)"),
    "plain password": ("basic_auth_users:\n  alice: hunter2\n", "basic_auth_users.alice: not a bcrypt hash; make one with: htpasswd"),
    "duplicate user": (f"basic_auth_users:\n  a: '{HASH}'\n  a: '{HASH}'\n", "duplicate key 'a'"),
    "missing cert": ("tls_server_config:\n  key_file: k.pem\n", "tls_server_config.cert_file: missing;"),
    "cert file absent": ("tls_server_config:\n  cert_file: nope.pem\n  key_file: k.pem\n", "nope.pem does not exist; fix the path"),
    "inline cert": ("tls_server_config:\n  cert: x\n", "tls_server_config.cert: not supported by custode; put the certificate in a file"),
    "bad version": ("tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n  min_version: SSL3\n", "min_version: 'SSL3' is not one of TLS10"),
    "bad version without TLS": ("tls_server_config:\n  min_version: SSL3\n", "tls_server_config.min_version: 'SSL3' is not one of TLS10"),
    "not a string key": ("tls_server_config:\n  1: a\n", "tls_server_config.1: unknown key; known keys here: cert_file,"),
    "section not a mapping": ("http_server_config: [a]\n", "http_server_config: expected a mapping, got list"),
    "CA without client auth": ("tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n  client_ca_file: c.pem\n", "tls_server_config.client_auth_type: client_ca_file is set but no client certificate is checked"),
    "header value": ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n", "http_server_config.headers.X-Frame-Options: 'allow' is not one of deny, sameorigin"),
    "header": ("http_server_config:\n  headers:\n    Set-Cookie: a\n", "headers.Set-Cookie: cannot be set"),
    "client auth": ("tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n  client_auth_type: RequireAnyClientCert\n", "'RequireAnyClientCert' is not supported"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_bad_web_configs_name_file_and_key(case: str, tmp_path: Path, certs: Certs) -> None:
    text, expected = BAD_CONFIGS[case]
    shutil.copy(certs.server_cert, tmp_path / "c.pem")
    shutil.copy(certs.server_key, tmp_path / "k.pem")
    web = tmp_path / "web.yml"
    web.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_web_config(web)
    assert caught.value.message.startswith(f"web config {web}")
    assert expected in caught.value.message
    assert "\n" not in caught.value.message


def test_wrong_key_for_the_certificate(tmp_path: Path, certs: Certs) -> None:
    web = tmp_path / "web.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: {certs.server_cert}\n  key_file: {certs.client_key}\n"
    )
    with pytest.raises(
        ConfigError,
        match=r"key_file: cannot use .*client-key.pem with .*server.pem \(key values mismatch\)",
    ):
        load_web_config(web)
    web.write_text(
        f"tls_server_config:\n  cert_file: {certs.server_key}\n  key_file: {certs.server_key}\n"
    )
    with pytest.raises(ConfigError, match=r"cert_file: .*server-key.pem holds no PEM certificate"):
        load_web_config(web)


def test_empty_web_config_is_plain_http(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text("# nothing\ntls_server_config: {}\n")
    config = load_web_config(web)
    assert config.ssl_context is None and config.auth is None


# --------------------------------------------------------------------------- the command


@dataclass
class Serving:
    proc: subprocess.Popen[str]
    url: str
    lines: queue.Queue[str]

    def wait_for_metric(self, name: str, timeout: float = 90, **kwargs: object) -> str:
        deadline = time.monotonic() + timeout
        while True:
            response = get(f"{self.url}/metrics", **kwargs)  # type: ignore[arg-type]
            text = response.body.decode()
            if response.status == 200 and f"\n{name}{{" in text:
                return text
            assert time.monotonic() < deadline, (
                f"{name} never appeared: {response.status} {text[:500]}"
            )
            time.sleep(0.2)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


@pytest.fixture
def serve(isolated_env: dict[str, str]) -> Iterator[Callable[..., Serving]]:
    started: list[Serving] = []

    def start(*args: str | Path) -> Serving:
        proc = subprocess.Popen(
            [sys.executable, "-m", "custode", "serve", "--listen", "127.0.0.1:0", *map(str, args)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, env=isolated_env,
        )  # fmt: skip
        lines: queue.Queue[str] = queue.Queue()
        assert proc.stderr is not None
        stream = proc.stderr
        threading.Thread(target=lambda: [lines.put(x) for x in stream], daemon=True).start()
        deadline = time.monotonic() + 60
        seen = []
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                assert proc.poll() is None, f"custode serve exited {proc.returncode}: {seen}"
                continue
            seen.append(line)
            if line.startswith("serving metrics on "):
                url = line.split()[-1].removesuffix("/metrics")
                started.append(Serving(proc, url, lines))
                return started[-1]
        proc.kill()
        raise AssertionError(f"custode serve did not start: {seen}")

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


def run_serve(
    env: dict[str, str], *args: str | Path, prefix: tuple[str, ...] = ()
) -> tuple[int, str]:
    """A serve expected to fail at start: its exit status and stderr."""
    proc = subprocess.run([*prefix, sys.executable, "-m", "custode", "serve", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=60, check=False)  # fmt: skip
    return proc.returncode, proc.stderr


@integration
def test_serves_the_fleet_and_stops_cleanly(serve: Callable[..., Serving], fleet: Fleet) -> None:
    served = serve(fleet.root)
    assert served.url.startswith("http://127.0.0.1:")
    text = served.wait_for_metric("custode_repository_size_bytes")
    assert f'custode_repository_size_bytes{{repository="packed.git",root="{fleet.root}"}}' in text
    response = get(f"{served.url}/metrics")
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    health = get(f"{served.url}/healthz")
    assert (health.status, health.body) == (200, b"ok\n")
    assert get(f"{served.url}/other").status == 404
    assert served.stop() == 0


@integration
def test_sigint_also_stops_with_status_0(serve: Callable[..., Serving], fleet: Fleet) -> None:
    served = serve(fleet.packed.parent)
    served.proc.send_signal(signal.SIGINT)
    assert served.proc.wait(timeout=30) == 0


@integration
def test_basic_auth_and_tls_end_to_end(
    serve: Callable[..., Serving], fleet: Fleet, tmp_path: Path, certs: Certs
) -> None:
    web = tmp_path / "web.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: {certs.server_cert}\n  key_file: {certs.server_key}\n"
        f"basic_auth_users:\n  prometheus: '{HASH}'\n"
    )
    served = serve("--web-config", web, fleet.root)
    assert served.url.startswith("https://127.0.0.1:")
    context = certs.client_context()
    assert get(f"{served.url}/metrics", context=context).status == 401
    wrong = get(f"{served.url}/metrics", context=context, user="prometheus", password="wrong")  # noqa: S106
    assert (wrong.status, wrong.headers["WWW-Authenticate"]) == (401, 'Basic realm="custode"')
    served.wait_for_metric("custode_repository_size_bytes", context=context, user="prometheus",
                           password=PASSWORD)  # fmt: skip
    assert (
        get(f"{served.url}/healthz", context=context, user="prometheus", password=PASSWORD).body
        == b"ok\n"
    )
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        get(f"{served.url}/metrics", context=ssl.create_default_context())  # an unknown CA
    assert served.stop() == 0


@integration
def test_port_in_use(isolated_env: dict[str, str], fleet: Fleet) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = run_serve(isolated_env, "--listen", f"127.0.0.1:{port}", fleet.root)
    assert code == 2
    assert (
        err
        == f"custode: cannot listen on 127.0.0.1:{port}: address already in use; choose another --listen\n"
    )


@integration
@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("9877", "custode: --listen '9877': expected HOST:PORT with a port from 0 to 65535, such as 127.0.0.1:9877\n"),
        ("::1:9877", "custode: --listen '::1:9877': put an IPv6 address in brackets, as [::1]:9877, such as 127.0.0.1:9877\n"),
    ],
)  # fmt: skip
def test_bad_listen(isolated_env: dict[str, str], fleet: Fleet, listen: str, message: str) -> None:
    assert run_serve(isolated_env, "--listen", listen, fleet.root) == (2, message)


CLI_BAD_CONFIGS = {
    "unknown key": ("basic_auth_user: []\n", "basic_auth_user: unknown key; known keys here: basic_auth_users, http_server_config, tls_server_config"),
    "bad YAML": ("tls_server_config:\n  cert_file: 'unterminated\n", "is not valid YAML: "),
    "missing key file": ("tls_server_config:\n  cert_file: {cert}\n  key_file: absent.pem\n", "tls_server_config.key_file: {dir}/absent.pem does not exist; fix the path"),
    "cert is a directory": ("tls_server_config:\n  cert_file: {dir}\n  key_file: {key}\n", "tls_server_config.cert_file: {dir} is a directory; name a PEM file"),
}  # fmt: skip


@integration
@pytest.mark.parametrize("case", CLI_BAD_CONFIGS)
def test_invalid_web_config(
    isolated_env: dict[str, str], fleet: Fleet, tmp_path: Path, certs: Certs, case: str
) -> None:
    text, expected = CLI_BAD_CONFIGS[case]
    web = tmp_path / "web.yml"
    fill = {"cert": certs.server_cert, "key": certs.server_key, "dir": tmp_path}
    web.write_text(text.format(**fill))
    code, err = run_serve(isolated_env, "--web-config", web, "--listen", "127.0.0.1:0", fleet.root)
    assert code == 2, err
    assert err.startswith(f"custode: web config {web}") and err.count("\n") == 1, err
    assert expected.format(**fill) in err


@integration
@pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv (util-linux) is not installed")
def test_unreadable_cert_file(
    isolated_env: dict[str, str], fleet: Fleet, tmp_path: Path, certs: Certs
) -> None:
    cert = tmp_path / "cert.pem"
    shutil.copy(certs.server_cert, cert)
    cert.chmod(0)
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: cert.pem\n  key_file: {certs.server_key}\n")
    # root ignores file modes; drop the capabilities that let it (the test runs as root in CI)
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        prefix = (
            "setpriv",
            "--inh-caps=-all",
            "--bounding-set=-dac_override,-dac_read_search",
            "--",
        )
    code, err = run_serve(
        isolated_env, "--web-config", web, "--listen", "127.0.0.1:0", fleet.root, prefix=prefix
    )
    assert (code, err) == (2, f"custode: web config {web}: tls_server_config.cert_file: cannot read "
                              f"{cert}: Permission denied; fix its permissions\n")  # fmt: skip


@integration
def test_missing_root(isolated_env: dict[str, str], tmp_path: Path) -> None:
    code, err = run_serve(isolated_env, "--listen", "127.0.0.1:0", tmp_path / "absent")
    assert (code, err) == (
        4,
        f"custode: root {tmp_path / 'absent'} is not a directory; check the path\n",
    )


# --------------------------------------------------------------------------- a real Prometheus


@integration
@pytest.mark.slow
@pytest.mark.parametrize("secure", [False, True], ids=["http", "tls+basic-auth"])
def test_a_real_prometheus_scrapes_it(
    serve: Callable[..., Serving], fleet: Fleet, tmp_path: Path, certs: Certs, secure: bool
) -> None:
    binary = need("prometheus", package="prometheus")
    scrape = ""
    args: list[str | Path] = [fleet.root]
    auth: dict[str, Any] = {}
    if secure:
        web = tmp_path / "web.yml"
        web.write_text(
            f"tls_server_config:\n  cert_file: {certs.server_cert}\n  key_file: {certs.server_key}\n"
            f"basic_auth_users:\n  prometheus: '{HASH}'\n"
        )
        args = ["--web-config", web, *args]
        scrape = (
            f"    scheme: https\n    tls_config:\n      ca_file: {certs.ca}\n"
            f"    basic_auth:\n      username: prometheus\n      password: '{PASSWORD}'\n"
        )
        auth = {"context": certs.client_context(), "user": "prometheus", "password": PASSWORD}
    served = serve(*args)
    # serve's first refresh (slow on a busy machine) is not Prometheus's to wait for
    served.wait_for_metric("custode_repository_size_bytes", **auth)
    target = urllib.parse.urlsplit(served.url).netloc
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n  - job_name: custode\n    scrape_interval: 1s\n{scrape}"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    prometheus, port = start_prometheus(binary, config, tmp_path)
    try:
        query = f"http://127.0.0.1:{port}/api/v1/query?query=custode_repository_size_bytes"
        deadline, last = time.monotonic() + 60, ""
        while time.monotonic() < deadline:
            try:
                last = get(query).body.decode()
            except (urllib.error.URLError, ConnectionError) as exc:
                last = str(exc)
            if '"result":[{' in last:
                break
            time.sleep(0.5)
        else:
            targets = get(f"http://127.0.0.1:{port}/api/v1/targets").body.decode()[:2000]
            pytest.fail(
                f"Prometheus got no custode_repository_size_bytes in 60s: {last[:500]}\n{targets}"
            )
        assert f'"repository":"packed.git","root":"{fleet.root}"' in last
        assert '"job":"custode"' in last
    finally:
        stop(prometheus)
    assert served.stop() == 0
