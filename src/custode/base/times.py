"""Converting between the times custode stores and the epoch seconds it computes with.

Stored times are ISO-8601 text with a UTC offset (the history database, the report); an
aware time converts to the same instant on every host, whatever its local zone.
"""

from __future__ import annotations

from datetime import UTC, datetime


def epoch(iso: str) -> float:
    """Seconds since the epoch of an ISO-8601 time (``2026-01-02T03:04:05+00:00``)."""
    return datetime.fromisoformat(iso).timestamp()


def iso(seconds: float, timespec: str = "seconds") -> str:
    """The UTC ISO-8601 text of an epoch time, to ``timespec`` (as ``datetime.isoformat``)."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec=timespec)


def minute(seconds: float) -> str:
    """An epoch time to the UTC minute, as reports show times (``2026-01-02 03:04 UTC``)."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")
