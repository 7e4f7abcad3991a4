"""The report model as JSON (``Report.to_json``), Markdown or one self-contained HTML file.

Markdown and HTML come from Jinja2 templates shipped in ``templates/``; HTML autoescapes,
Markdown escapes table cells itself. Numbers are formatted by the filters below in both,
so a fact reads the same in every format.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from custode.base.pathtext import display
from custode.base.times import epoch, minute
from custode.base.units import counted, format_bytes, format_duration
from custode.report import charts
from custode.report.model import Report

FORMATS = ("html", "md", "json")
LIMITS = {"html": 500, "md": 50}  # rows of long tables (problems, backups); JSON has all
CHARTED_STORES = 4  # a chart of bytes added for each of the first stores (by name)


def fmt_bytes(n: float) -> str:
    """Humanised, whatever the sign (the model's sizes are never negative)."""
    return "-" + format_bytes(-int(n)) if n < 0 else format_bytes(int(n))


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 10:
        return f"{s:.2f} s"
    if s < 60:
        return f"{s:.1f} s"
    return format_duration(s)


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r * 100:.1f}%"


def fmt_when(iso: str | None) -> str:
    if not iso:
        return "never"
    return minute(epoch(iso))


def fmt_age(s: float | None) -> str:
    return "-" if s is None else format_duration(s)


def fmt_count(n: int) -> str:
    return f"{n:,}"


def md_cell(text: object) -> str:
    """Text safe in a Markdown table cell: one line, no column breaks, no HTML or emphasis."""
    s = " ".join(str(text).split()).replace("<", "&lt;")
    return "".join("\\" + c if c in "\\|*_`[]" else c for c in s)


def md_code(text: object) -> str:
    """A code span (shown literally) that keeps a table cell whole."""
    s = " ".join(str(text).split()).replace("|", "\\|")
    return f"`` {s} ``" if "`" in s else f"`{s}`"


FILTERS: dict[str, Callable[..., str]] = {
    "bytes": fmt_bytes,
    "seconds": fmt_seconds,
    "ratio": fmt_ratio,
    "when": fmt_when,
    "age": fmt_age,
    "count": fmt_count,
    "counted": counted,  # {{ n | counted("run") }} → "1 run", "2 runs"
    "cell": md_cell,
    "code": md_code,
}


@cache
def _environment(autoescape: bool) -> Environment:
    env = Environment(
        loader=PackageLoader("custode.report", "templates"),
        autoescape=autoescape,  # noqa: S701  (on for HTML; Markdown escapes each cell itself)
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(FILTERS)
    return env


def render(report: Report, fmt: str) -> str:
    """The report in ``fmt`` (one of FORMATS)."""
    if fmt == "json":
        return json.dumps(report.to_json(), indent=2) + "\n"
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")
    context: dict[str, Any] = {"r": report, "limit": LIMITS[fmt]}
    if fmt == "html":
        context["charts"] = _charts(report)
        text = _environment(True).get_template("report.html.j2").render(context)
    else:
        text = _environment(False).get_template("report.md.j2").render(context)
    return display(text)  # a repository name that is not UTF-8 reads caf\xe9.git, as text


def _charts(r: Report) -> dict[str, Markup]:
    start, end = epoch(r.window.since), epoch(r.window.until)
    width = r.window.bucket_seconds
    found = {
        "fleet": charts.stacked_bar(
            "Repositories by verdict",
            [
                ("ok", r.fleet.ok, "#2da44e"),
                ("attention", r.fleet.attention, "#d4a72c"),
                ("maintained since", r.fleet.maintained_since, "#54aeff"),
                ("broken", r.fleet.broken, "#cf222e"),
                ("not observed", r.fleet.unobserved, "#8c959f"),
            ],
        )
    }
    if any(b.reclaimed_bytes for b in r.maintenance.buckets):
        found["reclaimed"] = charts.bar_chart(
            "Space reclaimed by maintenance",
            [(epoch(b.start), b.reclaimed_bytes) for b in r.maintenance.buckets],
            start=start, end=end, bar_seconds=width, fmt=fmt_bytes, colour=charts.COLOURS[2],
        )  # fmt: skip
    for i, store in enumerate(r.backups.stores[:CHARTED_STORES]):
        if any(b.bytes_added for b in store.buckets):
            found[f"backups{i}"] = charts.bar_chart(
                f"Bytes added to {store.store}",
                [(epoch(b.start), b.bytes_added) for b in store.buckets],
                start=start, end=end, bar_seconds=width, fmt=fmt_bytes,
                colour=charts.COLOURS[i % len(charts.COLOURS)],
                legend=f"bytes added to {store.store}",
            )  # fmt: skip
    if r.drills.runs:
        found["drills"] = charts.bar_chart(
            "Slowest repository restore per drill",
            [(epoch(d.at), d.max_seconds) for d in r.drills.runs],
            start=start, end=end, bar_seconds=max(width / 4, r.window.seconds / 120),
            fmt=fmt_seconds, target=r.drills.target_seconds,
            target_label=f"target {fmt_seconds(r.drills.target_seconds)}",
            colour=charts.COLOURS[1],
        )  # fmt: skip
    if r.resources.buckets:
        buckets = r.resources.buckets

        def points(attr: str) -> list[tuple[float, float]]:
            return [(epoch(b.start), float(getattr(b, attr))) for b in buckets]

        found["resources"] = charts.line_chart(
            "Host CPU and memory use",
            [
                charts.Series("CPU max", points("cpu_max"), charts.COLOURS[0]),
                charts.Series("CPU mean", points("cpu_mean"), charts.COLOURS[1]),
                charts.Series("memory max", points("memory_max"), charts.COLOURS[2]),
            ],
            start=start, end=end, fmt=fmt_ratio, top=1.0, target=r.resources.target_ratio,
            target_label=f"target {fmt_ratio(r.resources.target_ratio)}",
        )  # fmt: skip
    return found
