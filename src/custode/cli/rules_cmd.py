"""``custode rules``: the alert rules as a Prometheus rules file."""

from __future__ import annotations

from pathlib import Path

import click

from custode.base.atomicfile import write_atomically
from custode.cli.app import App
from custode.errors import EXIT_CODES_SEE, PathNotFoundError


@click.command(epilog=EXIT_CODES_SEE)
@click.option(
    "-o", "--output", type=click.Path(path_type=Path, dir_okay=False),
    help="Write the rules to FILE atomically instead of printing them.",
)  # fmt: skip
@click.option(
    "--shipped", is_flag=True,
    help="The shipped rules, whatever the config says (deploy/prometheus/custode-rules.yml).",
)  # fmt: skip
@click.pass_obj
def rules(app: App, output: Path | None, shipped: bool) -> None:
    """Print the alert rules custode serve evaluates (the config's [alerting] rules, else
    the shipped ones) as a Prometheus rules file: same names, thresholds, durations, labels
    and annotations, plus CustodeMetricsStale, which only Prometheus can raise.

    Use these rules or custode's own alerting, not both, or every alert arrives twice.
    """
    from custode.config.alerting import DEFAULT_RULES
    from custode.monitoring.rulesfile import render_rules

    text = render_rules(DEFAULT_RULES if shipped else app.config.alerting.rules)
    if output is None:
        click.echo(text, nl=False)
        return
    try:  # read by Prometheus, another user; nothing secret in it
        write_atomically(output, text, mode=0o644)
    except OSError as exc:
        raise PathNotFoundError(
            f"cannot write the rules to {output}: {exc.strerror or exc}; check that its "
            "directory exists and is writable"
        ) from None
    app.err.print(f"wrote {output}", markup=False, highlight=False)
