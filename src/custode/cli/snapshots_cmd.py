"""``custode snapshots``: the backups in the store, one line per snapshot."""

from __future__ import annotations

from datetime import UTC, datetime

import click
from rich.table import Table

from custode.backup.catalog import Catalog, load
from custode.backup.freshness import future_note
from custode.backup.guard import standing
from custode.cli import backup_common as bc
from custode.cli.app import App
from custode.errors import EXIT_CODES_SEE, IntegrityError


@click.command(epilog=EXIT_CODES_SEE)
@bc.store_option
@bc.host_option
@bc.json_option
@click.pass_obj
def snapshots(app: App, store_url: str | None, host_name: str | None, as_json: bool) -> None:
    """List the snapshots of this host (or --host) in the store, oldest first (in the order
    their machine wrote them: a snapshot dated in the future is marked, never the latest
    by its date)."""
    store = bc.open_app_store(app, store_url, create=False)
    host = bc.host(app, host_name)
    catalog = load(store, host, app.warn)
    found = standing(app.state_dir(), store.url, host, catalog, own_host=host == bc.host(app, None),
                     warn=app.warn)  # fmt: skip
    now = datetime.now(UTC)
    for problem in (found.rollback, found.clash):
        if problem:
            app.warn(problem)
    for snap in found.future:
        app.warn(future_note(snap, now))
    future = {s.snapshot_id for s in found.future}
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
                        "seq": s.seq,
                        "machine": s.machine,
                        "future": s.snapshot_id in future,
                    }
                    for s in catalog.snapshots
                ],
                "damaged": catalog.damaged,
                "rollback": found.rollback,
                "clash": found.clash,
            }
        )
        _fail_if_damaged(catalog, host, store.url)
        return
    if not catalog.snapshots:
        app.out.print(f"no snapshots of host {host} in {store.url}", markup=False)
        _fail_if_damaged(catalog, host, store.url)
        return
    table = Table(show_edge=False, pad_edge=False)
    for column in ("snapshot", "created", "repositories", "failed"):
        table.add_column(
            column, justify="right" if column in ("repositories", "failed") else "left"
        )
    for s in catalog.snapshots:
        created = f"{s.created} (future)" if s.snapshot_id in future else s.created
        table.add_row(s.snapshot_id, created, str(len(s.entries)), str(len(s.failed) or ""))
    app.out.print(table)
    app.out.print(
        f"{len(catalog.snapshots)} snapshots of host {host} in {store.url}",
        markup=False,
        highlight=False,
    )
    _fail_if_damaged(catalog, host, store.url)


def _fail_if_damaged(catalog: Catalog, host: str, store: str) -> None:
    """The listing is done (the readable snapshots stay usable); the exit status still
    says that some could not be read, each named by its own line above."""
    if catalog.damaged:
        raise IntegrityError(
            f"{_count(len(catalog.damaged))} of host {host} in {store} cannot be read (named "
            "above; those listed are usable): replace each damaged file with a good copy, or "
            "delete it"
        )


def _count(n: int) -> str:
    return f"{n} snapshot" if n == 1 else f"{n} snapshots"
