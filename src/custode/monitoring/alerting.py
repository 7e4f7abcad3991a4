"""The alert engine: evaluates the rules over one refresh's samples and tracks each alert
instance (one per matching series) from pending through firing to resolved.

An instance is pending while its condition holds for less than the rule's ``for``; it then
fires, and resolves at the first evaluation where the condition no longer holds (a pending
instance whose condition goes away is forgotten). Like Prometheus, an instance's labels are
its series' labels (without the metric name), then the rule's labels, ``alertname`` and
``severity``; ``startsAt`` is when the condition first held. Every evaluation hands the
firing and newly resolved instances to the sink (``custode.monitoring.notify``), which
renews their lease at Alertmanager.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.samples import Sample

from custode.config.alerting import AlertingConfig, render

AlertState = Literal["pending", "firing", "resolved"]


@dataclass(frozen=True)
class Alert:
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    state: AlertState
    value: float
    active_at: float  # when the condition first held: Alertmanager's startsAt
    resolved_at: float | None = None  # endsAt of a resolved alert

    @property
    def name(self) -> str:
        return self.labels["alertname"]

    @property
    def key(self) -> tuple[tuple[str, str], ...]:
        """The identity of the instance (Alertmanager's fingerprint is of the labels too)."""
        return tuple(sorted(self.labels.items()))


class AlertSink(Protocol):
    """Where evaluated alerts go; never raises (see ``notify.Notifier``)."""

    failed_total: int
    dropped_total: int

    def notify(self, alerts: Sequence[Alert], now: float) -> None: ...


@dataclass
class _Instance:
    labels: dict[str, str]
    active_at: float
    value: float = 0.0
    annotations: dict[str, str] = field(default_factory=dict)
    firing: bool = False


class AlertEngine:
    """Thread-safe: serve evaluates once per refresh, scrapes call ``collect``."""

    def __init__(self, config: AlertingConfig, notifier: AlertSink | None = None) -> None:
        self.config = config
        self.notifier = notifier
        self._lock = threading.Lock()
        self._instances: dict[tuple[str, tuple[tuple[str, str], ...]], _Instance] = {}
        self.evaluations = 0

    def reconfigure(self, config: AlertingConfig, notifier: AlertSink | None) -> None:
        """New rules and destinations (a config reload): instances of rules that are gone
        resolve at the next evaluation."""
        with self._lock:
            self.config, self.notifier = config, notifier

    def evaluate(self, samples: Iterable[Metric], now: float) -> list[Alert]:
        """Evaluate every rule at ``now`` (Unix time) and notify the sink.

        Returns the pending and firing instances and those this evaluation resolved.
        """
        series: dict[str, list[Sample]] = defaultdict(list)
        for family in samples:
            for sample in family.samples:
                series[sample.name].append(sample)
        out: list[Alert] = []
        with self._lock:
            seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
            for rule in self.config.rules:
                for series_labels, value in rule.expression.evaluate(series, now):
                    labels = {**series_labels, **rule.labels}
                    labels.pop("__name__", None)
                    labels |= {"alertname": rule.name, "severity": rule.severity}
                    key = (rule.name, tuple(sorted(labels.items())))
                    if key in seen:  # rule labels made two series one instance
                        continue
                    seen.add(key)
                    inst = self._instances.setdefault(key, _Instance(labels, active_at=now))
                    inst.value = value
                    inst.firing = inst.firing or now - inst.active_at >= rule.for_
                    inst.annotations = {
                        k: render(text, labels, value) for k, text in rule.annotations.items()
                    }
                    state: AlertState = "firing" if inst.firing else "pending"
                    out.append(Alert(labels, inst.annotations, state, value, inst.active_at))
            for key in [k for k in self._instances if k not in seen]:
                inst = self._instances.pop(key)
                if inst.firing:  # also instances of rules no longer configured
                    out.append(
                        Alert(
                            inst.labels,
                            inst.annotations,
                            "resolved",
                            inst.value,
                            inst.active_at,
                            resolved_at=now,
                        )
                    )
            self.evaluations += 1
        if self.notifier is not None:
            self.notifier.notify([a for a in out if a.state != "pending"], now)
        return out

    def collect(self) -> Iterator[Metric]:
        firing = GaugeMetricFamily(
            "custode_alerts_firing",
            "Alert instances firing after the last evaluation of custode's rules.",
            labels=["alertname", "severity"],
        )
        pending = GaugeMetricFamily(
            "custode_alerts_pending",
            "Alert instances whose condition holds for less than the rule's 'for'.",
            labels=["alertname", "severity"],
        )
        with self._lock:
            counts: dict[tuple[str, str, bool], int] = defaultdict(int)
            for (name, _), inst in self._instances.items():
                counts[name, inst.labels["severity"], inst.firing] += 1
            for rule in self.config.rules:
                counts.setdefault((rule.name, rule.severity, True), 0)
                counts.setdefault((rule.name, rule.severity, False), 0)
        for (name, severity, is_firing), n in sorted(counts.items()):
            (firing if is_firing else pending).add_metric([name, severity], n)
        yield firing
        yield pending
        yield CounterMetricFamily(
            "custode_alert_notifications_failed_total",
            "Notification requests (Alertmanager, webhook) that failed.",
            value=self.notifier.failed_total if self.notifier else 0,
        )
        yield CounterMetricFamily(
            "custode_alert_notifications_dropped_total",
            "Alerts dropped from a full notification queue or rejected by the receiver.",
            value=self.notifier.dropped_total if self.notifier else 0,
        )
