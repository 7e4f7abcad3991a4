"""The web config file of ``custode serve``: Prometheus exporter-toolkit's format, as a model.

https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md:
``tls_server_config`` (cert_file, key_file, client_ca_file, client_auth_type,
min_version, max_version, prefer_server_cipher_suites), ``http_server_config`` (http2,
headers) and ``basic_auth_users`` (name: bcrypt hash). Keys the toolkit knows but custode
does not implement (inline certificates, cipher and curve lists, client SAN allow-lists)
are refused rather than ignored: silently dropping a security setting would widen access.

This module owns what the file may say (``read_web_config``: YAML in, a validated
``WebConfigFile`` out, or a ConfigError of one line naming the file, the key and the fix).
What the settings do — reading the certificates, the TLS context, checking passwords,
rereading on change — is ``custode.serve.webconfig``'s.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Self, get_args

import yaml
from pydantic import Field, StrictBool, ValidationError, field_validator, model_validator

from custode.config.types import Section
from custode.errors import ConfigError

TLSVersionName = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
ClientAuthType = Literal["NoClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"]
TLS_VERSIONS: tuple[TLSVersionName, ...] = get_args(TLSVersionName)  # oldest first
CLIENT_AUTH_TYPES: tuple[ClientAuthType, ...] = get_args(ClientAuthType)

_UNSUPPORTED = {  # the toolkit's keys custode does not implement, and what to do instead
    "cert": "put the certificate in a file and name it in cert_file",
    "key": "put the key in a file and name it in key_file",
    "client_ca": "put the CA certificates in a file and name it in client_ca_file",
    "client_allowed_sans": "remove it and restrict clients with client_ca_file",
    "cipher_suites": "remove it (OpenSSL's default suites apply)",
    "curve_preferences": "remove it (OpenSSL's default curves apply)",
}
# Headers the toolkit lets a web config set, and their allowed values (None: any).
_HEADERS: dict[str, frozenset[str] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": frozenset({"nosniff"}),
    "X-Frame-Options": frozenset({"deny", "sameorigin"}),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}
_BCRYPT = re.compile(r"\$2[aby]?\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
_HASH_FIX = "make one with: htpasswd -nBC 10 '' | tr -d ':\\n'"


class _Invalid(ValueError):
    """A validation error whose message is ``problem`` as is; ``at`` extends the key path
    below the field that raised it (a user, a header, a key of the section)."""

    def __init__(self, problem: str, at: object = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.at = None if at is None else str(at)


def _optional_string(value: object) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {value!r}")
    return value


class TLSServerConfig(Section):
    """``tls_server_config``: no certificate, key, CA or client auth type means plain HTTP."""

    cert_file: str | None = Field(default=None, description="The server certificate (PEM).")
    key_file: str | None = Field(default=None, description="Its unencrypted key (PEM).")
    client_ca_file: str | None = Field(
        default=None, description="CA certificates that sign the accepted client certificates."
    )
    client_auth_type: ClientAuthType | None = Field(
        default=None, description="Whether clients must show a certificate (NoClientCert)."
    )
    min_version: TLSVersionName = Field(default="TLS12", description="Oldest TLS accepted.")
    max_version: TLSVersionName = Field(default="TLS13", description="Newest TLS accepted.")
    prefer_server_cipher_suites: StrictBool = Field(
        default=True, description="The server's cipher order wins over the client's."
    )

    @model_validator(mode="before")
    @classmethod
    def _keys(cls, data: object) -> object:
        """Refuses the toolkit's keys custode does not implement; an empty min_version or
        max_version means its default, as in the toolkit."""
        if not isinstance(data, dict):
            return data  # pydantic says it is not a mapping
        for key in data:
            if key in _UNSUPPORTED:
                raise _Invalid(f"not supported by custode; {_UNSUPPORTED[key]}", at=key)
        versions = ("min_version", "max_version")
        return {k: v for k, v in data.items() if v or k not in versions}

    @field_validator("cert_file", "key_file", "client_ca_file", mode="before")
    @classmethod
    def _string(cls, value: object) -> str | None:
        return _optional_string(value)

    @field_validator("client_auth_type", mode="before")
    @classmethod
    def _client_auth(cls, value: object) -> str | None:
        name = _optional_string(value)
        if name is not None and name not in CLIENT_AUTH_TYPES:
            known = ", ".join(CLIENT_AUTH_TYPES)
            raise _Invalid(f"{name!r} is not supported; use one of {known}")
        return name

    @field_validator("min_version", "max_version", mode="before")
    @classmethod
    def _version(cls, value: object) -> object:
        if value not in TLS_VERSIONS:
            raise _Invalid(f"{value!r} is not one of {', '.join(TLS_VERSIONS)}")
        return value

    @property
    def enabled(self) -> bool:
        """Whether TLS is on: as in the toolkit, only when one of these is set."""
        return any((self.cert_file, self.key_file, self.client_ca_file, self.client_auth_type))

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if not self.enabled:
            return self
        if not self.cert_file:
            raise _Invalid("missing; name the server certificate (PEM)", at="cert_file")
        if not self.key_file:
            raise _Invalid("missing; name the certificate's key (PEM)", at="key_file")
        auth = self.client_auth_type or "NoClientCert"
        if auth != "NoClientCert" and not self.client_ca_file:
            raise _Invalid(
                f"required by client_auth_type {auth}; name the CA file", at="client_ca_file"
            )
        if self.client_ca_file and auth == "NoClientCert":
            raise _Invalid("client_ca_file is set but no client certificate is checked; set "
                           "RequireAndVerifyClientCert", at="client_auth_type")  # fmt: skip
        if TLS_VERSIONS.index(self.min_version) > TLS_VERSIONS.index(self.max_version):
            raise _Invalid("higher than max_version; lower it", at="min_version")
        return self


class HTTPServerConfig(Section):
    """``http_server_config``: response headers (a fixed list, as in the toolkit)."""

    http2: StrictBool = Field(
        default=True, description="Accepted for compatibility: custode speaks HTTP/1.1."
    )
    headers: dict[str, str] = Field(
        default_factory=dict, description="Headers added to every response."
    )

    @field_validator("headers", mode="before")
    @classmethod
    def _headers(cls, value: object) -> object:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise _Invalid("expected a mapping of header to value")
        for name, text in value.items():
            if name not in _HEADERS:
                raise _Invalid(f"cannot be set; allowed: {', '.join(_HEADERS)}", at=name)
            allowed = _HEADERS[name]
            if not isinstance(text, str) or "\r" in text or "\n" in text:
                raise _Invalid("expected a one-line string", at=name)
            if allowed is not None and text.lower() not in allowed:
                raise _Invalid(f"{text!r} is not one of {', '.join(sorted(allowed))}", at=name)
        return value


class WebConfigFile(Section):
    """The whole file; an empty file or empty sections mean plain HTTP without auth."""

    tls_server_config: TLSServerConfig = Field(default_factory=TLSServerConfig)
    http_server_config: HTTPServerConfig = Field(default_factory=HTTPServerConfig)
    basic_auth_users: dict[str, str] = Field(
        default_factory=dict, description="User name to bcrypt hash; unset: no auth."
    )

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: object) -> object:
        """A key with no value (``tls_server_config:``) is an empty section."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (k in cls.model_fields and v is None)}
        return data

    @field_validator("basic_auth_users", mode="before")
    @classmethod
    def _users(cls, value: object) -> object:
        if not isinstance(value, dict):
            raise _Invalid("expected a mapping of user name to bcrypt hash")
        for user, hashed in value.items():
            if not isinstance(user, str) or not user or ":" in user:
                raise _Invalid("a user name is a non-empty string without ':'; quote it", at=user)
            if not isinstance(hashed, str) or not _BCRYPT.fullmatch(hashed):
                raise _Invalid(f"not a bcrypt hash; {_HASH_FIX}", at=user)
        return value


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


