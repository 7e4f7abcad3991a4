"""``custode metrics``: the Prometheus exposition once, to stdout or a textfile."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from custode.base.atomicfile import write_atomically
from custode.errors import EXIT_CODES_SEE, PathNotFoundError

if TYPE_CHECKING:
    from custode.cli.app import App


@click.command(epilog=EXIT_CODES_SEE)
@click.argument("roots", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--textfile",
    "textfile_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Write DIR/custode.prom atomically (node_exporter's textfile collector) instead "
    "of printing.",
)
@click.option("--no-probes", is_flag=True, help="Skip the timed git probes.")
@click.pass_obj
def metrics(app: App, roots: tuple[Path, ...], textfile_dir: Path | None, no_probes: bool) -> None:
    """Print every custode metric in the Prometheus text format, once.

    For a scrape target that stays up, see custode serve.
    """
    from custode.jobs.record import HostSamples
    from custode.monitoring.exporter import Exporter

    exporter = Exporter(roots=app.roots(roots), config=app.config, state_dir=app.state_dir(),
                        probes=not no_probes,
                        record_host=HostSamples(app.config.state.keep_history))  # fmt: skip
    for root in exporter.roots:
        if not root.is_dir():
            raise PathNotFoundError(f"root {root} is not a directory; check the path")
    exporter.refresh()
    if exporter.last_error:
        raise PathNotFoundError(f"cannot read the fleet: {exporter.last_error}")
    text = exporter.exposition()
    if textfile_dir is None:
        click.echo(text.decode(), nl=False)
        return
    if not textfile_dir.is_dir():
        raise PathNotFoundError(
            f"textfile directory {textfile_dir} does not exist; create it or point --textfile "
            "at node_exporter's --collector.textfile.directory"
        )
    write_atomically(textfile_dir / "custode.prom", text, mode=0o644)  # node_exporter reads it
