"""``custode snapshots``: the backups in the store, one line per snapshot; with a snapshot
named (or ``--repositories``), the repositories it holds. A host with no snapshot is
answered with the hosts the store does hold."""

from __future__ import annotations

from datetime import UTC, datetime

import click
from rich.table import Table
from rich.text import Text

from custode.backup.catalog import Catalog, choose, hosts, load
from custode.backup.freshness import future_note
from custode.backup.guard import standing
from custode.backup.manifest import Snapshot
from custode.base.units import counted
from custode.cli import backup_common as bc
from custode.cli.app import App
from custode.errors import EXIT_CODES_SEE, IntegrityError


@click.command(epilog=EXIT_CODES_SEE)
@click.argument("snapshot_id", metavar="[SNAPSHOT]", required=False)
@bc.store_option
@bc.host_option
@click.option(
    "--repositories",
    "list_repositories",
    is_flag=True,
    help="List the repositories the snapshot holds (SNAPSHOT, else the latest).",
)
@bc.json_option
@click.pass_obj
def snapshots(  # noqa: PLR0917
    app: App,
    snapshot_id: str | None,
    store_url: str | None,
    host_name: str | None,
    list_repositories: bool,
    as_json: bool,
) -> None:
    """List the snapshots of this host (or --host) in the store, oldest first (in the order
    their machine wrote them: a snapshot dated in the future is marked, never the latest
    by its date).

    With SNAPSHOT (an id, a unique prefix of one, a date or "latest") or --repositories,
    list the repositories that snapshot holds instead: what a restore of it brings back.
    """
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
    others = [] if catalog.snapshots or catalog.damaged else hosts(store)
    if (snapshot_id or list_repositories) and (catalog.snapshots or catalog.damaged):
        _show_repositories(app, choose(catalog, snapshot_id, store.url, host), as_json=as_json)
        _fail_if_damaged(catalog, host, store.url)
        return
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
                **({"hosts": others} if not catalog.snapshots else {}),
            }
        )
        _fail_if_damaged(catalog, host, store.url)
        return
    if not catalog.snapshots:
        app.out.print(f"no snapshots of host {host} in {store.url}{_elsewhere(others)}",
                      markup=False, highlight=False)  # fmt: skip
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
        f"{counted(len(catalog.snapshots), 'snapshot')} of host {host} in {store.url}",
        markup=False,
        highlight=False,
    )
    _fail_if_damaged(catalog, host, store.url)


def _elsewhere(others: list[str]) -> str:
    """Which hosts the store does hold: the likely fix for a mistyped or defaulted --host."""
    if not others:
        return " (it holds no snapshots of any host)"
    return f"; it holds snapshots of host {', '.join(others)} (pass --host NAME)"


def _show_repositories(app: App, snap: Snapshot, *, as_json: bool) -> None:
    """The repositories ``snap`` holds (each with its root and backup), and those it
    could not back up (with why)."""
    if as_json:
        app.print_json(
            {
                "id": snap.snapshot_id,
                "host": snap.host,
                "created": snap.created,
                "repositories": [
                    {"repository": e.repository, "root": e.root, "backup_id": e.backup_id}
                    for e in snap.entries
                ],
                "failed": snap.failed,
            }
        )
        return
    table = Table(show_edge=False, pad_edge=False)
    for column in ("repository", "root", "backup"):
        table.add_column(column)
    for e in sorted(snap.entries, key=lambda e: (e.repository, e.root)):
        table.add_row(*(Text(c) for c in (e.repository, e.root, e.backup_id)))
    for name, why in sorted(snap.failed.items()):
        if not any(e.repository == name for e in snap.entries):
            table.add_row(Text(name), Text(""), Text(f"not backed up: {why}"))
    app.out.print(table)
    failed = f", {len(snap.failed)} not backed up" if snap.failed else ""
    app.out.print(
        f"snapshot {snap.snapshot_id} of host {snap.host} ({snap.created}): "
        f"{counted(len(snap.entries), 'repository', 'repositories')}{failed}",
        markup=False,
        highlight=False,
    )


def _fail_if_damaged(catalog: Catalog, host: str, store: str) -> None:
    """The listing is done (the readable snapshots stay usable); the exit status still
    says that some could not be read, each named by its own line above."""
    if catalog.damaged:
        raise IntegrityError(
            f"{counted(len(catalog.damaged), 'snapshot')} of host {host} in {store} cannot be "
            "read (named above; those listed are usable): replace each damaged file with a "
            "good copy, or delete it"
        )
