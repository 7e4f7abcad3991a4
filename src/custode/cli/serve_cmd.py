"""``custode serve``: Prometheus metrics of the fleet on ``/metrics``, ``/healthz``, and a
landing page on ``/``.

Scrapes answer from the state of the last refresh (every ``monitoring.refresh_interval``,
in a background thread), so they are fast and never wait for a scan. SIGTERM and SIGINT
stop it cleanly with exit status 0.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from custode.cli.app import App
from custode.errors import (
    EXIT_CODES_SEE,
    CustodeError,
    PathNotFoundError,
    UsageError,
)
from custode.interrupts import StopFlag
from custode.serve.http import MetricsApp, MetricsServer, Refresher, parse_listen, serve_until
from custode.serve.pidfile import PidFile
from custode.serve.webconfig import WebConfigWatcher, load_web_config

log = logging.getLogger("custode")

if TYPE_CHECKING:
    from collections.abc import Callable

    from custode.config.model import Config
    from custode.monitoring.exporter import Exporter
    from custode.monitoring.trace2 import Trace2Listener
    from custode.serve.scheduler import Scheduler


@click.command(epilog=EXIT_CODES_SEE)
@click.argument("roots", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Where to answer (default: monitoring.listen, 127.0.0.1:9877); [::1]:PORT for IPv6, "
    ":PORT for every interface, port 0 for any free port.",
)
@click.option(
    "--web-config",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A Prometheus exporter-toolkit web config: tls_server_config (cert_file, key_file, "
    "client_ca_file, client_auth_type, min_version) and basic_auth_users (name: bcrypt "
    "hash). Default: monitoring.web_config.",
)
@click.option(
    "--trace2/--no-trace2",
    "trace2",
    default=True,
    show_default=True,
    help="Listen for git's trace2 events on trace2.socket (see custode trace2 enable).",
)
@click.option(
    "--schedule/--no-schedule",
    "schedule",
    default=True,
    show_default=True,
    help="Run the jobs of [schedule] (the nightly cycle, drills, reports).",
)
@click.pass_obj
def serve(  # noqa: PLR0917
    app: App, roots: tuple[Path, ...], listen: str | None, web_config: Path | None, trace2: bool,
    schedule: bool,
) -> None:  # fmt: skip
    """Serve metrics of the repositories under ROOTS (default: roots from config).

    /metrics is the Prometheus text format; /healthz answers "ok", or 503 and the reason
    when the last refresh failed or is older than three refresh intervals; / is a page
    linking to both. Binds 127.0.0.1 unless told otherwise; with a web config, TLS and
    basic auth apply to every path. Each connection lasts at most
    monitoring.request_timeout, and one client address holds at most
    monitoring.max_connections_per_client of them. Prints the URL on stderr once
    listening.
    """
    root_paths = app.roots(roots)
    # one serve per state directory; its pid file is removed on every exit but a crash
    with PidFile.acquire(app.state_dir()):
        _serve(app, root_paths, listen, web_config, trace2=trace2, schedule=schedule)


def _serve(
    app: App, root_paths: list[Path], listen: str | None, web_config: Path | None, *,
    trace2: bool, schedule: bool,
) -> None:  # fmt: skip
    cfg = app.config.monitoring
    for root in root_paths:
        if not root.is_dir():
            raise PathNotFoundError(f"root {root} is not a directory; check the path")
    where = "--listen" if listen is not None else "monitoring.listen"
    address = listen if listen is not None else cfg.listen
    try:
        host, port = parse_listen(address)
    except ValueError as exc:
        raise UsageError(f"{where} {address!r}: {exc}, such as 127.0.0.1:9877") from None
    web_path = web_config or cfg.web_config
    watcher = WebConfigWatcher(load_web_config(web_path)) if web_path is not None else None

    from custode.jobs.record import HostSamples
    from custode.monitoring.exporter import Exporter  # heavy: only once the flags are valid

    exporter = Exporter(roots=root_paths, config=app.config, state_dir=app.state_dir(),
                        record_host=HostSamples(app.config.state.keep_history))  # fmt: skip
    refresher = Refresher(exporter, cfg.refresh_interval)
    reload_alerts = _alerting(app, exporter, refresher)
    metrics = MetricsApp(exporter, refresher.health, watcher.current if watcher else None)
    try:
        server = MetricsServer(
            (host, port), metrics, web=watcher, max_connections=cfg.max_connections,
            max_connections_per_client=cfg.max_connections_per_client,
            request_timeout=cfg.request_timeout,
        )  # fmt: skip
    except OSError as exc:
        raise UsageError(
            f"cannot listen on {address}: {_reason(exc)}; choose another {where}"
        ) from None

    exporter.register(server.table)  # connections open and closed early, by reason
    listener = _trace2_listener(app, exporter) if trace2 else None
    scheduler = _scheduler(app, root_paths) if schedule else None
    if scheduler is not None:
        exporter.register(scheduler)
        scheduler.start()
    stop = StopFlag()  # not an Event: set by the handler in the thread that waits on it
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop.set)
    signal.signal(signal.SIGHUP, lambda *_: _reload(app, root_paths, scheduler, reload_alerts))
    app.err.print(f"serving metrics on {server.url}/metrics", markup=False, highlight=False)
    try:
        serve_until(server, refresher, stop)
    finally:
        if scheduler is not None:
            scheduler.stop()  # the running job ends its step cleanly (or is killed late)
        if listener is not None:
            listener.stop()


def _alerting(app: App, exporter: Exporter, refresher: Refresher) -> Callable[[Config], None]:
    """Alert rules evaluated after each refresh, sent on and recorded in history; returns
    what a config reload calls."""
    from custode.monitoring.alerthistory import AlertHistory
    from custode.monitoring.alerting import AlertEngine
    from custode.monitoring.notify import Notifier

    notifier = Notifier.from_config(app.config.alerting, interval=refresher.interval)
    engine = AlertEngine(app.config.alerting, notifier)
    exporter.register(engine)
    history = AlertHistory(app.state_dir() / "state.db")

    def alert() -> None:
        history.record(engine.evaluate(exporter.samples(), time.time()))

    refresher.after.append(alert)

    def reload(fresh: Config) -> None:
        sink = Notifier.from_config(fresh.alerting, interval=refresher.interval)
        engine.reconfigure(fresh.alerting, sink)

    return reload


def _scheduler(app: App, roots: list[Path]) -> Scheduler:
    from custode.serve.scheduler import Scheduler, jobs_from

    cfg = app.config
    reports = cfg.run.report_directory or app.state_dir() / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    jobs = jobs_from(cfg.schedule, roots, reports, email=cfg.email.smtp_host is not None)
    return Scheduler(jobs, config_path=app.config_path, grace=cfg.schedule.stop_grace)


def _reload(
    app: App, roots: list[Path], scheduler: Scheduler | None,
    reload_alerts: Callable[[Config], None],
) -> None:  # fmt: skip
    """SIGHUP: reread the config; the schedule and the alert rules and destinations change
    at once, jobs read it when they start. A config that no longer loads is reported and
    the old one kept."""
    from custode.serve.scheduler import jobs_from

    try:
        fresh = App(config_path=app.config_path).config
    except CustodeError as exc:
        log.warning("config not reloaded: %s", exc.message)
        return
    if scheduler is not None:
        reports = fresh.run.report_directory or app.state_dir() / "reports"
        jobs = jobs_from(fresh.schedule, roots, reports, email=fresh.email.smtp_host is not None)
        scheduler.replace(jobs, fresh.schedule.stop_grace)
    reload_alerts(fresh)
    log.warning("config reloaded (schedule, alerts; listen and metrics settings need a restart)")


def _trace2_listener(app: App, exporter: Exporter) -> Trace2Listener:
    """Start listening for trace2 events (errors name the socket and the fix)."""
    from custode.monitoring.trace2 import Trace2Listener
    from custode.monitoring.trace2config import default_socket

    cfg = app.config.trace2

    index: dict[str, tuple[str, str]] = {}
    seen: list[object] = [None]

    def repository_of(path: str) -> tuple[str, str] | None:
        view = exporter.view()
        if view is not seen[0]:  # a new refresh: index its repositories by path once
            index.clear()
            for r in view.repositories:
                where = (r.state.root, r.state.relative)
                index[os.path.realpath(r.state.path)] = where
                index[os.path.realpath(r.state.git_dir)] = where
            seen[0] = view
        return index.get(os.path.realpath(path))

    listener = Trace2Listener(
        cfg.socket or default_socket(app.state_dir()), exporter.histograms,
        repository_of=repository_of, max_buffer=cfg.max_buffer, mode=cfg.socket_mode,
    )  # fmt: skip
    listener.start()
    exporter.register(listener)
    return listener


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "no such address on this host"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]
