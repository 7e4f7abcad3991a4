"""``custode serve``: Prometheus metrics of the fleet on ``/metrics``, and ``/healthz``.

Scrapes answer from the state of the last refresh (every ``monitoring.refresh_interval``,
in a background thread), so they are fast and never wait for a scan. SIGTERM and SIGINT
stop it cleanly with exit status 0.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from custode.cli.app import App
from custode.errors import EXIT_CODES_HELP, PathNotFoundError, UsageError
from custode.monitoring.http import MetricsApp, MetricsServer, Refresher, parse_listen, serve_until
from custode.monitoring.webconfig import WebConfigWatcher, load_web_config

if TYPE_CHECKING:
    from custode.monitoring.exporter import Exporter
    from custode.monitoring.trace2 import Trace2Listener


@click.command(epilog=EXIT_CODES_HELP)
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
@click.pass_obj
def serve(
    app: App, roots: tuple[Path, ...], listen: str | None, web_config: Path | None, trace2: bool
) -> None:
    """Serve metrics of the repositories under ROOTS (default: roots from config).

    /metrics is the Prometheus text format; /healthz answers "ok", or 503 and the reason
    when the last refresh failed or is older than three refresh intervals. Binds
    127.0.0.1 unless told otherwise; with a web config, TLS and basic auth apply to
    every path. Prints the URL on stderr once listening.
    """
    cfg = app.config.monitoring
    root_paths = app.roots(roots)
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

    from custode.monitoring.alerting import AlertEngine
    from custode.monitoring.exporter import Exporter  # heavy: only once the flags are valid
    from custode.monitoring.notify import Notifier

    exporter = Exporter(roots=root_paths, config=app.config, state_dir=app.state_dir())
    refresher = Refresher(exporter, cfg.refresh_interval)
    notifier = Notifier.from_config(app.config.alerting, interval=refresher.interval)
    engine = AlertEngine(app.config.alerting, notifier)
    exporter.register(engine)

    def alert() -> None:
        engine.evaluate(exporter.samples(), time.time())

    refresher.after.append(alert)
    metrics = MetricsApp(exporter, refresher.health, watcher.current if watcher else None)
    try:
        server = MetricsServer((host, port), metrics, web=watcher)
    except OSError as exc:
        raise UsageError(
            f"cannot listen on {address}: {_reason(exc)}; choose another {where}"
        ) from None

    listener = _trace2_listener(app, exporter) if trace2 else None
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    app.err.print(f"serving metrics on {server.url}/metrics", markup=False, highlight=False)
    try:
        serve_until(server, refresher, stop)
    finally:
        if listener is not None:
            listener.stop()


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
