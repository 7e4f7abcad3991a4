"""``custode trace2 enable|disable|listen``: send every git's trace2 events to custode."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING

import click

from custode.base.units import counted
from custode.cli.app import App
from custode.errors import EXIT_CODES_SEE
from custode.interrupts import StopFlag

if TYPE_CHECKING:
    from custode.config.trace2 import Trace2Config

SOCKET_HELP = (
    "The socket (default: trace2.socket in config, else "
    "$XDG_RUNTIME_DIR/custode/trace2.sock, else trace2.sock in the state directory)."
)
socket_option = click.option(
    "--socket", "socket_path", type=click.Path(path_type=Path, dir_okay=False), help=SOCKET_HELP
)


def trace2_config(app: App) -> Trace2Config:
    """The ``[trace2]`` config section."""
    return app.config.trace2


def socket_of(app: App, given: Path | None) -> Path:
    """--socket, else config, else the default; absolute and short enough for git."""
    from custode.monitoring.trace2config import check_socket_path, default_socket

    path = given or trace2_config(app).socket or default_socket(app.state_dir())
    return check_socket_path(path.expanduser())


def _file(scope: str, given: Path | None) -> Path:
    from custode.monitoring.trace2config import config_file

    return given or config_file("system" if scope == "system" else "global")


scope_options = [
    click.option("--global", "scope", flag_value="global", default=True,
                 help="The user's git config (~/.gitconfig, $GIT_CONFIG_GLOBAL): default."),
    click.option("--system", "scope", flag_value="system",
                 help="The system git config (/etc/gitconfig, $GIT_CONFIG_SYSTEM): every user."),
    click.option("--file", "file", type=click.Path(path_type=Path, dir_okay=False),
                 help="Write this git config file instead (a git built with another prefix)."),
]  # fmt: skip


def _with_scope(f: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(scope_options):
        f = option(f)
    return f


@click.group(epilog=EXIT_CODES_SEE)
def trace2() -> None:
    """Live git telemetry: every git on the host reports its duration to custode serve.

    'enable' points trace2.eventTarget in the global or system git config at custode's
    unix socket; 'custode serve' (or 'trace2 listen') receives the events. git never waits
    for custode: when nothing listens, git runs untraced at the cost of one failed
    connect. Run custode as the user that runs git (the socket is mode 0600).
    """


@trace2.command(epilog=EXIT_CODES_SEE)
@_with_scope
@socket_option
@click.pass_obj
def enable(app: App, scope: str, file: Path | None, socket_path: Path | None) -> None:
    """Send the trace2 events of every git reading that config to custode's socket.

    Refuses (exit 2) when trace2.eventTarget already names another target.
    """
    from custode.git.runner import Git
    from custode.monitoring import trace2config

    socket = socket_of(app, socket_path)
    change = trace2config.enable(Git.from_config(app.config.git), _file(scope, file), socket)
    what = "now go" if change.changed else "already go"
    app.out.print(
        f"trace2 events of every git reading {change.file} {what} to {socket}; "
        "run 'custode serve' to receive them",
        markup=False, highlight=False,
    )  # fmt: skip


@trace2.command(epilog=EXIT_CODES_SEE)
@_with_scope
@socket_option
@click.pass_obj
def disable(app: App, scope: str, file: Path | None, socket_path: Path | None) -> None:
    """Remove custode's trace2 settings from that config (only if they name its socket).

    Refuses (exit 2) when trace2.eventTarget names another target.
    """
    from custode.git.runner import Git
    from custode.monitoring import trace2config

    socket = socket_of(app, socket_path)
    change = trace2config.disable(Git.from_config(app.config.git), _file(scope, file), socket)
    message = (
        f"removed custode's trace2 target ({change.target}) from {change.file}"
        if change.changed
        else f"trace2 is not enabled in {change.file}: nothing to do"
    )
    app.out.print(message, markup=False, highlight=False)


@trace2.command(epilog=EXIT_CODES_SEE)
@socket_option
@click.pass_obj
def listen(app: App, socket_path: Path | None) -> None:
    """Receive trace2 events in the foreground until interrupted, then print a summary.

    A test harness for 'enable'; 'custode serve' listens the same way and exports the
    durations. Fails (exit 11) when another process listens on the socket, (exit 4) when
    the socket cannot be made.
    """
    from custode.monitoring.histograms import OperationHistograms
    from custode.monitoring.trace2 import Trace2Listener

    config = trace2_config(app)
    listener = Trace2Listener(
        socket_of(app, socket_path), OperationHistograms(),
        max_buffer=config.max_buffer, mode=config.socket_mode,
    )  # fmt: skip
    done = StopFlag()  # not an Event: set by the handler in the thread that waits on it
    previous = {s: signal.signal(s, done.set) for s in (signal.SIGINT, signal.SIGTERM)}
    listener.start()
    try:
        app.err.print(f"listening on {listener.socket_path}", markup=False, highlight=False)
        while not done.wait(0.5):
            pass
        # what git sent before the stop: all of it, unless a git still runs after 5 s
        listener.wait_idle(5.0, closed=True)
        trouble = listener.health()  # a thread that died (restarted or not)
    finally:
        listener.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    reasons = ", ".join(f"{n} {reason}" for reason, n in listener.rejected_lines.items())
    app.out.print(
        f"{counted(listener.observed, 'git process', 'git processes')} observed; events: "
        f"{listener.received} received, "
        f"{listener.dropped} dropped, {listener.malformed} malformed"
        + (f" ({reasons})" if reasons else ""),
        markup=False, highlight=False,
    )  # fmt: skip
    if trouble is not None:
        app.err.print(f"custode: {trouble}", markup=False, highlight=False)
