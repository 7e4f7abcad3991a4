"""The host as custode sees it: each filesystem holding a root (size, free, used share)
and the host's CPU, memory and load samples (also recorded in history for reports; host
dashboards otherwise use node_exporter)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric

from custode.monitoring.view import FleetView


class SystemCollector:
    def __init__(self, view: Callable[[], FleetView]) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        view = self.view()
        labels = ["mountpoint", "root"]
        size = GaugeMetricFamily(
            "custode_filesystem_size_bytes", "Size of the filesystem holding a root.", labels=labels
        )
        free = GaugeMetricFamily(
            "custode_filesystem_free_bytes",
            "Bytes free to unprivileged users on it.",
            labels=labels,
        )
        used = GaugeMetricFamily(
            "custode_filesystem_used_ratio",
            "Share of it in use (0 to 1), as df computes it.",
            labels=labels,
        )
        for fs in view.filesystems:
            size.add_metric([fs.mountpoint, fs.root], fs.size)
            free.add_metric([fs.mountpoint, fs.root], fs.free)
            used.add_metric([fs.mountpoint, fs.root], 1 - fs.free / fs.size if fs.size else 0)
        yield size
        yield free
        yield used
        if view.host is not None:
            yield GaugeMetricFamily(
                "custode_host_cpu_used_ratio",
                "Host CPU in use over the last refresh interval (0 to 1).",
                value=view.host.cpu_ratio,
            )
            yield GaugeMetricFamily(
                "custode_host_memory_used_ratio",
                "Host memory in use (0 to 1).",
                value=view.host.memory_ratio,
            )
            load = GaugeMetricFamily("custode_host_load", "Host load average.", labels=["period"])
            for period, value in zip(("1m", "5m", "15m"), view.host.load, strict=True):
                load.add_metric([period], value)
            yield load
