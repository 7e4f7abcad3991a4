"""The web config of ``custode serve`` applied: TLS, basic auth and headers.

The file (Prometheus exporter-toolkit's format) is validated by ``custode.config.webconfig``;
this module turns it into what the server applies to each connection and request: an SSL
context (paths are relative to the file's directory, as in the toolkit), a password
checker and the response headers. ``load_web_config`` fails eagerly on a certificate or
key that cannot be used, and, like the toolkit, the file is reread while serving when it
or a file it names changes (``WebConfigWatcher``), so rotated certificates and changed
users apply without a restart.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt

from custode.config.webconfig import (
    ClientAuthType,
    TLSServerConfig,
    TLSVersionName,
    read_web_config,
    web_config_error,
)
from custode.errors import ConfigError

log = logging.getLogger(__name__)

TLS_VERSIONS: dict[TLSVersionName, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
CLIENT_AUTH: dict[ClientAuthType, ssl.VerifyMode] = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
AUTH_CACHE_SECONDS = 60.0


@dataclass(frozen=True)
class WebConfig:
    """A validated web config: what the server applies to each connection and request."""

    path: Path | None = None
    ssl_context: ssl.SSLContext | None = None
    auth: BasicAuth | None = None
    headers: tuple[tuple[str, str], ...] = ()
    files: tuple[Path, ...] = ()  # the config and every file it names (reread on change)


def load_web_config(path: Path) -> WebConfig:
    """Read, validate and apply ``path``: a ConfigError names the file, the key and the fix."""
    model = read_web_config(path)
    context, files = _tls(model.tls_server_config, path, path.parent)
    users = {user: hashed.encode() for user, hashed in model.basic_auth_users.items()}
    return WebConfig(
        path=path,
        ssl_context=context,
        auth=BasicAuth(users) if users else None,
        headers=tuple(model.http_server_config.headers.items()),
        files=(path, *files),
    )


def _tls(
    tls: TLSServerConfig, path: Path, base: Path
) -> tuple[ssl.SSLContext | None, tuple[Path, ...]]:
    if not tls.enabled:
        return None, ()  # as the toolkit: no TLS settings, plain HTTP
    assert tls.cert_file and tls.key_file  # noqa: S101  (the model requires both with TLS)
    cert_path, key_path = (
        _readable(base / tls.cert_file, path, "cert_file"),
        _readable(base / tls.key_file, path, "key_file"),
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[tls.min_version]
    context.maximum_version = TLS_VERSIONS[tls.max_version]
    if tls.prefer_server_cipher_suites:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_chain(context, cert_path, key_path, path)
    files = [cert_path, key_path]
    if tls.client_ca_file:
        ca_path = _readable(base / tls.client_ca_file, path, "client_ca_file")
        try:
            context.load_verify_locations(cafile=str(ca_path))
        except ssl.SSLError as exc:
            raise web_config_error(
                path,
                "tls_server_config.client_ca_file",
                f"{ca_path} holds no PEM certificate ({_ssl_reason(exc)})",
            ) from None
        context.verify_mode = CLIENT_AUTH[tls.client_auth_type or "NoClientCert"]
        files.append(ca_path)
    return context, tuple(files)


def _readable(file: Path, path: Path, key: str) -> Path:
    try:
        with file.open("rb") as f:
            f.read(1)
    except FileNotFoundError:
        raise web_config_error(
            path, f"tls_server_config.{key}", f"{file} does not exist; fix the path"
        ) from None
    except IsADirectoryError:
        raise web_config_error(
            path, f"tls_server_config.{key}", f"{file} is a directory; name a PEM file"
        ) from None
    except OSError as exc:
        raise web_config_error(
            path,
            f"tls_server_config.{key}",
            f"cannot read {file}: {exc.strerror}; fix its permissions",
        ) from None
    return file


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path, path: Path) -> None:
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # parses the certificate alone
    try:
        probe.load_verify_locations(cafile=str(cert))
    except ssl.SSLError as exc:
        raise web_config_error(
            path,
            "tls_server_config.cert_file",
            f"{cert} holds no PEM certificate ({_ssl_reason(exc)})",
        ) from None
    try:  # an encrypted key gets an empty passphrase instead of a prompt on the terminal
        context.load_cert_chain(str(cert), str(key), password=lambda: b"")
    except ssl.SSLError as exc:
        problem = f"cannot use {key} with {cert} ({_ssl_reason(exc)})"
        fix = "name the unencrypted PEM key of that certificate"
        raise web_config_error(path, "tls_server_config.key_file", f"{problem}; {fix}") from None


def _ssl_reason(exc: ssl.SSLError) -> str:
    return str(exc.reason or exc.strerror or exc).lower().replace("_", " ")


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes.

    bcrypt is slow on purpose (~50 ms at cost 10), and Prometheus scrapes every few
    seconds, so a successful check is remembered for AUTH_CACHE_SECONDS, per user and
    configured hash, as an HMAC of the password under a per-process random key (no
    password or fast hash of one is kept). Checks run one at a time so a flood of wrong
    passwords costs one core at most; and one client (``client``, the server's key for
    an address) waits for its previous check before queueing for the next, so a flood
    from one address delays another's check by about one check, not by the whole flood.
    A check whose connection was closed while it waited (``abandoned``) is skipped.
    Unknown users cost a bcrypt too, so response times do not tell which names exist.
    """

    def __init__(
        self, users: Mapping[str, bytes], *, ttl: float = AUTH_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        if not users:
            raise ValueError("BasicAuth needs at least one user")
        self._users = dict(users)
        self._decoy = next(iter(self._users.values()))
        self._ttl, self._clock = ttl, clock
        self._secret = secrets.token_bytes(32)
        self._cache: dict[tuple[str, bytes], tuple[bytes, float]] = {}
        self._cache_lock = threading.Lock()
        self._bcrypt_lock = threading.Lock()
        self._turns: dict[str, tuple[threading.Lock, int]] = {}  # per client: lock, waiting

    def check(
        self, header: str | None, *, client: str = "",
        abandoned: Callable[[], bool] = lambda: False,
    ) -> bool:  # fmt: skip
        """Whether ``header`` (the Authorization value) names a user and their password."""
        credentials = _parse_basic(header)
        if credentials is None:
            return False
        user, password = credentials
        stored = self._users.get(user)
        if stored is None:
            self._verify(password, self._decoy, client, abandoned)
            return False
        mac = hmac.digest(self._secret, password, "sha256")
        now = self._clock()
        with self._cache_lock:
            hit = self._cache.get((user, stored))
        if hit is not None and hit[1] > now and hmac.compare_digest(hit[0], mac):
            return True
        if not self._verify(password, stored, client, abandoned):
            return False
        with self._cache_lock:
            self._cache[(user, stored)] = (mac, now + self._ttl)
        return True

    def _verify(
        self, password: bytes, stored: bytes, client: str, abandoned: Callable[[], bool]
    ) -> bool:
        with self._cache_lock:
            turn, waiting = self._turns.get(client, (threading.Lock(), 0))
            self._turns[client] = (turn, waiting + 1)
        try:
            with turn:
                if abandoned():
                    return False
                with self._bcrypt_lock:
                    return not abandoned() and self._bcrypt(password, stored)
        finally:
            with self._cache_lock:
                turn, waiting = self._turns[client]
                if waiting == 1:
                    del self._turns[client]
                else:
                    self._turns[client] = (turn, waiting - 1)

    def _bcrypt(self, password: bytes, stored: bytes) -> bool:
        try:
            return bool(bcrypt.checkpw(password, stored))
        except ValueError:  # longer than bcrypt's 72 bytes: cannot match
            return False


def _parse_basic(header: str | None) -> tuple[str, bytes] | None:
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
        user, sep, password = raw.partition(b":")
        return (user.decode("utf-8"), password) if sep else None
    except (binascii.Error, UnicodeDecodeError):
        return None


@dataclass
class WebConfigWatcher:
    """The current web config: rereads the file when it or a file it names changes.

    Checked at most every ``check_every`` seconds (a few ``stat`` calls). A config that
    no longer validates is logged and the previous one kept; so is one that turns TLS on
    or off, which needs a restart (the listening socket was made for one or the other).
    """

    config: WebConfig
    check_every: float = 1.0
    clock: Callable[[], float] = time.monotonic
    _checked: float = field(default=0.0, init=False)
    _signature: tuple[object, ...] = field(default=(), init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self._checked, self._signature = self.clock(), _signature(self.config.files)

    def current(self) -> WebConfig:
        now = self.clock()
        if self.config.path is None or now - self._checked < self.check_every:
            return self.config
        with self._lock:
            if now - self._checked < self.check_every:
                return self.config
            self._checked = now
            signature = _signature(self.config.files)
            if signature == self._signature:
                return self.config
            self._signature = signature
            try:
                fresh = load_web_config(self.config.path)
            except ConfigError as exc:
                log.warning("web config not reloaded, keeping the previous one: %s", exc)
                return self.config
            if (fresh.ssl_context is None) != (self.config.ssl_context is None):
                log.warning("web config %s turns TLS on or off; restart custode serve to apply it",
                            self.config.path)  # fmt: skip
                return self.config
            self.config, self._signature = fresh, _signature(fresh.files)
            log.info("web config %s reloaded", self.config.path)
            return self.config


def _signature(files: tuple[Path, ...]) -> tuple[object, ...]:
    out: list[object] = []
    for file in files:
        try:
            st = file.stat()
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)
