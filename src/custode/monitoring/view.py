"""What one refresh saw: the fleet, its verdicts, the history, the host. Immutable, so a
scrape reads one consistent view while the next is being built."""

from __future__ import annotations

from dataclasses import dataclass, field

from custode.records.state import LatestResult
from custode.scan.repostate import RepoState


@dataclass(frozen=True)
class RepoView:
    state: RepoState
    verdict: str  # ok, attention, broken


@dataclass(frozen=True)
class FilesystemView:
    mountpoint: str
    root: str
    size: int
    free: int


@dataclass(frozen=True)
class HostView:
    cpu_ratio: float
    memory_ratio: float
    load: tuple[float, float, float]


@dataclass(frozen=True)
class FleetView:
    repositories: tuple[RepoView, ...] = ()
    problems: int = 0  # unreadable paths found while scanning
    results: tuple[LatestResult, ...] = ()
    filesystems: tuple[FilesystemView, ...] = ()
    host: HostView | None = None
    refreshed_at: float = 0.0
    refresh_seconds: float = 0.0
    errors: tuple[str, ...] = field(default_factory=tuple)
