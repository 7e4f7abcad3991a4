"""``custode report``: the fleet's history over a time window as HTML, Markdown or JSON.
The report itself is the core's (``custode.jobs.report``); here are its options and what
it shows: the report on stdout, or what it wrote and sent on stderr."""

from __future__ import annotations

from pathlib import Path

import click

from custode.cli.app import App
from custode.cli.params import DURATION
from custode.errors import EXIT_CODES_SEE


@click.command(epilog=EXIT_CODES_SEE)
@click.argument("roots", nargs=-1, type=click.Path(path_type=Path))
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
def report(  # noqa: PLR0917  (click passes the options by position)
    app: App, roots: tuple[Path, ...], since: float, fmt: str | None, output: Path | None,
    email: bool,
) -> None:  # fmt: skip
    """Report from the history database on the repositories under ROOTS (default: roots
    from config; none there: every root recorded): fleet summary, repositories needing
    attention and why, maintenance and space reclaimed, backups per store and freshness,
    restore-drill times against the 5-minute target, alerts, and host resource use against
    the 70% target.

    Reads only what custode status, maintain, check, backup, verify, metrics and serve
    recorded; it never scans the fleet. An empty history gives a report that says so.
    With --email the report is written or printed first, then sent.
    """
    from custode.jobs import report as report_job

    fmt = fmt or report_job.format_for(output)
    if email:
        report_job.require_mail(app.config)
    job = report_job.ReportJob(app.config, app.state_dir(), since, fmt, output, roots)
    done = report_job.report(job)
    if output is None:
        click.echo(done.text, nl=False)
    else:
        app.err.print(f"wrote {output}", markup=False, highlight=False)
    if email:
        report_job.send(app.config, done)
        cfg = app.config.email
        app.err.print(
            f"sent the report to {', '.join(cfg.recipients)} via {cfg.smtp_host}:{cfg.smtp_port}",
            markup=False, highlight=False,
        )  # fmt: skip
