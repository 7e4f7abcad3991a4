"""The report as plain data: frozen dataclasses holding everything the three formats show.

Every figure is about one fleet, the repositories under the report's roots (``Scope``),
but the host's own (resources, alerts) and the log of runs; backup figures are per store,
never summed across stores. Two kinds of facts: the fleet's *current* state (each
repository's latest observation and latest maintain/check/backup result, whenever
recorded) and what happened *within the window* (runs, reclaimed space, backups, drills,
host samples). Series for charts are bucketed (hour, day or week by the window's length),
so a report stays small whatever the history holds. ``custode.report.history.build``
fills it in from the database.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

SCHEMA = 2  # of to_json(); bump on incompatible changes


@dataclass(frozen=True)
class Targets:
    """What the report measures against (the operations targets)."""

    drill_seconds: float = 300.0  # a repository restored within 5 minutes
    resource_ratio: float = 0.7  # CPU and memory below 70% (maintenance.cpu_share)
    backup_age_seconds: float = 26 * 3600.0  # as the shipped CustodeBackupStale alert


@dataclass(frozen=True)
class Scope:
    """Which fleet the figures are about: the repositories recorded under ``roots``."""

    roots: tuple[str, ...]  # absolute; when ``everything``, every root the history recorded
    everything: bool  # no roots configured or given: all recorded roots
    left_out: int  # repositories recorded under other roots, in none of the figures
    left_out_roots: tuple[str, ...]
    stores: tuple[str, ...]  # where the fleet's backups went (by its latest backup, the window's)


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
    """The fleet's repositories now. The verdicts are custode status's, as it last saw
    them: ``ok + attention + maintained_since + broken + unobserved == repositories``."""

    repositories: int
    ok: int
    attention: int  # status said "attention" (maintenance due), not maintained since
    maintained_since: int  # status said "attention", maintained successfully after it looked
    broken: int
    unobserved: int  # known from results only: custode status never recorded them
    size_bytes: int
    loose_objects: int
    packs: int
    observed_at: str | None  # the newest observation
    needing_attention: int
    """The one count of repositories that need attention, shown wherever that fact is:
    those listed in ``Report.problems``, for any reason — a verdict of attention (not
    maintained since) or broken, a failed integrity check, a failed maintenance, a
    backup that failed, is stale or never ran."""


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
    reclaimed_bytes: int  # >= 0, as Maintenance's
    grown_bytes: int  # >= 0


@dataclass(frozen=True)
class Deferred:
    """Maintenance that waits for a later night: the nightly window was full (not an
    error); still waiting when the report was made."""

    root: str
    repository: str
    tasks: tuple[str, ...]
    why: str
    first_deferred: str  # ISO 8601
    due: str  # ISO 8601


@dataclass(frozen=True)
class Maintenance:
    """Space: each repository's maintenance either freed space (``reclaimed_bytes``, the
    sum of what each freed) or grew it (``grown_bytes``: what it wrote, a repack with
    bitmaps or a multi-pack index, a commit-graph, outweighed what it removed); neither is
    ever negative and one does not hide the other."""

    runs: int  # maintain runs with a result for the fleet (all maintain runs, unscoped)
    repositories: int  # distinct repositories with a result
    ok: int  # results (one per repository per run)
    failed: int
    skipped: int
    reclaimed_bytes: int
    grown_bytes: int
    grown_repositories: int  # distinct repositories that grew in some run
    tasks: tuple[TaskStats, ...]
    buckets: tuple[MaintenanceBucket, ...]
    deferred: tuple[Deferred, ...] = ()  # the longest waiting first


@dataclass(frozen=True)
class Checks:
    runs: int
    repositories: int
    ok: int
    failed: int
    full: int  # results of check --full


@dataclass(frozen=True)
class BackupRun:
    """One backup run, its figures the fleet's: its repositories there, their bytes."""

    at: str
    status: str
    snapshot: str | None
    store: str
    repositories: int  # of the fleet, in this run
    failed: int  # of those
    bytes_added: int  # by those
    seconds: float  # the whole run


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
class StoreBackups:
    """The fleet's backups into one store within the window."""

    store: str
    runs: int  # backup runs that backed up a repository of the fleet there
    failed_runs: int  # of those, not ok
    bytes_added: int  # by the fleet's repositories
    last_run: BackupRun
    buckets: tuple[BackupBucket, ...]


@dataclass(frozen=True)
class Backups:
    """Per store what was backed up in the window (``stores``, never summed across
    them); per repository how fresh its latest backup is, wherever it went."""

    stale_after_seconds: float
    stores: tuple[StoreBackups, ...]  # by name
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
    store: str
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
    scope: Scope
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
