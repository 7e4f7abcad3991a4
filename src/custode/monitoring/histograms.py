"""Durations of git operations, from probes and from live trace2 events, as one histogram.

``custode_git_operation_duration_seconds{operation, source}``: ``source`` is ``probe``
(custode's own timed read-only operations) or ``trace2`` (every git process on the host
that reports to custode). Per-repository totals are kept only for the repositories the
caller allows (the cardinality bound), as two counters.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass
class _Series:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0
    observed: int = 0


class OperationHistograms:
    """Thread-safe: probes and the trace2 reader observe, scrapes collect."""

    def __init__(self, max_repositories: int = 2000) -> None:
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], _Series] = {}
        self._per_repo: dict[tuple[str, str, str], tuple[int, float]] = {}
        self.max_repositories = max_repositories

    def observe(
        self, operation: str, seconds: float, *, source: str,
        repository: str | None = None, root: str | None = None,
    ) -> None:  # fmt: skip
        slot = bisect.bisect_left(BUCKETS, seconds)
        with self._lock:
            series = self._series.setdefault((operation, source), _Series())
            series.counts[slot] += 1
            series.total += seconds
            series.observed += 1
            if repository is not None:
                key = (root or "", repository, operation)
                known = {(r, p) for r, p, _ in self._per_repo}
                if key in self._per_repo or len(known | {key[:2]}) <= self.max_repositories:
                    n, t = self._per_repo.get(key, (0, 0.0))
                    self._per_repo[key] = (n + 1, t + seconds)

    def quantile(self, operation: str, source: str, q: float) -> float | None:
        """An estimate of the ``q`` quantile from the buckets (as histogram_quantile)."""
        with self._lock:
            series = self._series.get((operation, source))
            if series is None or not series.observed:
                return None
            rank, seen = q * series.observed, 0
            for i, count in enumerate(series.counts):
                seen += count
                if seen >= rank:
                    return BUCKETS[i] if i < len(BUCKETS) else float("inf")
        return None

    def collect(self) -> Iterator[Metric]:
        hist = HistogramMetricFamily(
            "custode_git_operation_duration_seconds",
            "Wall time of git operations: custode's probes and live trace2 reports.",
            labels=["operation", "source"],
        )
        count = CounterMetricFamily(
            "custode_repository_git_operations",
            "git operations reported per repository (trace2 and probes).",
            labels=["root", "repository", "operation"],
        )
        seconds = CounterMetricFamily(
            "custode_repository_git_operation_seconds",
            "Total wall time of git operations per repository.",
            labels=["root", "repository", "operation"],
        )
        with self._lock:
            for (operation, source), s in sorted(self._series.items()):
                cumulative, buckets = 0, []
                for bound, n in zip((*BUCKETS, float("inf")), s.counts, strict=True):
                    cumulative += n
                    buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
                hist.add_metric([operation, source], buckets, s.total)
            for (root, repository, operation), (n, t) in sorted(self._per_repo.items()):
                count.add_metric([root, repository, operation], n)
                seconds.add_metric([root, repository, operation], t)
        p95 = GaugeMetricFamily(
            "custode_git_operation_p95_seconds",
            "custode's estimate of the 95th percentile of each operation's duration, from "
            "the histogram buckets since start (for alert rules evaluated inside custode).",
            labels=["operation", "source"],
        )
        for operation, source in sorted(self._series):
            value = self.quantile(operation, source, 0.95)
            if value is not None:
                p95.add_metric([operation, source], value)
        yield hist
        yield p95
        yield count
        yield seconds
