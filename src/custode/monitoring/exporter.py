"""The exporter: one refresh reads the fleet (through the scan cache: unchanged repositories
cost a ``stat``), the history database and the host, probes a few repositories, and renders
the exposition of that view once. A scrape then only concatenates that text with the
families that change between refreshes (operation histograms, trace2, alerts, custode's
own process), so it answers in milliseconds whatever the fleet's size and never waits for
a refresh in progress.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import psutil
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from custode import __version__
from custode.backup.lineage import Lineage
from custode.base.pathtext import display
from custode.config.model import Config
from custode.errors import CustodeError
from custode.git.runner import Git
from custode.maintenance.health import assess
from custode.monitoring.collectors.history import TASKS, HistoryCollector
from custode.monitoring.collectors.repositories import RepositoryCollector
from custode.monitoring.collectors.system import SystemCollector
from custode.monitoring.histograms import OperationHistograms
from custode.monitoring.probes import Prober
from custode.monitoring.view import FilesystemView, FleetView, HostView, RepoView
from custode.records.state import LatestResult, StateDB
from custode.scan.fleet import scan

log = logging.getLogger("custode.monitoring")


class Collector(Protocol):
    def collect(self) -> Iterator[Metric]: ...


#: what a refresh records of the host, given the history database it has open
#: (``custode.jobs.record.HostSamples``: the sample, and pruning by state.keep_history)
HostRecorder = Callable[[StateDB, HostView], None]


class Exporter:
    def __init__(self, *, roots: list[Path], config: Config, state_dir: Path,
                 git: Git | None = None, probes: bool = True,
                 record_host: HostRecorder | None = None) -> None:  # fmt: skip
        self.roots, self.config, self.state_dir = roots, config, state_dir
        self.record_host = record_host
        cfg = config.monitoring
        self.git = git or Git.from_config(config.git)
        self.histograms = OperationHistograms(cfg.max_repository_series)
        self.prober = Prober(self.git, self.histograms, count=cfg.probe_repositories if probes
                             else 0, budget=cfg.probe_budget)  # fmt: skip
        self._view = FleetView()
        self._refresh_lock = threading.Lock()
        self.refreshes = self.refresh_errors = 0
        self.last_error = ""
        self._static = CollectorRegistry(auto_describe=False)
        for collector in (
            RepositoryCollector(self.view, cfg.max_repository_series, cfg.worst),
            HistoryCollector(self.view, cfg.max_repository_series, Lineage(state_dir)),
            SystemCollector(self.view),
        ):
            self._static.register(collector)
        self._dynamic = CollectorRegistry(auto_describe=False)
        ProcessCollector(namespace="custode", registry=self._dynamic)
        self._dynamic.register(self.histograms)
        self._dynamic.register(_SelfCollector(self))
        self._static_text = b""
        psutil.cpu_percent(interval=None)  # the first call only starts the measurement

    def view(self) -> FleetView:
        return self._view

    def register(self, collector: Collector) -> None:
        """Another collector answered at every scrape (trace2, alerts)."""
        self._dynamic.register(collector)

    def refresh(self) -> None:
        """Build and publish a new view; errors are logged and counted, never raised."""
        with self._refresh_lock:
            started = time.monotonic()
            try:
                view = self._build()
            except (CustodeError, OSError) as exc:
                self.refresh_errors += 1
                self.last_error = getattr(exc, "message", None) or str(exc)
                log.warning("metrics refresh failed: %s", self.last_error)
                return
            took = time.monotonic() - started
            self._view = replace(view, refreshed_at=time.time(), refresh_seconds=took)
            self._static_text = generate_latest(_EscapedLabels(self._static))
            self.refreshes += 1
            self.last_error = ""

    def exposition(self) -> bytes:
        """The Prometheus text format: the last refresh's view plus the live families."""
        return self._static_text + generate_latest(_EscapedLabels(self._dynamic))

    def samples(self) -> list[Metric]:
        """Every metric family of the last refresh and the live ones (for alert rules)."""
        return [*_EscapedLabels(self._static).collect(), *_EscapedLabels(self._dynamic).collect()]

    # -- one refresh ---------------------------------------------------------------------

    def _build(self) -> FleetView:
        now = time.time()
        found = scan(self.roots, self.config.discovery, cache=self.state_dir / "scan-cache.json")
        policy = self.config.maintenance
        repos = tuple(RepoView(s, assess(s, policy, now).verdict) for s in found.states)
        errors: list[str] = []
        results: tuple[LatestResult, ...] = ()
        try:
            with StateDB.open(self.state_dir / "state.db") as db:
                results = tuple(db.latest_results(TASKS))
                host = _host()
                if self.record_host is not None:
                    self.record_host(db, host)
        except CustodeError as exc:
            errors.append(f"history unreadable: {exc.message}")
            host = _host()
        self.prober.run(repos)
        return FleetView(repos, len(found.problems), results, _filesystems(self.roots), host,
                         errors=tuple(errors))  # fmt: skip


class _EscapedLabels(CollectorRegistry):
    """A registry's families with every label value shown as text: a repository name that is
    not UTF-8 becomes caf\\xe9.git (pathtext.display), as the exposition format is UTF-8."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(auto_describe=False)
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            if any(not v.isascii() for s in family.samples for v in s.labels.values()):
                family.samples = [
                    s._replace(labels={k: display(v) for k, v in s.labels.items()})
                    for s in family.samples
                ]
            yield family


class _SelfCollector:
    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter

    def collect(self) -> Iterator[Metric]:
        e, view = self.exporter, self.exporter.view()
        yield _info()
        yield GaugeMetricFamily("custode_exporter_last_refresh_timestamp_seconds",
                                "When the metrics were last refreshed (Unix time).",
                                value=view.refreshed_at)  # fmt: skip
        yield GaugeMetricFamily("custode_exporter_refresh_duration_seconds",
                                "How long the last refresh took.",
                                value=view.refresh_seconds)  # fmt: skip
        yield CounterMetricFamily("custode_exporter_refresh_errors",
                                  "Refreshes that failed (the previous view is kept).",
                                  value=e.refresh_errors)  # fmt: skip
        yield GaugeMetricFamily("custode_exporter_scan_problems",
                                "Paths under the roots that could not be read.",
                                value=view.problems)  # fmt: skip
        yield CounterMetricFamily("custode_probe_failures",
                                  "Probe git operations that failed or timed out.",
                                  value=e.prober.failures)  # fmt: skip


def _info() -> GaugeMetricFamily:
    family = GaugeMetricFamily("custode_build_info", "custode's version.", labels=["version"])
    family.add_metric([__version__], 1)
    return family


def _host() -> HostView:
    load = os.getloadavg()
    return HostView(psutil.cpu_percent(interval=None) / 100,
                    psutil.virtual_memory().percent / 100, (load[0], load[1], load[2]))  # fmt: skip


def _mountpoint(path: Path) -> str:
    at = os.path.realpath(path)
    while not os.path.ismount(at):
        at = os.path.dirname(at)
    return at


def _filesystems(roots: list[Path]) -> tuple[FilesystemView, ...]:
    out = []
    for root in roots:
        try:
            usage = psutil.disk_usage(str(root))
        except OSError:
            continue
        where = os.path.abspath(root)
        out.append(FilesystemView(_mountpoint(root), where, usage.total, usage.free))
    return tuple(out)
