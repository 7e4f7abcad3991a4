"""The ``[trace2]`` section: the socket git's trace2 events are sent to
(``custode.monitoring.trace2config`` points git at it)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from custode.config.types import Section


class Trace2Config(Section):
    socket: Path | None = Field(
        default=None,
        description="The unix socket git's trace2 events are sent to (default: "
        "$XDG_RUNTIME_DIR/custode/trace2.sock, else trace2.sock in the state directory). "
        "'custode trace2 enable' writes this path into git's config, so set it when "
        "custode serve runs with another environment (a system service).",
    )
    socket_mode: int = Field(
        default=0o600,
        ge=0,
        le=0o777,
        description="Permissions of the socket. git processes of users that cannot connect "
        "run untraced (never slower). For a git server run custode as the git user and "
        "keep 0o600; 0o660 with a shared group also works.",
    )
    max_buffer: int = Field(
        default=100_000,
        ge=1,
        description="Events held between the socket reader and the parser; beyond this, "
        "events are dropped and counted (custode_trace2_events_dropped_total), so git "
        "never waits for custode.",
    )
