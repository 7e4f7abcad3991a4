"""Results from the history database: the last success of maintenance, check and backup
per repository, the latest outcome and duration, each maintenance task's freshness, and
the latest restore drills."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import get_args

from prometheus_client.core import GaugeMetricFamily, Metric

from custode.backup.lineage import Lineage
from custode.maintenance.planner import TaskKind
from custode.monitoring.view import FleetView
from custode.records.state import LatestResult

# history task -> metric word; "check-full" counts as a check
_KINDS = {"maintain": "maintenance", "check": "check", "check-full": "check", "backup": "backup"}
#: Every task whose results the collector reads: maintenance's tasks are recorded under
#: their kind, so their names come from the planner's type, never listed again here.
TASKS = (*_KINDS, "restore_drill", *get_args(TaskKind))


class HistoryCollector:
    def __init__(
        self, view: Callable[[], FleetView], max_series: int, lineage: Lineage | None = None
    ) -> None:
        self.view, self.max_series, self.lineage = view, max_series, lineage

    def collect(self) -> Iterator[Metric]:
        view = self.view()
        per_repo = len(view.repositories) <= self.max_series
        known = {(r.state.root, r.state.relative) for r in view.repositories}
        labels = ["root", "repository"]
        last_ok = {w: GaugeMetricFamily(
            f"custode_repository_last_{w}_success_timestamp_seconds",
            f"When the repository's last successful {w} started (Unix time).", labels=labels,
        ) for w in ("maintenance", "check", "backup")}  # fmt: skip
        failed = {w: GaugeMetricFamily(
            f"custode_repository_last_{w}_failed",
            f"1 when the repository's latest {w} failed.", labels=labels,
        ) for w in ("maintenance", "check", "backup")}  # fmt: skip
        seconds = {w: GaugeMetricFamily(
            f"custode_repository_last_{w}_duration_seconds",
            f"How long the repository's latest {w} took.", labels=labels,
        ) for w in ("maintenance", "check", "backup")}  # fmt: skip
        integrity = GaugeMetricFamily(
            "custode_repository_integrity_ok",
            "1 when the repository's latest custode check found no corruption.",
            labels=labels,
        )
        task_ok = GaugeMetricFamily(
            "custode_repository_task_last_success_timestamp_seconds",
            "When each maintenance task last succeeded in the repository (Unix time).",
            labels=[*labels, "task"],
        )
        drill = GaugeMetricFamily(
            "custode_restore_drill_duration_seconds",
            "How long the latest restore drill of the repository took.",
            labels=["repository"],
        )
        drill_ok = GaugeMetricFamily(
            "custode_restore_drill_success", "1 when the latest restore drill passed.",
            labels=["repository"],
        )  # fmt: skip
        latest_backup = 0.0
        best: dict[tuple[str, str, str], LatestResult] = {}  # latest result per kind
        ok_at: dict[tuple[str, str, str], float] = {}  # latest success per kind
        for r in view.results:
            word = _KINDS.get(r.task)
            if r.task == "restore_drill":
                drill.add_metric([r.repository], r.duration_s)
                drill_ok.add_metric([r.repository], 1 if r.outcome == "ok" else 0)
                continue
            if word == "backup" and r.last_ok:
                latest_backup = max(latest_backup, r.last_ok)
            if not per_repo or (r.root, r.repository) not in known:
                continue
            if word is None:  # a maintenance task: its freshness
                if r.last_ok:
                    task_ok.add_metric([r.root, r.repository, r.task], r.last_ok)
                continue
            key = (r.root, r.repository, word)
            if key not in best or r.at > best[key].at:
                best[key] = r
            if r.last_ok:
                ok_at[key] = max(ok_at.get(key, 0.0), r.last_ok)
        for (root, repository, word), r in sorted(best.items()):
            if (root, repository, word) in ok_at:
                last_ok[word].add_metric([root, repository], ok_at[root, repository, word])
            failed[word].add_metric([root, repository], 1 if r.outcome == "failed" else 0)
            seconds[word].add_metric([root, repository], r.duration_s)
            if word == "check":
                integrity.add_metric([root, repository], 1 if r.outcome == "ok" else 0)
        yield from last_ok.values()
        yield from failed.values()
        yield from seconds.values()
        yield integrity
        yield task_ok
        yield drill
        yield drill_ok
        yield from self._backup(latest_backup)

    def _backup(self, latest_backup: float) -> Iterator[Metric]:
        marks = self.lineage.load()[0] if self.lineage else {}
        held = max((m.held for m in marks.values()), default=0.0)
        if held:  # a store that lost its newest snapshots holds no backup that recent
            latest_backup = min(latest_backup, held)
        backup = GaugeMetricFamily(
            "custode_backup_last_success_timestamp_seconds",
            "When the latest successful backup of any repository started (Unix time), "
            "no later than the newest snapshot the backup stores were last seen to hold.",
        )
        if latest_backup:
            backup.add_metric([], latest_backup)
        yield backup
        rollback = GaugeMetricFamily(
            "custode_backup_store_rolled_back",
            "1 when the store went back in time for this host (its last snapshot is gone) "
            "and that was not accepted (custode verify --accept-rollback).",
            labels=["store", "host"],
        )
        for slot, mark in sorted(marks.items()):
            store, _, host = slot.rpartition("#")
            rollback.add_metric([store, host], 1 if mark.rollback else 0)
        yield rollback
