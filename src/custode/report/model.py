"""The report as plain data: frozen dataclasses holding everything the three formats show.

Two kinds of facts: the fleet's *current* state (each repository's latest observation and
latest maintain/check/backup result, whenever recorded) and what happened *within the
window* (runs, reclaimed space, backups, drills, host samples). Series for charts are
bucketed (hour, day or week by the window's length), so a report stays small whatever the
history holds. ``custode.report.history.build`` fills it in from the database.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

SCHEMA = 1  # of to_json(); bump on incompatible changes


@dataclass(frozen=True)
class Targets:
    """What the report measures against (the operations targets)."""

    drill_seconds: float = 300.0  # a repository restored within 5 minutes
    resource_ratio: float = 0.7  # CPU and memory below 70% (maintenance.cpu_share)
    backup_age_seconds: float = 26 * 3600.0  # as the shipped CustodeBackupStale alert


@dataclass(frozen=True)
class Window:
    since: str  # UTC ISO-8601
    until: str
    seconds: float
    bucket_seconds: float  # of the maintenance and backup series


@dataclass(frozen=True)
class CommandRuns:
    command: str
    runs: int
    ok: int
    partial: int
    failed: int  # failed, or never finished
    last_at: str


@dataclass(frozen=True)
class Fleet:
    repositories: int
    ok: int
    attention: int
    broken: int
    unobserved: int  # known from results only: custode status never recorded them
    size_bytes: int
    loose_objects: int
    packs: int
    observed_at: str | None  # the newest observation
    needing_attention: int


@dataclass(frozen=True)
class Problem:
    root: str
    repository: str
    verdict: str  # as custode status last saw it; "unknown" if it never did
    observed_at: str | None
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class TaskStats:
    task: str
    ok: int
    failed: int
    skipped: int
    seconds: float


@dataclass(frozen=True)
class MaintenanceBucket:
    start: str
    runs: int
    repositories: int
    failed: int
    reclaimed_bytes: int


@dataclass(frozen=True)
class Maintenance:
    runs: int
    repositories: int  # distinct repositories with a result
    ok: int  # results (one per repository per run)
    failed: int
    skipped: int
    reclaimed_bytes: int
    tasks: tuple[TaskStats, ...]
    buckets: tuple[MaintenanceBucket, ...]


@dataclass(frozen=True)
class Checks:
    runs: int
    repositories: int
    ok: int
    failed: int
    full: int  # results of check --full


@dataclass(frozen=True)
class BackupRun:
    at: str
    status: str
    snapshot: str | None
    store: str | None
    repositories: int
    new: int
    unchanged: int
    failed: int
    full: int
    bytes_added: int
    seconds: float


@dataclass(frozen=True)
class BackupBucket:
    start: str
    runs: int
    failed: int
    bytes_added: int


Freshness = Literal["fresh", "stale", "failed", "never"]


@dataclass(frozen=True)
class RepositoryBackup:
    root: str
    repository: str
    state: Freshness
    last_ok: str | None
    age_seconds: float | None
    size_bytes: int | None  # the repository's, as last observed
    backups: int  # within the window
    bytes_added: int  # within the window
    message: str


@dataclass(frozen=True)
class Backups:
    stale_after_seconds: float
    runs: int
    failed_runs: int
    bytes_added: int
    last_run: BackupRun | None
    buckets: tuple[BackupBucket, ...]
    fresh: int
    stale: int
    failed: int
    never: int
    oldest_age_seconds: float | None  # of the stalest last success
    repositories: tuple[RepositoryBackup, ...]  # worst first


@dataclass(frozen=True)
class DrillRun:
    at: str
    store: str | None
    repositories: int
    failed: int
    max_seconds: float
    total_seconds: float  # the whole verify run
    within_target: bool


@dataclass(frozen=True)
class Drill:
    repository: str
    store: str
    at: str
    ok: bool
    seconds: float
    message: str


@dataclass(frozen=True)
class RestoreRun:
    at: str
    restored: int
    failed: int
    bytes: int
    seconds: float


@dataclass(frozen=True)
class Drills:
    target_seconds: float
    runs: tuple[DrillRun, ...]
    drills: int
    failed: int
    over_target: int
    max_seconds: float | None
    slowest: tuple[Drill, ...]
    failures: tuple[Drill, ...]
    restores: tuple[RestoreRun, ...]


@dataclass(frozen=True)
class AlertCount:
    name: str
    severity: str
    fired: int  # instances that started firing in the window
    resolved: int
    firing_now: int  # still firing at the end of the window


@dataclass(frozen=True)
class AlertEvent:
    at: str
    name: str
    state: str  # firing or resolved
    severity: str
    subject: str  # the repository (or filesystem, operation) it is about


@dataclass(frozen=True)
class Alerts:
    recorded: bool
    note: str
    counts: tuple[AlertCount, ...] = ()
    events: tuple[AlertEvent, ...] = ()  # newest first, at most 200


@dataclass(frozen=True)
class ResourceBucket:
    start: str
    samples: int
    cpu_mean: float
    cpu_max: float
    memory_mean: float
    memory_max: float


@dataclass(frozen=True)
class Resources:
    target_ratio: float
    samples: int
    cpu_mean: float | None
    cpu_p95: float | None
    cpu_max: float | None
    cpu_over_target: int  # samples
    memory_mean: float | None
    memory_p95: float | None
    memory_max: float | None
    memory_over_target: int
    load1_max: float | None
    bucket_seconds: float
    buckets: tuple[ResourceBucket, ...]


@dataclass(frozen=True)
class Report:
    generated_at: str
    database: str
    window: Window
    targets: Targets
    empty: bool  # nothing recorded at all
    runs: tuple[CommandRuns, ...]
    fleet: Fleet
    problems: tuple[Problem, ...]
    maintenance: Maintenance
    checks: Checks
    backups: Backups
    drills: Drills
    alerts: Alerts
    resources: Resources

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}


ALERTS_NOT_RECORDED = Alerts(
    recorded=False,
    note="No history database: alerts are recorded there by custode serve",
)
