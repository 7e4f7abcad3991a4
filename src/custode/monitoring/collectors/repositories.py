"""Repository metrics from each repository's state (the scan), within a cardinality bound.

Up to ``max_series`` repositories: one series per repository and measure. Above it: the
per-repository families are left out, and fleet-wide histograms plus the ``worst``
repositories per measure are exported instead (the full detail stays in ``custode status``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric

from custode.monitoring.view import FleetView, RepoView

_MEASURES: tuple[tuple[str, str, Callable[[RepoView], float]], ...] = (
    ("size_bytes", "Bytes on disk of the repository's git directory.",
     lambda r: r.state.size_bytes),
    ("loose_objects", "Loose objects (as git count-objects counts them).",
     lambda r: r.state.loose_objects),
    ("packs", "Pack files.", lambda r: r.state.packs),
    ("loose_refs", "Refs stored as loose files.", lambda r: r.state.loose_refs),
    ("refs", "Refs, as git for-each-ref lists them.", lambda r: r.state.refs),
)  # fmt: skip
_SIZE_BUCKETS = (1e5, 1e6, 1e7, 1e8, 1e9, 1e10, float("inf"))
_COUNT_BUCKETS = (0, 10, 100, 1000, 10000, 100000, float("inf"))


class RepositoryCollector:
    def __init__(self, view: Callable[[], FleetView], max_series: int, worst: int) -> None:
        self.view, self.max_series, self.worst = view, max_series, worst

    def collect(self) -> Iterator[Metric]:
        view = self.view()
        repos = view.repositories
        verdicts = GaugeMetricFamily(
            "custode_repositories", "Repositories by health verdict.", labels=["verdict"]
        )
        for verdict in ("ok", "attention", "broken"):
            verdicts.add_metric([verdict], sum(1 for r in repos if r.verdict == verdict))
        yield verdicts
        limited = len(repos) > self.max_series
        yield GaugeMetricFamily(
            "custode_repository_series_limited",
            "1 when the fleet exceeds monitoring.max_repository_series and per-repository "
            "series are replaced by histograms and the worst repositories.",
            value=1 if limited else 0,
        )
        if limited:
            yield from self._fleet(repos)
        else:
            yield from self._each(repos)

    def _each(self, repos: tuple[RepoView, ...]) -> Iterator[Metric]:
        labels = ["root", "repository"]
        for name, text, value in _MEASURES:
            family = GaugeMetricFamily(f"custode_repository_{name}", text, labels=labels)
            for r in repos:
                family.add_metric([r.state.root, r.state.relative], value(r))
            yield family
        healthy = GaugeMetricFamily(
            "custode_repository_healthy",
            "1 unless the repository is broken (unreadable or corrupt files).",
            labels=labels,
        )
        needs = GaugeMetricFamily(
            "custode_repository_needs_maintenance",
            "1 when the repository's state calls for maintenance (verdict attention).",
            labels=labels,
        )
        for r in repos:
            healthy.add_metric([r.state.root, r.state.relative], 0 if r.verdict == "broken" else 1)
            needs.add_metric([r.state.root, r.state.relative], 1 if r.verdict == "attention" else 0)
        yield healthy
        yield needs

    def _fleet(self, repos: tuple[RepoView, ...]) -> Iterator[Metric]:
        for name, text, value in _MEASURES:
            bounds = _SIZE_BUCKETS if name == "size_bytes" else _COUNT_BUCKETS
            values = [value(r) for r in repos]
            hist = HistogramMetricFamily(
                f"custode_fleet_repository_{name}", f"Distribution over the fleet: {text}"
            )
            buckets = [(_bound(b), sum(1 for v in values if v <= b)) for b in bounds]
            hist.add_metric([], buckets, sum(values))
            yield hist
            worst = GaugeMetricFamily(
                f"custode_worst_repository_{name}",
                f"The {self.worst} largest values over the fleet: {text}",
                labels=["root", "repository"],
            )
            for r in sorted(repos, key=value, reverse=True)[: self.worst]:
                worst.add_metric([r.state.root, r.state.relative], value(r))
            yield worst
        broken = GaugeMetricFamily(
            "custode_worst_repository_healthy",
            "The broken repositories (value 0), at most the worst count.",
            labels=["root", "repository"],
        )
        for r in [r for r in repos if r.verdict == "broken"][: self.worst]:
            broken.add_metric([r.state.root, r.state.relative], 0)
        yield broken


def _bound(b: float) -> str:
    return "+Inf" if b == float("inf") else repr(float(b))
