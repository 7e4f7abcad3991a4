"""The scan job: read the fleet (through the scan cache: an unchanged repository costs a
``stat``), give each repository its health verdict, and record in the history what
changed since the last scan, pruning history older than ``state.keep_history``.

``custode status`` shows the result; ``custode run`` calls it before its report, so the
report's verdicts are the night's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from custode.config.model import Config
from custode.jobs import record
from custode.maintenance.health import Health, assess
from custode.records.state import StateDB
from custode.scan.discovery import Problem
from custode.scan.fleet import Progress
from custode.scan.fleet import scan as scan_fleet
from custode.scan.repostate import RepoState


@dataclass(frozen=True)
class FleetHealth:
    """A scan's result: every repository with its verdict, the paths that could not be
    read, when it was assessed (Unix time) and how long the scan took."""

    roots: tuple[Path, ...]
    repositories: tuple[tuple[RepoState, Health], ...]
    problems: tuple[Problem, ...]
    assessed_at: float
    seconds: float
    recorded: bool  # the observations reached the history database

    def count(self, verdict: str) -> int:
        return sum(1 for _, h in self.repositories if h.verdict == verdict)


def scan(
    roots: list[Path], config: Config, state_dir: Path, *, rescan: bool = False,
    progress: Progress | None = None,
) -> FleetHealth:  # fmt: skip
    """Scan ``roots`` and record the observations (when any repository was found).

    ``rescan`` reads every repository afresh instead of reusing the cached states of
    those unchanged since the last scan.
    """
    cache = None if rescan else state_dir / "scan-cache.json"
    found = scan_fleet(roots, config.discovery, progress, cache=cache)
    now = time.time()
    rows = tuple((s, assess(s, config.maintenance, now)) for s in found.states)
    recorded = False
    if rows:
        status = "partial" if any(h.verdict == "broken" for _, h in rows) else "ok"

        def write(db: StateDB) -> bool:
            record.observed(db, rows, status)
            record.prune(db, config.state.keep_history)
            return True

        recorded = bool(record.record(state_dir, write))
    return FleetHealth(tuple(roots), rows, tuple(found.problems), now, found.seconds, recorded)
