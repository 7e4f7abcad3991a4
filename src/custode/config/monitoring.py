"""The ``[monitoring]`` config section: exposition, cardinality bound, probes."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from custode.config.types import Duration, Section


class MonitoringConfig(Section):
    listen: str = Field(
        default="127.0.0.1:9877",
        description="Where custode serve answers /metrics and /healthz (HOST:PORT).",
    )
    web_config: Path | None = Field(
        default=None,
        description="A Prometheus exporter-toolkit web config (TLS, basic auth) for serve.",
    )
    request_timeout: Duration = Field(
        default=10.0, gt=0,
        description="Longest a connection to serve may last, all of it (TLS handshake, request, "
        "answer); a slow or silent client is closed then. Keep it at least Prometheus' "
        "scrape_timeout.",
    )  # fmt: skip
    max_connections: int = Field(
        default=32, ge=1,
        description="Connections serve holds at once; when full, a client still sending its "
        "request makes room for a new one (see docs/deployment.md).",
    )  # fmt: skip
    max_connections_per_client: int = Field(
        default=8, ge=1,
        description="Connections one client address (an IPv6 /64) holds at once; its oldest "
        "one still sending its request makes room for a new one.",
    )  # fmt: skip
    refresh_interval: Duration = Field(
        default=60.0,
        description="How often serve rereads the fleet and history (scrapes answer from the "
        "last refresh).",
    )
    max_repository_series: int = Field(
        default=2000, ge=0,
        description="Export per-repository series up to this many repositories; above it, "
        "fleet-wide histograms and the worst repositories only.",
    )  # fmt: skip
    worst: int = Field(
        default=10, ge=1, description="How many worst repositories to export per measure."
    )
    probe_repositories: int = Field(
        default=20, ge=0,
        description="Repositories probed per refresh (timed read-only git operations), in turn.",
    )  # fmt: skip
    probe_budget: Duration = Field(
        default=5.0, description="Longest the probes of one refresh may take together."
    )
