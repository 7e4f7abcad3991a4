"""Alert rules (expression subset, templates, config), the engine's pending → firing →
resolved lifecycle, delivery to Alertmanager and a webhook, the Prometheus rules file
generated from the same rules (``custode rules``) and the Grafana dashboard (checked with
promtool), and a real Alertmanager."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import threading
import time
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pydantic import ValidationError

from custode.base.units import parse_duration
from custode.config.alerting import (
    DEFAULT_RULES,
    AlertingConfig,
    AlertRule,
    ExpressionError,
    parse_expression,
    render,
)
from custode.monitoring.alerting import Alert, AlertEngine
from custode.monitoring.notify import Notifier
from custode.monitoring.rulesfile import REGENERATE, render_rules
from fixtures.cli import CliResult
from fixtures.paths import PROJECT
from fixtures.system import need, stop

DEPLOY = PROJECT / "deploy"
RULES = DEPLOY / "prometheus" / "custode-rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "custode-rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "custode-dashboard.json"
NOW = 1_700_000_000.0


def gauge(name: str, *series: tuple[dict[str, str], float]) -> Metric:
    labels = sorted({k for lbls, _ in series for k in lbls})
    family = GaugeMetricFamily(name, "test", labels=labels)
    for lbls, value in series:
        family.add_metric([lbls.get(k, "") for k in labels], value)
    return family


def repo(name: str) -> dict[str, str]:
    return {"root": "/srv/git", "repository": name}


def index(*families: Metric) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for f in families:
        for s in f.samples:
            out.setdefault(s.name, []).append(s)
    return out


# -- the expression subset -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "custode_repository_healthy == 0",
        'custode_git_operation_p95_seconds{source="probe", operation=~"rev-.*"} > 2',
        "time() - custode_repository_last_backup_success_timestamp_seconds > 93600",
        "custode_filesystem_used_ratio{mountpoint!~'/(boot|efi)',} >= 7e-1",
        'absent(custode_repository_integrity_ok{repository="a.git"})',
        "custode_x{a!=`raw\\d`} < -Inf",
    ],
)
def test_expressions_in_the_subset_parse(text: str) -> None:
    assert parse_expression(text).text == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("custode_x >", "expected a number at column 12, found the end"),
        ("custode_x{a=b} > 1", "expected a quoted string at column 13, found 'b'"),
        ("rate(custode_x[5m]) > 1", "function rate() is not supported"),
        ("custode_x > 1 and custode_y", "at column 15, found 'and'"),
        ("custode_x / custode_y > 1", "expected a comparison (> >= < <= == !=), found '/'"),
        ('custode_x{a=~"("} > 1', "bad regular expression '('"),
        ("time() + custode_x > 1", "expected '-' after time() at column 8"),
        ("absent(custode_x) > 1", "expected the end after absent(...)"),
        ("custode_x{a='1' b='2'} > 1", "expected ',' or '}' at column 17"),
        ("custode_x > 5m", "expected a number at column 12, found '5m'"),
        ("", "expected a metric name at column 1, found the end"),
    ],
)
def test_expressions_outside_the_subset_say_where(text: str, message: str) -> None:
    with pytest.raises(ExpressionError) as info:
        parse_expression(text)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "renamed"),
    [
        ('custode_p95{source="probe"} > 2', 'rec:p95{source="probe"} > 2'),
        ("time() -  custode_p95 > 1", "time() -  rec:p95 > 1"),
        ("absent( custode_p95{x='custode_p95'} )", "absent( rec:p95{x='custode_p95'} )"),
    ],
)
def test_an_expression_reads_another_metric_with_the_rest_unchanged(
    text: str, renamed: str
) -> None:
    assert parse_expression(text).with_metric("rec:p95") == renamed


def test_comparison_filters_series_and_regexes_are_anchored() -> None:
    loose = gauge(
        "custode_repository_loose_objects",
        (repo("a.git"), 12000),
        (repo("b.git"), 300),
        (repo("ab.git"), 20000),
        ({"root": "/other", "repository": "a.git"}, 50000),
    )
    expr = parse_expression('custode_repository_loose_objects{root="/srv/git"} > 10000')
    got = expr.evaluate(index(loose), NOW)
    assert sorted(got, key=str) == [(repo("a.git"), 12000.0), (repo("ab.git"), 20000.0)]
    anchored = parse_expression('custode_repository_loose_objects{repository=~"a"} >= 0')
    assert anchored.evaluate(index(loose), NOW) == []
    negated = parse_expression('custode_repository_loose_objects{repository!~"a.*"} >= 0')
    assert negated.evaluate(index(loose), NOW) == [(repo("b.git"), 300.0)]


def test_a_missing_label_compares_as_empty_and_nan_never_matches() -> None:
    family = gauge("custode_x", ({"a": "1"}, 5), ({}, 6), ({"a": "2"}, float("nan")))
    assert parse_expression('custode_x{a=""} > 0').evaluate(index(family), NOW) == [
        ({"a": ""}, 6.0)
    ]
    assert parse_expression("custode_x != 5").evaluate(index(family), NOW)[0][1] == 6.0
    assert len(parse_expression("custode_x != 5").evaluate(index(family), NOW)) == 2


def test_time_minus_gives_ages() -> None:
    backups = gauge(
        "custode_repository_last_backup_success_timestamp_seconds",
        (repo("old.git"), NOW - 97200),
        (repo("new.git"), NOW - 3600),
    )
    expr = parse_expression(
        "time() - custode_repository_last_backup_success_timestamp_seconds > 93600"
    )
    assert expr.evaluate(index(backups), NOW) == [(repo("old.git"), 97200.0)]


def test_absent_yields_the_equality_labels_when_nothing_matches() -> None:
    family = gauge("custode_repository_integrity_ok", (repo("a.git"), 1))
    expr = parse_expression('absent(custode_repository_integrity_ok{repository="b.git"})')
    assert expr.evaluate(index(family), NOW) == [({"repository": "b.git"}, 1.0)]
    present = parse_expression("absent(custode_repository_integrity_ok)")
    assert present.evaluate(index(family), NOW) == []


def test_counters_are_selected_by_their_sample_name() -> None:
    family = CounterMetricFamily("custode_probe_failures", "test", value=3)
    got = parse_expression("custode_probe_failures_total > 0").evaluate(index(family), NOW)
    assert got == [({}, 3.0)]


@pytest.mark.parametrize(
    ("template", "value", "expected"),
    [  # the outputs of Prometheus's template functions for the same values
        ("{{ $value }}", 12000.0, "12000"),
        ("{{ $value }}", 0.25, "0.25"),
        ("{{$value|humanizeDuration}}", 97200.0, "1d 3h 0m 0s"),
        ("{{ $value | humanizeDuration }}", 2.425, "2.425s"),
        ("{{ $value | humanizeDuration }}", 0.0123, "12.3ms"),
        ("{{ $value | humanizeDuration }}", 3725.0, "1h 2m 5s"),
        ("{{ $value | humanizePercentage }}", 0.75, "75%"),
        ("{{ $value | humanize }}", 1234567.0, "1.235M"),
        ("{{ $value | humanize }}", 0.001, "1m"),
        ("{{ $value | humanize1024 }}", 1048576.0, "1Mi"),
        ("{{ $labels.repository }} in {{ $labels.root }}{{ $labels.none }}", 1, "a.git in /r"),
    ],
)
def test_annotation_templates(template: str, value: float, expected: str) -> None:
    assert render(template, {"repository": "a.git", "root": "/r"}, value) == expected


# -- the config section --------------------------------------------------------------------


def test_rules_load_from_toml_with_for_and_defaults_are_the_shipped_set() -> None:
    data = tomllib.loads(
        """
        alertmanagers = ["http://am1:9093", "https://user:pw@am2.example.com/am/"]
        webhook = "https://hooks.example.com/custode"
        [[rules]]
        name = "Big"
        expr = "custode_repository_size_bytes > 1e9"
        for = "30m"
        severity = "info"
        labels = { team = "git" }
        annotations = { summary = "{{ $labels.repository }} is {{ $value | humanize1024 }}B" }
        """
    )
    config = AlertingConfig.model_validate(data)
    (rule,) = config.rules
    assert (rule.name, rule.for_, rule.severity, rule.labels) == (
        "Big",
        1800.0,
        "info",
        {"team": "git"},
    )
    assert rule.expression.threshold == 1e9
    assert [r.name for r in AlertingConfig().rules] == [r.name for r in DEFAULT_RULES]
    assert len(DEFAULT_RULES) == 7


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([{"name": "Broken", "expr": "custode_x >"}], "rule 'Broken': expected a number"),
        (
            [{"name": "Fn", "expr": "rate(custode_x[5m]) > 1"}],
            "rule 'Fn': function rate() is not supported",
        ),
        (
            [{"name": "Sev", "expr": "custode_x > 1", "labels": {"severity": "page"}}],
            "rule 'Sev': 'severity' cannot be a label",
        ),
        (
            [{"name": "Tpl", "expr": "custode_x > 1", "annotations": {"s": "{{ .Labels.x }}"}}],
            "rule 'Tpl' annotation s: unsupported template",
        ),
        (
            [{"name": "Fn2", "expr": "custode_x > 1", "annotations": {"s": "{{ $value | x }}"}}],
            "rule 'Fn2' annotation s: unknown template function 'x'",
        ),
        (
            [{"name": "A", "expr": "custode_x > 1"}, {"name": "A", "expr": "custode_y > 1"}],
            "rule names must be unique; repeated: A",
        ),
        ([{"name": "A", "expr": "custode_x > 1", "for": "soon"}], "'soon' is not a duration"),
    ],
)
def test_invalid_rules_are_config_errors_naming_the_rule(
    rules: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(ValidationError) as info:
        AlertingConfig.model_validate({"rules": rules})
    assert message in str(info.value)


@pytest.mark.parametrize(
    "field", [{"alertmanagers": ["file:///etc/passwd"]}, {"webhook": "ftp://x/y"}, {"webhook": "x"}]
)
def test_only_http_urls(field: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="is not an http"):
        AlertingConfig.model_validate(field)


# -- the engine ----------------------------------------------------------------------------


class Recorder:
    failed_total = 0
    dropped_total = 0

    def __init__(self) -> None:
        self.calls: list[tuple[list[Alert], float]] = []

    def notify(self, alerts: Any, now: float) -> None:
        self.calls.append((list(alerts), now))


def unhealthy_engine(for_: float = 600) -> tuple[AlertEngine, Recorder]:
    rule = AlertRule.model_validate(
        {
            "name": "Sick",
            "expr": "custode_repository_healthy == 0",
            "for": for_,
            "severity": "critical",
            "labels": {"team": "git"},
            "annotations": {"summary": "{{ $labels.repository }} is sick ({{ $value }})"},
        }
    )
    sink = Recorder()
    return AlertEngine(AlertingConfig(rules=[rule]), sink), sink


def healthy(**repos: float) -> list[Metric]:
    return [gauge("custode_repository_healthy", *((repo(r), v) for r, v in repos.items()))]


def test_for_keeps_an_instance_pending_then_it_fires() -> None:
    engine, sink = unhealthy_engine(for_=600)
    (alert,) = engine.evaluate(healthy(a=0, b=1), NOW)
    assert alert.state == "pending"
    assert dict(alert.labels) == {
        "root": "/srv/git",
        "repository": "a",
        "team": "git",
        "alertname": "Sick",
        "severity": "critical",
    }
    assert alert.annotations == {"summary": "a is sick (0)"}
    assert sink.calls == [([], NOW)]  # pending alerts are not sent
    assert engine.evaluate(healthy(a=0, b=1), NOW + 599)[0].state == "pending"
    (alert,) = engine.evaluate(healthy(a=0, b=1), NOW + 600)
    assert (alert.state, alert.active_at) == ("firing", NOW)  # startsAt: first seen
    assert [a.state for a in sink.calls[-1][0]] == ["firing"]


def test_a_pending_instance_that_clears_is_forgotten_and_restarts_its_for() -> None:
    engine, sink = unhealthy_engine(for_=600)
    engine.evaluate(healthy(a=0), NOW)
    assert engine.evaluate(healthy(a=1), NOW + 300) == []
    assert engine.evaluate(healthy(a=0), NOW + 400)[0].state == "pending"
    assert engine.evaluate(healthy(a=0), NOW + 900)[0].state == "pending"
    assert engine.evaluate(healthy(a=0), NOW + 1000)[0].state == "firing"
    assert all(a.state != "resolved" for call, _ in sink.calls for a in call)


def test_firing_then_resolved_once_and_instances_are_per_series() -> None:
    engine, sink = unhealthy_engine(for_=0)
    got = engine.evaluate(healthy(a=0, b=0, c=1), NOW)
    assert sorted(a.labels["repository"] for a in got) == ["a", "b"]
    assert {a.state for a in got} == {"firing"}
    got = engine.evaluate(healthy(a=1, b=0, c=1), NOW + 60)
    states = {a.labels["repository"]: (a.state, a.resolved_at) for a in got}
    assert states == {"a": ("resolved", NOW + 60), "b": ("firing", None)}
    assert sink.calls[-1][0] == got
    got = engine.evaluate(healthy(a=1, b=0, c=1), NOW + 120)
    assert [(a.labels["repository"], a.state) for a in got] == [("b", "firing")]
    # A repository that disappears (deleted, or out of the series) resolves too.
    assert [a.state for a in engine.evaluate([], NOW + 180)] == ["resolved"]
    assert engine.evaluate([], NOW + 240) == []  # resolved once, then forgotten


def test_collect_counts_firing_and_pending_per_rule_with_zeros() -> None:
    engine, _ = unhealthy_engine(for_=60)
    engine.evaluate(healthy(a=0, b=0), NOW)
    engine.evaluate(healthy(a=0, b=0, c=0), NOW + 60)
    families = {f.name: f for f in engine.collect()}
    samples = {
        (s.name, s.labels["alertname"]) if s.labels else (s.name, ""): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("custode_alerts_firing", "Sick")] == 2
    assert samples[("custode_alerts_pending", "Sick")] == 1
    assert samples[("custode_alert_notifications_failed_total", "")] == 0
    assert {f.name for f in AlertEngine(AlertingConfig()).collect()} >= {
        "custode_alerts_firing",
        "custode_alert_notifications_failed",
    }


def test_the_shipped_rules_fire_on_the_shipped_names() -> None:
    samples = [
        gauge("custode_repository_integrity_ok", (repo("bad.git"), 0), (repo("ok.git"), 1)),
        gauge("custode_repository_healthy", (repo("bad.git"), 0)),
        gauge(
            "custode_repository_last_backup_success_timestamp_seconds",
            (repo("bad.git"), NOW + 3600 - 27 * 3600),  # 27 h old at the last evaluation
        ),
        gauge("custode_repository_last_maintenance_failed", (repo("bad.git"), 1)),
        gauge(
            "custode_filesystem_used_ratio",
            ({"mountpoint": "/srv", "root": "/srv/git"}, 0.75),
        ),
        gauge("custode_repository_loose_objects", (repo("bad.git"), 12000)),
        gauge(
            "custode_git_operation_p95_seconds",
            ({"operation": "rev-parse", "source": "probe"}, 2.425),
            ({"operation": "push", "source": "trace2"}, 40),
        ),
    ]
    engine = AlertEngine(AlertingConfig())
    for minute in range(0, 61):
        got = engine.evaluate(samples, NOW + 60 * minute)
    assert {a.name for a in got if a.state == "firing"} == {r.name for r in DEFAULT_RULES}
    by_name = {a.name: a for a in got}
    assert by_name["CustodeBackupStale"].annotations["summary"] == (
        "No backup of bad.git (root /srv/git) for 1d 3h 0m 0s"
    )
    assert by_name["CustodeFilesystemFilling"].annotations["summary"] == (
        "Filesystem /srv is 75% full"
    )
    assert by_name["CustodeGitOperationSlow"].labels["operation"] == "rev-parse"


# -- the Prometheus rules file: generated from the same rules ---------------------------------


def test_the_shipped_rules_file_is_generated_from_the_shipped_rules() -> None:
    assert RULES.read_text() == render_rules(DEFAULT_RULES), (
        f"{RULES.name} is not what custode generates from its shipped rules; regenerate it "
        f"with: {REGENERATE}"
    )


TRICKY = AlertRule.model_validate(
    {  # values YAML would read as something else, or that need quoting or escapes
        "name": "Tricky",
        "expr": "custode_x{a='b: c #d'} > 1",
        "for": "90s",
        "labels": {"team": "yes", "n": "1e3", "o": "0o17"},
        "annotations": {
            "summary": "- {{ $value }}: # x",
            "quotes": "'\"",
            "lines": "line1\nline2 \n\n x",
            "null": "null",
            "accent": "café ☃",
        },
    }
)
P95 = "operation_source:custode_git_operation_duration_seconds:p95_rate30m"


def test_rendered_rules_keep_every_field_of_every_rule() -> None:
    rules = [*DEFAULT_RULES, TRICKY, AlertRule(name="Quick", expr="custode_x > 1", for_=0.25)]
    groups = yaml.safe_load(render_rules(rules))["groups"]
    assert [g["name"] for g in groups] == ["custode-recording", "custode"]
    assert [r["record"] for r in groups[0]["rules"]] == [P95]
    alerts = {r["alert"]: r for r in groups[1]["rules"]}
    assert list(alerts) == [*(r.name for r in rules), "CustodeMetricsStale"]
    for rule in rules:
        prom = alerts[rule.name]
        assert prom["labels"] == {**rule.labels, "severity": rule.severity}
        assert prom.get("annotations", {}) == rule.annotations
        assert parse_duration(prom.get("for", "0s")) == rule.for_
        assert prom["expr"] == rule.expr.replace("custode_git_operation_p95_seconds", P95)
    assert alerts["CustodeGitOperationSlow"]["expr"] == f'{P95}{{source="probe"}} > 2'
    assert alerts["Quick"]["for"] == "250ms"
    assert "annotations" not in alerts["Quick"]


def test_a_configured_rule_replaces_the_prometheus_only_one_of_its_name() -> None:
    mine = AlertRule(name="CustodeMetricsStale", expr="custode_x > 1")
    groups = yaml.safe_load(render_rules([mine]))["groups"]
    assert groups[1]["rules"] == [
        {"alert": "CustodeMetricsStale", "expr": "custode_x > 1", "labels": {"severity": "warning"}}
    ]


def test_prometheus_reads_rendered_rules_as_custode_means_them(tmp_path: Path) -> None:
    """promtool evaluates a rendered custom rule: every label and annotation arrives intact."""
    (tmp_path / "rules.yml").write_text(render_rules([TRICKY]))
    test = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": 'custode_x{a="b: c #d"}', "values": "5x10"}],
                "alert_rule_test": [
                    {"eval_time": "1m", "alertname": "Tricky", "exp_alerts": []},
                    {
                        "eval_time": "2m",
                        "alertname": "Tricky",
                        "exp_alerts": [
                            {
                                "exp_labels": {"a": "b: c #d", "severity": "warning"}
                                | TRICKY.labels,
                                "exp_annotations": {
                                    k: render(v, {}, 5.0) for k, v in TRICKY.annotations.items()
                                },
                            }
                        ],
                    },
                ],
            }
        ],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    result = promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    result = promtool("test", "rules", "test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_custode_rules_renders_the_configured_rules(
    custode: Callable[..., CliResult], tmp_path: Path
) -> None:
    config = tmp_path / "custode.toml"
    config.write_text(
        '[[alerting.rules]]\nname = "Big"\nexpr = "custode_repository_size_bytes > 1e9"\n'
        'for = "30m"\n'
    )
    result = custode("--config", config, "rules")
    assert result.code == 0, result.stderr
    assert result.stdout == render_rules(
        [AlertRule(name="Big", expr="custode_repository_size_bytes > 1e9", for_=1800)]
    )
    assert custode("--config", config, "rules", "--shipped").stdout == RULES.read_text()
    assert custode("rules").stdout == RULES.read_text()  # no config: the shipped rules
    out = tmp_path / "prometheus" / "custode-rules.yml"
    result = custode("--config", config, "rules", "--output", out)
    assert (result.code, result.stdout, result.stderr) == (0, "", f"wrote {out}\n")
    assert out.read_text() == render_rules(
        [AlertRule(name="Big", expr="custode_repository_size_bytes > 1e9", for_=1800)]
    )
    assert out.stat().st_mode & 0o777 == 0o644  # Prometheus runs as another user


# -- delivery ------------------------------------------------------------------------------


class Receiver:
    """A local HTTP server that records POSTs and answers with ``status``."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, str], Any]] = []
        self.status = 200
        self.location = ""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append((self.path, dict(self.headers), json.loads(body)))
                self.send_response(receiver.status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self) -> list[Any]:
        return [body for _, _, body in self.posts]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections for the whole test: bound but never
    listening, so no other test or xdist worker can start a server on it meanwhile."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def iso(t: float) -> str:
    return datetime.fromtimestamp(t).astimezone().isoformat()


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def alert(name: str, state: str, active_at: float = NOW, resolved_at: float | None = None) -> Alert:
    return Alert(
        {"alertname": name, "severity": "warning"},
        {"summary": f"{name} happened"},
        state,  # type: ignore[arg-type]
        1.0,
        active_at,
        resolved_at,
    )


