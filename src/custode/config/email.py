"""The ``[email]`` section: where ``custode report --email`` sends the report."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from custode.config.types import Duration, Section


class EmailConfig(Section):
    smtp_host: str | None = Field(
        default=None,
        description="The SMTP server custode report --email (and the scheduled report of "
        "custode serve) sends the report through; unset: no email.",
    )
    smtp_port: int = Field(
        default=587, ge=1, le=65535,
        description="Its port: 587 for STARTTLS (submission), 465 for TLS, 25 for none.",
    )  # fmt: skip
    security: Literal["starttls", "tls", "none"] = Field(
        default="starttls",
        description="starttls: upgrade the connection with STARTTLS (refused if the server "
        "does not offer it); tls: TLS from the start (port 465); none: no encryption, only "
        "for a relay on this host, and never with a username.",
    )
    cafile: Path | None = Field(
        default=None,
        description="A PEM file of CA certificates to verify the server with, for a private "
        "CA (default: the system's CAs).",
    )
    username: str | None = Field(
        default=None, description="The user to log in as (SMTP AUTH); unset: no login."
    )
    password_file: Path | None = Field(
        default=None,
        description="A file holding the password for username (one line; mode 600, as group "
        "or other access is refused).",
    )
    sender: str = Field(
        default="", description="The From address, e.g. custode@example.org (required for email)."
    )
    recipients: list[str] = Field(
        default=[], description="Where the report goes (required for email)."
    )
    subject: str = Field(
        default="custode report for {host}, {date}",
        description="The subject line; {host} is the host name, {date} the day (YYYY-MM-DD).",
    )
    timeout: Duration = Field(
        default=30.0, description="Longest wait for the SMTP server at each step."
    )

    @field_validator("sender", "username", "subject")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and ("\r" in value or "\n" in value):
            raise ValueError("must be one line")
        return value

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        return _address(value) if value else value

    @field_validator("recipients")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        return [_address(each) for each in value]

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str) -> str:
        try:
            value.format(host="h", date="d")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"only {{host}} and {{date}} may be used ({exc})") from None
        return value

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.smtp_host is None:
            return self
        if not self.sender:
            raise ValueError("smtp_host is set but sender is empty; set sender (From address)")
        if not self.recipients:
            raise ValueError("smtp_host is set but recipients is empty; list who gets the report")
        if (self.username is None) != (self.password_file is None):
            raise ValueError("set username and password_file together, or neither")
        if self.username is not None and self.security == "none":
            raise ValueError(
                'a username with security = "none" would send the password in clear; '
                'use "starttls" or "tls"'
            )
        return self


def _address(value: str) -> str:
    if "@" not in value or value.strip() != value or any(c in value for c in "\r\n,"):
        raise ValueError(f"{value!r} is not an email address such as ops@example.org")
    return value