def read_web_config(path: Path) -> WebConfigFile:
    """Read and validate ``path``: a ConfigError names the file, the key and the fix."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise web_config_error(path, "", "does not exist; check the --web-config path") from None
    except IsADirectoryError:
        raise web_config_error(path, "", "is a directory; pass a YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise web_config_error(path, "", f"cannot be read: {reason}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        raise web_config_error(path, "", f"is not valid YAML: {_yaml_problem(exc)}") from None
    return parse_web_config(data, path)


def parse_web_config(data: object, path: Path) -> WebConfigFile:
    """Validate the parsed YAML of ``path`` (None, an empty file, is an empty config)."""
    if not isinstance(data, dict | None):
        got = type(data).__name__
        problem = f"is not a mapping of settings (got {got}); see custode serve --help"
        raise web_config_error(path, "", problem)
    try:
        return WebConfigFile.model_validate(data or {})
    except ValidationError as exc:
        key, problem = _describe(exc)
        raise web_config_error(path, key, problem) from None


def web_config_error(path: Path, key: str, problem: str) -> ConfigError:
    """``web config FILE: KEY: problem; fix``; without a key the problem is the file's."""
    return ConfigError(
        f"web config {path}: {key}: {problem}" if key else f"web config {path} {problem}"
    )


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())


def _describe(exc: ValidationError) -> tuple[str, str]:
    """The dotted key and the problem of the first error, unknown keys first (as a typo in
    a key name also makes its value look wrong)."""
    errors = exc.errors()
    unknown = ("extra_forbidden", "invalid_key")  # invalid_key: not a string, so unknown too
    err = next((e for e in errors if e["type"] in unknown), errors[0])
    loc = [str(p) for p in err["loc"]]
    invalid = (err.get("ctx") or {}).get("error")  # the exception a validator raised
    if isinstance(invalid, _Invalid):
        return ".".join([*loc, invalid.at] if invalid.at else loc), invalid.problem
    key = ".".join(loc)
    if err["type"] in unknown:
        model: type[Section] = WebConfigFile
        if len(loc) > 1:
            model = TLSServerConfig if loc[0] == "tls_server_config" else HTTPServerConfig
        return key, f"unknown key; known keys here: {', '.join(sorted(model.model_fields))}"
    if err["type"] in ("model_type", "model_attributes_type", "dict_type"):
        return key, f"expected a mapping, got {type(err['input']).__name__}"
    if err["type"] == "bool_type":
        return key, f"expected true or false, got {err['input']!r}"
    return key, str(err["msg"])
