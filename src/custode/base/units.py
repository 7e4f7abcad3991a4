"""Parsing and formatting of durations and sizes, shared by config and output."""

from __future__ import annotations

import re

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90s``, ``30m``, ``2h``, ``1h30m``, ``14d``, ``2w``.

    A bare number is seconds. Raises ValueError with the accepted forms.
    """
    s = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", s):
        return float(s)
    pos, total = 0, 0.0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(
            f"{text!r} is not a duration; use a number with a unit such as 90s, 30m, 2h, 14d"
        )
    return total


def format_duration(seconds: float) -> str:
    """``3725`` → ``1h2m5s``; the inverse of parse_duration for whole seconds."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    rest = round(seconds)
    parts = []
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts) or "0s"


#: (unit, seconds, below what age it is used): a person reads ages in the largest unit
#: that keeps the number small, rounded
_AGES = (
    ("s", 1.0, 90.0),
    ("min", 60.0, 90 * 60.0),
    ("hour", 3600.0, 86400.0),
    ("day", 86400.0, 365 * 86400.0),
    ("year", 365.25 * 86400.0, float("inf")),
)


def format_age(seconds: float) -> str:
    """An age or elapsed time as a person reads it (``… ago``), rounded to what matters:
    ``40 s``, ``12 min``, ``5.5 hours``, ``3.5 days``, ``5.6 years``. Where an exact
    duration matters (config, thresholds) ``format_duration`` is the one."""
    seconds = max(seconds, 0.0)
    unit, size = next((u, size) for u, size, below in _AGES if seconds < below)
    value = seconds / size
    if unit in ("s", "min"):
        return f"{round(value)} {unit}"
    text = f"{value:.1f}" if value < 10 else f"{round(value)}"
    text = text.removesuffix(".0")
    return f"{text} {unit if text == '1' else unit + 's'}"


def format_bytes(n: int) -> str:
    """Human-readable binary size: ``1536`` → ``1.5 KiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def counted(count: int, word: str, plural: str | None = None) -> str:
    """``counted(7412, "loose object")`` → ``7,412 loose objects``."""
    return f"{count:,} {word if count == 1 else plural or word + 's'}"
