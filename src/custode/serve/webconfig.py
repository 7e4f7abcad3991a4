"""The web config of ``custode serve``: Prometheus exporter-toolkit's format, in Python.

https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md:
``tls_server_config`` (cert_file, key_file, client_ca_file, client_auth_type,
min_version, max_version, prefer_server_cipher_suites), ``http_server_config`` (http2,
headers) and ``basic_auth_users`` (name: bcrypt hash). Paths are relative to the file's
directory, as in the toolkit. Keys the toolkit knows but custode does not implement
(inline certificates, cipher and curve lists, client SAN allow-lists) are refused rather
than ignored: silently dropping a security setting would widen access.

The file is validated eagerly (``load_web_config``) and, like the toolkit, reread while
serving when it or a file it names changes (``WebConfigWatcher``), so rotated
certificates and changed users apply without a restart.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import re
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from custode.errors import ConfigError

log = logging.getLogger(__name__)

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_KEYS: dict[str, set[str]] = {
    "": {"tls_server_config", "http_server_config", "basic_auth_users"},
    "tls_server_config": {
        "cert_file", "key_file", "client_ca_file", "client_auth_type", "min_version",
        "max_version", "prefer_server_cipher_suites",
    },
    "http_server_config": {"http2", "headers"},
}  # fmt: skip
_UNSUPPORTED = {  # the toolkit's keys custode does not implement, and what to do instead
    "cert": "put the certificate in a file and name it in cert_file",
    "key": "put the key in a file and name it in key_file",
    "client_ca": "put the CA certificates in a file and name it in client_ca_file",
    "client_allowed_sans": "remove it and restrict clients with client_ca_file",
    "cipher_suites": "remove it (OpenSSL's default suites apply)",
    "curve_preferences": "remove it (OpenSSL's default curves apply)",
}
# Headers the toolkit lets a web config set, and their allowed values (None: any).
_HEADERS: dict[str, set[str] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": {"nosniff"},
    "X-Frame-Options": {"deny", "sameorigin"},
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}
_BCRYPT = re.compile(rb"\$2[aby]?\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
_HASH_FIX = "make one with: htpasswd -nBC 10 '' | tr -d ':\\n'"
AUTH_CACHE_SECONDS = 60.0


@dataclass(frozen=True)
class WebConfig:
    """A validated web config: what the server applies to each connection and request."""

    path: Path | None = None
    ssl_context: ssl.SSLContext | None = None
    auth: BasicAuth | None = None
    headers: tuple[tuple[str, str], ...] = ()
    files: tuple[Path, ...] = ()  # the config and every file it names (reread on change)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (a second user entry must not win silently)."""