def test_alertmanager_gets_leases_renewed_and_endsat_now_on_resolve(receiver: Receiver) -> None:
    notifier = Notifier([receiver.url + "/prefix/"], lease=240, generator_url="http://g/x")
    notifier.notify([alert("A", "firing"), alert("P", "pending")], NOW)
    notifier.notify([alert("A", "firing")], NOW + 60)
    notifier.notify([alert("A", "resolved", resolved_at=NOW + 120)], NOW + 120)
    assert [p for p, _, _ in receiver.posts] == ["/prefix/api/v2/alerts"] * 3
    first, renewed, resolved = receiver.bodies()
    assert first == [
        {
            "labels": {"alertname": "A", "severity": "warning"},
            "annotations": {"summary": "A happened"},
            "startsAt": "2023-11-14T22:13:20.000Z",
            "endsAt": "2023-11-14T22:17:20.000Z",
            "generatorURL": "http://g/x",
        }
    ]
    assert ts(first[0]["startsAt"]) == NOW
    assert ts(renewed[0]["endsAt"]) == NOW + 60 + 240
    assert ts(resolved[0]["endsAt"]) == NOW + 120
    assert receiver.posts[0][1]["Content-Type"] == "application/json"
    assert notifier.failed_total == 0
    assert notifier.sent_total == 3


