"""``custode snapshots``: the backups in the store, one line per snapshot."""

from __future__ import annotations

import click
from rich.table import Table

from custode.backup.catalog import load
from custode.cli import backup_common as bc
from custode.cli.app import App
from custode.errors import EXIT_CODES_HELP


@click.command(epilog=EXIT_CODES_HELP)
@bc.store_option
@bc.host_option
@bc.json_option
@click.pass_obj
def snapshots(app: App, store_url: str | None, host_name: str | None, as_json: bool) -> None:
    """List the snapshots of this host (or --host) in the store, oldest first."""
    store = bc.open_app_store(app, store_url, create=False)
    host = bc.host(app, host_name)
    catalog = load(store, host, app.warn)
    if as_json:
        app.print_json(
            {
                "store": store.url,
                "host": host,
                "snapshots": [
                    {
                        "id": s.snapshot_id,
                        "created": s.created,
                        "finished": s.finished,
                        "repositories": [e.repository for e in s.entries],
                        "failed": s.failed,
                    }
                    for s in catalog.snapshots
                ],
                "damaged": catalog.damaged,
            }
        )
        return
    if not catalog.snapshots:
        app.out.print(f"no snapshots of host {host} in {store.url}", markup=False)
        return
    table = Table(show_edge=False, pad_edge=False)
    for column in ("snapshot", "created", "repositories", "failed"):
        table.add_column(
            column, justify="right" if column in ("repositories", "failed") else "left"
        )
    for s in catalog.snapshots:
        table.add_row(s.snapshot_id, s.created, str(len(s.entries)), str(len(s.failed) or ""))
    app.out.print(table)
    app.out.print(
        f"{len(catalog.snapshots)} snapshots of host {host} in {store.url}",
        markup=False,
        highlight=False,
    )
