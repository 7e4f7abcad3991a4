"""Small inline SVG charts, written by hand: a time axis, bars or lines, a dashed target.

The value axis scales to the data: a target far above every value (a 5-minute restore
target over 5-second drills) is a note at the top of the chart, not an axis that
flattens the data to nothing.

No plotting dependency and nothing fetched: each chart is one ``<svg>`` element with its
own styles as attributes, so the HTML report stays a single self-contained file. Every
text is XML-escaped here; the result is ``Markup`` so the template's autoescape keeps it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 72, 16, 28, 30
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
AXIS, GRID, TARGET = "#57606a", "#d0d7de", "#cf222e"
COLOURS = ("#0969da", "#8250df", "#1a7f37", "#bf8700")
#: a target more than this many times the largest value is noted, not drawn to scale
FAR = 3.0

Format = Callable[[float], str]


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]  # (epoch seconds, value)
    colour: str = COLOURS[0]


def _when(epoch: float, span: float) -> str:
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%d %b %H:%M" if span <= 2 * 86400 else "%d %b")


def _nice(top: float) -> float:
    """Round numbers on the axis (a quarter of each is a grid line): the least of 1, 1.2,
    1.6, 2, 2.5, 3, 4, 5, 6 or 8 times a power of ten >= top, so the data fills most of it."""
    if top <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(top))
    return next(power * m for m in (1, 1.2, 1.6, 2, 2.5, 3, 4, 5, 6, 8, 10) if power * m >= top)


class _Frame:
    """Scales and the axes shared by both kinds of chart."""

    def __init__(self, start: float, end: float, top: float) -> None:
        self.start, self.end = start, max(end, start + 1.0)
        self.top = _nice(top)

    def x(self, t: float) -> float:
        return LEFT + (t - self.start) / (self.end - self.start) * PLOT_W

    def y(self, v: float) -> float:
        return TOP + PLOT_H - min(v, self.top) / self.top * PLOT_H

    def axes(self, fmt: Format) -> list[str]:
        parts = []
        for i in range(5):  # horizontal grid with value labels
            v = self.top * i / 4
            y = self.y(v)
            parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + PLOT_W}" y2="{y:.1f}" '
                         f'stroke="{GRID}" stroke-width="1"/>')  # fmt: skip
            parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" '
                         f'font-size="11" fill="{AXIS}">{escape(fmt(v))}</text>')  # fmt: skip
        span = self.end - self.start
        for i in range(5):  # time labels
            t = self.start + span * i / 4
            anchor = ("start", "middle", "middle", "middle", "end")[i]
            label = escape(_when(t, span))
            parts.append(f'<text x="{self.x(t):.1f}" y="{HEIGHT - 10}" text-anchor="{anchor}" '
                         f'font-size="11" fill="{AXIS}">{label}</text>')  # fmt: skip
        parts.append(f'<line x1="{LEFT}" y1="{TOP + PLOT_H}" x2="{LEFT + PLOT_W}" '
                     f'y2="{TOP + PLOT_H}" stroke="{AXIS}" stroke-width="1"/>')  # fmt: skip
        return parts

    def target(self, value: float, label: str) -> list[str]:
        if value > self.top:  # off the scale: say where it is instead
            return [
                f'<text x="{LEFT + PLOT_W - 4}" y="{TOP - 6}" text-anchor="end" font-size="11" '
                f'fill="{TARGET}">{escape(label)}, far above this scale</text>'
            ]
        y = self.y(value)
        return [
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + PLOT_W}" y2="{y:.1f}" stroke="{TARGET}" '
            'stroke-width="1.5" stroke-dasharray="6 4"/>',
            f'<text x="{LEFT + PLOT_W - 4}" y="{y - 5:.1f}" text-anchor="end" font-size="11" '
            f'fill="{TARGET}">{escape(label)}</text>',
        ]


def _top(values: Sequence[float], target: float | None) -> float:
    """The axis's top: the data's with headroom, and the target's when it is near."""
    data = max(values, default=0.0)
    if target is not None and target <= FAR * data:
        data = max(data, target)
    return data * 1.1