def _mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return dict(loader.construct_mapping(node))


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_web_config(path: Path) -> WebConfig:
    """Read and validate ``path``: a ConfigError names the file, the key and the fix."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _error(path, "", "does not exist; check the --web-config path") from None
    except IsADirectoryError:
        raise _error(path, "", "is a directory; pass a YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise _error(path, "", f"cannot be read: {reason}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise _error(path, "", f"is not valid YAML: {_yaml_problem(exc)}") from None
    return parse_web_config(data, path)


def parse_web_config(data: object, path: Path) -> WebConfig:
    top = _section(data, path, "")
    base = path.parent
    tls_section = _section(top.get("tls_server_config"), path, "tls_server_config")
    http_section = _section(top.get("http_server_config"), path, "http_server_config")
    context, files = _tls(tls_section, path, base)
    users = _users(top.get("basic_auth_users"), path)
    return WebConfig(
        path=path,
        ssl_context=context,
        auth=BasicAuth(users) if users else None,
        headers=_headers(http_section, path),
        files=(path, *files),
    )


def _error(path: Path, key: str, problem: str) -> ConfigError:
    """``web config FILE KEY: problem; fix``; without a key the problem is about the file."""
    return ConfigError(
        f"web config {path}: {key}: {problem}" if key else f"web config {path} {problem}"
    )


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())


def _section(value: object, path: Path, name: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        got = type(value).__name__
        if not name:
            raise _error(
                path, "", f"is not a mapping of settings (got {got}); see custode serve --help"
            )
        raise _error(path, name, f"expected a mapping, got {got}")
    for key in value:
        if name == "tls_server_config" and key in _UNSUPPORTED:
            raise _error(path, f"{name}.{key}", f"not supported by custode; {_UNSUPPORTED[key]}")
        if key not in _KEYS[name]:
            known = ", ".join(sorted(_KEYS[name]))
            dotted = f"{name}.{key}" if name else str(key)
            raise _error(path, dotted, f"unknown key; known keys here: {known}")
    return value


def _string(section: dict[str, Any], key: str, path: Path, name: str) -> str | None:
    value = section.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _error(path, f"{name}.{key}", f"expected a string, got {value!r}")
    return value


def _tls(
    section: dict[str, Any], path: Path, base: Path
) -> tuple[ssl.SSLContext | None, tuple[Path, ...]]:
    name = "tls_server_config"
    cert = _string(section, "cert_file", path, name)
    key = _string(section, "key_file", path, name)
    ca = _string(section, "client_ca_file", path, name)
    auth = _string(section, "client_auth_type", path, name)
    if not (cert or key or ca or auth):
        return None, ()  # as the toolkit: no TLS settings, plain HTTP
    if not cert:
        raise _error(path, f"{name}.cert_file", "missing; name the server certificate (PEM)")
    if not key:
        raise _error(path, f"{name}.key_file", "missing; name the certificate's key (PEM)")
    cert_path, key_path = (
        _readable(base / cert, path, "cert_file"),
        _readable(base / key, path, "key_file"),
    )
    mode = CLIENT_AUTH.get(auth or "NoClientCert")
    if mode is None:
        known = ", ".join(CLIENT_AUTH)
        raise _error(
            path, f"{name}.client_auth_type", f"{auth!r} is not supported; use one of {known}"
        )
    if mode != ssl.CERT_NONE and not ca:
        raise _error(
            path, f"{name}.client_ca_file", f"required by client_auth_type {auth}; name the CA file"
        )
    if ca and mode == ssl.CERT_NONE:
        raise _error(path, f"{name}.client_auth_type", "client_ca_file is set but no client "
                     "certificate is checked; set RequireAndVerifyClientCert")  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _version(section, "min_version", "TLS12", path)
    context.maximum_version = _version(section, "max_version", "TLS13", path)
    if context.minimum_version > context.maximum_version:
        raise _error(path, f"{name}.min_version", "higher than max_version; lower it")
    prefer = section.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise _error(
            path, f"{name}.prefer_server_cipher_suites", f"expected true or false, got {prefer!r}"
        )
    if prefer:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_chain(context, cert_path, key_path, path)
    files = [cert_path, key_path]
    if ca:
        ca_path = _readable(base / ca, path, "client_ca_file")
        try:
            context.load_verify_locations(cafile=str(ca_path))
        except ssl.SSLError as exc:
            raise _error(
                path,
                f"{name}.client_ca_file",
                f"{ca_path} holds no PEM certificate ({_ssl_reason(exc)})",
            ) from None
        context.verify_mode = mode
        files.append(ca_path)
    return context, tuple(files)


def _readable(file: Path, path: Path, key: str) -> Path:
    try:
        with file.open("rb") as f:
            f.read(1)
    except FileNotFoundError:
        raise _error(
            path, f"tls_server_config.{key}", f"{file} does not exist; fix the path"
        ) from None
    except IsADirectoryError:
        raise _error(
            path, f"tls_server_config.{key}", f"{file} is a directory; name a PEM file"
        ) from None
    except OSError as exc:
        raise _error(
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
        raise _error(
            path,
            "tls_server_config.cert_file",
            f"{cert} holds no PEM certificate ({_ssl_reason(exc)})",
        ) from None
    try:  # an encrypted key gets an empty passphrase instead of a prompt on the terminal
        context.load_cert_chain(str(cert), str(key), password=lambda: b"")
    except ssl.SSLError as exc:
        problem = f"cannot use {key} with {cert} ({_ssl_reason(exc)})"
        fix = "name the unencrypted PEM key of that certificate"
        raise _error(path, "tls_server_config.key_file", f"{problem}; {fix}") from None


def _ssl_reason(exc: ssl.SSLError) -> str:
    return str(exc.reason or exc.strerror or exc).lower().replace("_", " ")


def _version(section: dict[str, Any], key: str, default: str, path: Path) -> ssl.TLSVersion:
    value = section.get(key) or default
    if value not in TLS_VERSIONS:
        known = ", ".join(TLS_VERSIONS)
        raise _error(path, f"tls_server_config.{key}", f"{value!r} is not one of {known}")
    return TLS_VERSIONS[value]


def _users(value: object, path: Path) -> dict[str, bytes]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _error(path, "basic_auth_users", "expected a mapping of user name to bcrypt hash")
    users: dict[str, bytes] = {}
    for user, hashed in value.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise _error(path, f"basic_auth_users.{user}", "a user name is a non-empty string "
                         "without ':'; quote it")  # fmt: skip
        if not isinstance(hashed, str) or not _BCRYPT.fullmatch(hashed.encode()):
            raise _error(path, f"basic_auth_users.{user}", f"not a bcrypt hash; {_HASH_FIX}")
        users[user] = hashed.encode()
    return users


def _headers(section: dict[str, Any], path: Path) -> tuple[tuple[str, str], ...]:
    http2 = section.get("http2", True)
    if not isinstance(http2, bool):  # accepted for compatibility: custode speaks HTTP/1
        raise _error(path, "http_server_config.http2", f"expected true or false, got {http2!r}")
    value = section.get("headers")
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise _error(path, "http_server_config.headers", "expected a mapping of header to value")
    headers = []
    for name, text in value.items():
        key = f"http_server_config.headers.{name}"
        if name not in _HEADERS:
            raise _error(path, key, f"cannot be set; allowed: {', '.join(_HEADERS)}")
        allowed = _HEADERS[name]
        if not isinstance(text, str) or "\r" in text or "\n" in text:
            raise _error(path, key, "expected a one-line string")
        if allowed is not None and text.lower() not in allowed:
            raise _error(path, key, f"{text!r} is not one of {', '.join(sorted(allowed))}")
        headers.append((name, text))
    return tuple(headers)


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
