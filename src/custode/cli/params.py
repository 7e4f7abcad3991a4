"""click parameter types shared by commands.

A value that does not parse is a usage error (exit 2) naming the value, never a
traceback: every date, time and duration is checked here as far as any later use takes
it (a date that exists, a time the system can convert, a duration a date can go back by),
and every ``--jobs`` follows one rule.
"""

from __future__ import annotations

import math
import os
import re
from datetime import UTC, datetime

import click

from custode.base.units import parse_duration

#: The longest duration accepted: a century reaches back past any history custode keeps,
#: and stays inside what dates and timestamps can represent.
DURATION_MAX = 100 * 365 * 86400.0

#: The most repositories a ``--jobs`` may name: more is a typo, not a machine.
JOBS_MAX = 64

#: What ``--at`` takes for a time (``backup.catalog.choose``); anything else is a snapshot id.
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}([T ][0-9:.]+)?([+-]\d{2}:?\d{2}|Z)?$")


class Duration(click.ParamType[float]):
    """A duration such as 90s, 30m, 2h, 14d; the value is seconds."""

    name = "duration"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            seconds = float(value)
        else:
            try:
                seconds = parse_duration(str(value))
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        if not math.isfinite(seconds) or seconds > DURATION_MAX:
            self.fail(f"{value!r} is longer than the 100 years custode accepts", param, ctx)
        return seconds


class SnapshotOrTime(click.ParamType[str]):
    """A snapshot id (or a prefix of one), ``latest``, or a date or time such as
    2026-11-20 or 2026-11-20T14:00 (with an optional offset): passed on as given once a
    date or time is known to exist."""

    name = "snapshot|time"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> str:
        text = str(value)
        if not _TIME.match(text):
            return text
        try:
            when = datetime.fromisoformat(text.replace("Z", "+00:00"))
            when = when if when.tzinfo else when.astimezone()
            if len(text) == 10:  # a date stands for the end of that day
                when = when.replace(hour=23, minute=59, second=59)
            when.astimezone(UTC)  # an offset can push the first or last day out of range
        except (ValueError, OverflowError) as exc:
            self.fail(
                f"{text!r} is not a valid date or time ({exc}); use a date such as "
                "2026-11-20 or a time such as 2026-11-20T14:00",
                param,
                ctx,
            )
        return text


class Jobs(click.ParamType[int]):
    """How many repositories a command works on at once (``--jobs``): 1 to ``JOBS_MAX``,
    or 0 for one per CPU, as 0 means in the config. The value is the number itself: 0
    becomes this machine's CPU count here, so that it overrides the config like any
    other number (the config's own 0 is the jobs' to resolve)."""

    name = "n"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        try:
            jobs = value if isinstance(value, int) else int(str(value), 10)
        except ValueError:
            jobs = -1
        if not 0 <= jobs <= JOBS_MAX:
            self.fail(
                f"{value!r} is not a number of repositories at once; give 1 to {JOBS_MAX}, "
                "or 0 for one per CPU",
                param,
                ctx,
            )
        return jobs or os.cpu_count() or 1


DURATION = Duration()
JOBS = Jobs()
SNAPSHOT_OR_TIME = SnapshotOrTime()
