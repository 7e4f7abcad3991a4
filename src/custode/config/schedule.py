"""The ``[schedule]`` section: when ``custode serve`` runs its jobs (cron expressions)."""

from __future__ import annotations

from pydantic import Field, field_validator

from custode.config.types import Duration, Section


def _cron(value: str) -> str:
    from croniter import croniter  # type: ignore[import-untyped]  # noqa: PLC0415  (loaded only to check)

    if value and not croniter.is_valid(value):
        raise ValueError(f"{value!r} is not a cron expression (minute hour day month weekday)")
    return value


class ScheduleConfig(Section):
    cycle: str = Field(
        default="0 2 * * *",
        description="When custode serve runs the nightly cycle (custode run), as a cron "
        'expression; "" never.',
    )
    drill: str = Field(
        default="0 4 * * 0",
        description="When serve runs a restore drill of every repository (custode verify "
        '--level drill); "" never.',
    )
    report: str = Field(
        default="0 7 * * *",
        description="When serve writes the report of the last day (custode report) into "
        'run.report_directory; "" never.',
    )
    stop_grace: Duration = Field(
        default=600.0,
        description="On stop, how long a running job may take to finish its current step "
        "before it is killed.",
    )

    @field_validator("cycle", "drill", "report")
    @classmethod
    def _valid(cls, value: str) -> str:
        return _cron(value.strip())
