"""``custode forget``: drop snapshots by a retention policy (restic's), then optionally
prune the files no remaining snapshot needs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.table import Table

from custode.backup.lineage import machine_id
from custode.backup.manifest import Snapshot
from custode.backup.prune import forget as forget_snapshots
from custode.backup.retention import Policy
from custode.base.units import format_bytes, format_duration
from custode.cli import backup_common as bc
from custode.cli.app import App
from custode.cli.params import DURATION
from custode.errors import EXIT_CODES_HELP, UsageError

F = TypeVar("F", bound=Callable[..., Any])
_KEEP = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


def _keep_option(name: str) -> Callable[[F], F]:
    return click.option(
        f"--keep-{name}",
        f"keep_{name}",
        type=click.IntRange(-1),
        default=None,
        metavar="N",
        help=f"Keep the {name} N snapshots (-1: all).",
    )


@click.command(epilog=EXIT_CODES_HELP)
@bc.store_option
@bc.host_option
@_keep_option("last")
@_keep_option("hourly")
@_keep_option("daily")
@_keep_option("weekly")
@_keep_option("monthly")
@_keep_option("yearly")
@click.option(
    "--keep-within",
    "keep_within",
    type=DURATION,
    default=None,
    help="Keep every snapshot taken within this long of the newest (e.g. 14d).",
)
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@click.option(
    "--prune",
    "do_prune",
    is_flag=True,
    help="Also delete the stored files no remaining snapshot needs.",
)
@bc.json_option
@click.pass_obj
def forget(  # noqa: PLR0917
    app: App,
    store_url: str | None,
    host_name: str | None,
    keep_last: int | None,
    keep_hourly: int | None,
    keep_daily: int | None,
    keep_weekly: int | None,
    keep_monthly: int | None,
    keep_yearly: int | None,
    keep_within: float | None,
    dry_run: bool,
    do_prune: bool,
    as_json: bool,
) -> None:
    """Remove the snapshots the policy does not keep (restic's forget semantics).

    With no --keep option the backup.keep_* settings apply. Nothing a kept snapshot needs
    is ever deleted: a snapshot's repositories each name the whole chain they restore from.
    "Newest" is by the order this machine wrote its snapshots in, not their dates. A host
    name under which another machine also wrote snapshots is refused (set a distinct
    backup.host on each machine).
    """
    given = {
        "last": keep_last,
        "hourly": keep_hourly,
        "daily": keep_daily,
        "weekly": keep_weekly,
        "monthly": keep_monthly,
        "yearly": keep_yearly,
    }
    cfg = app.config.backup
    if all(v is None for v in given.values()) and keep_within is None:
        policy = Policy(
            cfg.keep_last,
            cfg.keep_hourly,
            cfg.keep_daily,
            cfg.keep_weekly,
            cfg.keep_monthly,
            cfg.keep_yearly,
            cfg.keep_within,
        )
    else:
        policy = Policy(**{k: given[k] or 0 for k in _KEEP}, within=keep_within or 0.0)
    if policy.empty():
        raise UsageError(
            "no retention policy: pass --keep-last N (or another --keep-* option) "
            "or set backup.keep_* in the config; nothing was removed"
        )
    store = bc.open_app_store(app, store_url, create=False)
    host = bc.host(app, host_name)
    # the host this machine backs up as must hold only this machine's snapshots; another
    # host's (--host) only one machine's
    machine = machine_id(app.state_dir()) if host == bc.host(app, None) else None
    with bc.progress_bar(app, "pruning") as tick:
        done = forget_snapshots(
            store,
            host,
            policy,
            do_prune=do_prune,
            dry_run=dry_run,
            progress=tick,
            warn=app.warn,
            machine=machine,
        )
    decision = done.decision
    removed_files, removed_bytes = done.pruned_files, done.pruned_bytes
    summary = {
        "store": store.url,
        "host": host,
        "dry_run": dry_run,
        "kept": [s.snapshot_id for s in decision.keep],
        "removed": [s.snapshot_id for s in decision.remove],
        "pruned_files": removed_files,
        "pruned_bytes": removed_bytes,
    }
    if not dry_run:
        bc.record(app, "forget", [], "ok", summary)
        bc.audit(app, "forget", store.url, summary)
    if as_json:
        summary["reasons"] = decision.reasons
        app.print_json(summary)
        return
    _show(app, decision.keep, decision.reasons, policy)
    verb = "would remove" if dry_run else "removed"
    pruned = (
        f"; {verb} {removed_files} unneeded files ({format_bytes(removed_bytes)})"
        if do_prune
        else ""
    )
    app.out.print(
        f"kept {len(decision.keep)} snapshots, {verb} {len(decision.remove)}{pruned}",
        markup=False,
        highlight=False,
    )


def _show(app: App, keep: list[Snapshot], reasons: dict[str, list[str]], policy: Policy) -> None:
    if not keep:
        return
    table = Table(show_edge=False, pad_edge=False)
    for column in ("kept snapshot", "created", "why"):
        table.add_column(column)
    for snap in keep:
        table.add_row(snap.snapshot_id, snap.created, ", ".join(reasons[snap.snapshot_id]))
    app.out.print(table)
    if policy.within:
        app.out.print(f"(within: {format_duration(policy.within)} of the newest)", markup=False)
