"""``custode report``: the fleet's history over a time window as HTML, Markdown or JSON."""

from __future__ import annotations

import time
from pathlib import Path

import click

from custode.cli.app import App
from custode.cli.params import DURATION
from custode.errors import EXIT_CODES_HELP, PathNotFoundError, UsageError

_SUFFIXES = {".html": "html", ".htm": "html", ".md": "md", ".markdown": "md", ".json": "json"}


@click.command(epilog=EXIT_CODES_HELP)
@click.option(
    "--since", type=DURATION, default="7d", show_default=True,
    help="How far back the report looks (e.g. 24h, 7d, 4w).",
)  # fmt: skip
@click.option(
    "--format", "fmt", type=click.Choice(["html", "md", "json"]), default=None,
    help="html: one self-contained file with charts; md: Markdown for chat or email; json: "
    "for programs [default: from the -o file's suffix, else md].",
)  # fmt: skip
@click.option(
    "-o", "--output", type=click.Path(path_type=Path, dir_okay=False),
    help="Write the report to FILE atomically instead of printing it.",
)  # fmt: skip
@click.option(
    "--email", "email", is_flag=True,
    help="Also send the report by email, HTML with a Markdown alternative, as [email] "
    "configures (smtp_host, sender, recipients).",
)  # fmt: skip
@click.pass_obj
def report(app: App, since: float, fmt: str | None, output: Path | None, email: bool) -> None:
    """Report from the history database: fleet summary, repositories needing attention and
    why, maintenance and space reclaimed, backup freshness and sizes, restore-drill times
    against the 5-minute target, alerts, and host resource use against the 70% target.

    Reads only what custode status, maintain, check, backup, verify, metrics and serve
    recorded; it never scans the fleet. An empty history gives a report that says so.
    With --email the report is written or printed first, then sent.
    """
    from custode.records.state import StateDB
    from custode.report.history import build
    from custode.report.model import Targets
    from custode.report.render import render

    fmt = fmt or (_SUFFIXES.get(output.suffix.lower(), "md") if output else "md")
    if email and app.config.email.smtp_host is None:
        raise UsageError(
            "--email needs a mail server: set email.smtp_host, email.sender and "
            "email.recipients in the config"
        )
    targets = Targets(resource_ratio=app.config.maintenance.cpu_share)
    path = app.state_dir() / "state.db"
    now = time.time()
    if path.exists():
        with StateDB.open(path) as db:
            model = build(db, since_seconds=since, now=now, targets=targets)
    else:  # no history yet: say so, and do not create the database just to read it
        model = build(None, since_seconds=since, now=now, targets=targets)
    text = render(model, fmt)
    if output is None:
        click.echo(text, nl=False)
    else:
        _write(app, output, text)
    if email:
        _send(app, html=text if fmt == "html" else render(model, "html"),
              markdown=text if fmt == "md" else render(model, "md"))  # fmt: skip


def _send(app: App, *, html: str, markdown: str) -> None:
    import socket

    from custode.report.email import send_report

    cfg = app.config.email
    host = app.config.backup.host or socket.gethostname().split(".")[0]
    send_report(cfg, html, markdown, host=host)
    app.err.print(
        f"sent the report to {', '.join(cfg.recipients)} via {cfg.smtp_host}:{cfg.smtp_port}",
        markup=False, highlight=False,
    )  # fmt: skip


def _write(app: App, output: Path, text: str) -> None:
    from custode.cli.init_cmd import write_atomically

    try:
        write_atomically(output, text)
    except OSError as exc:
        raise PathNotFoundError(
            f"cannot write the report to {output}: {exc.strerror or exc}; check that its "
            "directory exists and is writable"
        ) from None
    app.err.print(f"wrote {output}", markup=False, highlight=False)
