"""The building blocks of every section of the config model (``custode.config``)."""

from __future__ import annotations

from typing import Annotated, Any, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.fields import FieldInfo

from custode.base.units import parse_duration


def _duration(value: object) -> object:
    if isinstance(value, str):
        return parse_duration(value)
    return value


class _DurationMark:
    """Marks a Duration field, so the default config file shows "2w", not 1209600.0."""


DURATION_MARK = _DurationMark()
Duration = Annotated[float, BeforeValidator(_duration), Field(ge=0), DURATION_MARK]
"""Seconds; written in the file as a number of seconds or a string like "30m" or "14d"."""


def is_duration(field: FieldInfo) -> bool:
    """Whether ``field`` holds a Duration (also inside ``Duration | None``)."""

    def marked(obj: Any) -> bool:
        return obj is DURATION_MARK or any(marked(a) for a in get_args(obj))

    return any(m is DURATION_MARK for m in field.metadata) or marked(field.annotation)


class Section(BaseModel):
    """A config section: unknown keys are errors, values are immutable once loaded.

    Its validator is built when first used, not at import (``defer_build``): a run with no
    config file validates nothing (its sections are the defaults, which pydantic never
    validates either), and one with a file builds Config's validator only. An empty list
    or dict default is written ``default=[]`` (pydantic copies it for each model), not
    ``default_factory=list``, whose signature pydantic would parse at start-up (~5 ms)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)