def test_lease_is_lease_factor_evaluation_intervals() -> None:
    config = AlertingConfig(alertmanagers=["http://am:9093"], lease_factor=3)
    notifier = Notifier.from_config(config, interval=60)
    assert notifier is not None
    assert ts(notifier.payload(alert("A", "firing"), NOW)["endsAt"]) == NOW + 180
    assert Notifier.from_config(AlertingConfig(), interval=60) is None


def test_webhook_gets_only_changes(receiver: Receiver) -> None:
    notifier = Notifier([], receiver.url + "/hook", lease=240)
    notifier.notify([alert("A", "firing")], NOW)
    notifier.notify([alert("A", "firing")], NOW + 60)
    notifier.notify([alert("A", "firing"), alert("B", "firing")], NOW + 120)
    notifier.notify(
        [alert("A", "resolved", resolved_at=NOW + 180), alert("B", "firing")], NOW + 180
    )
    names = [
        [(a["labels"]["alertname"], ts(a["endsAt"]) <= NOW + 180) for a in b]
        for b in receiver.bodies()
    ]
    assert [p for p, _, _ in receiver.posts] == ["/hook"] * 3
    assert names == [[("A", False)], [("B", False)], [("A", True)]]


def test_basic_auth_from_the_url_is_sent_and_never_logged(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    url = receiver.url.replace("http://", "http://user:s%40cret@")
    receiver.status = 503
    notifier = Notifier([url], lease=240)
    notifier.notify([alert("A", "firing")], NOW)
    assert receiver.posts[0][1]["Authorization"] == "Basic dXNlcjpzQGNyZXQ="
    assert "s@cret" not in caplog.text and "s%40cret" not in caplog.text
    assert "HTTP 503" in caplog.text


def test_a_down_alertmanager_queues_boundedly_backs_off_and_recovers(
    receiver: Receiver, refused_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "custode.monitoring")
    down = f"http://127.0.0.1:{refused_port}"
    notifier = Notifier([down, receiver.url], lease=240, queue_size=3, timeout=2)
    engine = AlertEngine(AlertingConfig(rules=list(DEFAULT_RULES)), notifier)
    ok = receiver.bodies
    # Five firing alerts while one Alertmanager is down: the other gets all of them.
    alerts = [alert(f"A{i}", "firing") for i in range(5)]
    notifier.notify(alerts, NOW)
    assert len(ok()[-1]) == 5
    assert notifier.failed_total == 1
    assert notifier.dropped_total == 2  # the down one keeps the newest three
    assert [t.queue.__len__() for t in notifier.targets] == [3, 0]
    assert "cannot send 5 alerts to" in caplog.text
    # Backoff: the next evaluations within 10 s do not try the down one again. A0 is
    # renewed, so the oldest left, A2, is dropped.
    notifier.notify(alerts[:1], NOW + 5)
    assert (notifier.failed_total, notifier.dropped_total) == (1, 3)
    notifier.notify(alerts[:1], NOW + 10)
    assert notifier.failed_total == 2
    notifier.notify(alerts[:1], NOW + 25)  # second backoff is 20 s
    assert notifier.failed_total == 2
    # It comes back (same address, now answering): the queued latest states are delivered.
    notifier.targets[0].url = receiver.url + "/api/v2/alerts"
    before = len(receiver.posts)
    notifier.notify([alert("A4", "resolved", resolved_at=NOW + 30)], NOW + 30)
    delivered = receiver.bodies()[before]
    assert [a["labels"]["alertname"] for a in delivered] == ["A3", "A0", "A4"]
    assert ts(delivered[-1]["endsAt"]) == NOW + 30
    assert notifier.queued() == 0
    assert "reachable again after 2 failures" in caplog.text
    assert {f.name: f.samples[0].value for f in engine.collect() if not f.samples[0].labels} == {
        "custode_alert_notifications_failed": 2,
        "custode_alert_notifications_dropped": 3,
    }


def test_never_raises_even_on_a_blackholed_or_rejecting_or_redirecting_receiver(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        notifier = Notifier([f"http://127.0.0.1:{port}"], lease=240, timeout=0.3)
        started = time.monotonic()
        notifier.notify([alert("A", "firing")], NOW)
        # The 0.3 s timeout holds: not the 10 s default, nor a hang without any timeout.
        assert time.monotonic() - started < 5
        assert notifier.failed_total == 1
    receiver.status = 400  # the payload is refused: retrying cannot help, so it is dropped
    notifier = Notifier([receiver.url], lease=240)
    notifier.notify([alert("A", "firing")], NOW)
    assert (notifier.failed_total, notifier.dropped_total, notifier.queued()) == (1, 1, 0)
    assert "rejected 1 alerts: HTTP 400" in caplog.text
    receiver.status, receiver.location = 307, "http://example.invalid/"
    notifier = Notifier([receiver.url], lease=240)
    notifier.notify([alert("A", "firing")], NOW)
    assert (notifier.failed_total, notifier.queued()) == (1, 1)  # not followed; kept, retried


def test_a_bug_in_delivery_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(["http://127.0.0.1:9"], lease=240)
    notifier.notify([object()], NOW)  # type: ignore[list-item]
    assert "alert notification failed unexpectedly" in caplog.text


# -- promtool: the shipped rules and dashboard ------------------------------------------------


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [need("promtool", package="prometheus"), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_promtool_checks_the_shipped_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_shipped_rules_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def check_promql(exprs: list[str], tmp_path: Path) -> None:
    """Every expression is valid PromQL: promtool parses each as a recording rule."""
    rules = [{"record": f"check:expr_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_custodes_own_expressions_are_valid_promql(tmp_path: Path) -> None:
    check_promql([r.expr for r in DEFAULT_RULES], tmp_path)


def test_dashboard_uses_the_datasource_variable_everywhere_and_valid_promql(
    tmp_path: Path,
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exprs = []
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            expr = target["expr"]
            for var, value in (("$__rate_interval", "5m"), ("$instance", ".+"), ("$source", ".+")):
                expr = expr.replace(var, value)
            assert "$" not in expr, expr
            exprs.append(expr)
    text = " ".join(exprs)
    for metric in (
        "custode_repositories",
        "custode_repository_healthy",
        "custode_git_operation_duration_seconds_bucket",
        "custode_repository_last_backup_success_timestamp_seconds",
        "custode_filesystem_used_ratio",
        "custode_repository_last_maintenance_failed",
    ):
        assert metric in text
    assert "histogram_quantile(0.95" in text and "histogram_quantile(0.5" in text
    check_promql(exprs, tmp_path)


# -- a real Alertmanager -------------------------------------------------------------------


PORT_ATTEMPTS = 5


def alertmanager_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> bool:
    """Wait until the Alertmanager at ``url`` is ready; False if it exited first."""
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(url + "/-/ready", timeout=1) as response:  # noqa: S310
                if response.status == 200:
                    return True
        except OSError:
            pass
        if process.poll() is not None:
            return False
        if time.monotonic() > deadline:
            pytest.fail("alertmanager did not start in 20 s: " + log.read_text())
        time.sleep(0.1)


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    binary = need("prometheus-alertmanager", "alertmanager", package="prometheus-alertmanager")
    config = tmp_path / "alertmanager.yml"
    config.write_text('route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n')
    log = tmp_path / "alertmanager.log"
    # The port is free when chosen, but may be taken before Alertmanager binds it (by a
    # parallel test): Alertmanager then exits, and starts again on another port.
    for _attempt in range(PORT_ATTEMPTS):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with log.open("a") as out:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--cluster.listen-address=",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            ready = alertmanager_ready(url, process, log)
        except BaseException:
            stop(process, timeout=10)
            raise
        if ready:
            break
        process.wait()
    else:
        pytest.fail(
            f"alertmanager exited at start ({PORT_ATTEMPTS} ports tried): {log.read_text()}"
        )
    try:
        yield url
    finally:
        stop(process, timeout=10)


def am_alerts(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(url + "/api/v2/alerts", timeout=5) as response:  # noqa: S310
        return [a for a in json.load(response) if a["labels"].get("alertname") == "Sick"]


def wait_for(predicate: Any, seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_a_real_alertmanager_shows_the_alert_active_then_resolved(alertmanager: str) -> None:
    engine, _ = unhealthy_engine(for_=0)
    notifier = Notifier([alertmanager], lease=240, generator_url="http://custode.example/")
    engine.notifier = notifier
    now = time.time()
    engine.evaluate(healthy(a=0, b=1), now)
    assert notifier.failed_total == 0 and notifier.queued() == 0
    assert wait_for(lambda: len(am_alerts(alertmanager)) == 1)
    (active,) = am_alerts(alertmanager)
    assert active["status"]["state"] == "active"
    assert active["labels"] == {
        "alertname": "Sick",
        "severity": "critical",
        "team": "git",
        "root": "/srv/git",
        "repository": "a",
    }
    assert active["annotations"] == {"summary": "a is sick (0)"}
    assert abs(ts(active["endsAt"]) - (now + 240)) < 1
    assert active["generatorURL"] == "http://custode.example/"
    engine.evaluate(healthy(a=1, b=1), time.time())
    assert notifier.failed_total == 0
    assert wait_for(lambda: am_alerts(alertmanager) == [])  # resolved: no longer listed


def test_a_real_alertmanager_expires_the_lease_when_custode_stops(alertmanager: str) -> None:
    lease = 5.0  # the alert is listed as active until now + lease: long enough to see it
    engine, _ = unhealthy_engine(for_=0)
    engine.notifier = notifier = Notifier([alertmanager], lease=lease)
    now = time.time()
    engine.evaluate(healthy(a=0), now)
    assert notifier.failed_total == 0 and notifier.sent_total == 1
    deadline = time.monotonic() + lease
    while not (listed := am_alerts(alertmanager)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [a["status"]["state"] for a in listed] == ["active"]
    assert abs(ts(listed[0]["endsAt"]) - (now + lease)) < 1
    # No renewal (custode stopped): Alertmanager resolves it by itself at endsAt.
    assert wait_for(lambda: am_alerts(alertmanager) == [], seconds=30)
    assert notifier.sent_total == 1  # nothing more was sent to resolve it
