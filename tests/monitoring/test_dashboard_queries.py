"""Every PromQL query shipped in deploy/ (the Grafana dashboard's panels, the Prometheus
rules) runs against a real Prometheus scraping ``custode serve`` and returns data."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from fixtures.builders import Fleet
from fixtures.cli import CliResult
from fixtures.paths import PROJECT
from fixtures.system import need, start_prometheus, started, stop

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DEPLOY = PROJECT / "deploy"
VARIABLES = {"$instance": ".*", "$source": ".*", "$__rate_interval": "1m"}
CONDITION = re.compile(r"^(?P<query>.*?)\s*(==|!=|>=|<=|>|<)\s*[-+0-9.e]+\s*$", re.S)
SERVING = re.compile(r"^serving metrics on (\S+)$", re.M)  # custode serve's first line


def shipped_queries() -> Iterator[tuple[str, str]]:
    board = json.loads((DEPLOY / "grafana" / "custode-dashboard.json").read_text())
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            yield f"dashboard: {panel['title']}", expr
    rules = yaml.safe_load((DEPLOY / "prometheus" / "custode-rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield f"rule: {rule.get('alert') or rule.get('record')}", rule["expr"].strip()


def as_data_query(expr: str) -> str:
    """A condition (``X > 0.7``) is empty while nothing is wrong: its left side must not be."""
    match = CONDITION.match(expr)
    return match.group("query") if match else expr


def first_refresh(url: str) -> None:
    """Wait up to 90 s for serve's first refresh: its time is not Prometheus's."""
    assert url.startswith("http://127.0.0.1:"), url
    deadline, text = time.monotonic() + 90, ""
    while "\ncustode_repository_size_bytes{" not in text:
        assert time.monotonic() < deadline, f"serve never refreshed: {text[:500]}"
        time.sleep(0.2)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 (checked above)
                text = r.read().decode()
        except OSError as exc:
            text = str(exc)


def query(port: int, expr: str) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def test_every_shipped_query_returns_data_from_a_real_prometheus(
    custode: Callable[..., CliResult],
    fleet_copy: Fleet,
    tmp_path: Path,
    isolated_env: dict[str, str],
) -> None:
    binary = need("prometheus", package="prometheus")
    root = fleet_copy.root
    store = tmp_path / "store"
    for args in (("maintain", root), ("check", root), ("backup", root, "--store", store),
                 ("verify", "--store", store, "--level", "drill", "--sample", "2")):  # fmt: skip
        assert custode(*args).code in (0, 3), args
    config = tmp_path / "custode.toml"
    config.write_text("[monitoring]\nrefresh_interval = 1\nprobe_repositories = 5\n")
    # Both servers pick their own port (port 0) and say which: a port chosen here could be
    # taken by another process before they bind it.
    serve_log = tmp_path / "serve.log"
    with serve_log.open("w") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "custode", "--config", str(config), "serve", "--listen",
             "127.0.0.1:0", str(root)],
            env=isolated_env, stdout=subprocess.DEVNULL, stderr=out, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    prometheus: subprocess.Popen[bytes] | None = None
    try:
        url = started(serve, serve_log, SERVING, "custode serve")
        first_refresh(url)
        prom_config = tmp_path / "prometheus.yml"
        prom_config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files: ['{DEPLOY / 'prometheus' / 'custode-rules.yml'}']\n"
            "scrape_configs:\n  - job_name: custode\n"
            f"    static_configs:\n      - targets: ['{urllib.parse.urlsplit(url).netloc}']\n"
        )
        prometheus, port = start_prometheus(binary, prom_config, tmp_path)
        deadline = time.monotonic() + 60
        missing: list[str] = ["(not asked yet)"]
        while missing and time.monotonic() < deadline:
            time.sleep(1)
            missing = []
            for where, expr in shipped_queries():
                try:
                    answer = query(port, as_data_query(expr))
                except OSError as exc:
                    missing.append(f"{where}: {exc}")
                    continue
                assert answer["status"] == "success", (where, expr, answer)
                if not answer["data"]["result"]:
                    missing.append(f"{where}: {expr}")
        assert not missing, "queries without data:\n" + "\n".join(missing)
        for where, expr in shipped_queries():  # the conditions themselves run too
            assert query(port, expr)["status"] == "success", (where, expr)
    finally:
        if prometheus is not None:
            stop(prometheus)
        stop(serve)
