"""click parameter types shared by commands."""

from __future__ import annotations

import click

from custode.units import parse_duration


class Duration(click.ParamType[float]):
    """A duration such as 90s, 30m, 2h, 14d; the value is seconds."""

    name = "duration"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()