def stacked_bar(title: str, parts: Sequence[tuple[str, float, str]]) -> Markup:
    """One horizontal bar split into (name, value, colour) parts, with a legend."""
    total = sum(v for _, v, _ in parts) or 1.0
    shapes, x = [], float(LEFT)
    for name, value, colour in parts:
        w = value / total * PLOT_W
        label = escape(f"{name}: {value:,.0f}")
        shapes.append(f'<rect x="{x:.1f}" y="{TOP + 4}" width="{w:.1f}" height="28" '
                      f'fill="{colour}"><title>{label}</title></rect>')  # fmt: skip
        x += w
    legend = [(f"{name} {value:,.0f}", colour) for name, value, colour in parts]
    return _svg(title, shapes, legend, height=TOP + 40)


def _svg(
    title: str, parts: list[str], legend: Sequence[tuple[str, str]] = (), height: int = HEIGHT
) -> Markup:
    x = LEFT
    for name, colour in legend:
        parts.append(f'<rect x="{x}" y="8" width="10" height="10" fill="{colour}"/>')
        parts.append(
            f'<text x="{x + 14}" y="17" font-size="11" fill="{AXIS}">{escape(name)}</text>'
        )
        x += 24 + 7 * len(name)
    body = "".join(parts)
    return Markup(  # noqa: S704  (every text above went through escape())
        f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" '
        f'width="{WIDTH}" height="{height}" role="img" aria-label="{escape(title)}" '
        f'font-family="system-ui, sans-serif"><title>{escape(title)}</title>{body}</svg>'
    )


def bar_chart(
    title: str,
    bars: Sequence[tuple[float, float]],
    *,
    start: float,
    end: float,
    bar_seconds: float,
    fmt: Format,
    target: float | None = None,
    target_label: str = "",
    colour: str = COLOURS[0],
    legend: str = "",
) -> Markup:
    """One bar per (epoch, value), ``bar_seconds`` wide on a time axis from start to end;
    ``target`` a dashed line, or a note when it is far above the data; ``legend`` names
    what the bars are, when the title alone (a tooltip) would not tell charts apart."""
    frame = _Frame(start, end, _top([v for _, v in bars], target))
    parts = frame.axes(fmt)
    width = max(3.0, bar_seconds / (frame.end - frame.start) * PLOT_W - 1)
    for t, v in bars:
        x = min(max(frame.x(t), LEFT), LEFT + PLOT_W - width)
        y = frame.y(v)
        label = f"{_when(t, frame.end - frame.start)}: {fmt(v)}"
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" '
                     f'height="{TOP + PLOT_H - y:.1f}" fill="{colour}">'
                     f"<title>{escape(label)}</title></rect>")  # fmt: skip
    if target is not None:
        parts += frame.target(target, target_label)
    return _svg(title, parts, [(legend, colour)] if legend else ())


def line_chart(
    title: str,
    series: Sequence[Series],
    *,
    start: float,
    end: float,
    fmt: Format,
    top: float | None = None,
    target: float | None = None,
    target_label: str = "",
) -> Markup:
    """One line per series on a time axis; a lone point is drawn as a dot."""
    values = [v for s in series for _, v in s.points]
    frame = _Frame(start, end, top or _top(values, target))
    parts = frame.axes(fmt)
    span = frame.end - frame.start
    for s in series:
        coords = [(frame.x(t), frame.y(v)) for t, v in s.points]
        if len(coords) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{s.colour}" '
                         'stroke-width="2" stroke-linejoin="round"/>')  # fmt: skip
        if len(coords) <= 60:
            for (x, y), (t, v) in zip(coords, s.points, strict=True):
                label = f"{s.name} {_when(t, span)}: {fmt(v)}"
                parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{s.colour}">'
                             f"<title>{escape(label)}</title></circle>")  # fmt: skip
    if target is not None:
        parts += frame.target(target, target_label)
    return _svg(title, parts, [(s.name, s.colour) for s in series])
