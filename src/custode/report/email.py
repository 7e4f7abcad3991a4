"""Sending the report by email: one multipart/alternative message over SMTP.

The message carries the same report twice, as text/plain (the Markdown rendering, which
reads well as text) and as text/html (the self-contained HTML file), so every mail client
shows one of them. TLS is on by default (STARTTLS, or implicit TLS with ``security =
"tls"``) and verifies the server's certificate with the system's CAs or ``cafile``. The
password lives in a file of its own, refused when group or others can read it like the
age identity, and never appears in the config, a log line or an error message.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from custode.base.secretfile import read_secret
from custode.config.email import EmailConfig
from custode.errors import CustodeError, ExitCode, UsageError

_MAX_PASSWORD_FILE = 4096


class EmailError(CustodeError):
    """The report could not be sent: the message names the server and the fix."""

    exit_code = ExitCode.ERROR


class EmailAuthError(EmailError):
    """The server refused the login: a configuration problem."""

    exit_code = ExitCode.USAGE


def read_password(path: Path) -> str:
    """The password in ``path``; refused unless only its owner can read it."""
    data = read_secret(
        path, "email.password_file", limit=_MAX_PASSWORD_FILE,
        expected="a file holding the SMTP password",
        missing=f"write the SMTP password into it and run 'chmod 600 {path}'",
    )  # fmt: skip
    try:
        password = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise UsageError(f"email.password_file {path} is not UTF-8 text") from None
    if not password or "\n" in password:
        raise UsageError(f"email.password_file {path} must hold the password on one line")
    return password


def build_message(
    config: EmailConfig, html: str, markdown: str, *, host: str, now: datetime | None = None
) -> EmailMessage:
    """The message: text/plain (Markdown) and text/html alternatives of one report."""
    now = now or datetime.now().astimezone()
    message = EmailMessage()
    message["Subject"] = config.subject.format(host=host, date=now.strftime("%Y-%m-%d"))
    message["From"] = config.sender
    message["To"] = ", ".join(config.recipients)
    message["Date"] = formatdate(now.timestamp(), localtime=True)
    message["Message-ID"] = make_msgid("custode-report", domain=config.sender.rpartition("@")[2])
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
    message.set_content(markdown)
    message.add_alternative(html, subtype="html")
    return message


def send_report(
    config: EmailConfig, html: str, markdown: str, *, host: str, now: datetime | None = None
) -> None:
    """Send the report to ``config.recipients``; raise an ``EmailError`` naming the fix."""
    if config.smtp_host is None:
        raise UsageError("email is not configured: set email.smtp_host, sender and recipients")
    message = build_message(config, html, markdown, host=host, now=now)
    password = read_password(config.password_file) if config.password_file else None
    server = f"SMTP server {config.smtp_host}:{config.smtp_port}"
    try:
        refused = _deliver(config, config.smtp_host, message, password)
    except smtplib.SMTPException as exc:  # before OSError, of which it is a subclass
        raise _smtp_problem(config, server, exc) from None
    except OSError as exc:
        raise _network_problem(config, server, exc) from None
    if refused:
        raise EmailError(
            f"the report was sent, but {server} refused some recipients "
            f"({_refusals(refused)}); check email.recipients"
        )


def _deliver(
    config: EmailConfig, smtp_host: str, message: EmailMessage, password: str | None
) -> dict[str, tuple[int, bytes]]:
    context = ssl.create_default_context(cafile=config.cafile)
    client: smtplib.SMTP
    if config.security == "tls":
        client = smtplib.SMTP_SSL(
            smtp_host, config.smtp_port, timeout=config.timeout, context=context
        )
    else:
        client = smtplib.SMTP(smtp_host, config.smtp_port, timeout=config.timeout)
    with client:
        if config.security == "starttls":
            client.starttls(context=context)  # raises SMTPNotSupportedError when not offered
        if config.username is not None and password is not None:
            client.login(config.username, password)
        return client.send_message(message)


def _smtp_problem(config: EmailConfig, server: str, exc: smtplib.SMTPException) -> EmailError:
    """One line for what the server said, ending with the fix (never the password)."""
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return EmailAuthError(
            f"{server} refused the login of {config.username!r} ({_reply(exc)}); check "
            "email.username and the password in email.password_file"
        )
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        text = f"refused every recipient ({_refusals(exc.recipients)}); check email.recipients"
    elif isinstance(exc, smtplib.SMTPSenderRefused):
        text = (
            f"refused the sender {config.sender} ({_reply(exc)}); check email.sender (many "
            "servers accept only the login's own address)"
        )
    elif isinstance(exc, smtplib.SMTPNotSupportedError):
        text = _not_supported(str(exc))
    elif isinstance(exc, smtplib.SMTPServerDisconnected):
        text = (
            f"closed the connection ({exc or 'no reason given'}); check email.smtp_port and "
            "email.security (tls for port 465, starttls for 587)"
        )
    elif isinstance(exc, smtplib.SMTPResponseException):
        text = f"answered {_reply(exc)}; check the [email] settings and the server's log"
    else:
        text = f"failed: {exc}; check the [email] settings"
    return EmailError(f"{server} {text}")


def _network_problem(config: EmailConfig, server: str, exc: OSError) -> EmailError:
    if isinstance(exc, ssl.SSLCertVerificationError):
        text = (
            f"TLS with {server} failed: its certificate is not trusted ({exc.verify_message}); "
            "set email.cafile to the CA that signed it, or make email.smtp_host the name in "
            "its certificate"
        )
    elif isinstance(exc, ssl.SSLError):
        text = (
            f"TLS with {server} failed ({exc.reason or exc}); check email.security (tls for "
            "port 465, starttls for 587)"
        )
    elif isinstance(exc, ConnectionRefusedError):
        text = (
            f"cannot connect to {server}: connection refused; check email.smtp_host and "
            "email.smtp_port, and that the server is running"
        )
    elif isinstance(exc, socket.gaierror):
        text = f"cannot resolve {server}: {exc.strerror}; check email.smtp_host"
    elif isinstance(exc, TimeoutError):
        text = (
            f"{server} did not answer within {config.timeout:g} s; check email.smtp_host, "
            "email.smtp_port and the firewall, or raise email.timeout"
        )
    else:
        text = (
            f"cannot talk to {server}: {exc.strerror or exc}; check email.smtp_host and "
            "email.smtp_port"
        )
    return EmailError(text)


def _not_supported(what: str) -> str:
    if "STARTTLS" in what:
        return (
            'does not offer STARTTLS; set email.security = "tls" if it expects TLS from '
            "the start (port 465)"
        )
    if "AUTH" in what:
        return "offers no login (SMTP AUTH); unset email.username, or use the submission port"
    return f"{what}; check the [email] settings"


def _reply(exc: smtplib.SMTPResponseException) -> str:
    text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else ""
    return f"{exc.smtp_code} {' '.join(text.split())}".strip()


def _refusals(refused: dict[str, tuple[int, bytes]]) -> str:
    return "; ".join(
        f"{who}: {code} {' '.join(text.decode(errors='replace').split())}"
        for who, (code, text) in sorted(refused.items())
    )
