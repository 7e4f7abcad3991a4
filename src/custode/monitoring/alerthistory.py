"""Alerts in the history database: each instance's start (firing) and end (resolved), for
reports. Only transitions are written: an alert that keeps firing is one row, not one per
evaluation."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from custode.errors import CustodeError
from custode.monitoring.alerting import Alert
from custode.records.state import StateDB

log = logging.getLogger("custode.monitoring")


class AlertHistory:
    def __init__(self, database: Path) -> None:
        self.database = database
        self._firing: set[tuple[tuple[str, str], ...]] = set()

    def record(self, alerts: Iterable[Alert]) -> None:
        changes = []
        for alert in alerts:
            if alert.state == "firing" and alert.key not in self._firing:
                self._firing.add(alert.key)
                changes.append(alert)
            elif alert.state == "resolved" and alert.key in self._firing:
                self._firing.discard(alert.key)
                changes.append(alert)
        if not changes:
            return
        try:
            with StateDB.open(self.database) as db:
                for a in changes:
                    labels = {k: v for k, v in a.labels.items() if k != "alertname"}
                    db.record_alert_event(a.name, a.state, a.labels.get("severity", ""),
                                          labels, a.value)  # fmt: skip
        except CustodeError as exc:
            log.warning("alerts not recorded in history: %s", exc.message)
