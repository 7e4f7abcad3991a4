"""Delivery of alerts to Alertmanager (API v2) and to a webhook, without ever failing serve.

Alertmanager gets every firing alert at every evaluation with ``endsAt`` a lease of
``lease_factor`` evaluation intervals ahead, so it resolves them by itself if custode stops
(as Prometheus does); a resolved alert is sent once with ``endsAt`` = the time it resolved.
The webhook gets the same JSON list, but only of alerts that started firing or resolved
since it was last told, as a webhook has no deduplication of its own.

Each destination has its own queue, keyed by the alert's labels, so a newer state replaces
an older one. A reachable destination gets everything in one request; for one that is not,
at most ``queue_size`` alerts are kept (the oldest dropped and counted). While a destination
fails, it is retried at later evaluations with exponential backoff; other destinations are
not held up. Requests use urllib with a timeout, ignore proxy environment variables and do
not follow redirects; a user and password in the URL are sent as basic auth and never
logged. Nothing here raises into the caller: failures are logged and counted.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from custode import __version__
from custode.config.alerting import AlertingConfig
from custode.monitoring.alerting import Alert

log = logging.getLogger("custode.monitoring")

BACKOFF_FIRST, BACKOFF_MAX = 10.0, 300.0
_Key = tuple[tuple[str, str], ...]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a redirect is an HTTPError: the URL in the config needs fixing


class _Rejected(Exception):
    """The receiver refused the payload (4xx): sending it again cannot succeed."""


@dataclass
class _Target:
    name: str  # the URL without credentials, for logs
    url: str
    authorization: str | None
    changes_only: bool  # the webhook: only alerts whose state changed
    queue: OrderedDict[_Key, dict[str, Any]] = field(default_factory=OrderedDict)
    told: set[_Key] = field(default_factory=set)  # firing, as far as changes_only knows
    failures: int = 0
    next_attempt: float = 0.0


def _target(url: str, *, path: str, changes_only: bool) -> _Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc += f":{parts.port}" if parts.port else ""
    auth = None
    if parts.username is not None:
        user_pass = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(user_pass.encode()).decode()
    post = urlunsplit(
        (
            parts.scheme,
            netloc,
            parts.path.rstrip("/") + path if path else parts.path,
            parts.query,
            "",
        )
    )
    return _Target(post, post, auth, changes_only)


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Notifier:
    """Sends alerts to Alertmanagers and a webhook; see the module docstring."""

    def __init__(
        self,
        alertmanagers: Sequence[str],
        webhook: str | None = None,
        *,
        lease: float,
        queue_size: int = 1000,
        timeout: float = 10.0,
        generator_url: str | None = None,
    ) -> None:
        self.targets = [
            _target(u, path="/api/v2/alerts", changes_only=False) for u in alertmanagers
        ]
        if webhook:
            self.targets.append(_target(webhook, path="", changes_only=True))
        self.lease, self.queue_size, self.timeout = lease, queue_size, timeout
        self.generator_url = generator_url
        self.failed_total = self.dropped_total = self.sent_total = 0
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)

    @classmethod
    def from_config(cls, config: AlertingConfig, *, interval: float) -> Notifier | None:
        """The notifier of ``config`` for evaluations every ``interval`` seconds (None if
        no destination is configured)."""
        if not config.alertmanagers and not config.webhook:
            return None
        return cls(
            config.alertmanagers,
            config.webhook,
            lease=config.lease_factor * interval,
            queue_size=config.queue_size,
            timeout=config.timeout,
            generator_url=config.generator_url,
        )

    def queued(self) -> int:
        return sum(len(t.queue) for t in self.targets)

    def payload(self, alert: Alert, now: float) -> dict[str, Any]:
        ends = alert.resolved_at if alert.resolved_at is not None else now + self.lease
        body: dict[str, Any] = {
            "labels": dict(alert.labels),
            "annotations": dict(alert.annotations),
            "startsAt": rfc3339(alert.active_at),
            "endsAt": rfc3339(ends),
        }
        if self.generator_url:
            body["generatorURL"] = self.generator_url
        return body

    def notify(self, alerts: Sequence[Alert], now: float) -> None:
        """Queue the firing and resolved ``alerts`` and try every due destination."""
        try:
            sendable = [a for a in alerts if a.state != "pending"]
            for target in self.targets:
                for alert in sendable:
                    if target.changes_only:
                        if (alert.state == "firing") == (alert.key in target.told):
                            continue
                        (target.told.add if alert.state == "firing" else target.told.discard)(
                            alert.key
                        )
                    self._enqueue(target, alert.key, self.payload(alert, now))
                self._flush(target, now)
        except Exception:  # a bug here must not stop serve; it is logged with its traceback
            log.exception("alert notification failed unexpectedly")

    def _enqueue(self, target: _Target, key: _Key, body: dict[str, Any]) -> None:
        target.queue.pop(key, None)  # a newer state of the same alert replaces the older
        target.queue[key] = body

    def _trim(self, target: _Target) -> None:
        """Keep at most queue_size alerts for a destination that cannot take them now."""
        while len(target.queue) > self.queue_size:
            target.queue.popitem(last=False)
            self.dropped_total += 1

    def _flush(self, target: _Target, now: float) -> None:
        # A clock set back must not postpone retries by more than the longest backoff.
        due = now >= target.next_attempt or target.next_attempt - now > BACKOFF_MAX
        if not target.queue:
            return
        if not due:
            self._trim(target)
            return
        batch = list(target.queue.values())
        try:
            self._post(target, json.dumps(batch).encode())
        except _Rejected as exc:
            self.failed_total += 1
            self.dropped_total += len(batch)
            target.queue.clear()
            log.error("%s rejected %d alerts: %s", target.name, len(batch), exc)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self.failed_total += 1
            target.failures += 1
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (target.failures - 1))
            target.next_attempt = now + delay
            self._trim(target)
            log.warning(
                "cannot send %d alerts to %s (retry in %.0fs): %s",
                len(batch),
                target.name,
                delay,
                _reason(exc),
            )
        else:
            if target.failures:
                log.info("%s reachable again after %d failures", target.name, target.failures)
            target.queue.clear()
            target.failures, target.next_attempt = 0, 0.0
            self.sent_total += len(batch)

    def _post(self, target: _Target, body: bytes) -> None:
        headers = {"Content-Type": "application/json", "User-Agent": f"custode/{__version__}"}
        if target.authorization:
            headers["Authorization"] = target.authorization
        # S310: _target admits http(s) URLs only.
        request = urllib.request.Request(target.url, body, headers, method="POST")  # noqa: S310
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                response.read(65536)
        except urllib.error.HTTPError as exc:
            detail = exc.read(300).decode("utf-8", "replace").strip()
            exc.close()
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                raise _Rejected(f"HTTP {exc.code} {detail}") from None
            raise


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__
