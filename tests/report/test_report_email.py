"""``custode report --email`` against a real SMTP server on 127.0.0.1 (aiosmtpd): plain,
STARTTLS and TLS with a private CA, AUTH that the server only allows over TLS, and the one-
line errors for a wrong password, an untrusted certificate and a server that is down."""

from __future__ import annotations

import datetime
import email
import email.policy
import ipaddress
import re
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from custode.config.email import EmailConfig
from custode.config.model import parse_config
from custode.config.schedule import ScheduleConfig
from custode.errors import ConfigError, UsageError
from custode.report.email import read_password
from custode.report.render import fmt_bytes
from custode.serve.scheduler import jobs_from
from fixtures.builders import Fleet
from fixtures.cli import CliResult

Run = Callable[..., CliResult]
USER, PASSWORD = "custode", "s3cret-Pa55word"
SENDER, RECIPIENTS = "custode@example.org", ["ops@example.org", "dev@example.org"]


# --------------------------------------------------------------------------- the server


@dataclass
class Inbox:
    """What the server received: the parsed messages and who logged in."""

    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        if isinstance(data, LoginPassword) and (data.login, data.password) == (
            USER.encode(),
            PASSWORD.encode(),
        ):
            self.logins.append(USER)
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False)


class _Controller(Controller):  # type: ignore[misc]
    """Listens on a free port chosen by the kernel (port 0), so parallel tests never race."""

    def _trigger_server(self) -> None:
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A private CA and a certificate for 127.0.0.1 and localhost signed by it."""
    where = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("custode test CA"))
        .issuer_name(_name("custode test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(where / "ca.pem", where / "cert.pem", where / "key.pem")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pki


@dataclass
class Server:
    inbox: Inbox
    port: int


def _serve(inbox: Inbox, **kwargs: Any) -> Iterator[Server]:
    controller = _Controller(inbox, hostname="127.0.0.1", port=0, **kwargs)
    controller.start()
    try:
        yield Server(inbox, controller.port)
    finally:
        controller.stop()


@pytest.fixture
def plain_server() -> Iterator[Server]:
    yield from _serve(Inbox())


@pytest.fixture
def starttls_server(pki: Pki) -> Iterator[Server]:
    """STARTTLS required; AUTH offered only after it (aiosmtpd's auth_require_tls)."""
    inbox = Inbox()
    yield from _serve(
        inbox, tls_context=pki.server_context(), require_starttls=True,
        authenticator=inbox.authenticate, auth_require_tls=True, auth_required=True,
    )  # fmt: skip


@pytest.fixture
def tls_server(pki: Pki) -> Iterator[Server]:
    inbox = Inbox()
    yield from _serve(
        inbox, ssl_context=pki.server_context(), authenticator=inbox.authenticate,
        auth_required=True, auth_require_tls=False,  # aiosmtpd sees STARTTLS only: all is TLS
    )  # fmt: skip


# --------------------------------------------------------------------------- helpers


def config(tmp_path: Path, port: int, **email_keys: object) -> Path:
    """A config file whose [email] sends to 127.0.0.1:port, plus ``email_keys``."""
    keys: dict[str, object] = {
        "smtp_host": "127.0.0.1", "smtp_port": port, "sender": SENDER, "recipients": RECIPIENTS,
        **email_keys,
    }  # fmt: skip

    def toml(value: object) -> str:
        if isinstance(value, list):
            return "[" + ", ".join(toml(v) for v in value) + "]"
        if isinstance(value, int):
            return str(value)
        return '"' + str(value).replace("\\", "\\\\") + '"'

    path = tmp_path / "custode.toml"
    path.write_text("[email]\n" + "".join(f"{k} = {toml(v)}\n" for k, v in keys.items()))
    return path


def password_file(tmp_path: Path, password: str = PASSWORD) -> Path:
    path = tmp_path / "smtp-password"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path


def parts(message: EmailMessage) -> dict[str, str]:
    """The alternatives of a multipart/alternative message, by content type."""
    assert message.get_content_type() == "multipart/alternative"
    found: dict[str, str] = {}
    for part in message.iter_parts():
        assert isinstance(part, EmailMessage)
        found[part.get_content_type()] = part.get_content()
    return found


def plain(text: str) -> str:
    text = re.sub(r"<[^>]+>", " ", text).replace("**", "").replace("`", "")
    return " ".join(text.split())


def one_line_error(result: CliResult) -> str:
    """The error line: the last on stderr ("wrote FILE" may come before it), and one only."""
    lines = [line for line in result.stderr.splitlines() if not line.startswith("wrote ")]
    assert len(lines) == 1 and lines[0].startswith("custode: "), result.stderr
    assert PASSWORD not in result.stderr + result.stdout
    return lines[0]


# --------------------------------------------------------------------------- end to end


@pytest.mark.integration
@pytest.mark.slow
def test_scheduled_report_job_writes_the_file_and_mails_the_same_numbers(
    custode: Run, fleet_copy: Fleet, tmp_path: Path, plain_server: Server
) -> None:
    root = fleet_copy.root
    maintain = custode("maintain", "--json", root)
    assert maintain.code == 0, maintain.stderr
    assert custode("check", root).code in {0, 3}
    cfg = config(tmp_path, plain_server.port, security="none")

    # Exactly the command custode serve's report job runs when email.smtp_host is set.
    job = next(j for j in jobs_from(ScheduleConfig(), [root], tmp_path, email=True)
               if j.name == "report")  # fmt: skip
    assert job.argv[-1] == "--email" and "--format" in job.argv
    assert job.argv[1] == str(root)  # the report is about serve's roots
    assert jobs_from(ScheduleConfig(), [root], tmp_path)[2].argv[-1] != "--email"
    sent = custode("--config", cfg, *job.argv)
    assert sent.code == 0, sent.stderr
    assert "sent the report to ops@example.org, dev@example.org via 127.0.0.1" in sent.stderr
    written = (tmp_path / "custode-report-daily.html").read_text()
    assert written.startswith("<!DOCTYPE html>")

    data = custode("--config", cfg, "report", "--since", "1d", "--format", "json").json()
    assert len(plain_server.inbox.messages) == 1
    message = plain_server.inbox.messages[0]
    assert plain_server.inbox.envelopes == [(SENDER, RECIPIENTS)]
    assert re.fullmatch(r"custode report for \S+, \d{4}-\d{2}-\d{2}", message["Subject"])
    assert message["From"] == SENDER and message["To"] == ", ".join(RECIPIENTS)
    assert message["Auto-Submitted"] == "auto-generated"
    alternatives = parts(message)
    assert set(alternatives) == {"text/plain", "text/html"}
    html, markdown = alternatives["text/html"], alternatives["text/plain"]
    assert html.startswith("<!DOCTYPE html>") and "<svg" in html
    assert markdown.lstrip().startswith("#")  # Markdown, not HTML
    facts = [
        f"{data['fleet']['repositories']} repositories",
        f"{len(data['problems'])} need attention",
        fmt_bytes(data["maintenance"]["reclaimed_bytes"]),
        *(p["repository"] for p in data["problems"]),
    ]
    assert data["maintenance"]["reclaimed_bytes"] > 0 and data["fleet"]["repositories"] > 0
    for fact in facts:
        assert fact in plain(markdown), fact
        assert fact in plain(html), fact
        assert fact in plain(written), fact


@pytest.mark.integration
def test_starttls_with_a_private_ca_and_login(
    custode: Run, tmp_path: Path, starttls_server: Server, pki: Pki
) -> None:
    cfg = config(
        tmp_path, starttls_server.port, security="starttls", cafile=pki.ca, username=USER,
        password_file=password_file(tmp_path), subject="[{host}] fleet on {date}",
    )  # fmt: skip
    result = custode("--config", cfg, "report", "--email", "--format", "json")
    assert result.code == 0, result.stderr
    assert result.json()["empty"] is True  # printed as usual, and mailed
    assert starttls_server.inbox.logins == [USER]
    (message,) = starttls_server.inbox.messages
    assert re.fullmatch(r"\[\S+\] fleet on \d{4}-\d{2}-\d{2}", message["Subject"])
    assert set(parts(message)) == {"text/plain", "text/html"}


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_implicit_tls_and_login(custode: Run, tmp_path: Path, tls_server: Server, pki: Pki) -> None:
    cfg = config(
        tmp_path, tls_server.port, security="tls", cafile=pki.ca, username=USER,
        password_file=password_file(tmp_path),
    )  # fmt: skip
    result = custode("--config", cfg, "report", "--email", "-o", tmp_path / "r.md")
    assert result.code == 0, result.stderr
    assert tls_server.inbox.logins == [USER] and len(tls_server.inbox.messages) == 1


@pytest.mark.integration
def test_wrong_password_is_a_clear_error_without_the_password(
    custode: Run, tmp_path: Path, starttls_server: Server, pki: Pki
) -> None:
    wrong = password_file(tmp_path, "not-" + PASSWORD)
    cfg = config(tmp_path, starttls_server.port, cafile=pki.ca, username=USER, password_file=wrong)
    result = custode("--config", cfg, "report", "--email", "-o", tmp_path / "r.html")
    assert result.code == 2
    line = one_line_error(result)
    assert f"SMTP server 127.0.0.1:{starttls_server.port} refused the login of 'custode'" in line
    assert "535" in line and line.endswith("check email.username and the password in "
                                           "email.password_file")  # fmt: skip
    assert "not-" not in line
    assert (tmp_path / "r.html").exists()  # the report is written before it is sent
    assert starttls_server.inbox.messages == []


@pytest.mark.integration
def test_untrusted_certificate_names_cafile(
    custode: Run, tmp_path: Path, starttls_server: Server
) -> None:
    cfg = config(tmp_path, starttls_server.port, username=USER,
                 password_file=password_file(tmp_path))  # fmt: skip
    result = custode("--config", cfg, "report", "--email")
    assert result.code == 1
    line = one_line_error(result)
    assert "certificate is not trusted" in line and "set email.cafile" in line
    assert starttls_server.inbox.logins == []


@pytest.mark.integration
def test_plain_server_without_starttls_is_refused_by_default(
    custode: Run, tmp_path: Path, plain_server: Server
) -> None:
    result = custode("--config", config(tmp_path, plain_server.port), "report", "--email")
    assert result.code == 1
    assert 'does not offer STARTTLS; set email.security = "tls"' in one_line_error(result)
    assert plain_server.inbox.messages == []


@pytest.mark.integration
def test_server_down_is_a_clear_error(custode: Run, tmp_path: Path) -> None:
    with socket.socket() as held:  # bound, never listening: connections are refused
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        result = custode("--config", config(tmp_path, port, security="none"), "report",
                         "--email", "-o", tmp_path / "r.html")  # fmt: skip
    assert result.code == 1
    assert one_line_error(result) == (
        f"custode: cannot connect to SMTP server 127.0.0.1:{port}: connection refused; check "
        "email.smtp_host and email.smtp_port, and that the server is running"
    )


def test_email_flag_without_a_server_is_a_usage_error(custode: Run) -> None:
    result = custode("report", "--email")
    assert result.code == 2 and result.stdout == ""
    assert "--email needs a mail server: set email.smtp_host" in one_line_error(result)


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"smtp_host": "h", "recipients": ["a@b"]}, "sender is empty"),
        ({"smtp_host": "h", "sender": "a@b"}, "recipients is empty"),
        ({"smtp_host": "h", "sender": "a@b", "recipients": ["a@b"], "username": "u"},
         "username and password_file together"),
        ({"smtp_host": "h", "sender": "a@b", "recipients": ["a@b"], "security": "none",
          "username": "u", "password_file": "p"}, "password in clear"),
        ({"recipients": ["not an address"]}, "email.recipients: 'not an address' is not an email"),
        ({"subject": "report {when}"}, "email.subject: only {host} and {date}"),
        ({"security": "ssl"}, "email.security"),
    ],
)  # fmt: skip
def test_config_errors_name_the_key(keys: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config({"email": keys}, source="custode.toml")


def test_defaults_send_nothing() -> None:
    cfg = EmailConfig()
    assert cfg.smtp_host is None and cfg.security == "starttls" and cfg.smtp_port == 587
    assert cfg.timeout == 30.0


def test_password_file_must_be_private(tmp_path: Path) -> None:
    path = password_file(tmp_path)
    assert read_password(path) == PASSWORD
    path.chmod(0o640)
    with pytest.raises(UsageError, match=r"accessible by group or others \(mode 0640\): run "):
        read_password(path)
