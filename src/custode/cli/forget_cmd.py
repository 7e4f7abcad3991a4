"""``custode forget``: drop snapshots by a retention policy (restic's), then optionally
prune the files no remaining snapshot needs. The policy and the job are the core's
(``custode.jobs.forget``); here are the options and the table of what is kept and why."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from custode.base.units import counted, format_bytes, format_duration
from custode.cli import backup_common as bc
from custode.cli.params import DURATION
from custode.errors import EXIT_CODES_SEE

if TYPE_CHECKING:  # the rest is imported where used: --help imports none of it
    from custode.backup.manifest import Snapshot
    from custode.backup.retention import Policy
    from custode.cli.app import App

F = TypeVar("F", bound=Callable[..., Any])


def _keep_option(name: str) -> Callable[[F], F]:
    return click.option(
        f"--keep-{name}",
        f"keep_{name}",
        type=click.IntRange(-1),
        default=None,
        metavar="N",
        help=f"Keep the {name} N snapshots (-1: all).",
    )


@click.command(epilog=EXIT_CODES_SEE)
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
    from custode.cli.progress import progress_bar
    from custode.jobs import forget as forget_job

    retention = forget_job.require(
        forget_job.policy(
            app.config.backup,
            {
                "last": keep_last,
                "hourly": keep_hourly,
                "daily": keep_daily,
                "weekly": keep_weekly,
                "monthly": keep_monthly,
                "yearly": keep_yearly,
            },
            keep_within,
        )
    )
    store = bc.open_app_store(app, store_url, create=False)
    host = bc.host(app, host_name)
    with progress_bar(app, "pruning") as tick:
        done = forget_job.forget(
            store,
            host,
            retention,
            state_dir=app.state_dir(),
            # the host this machine backs up as must hold only this machine's snapshots;
            # another host's (--host) only one machine's
            own_host=host == bc.host(app, None),
            prune=do_prune,
            dry_run=dry_run,
            progress=tick,
            warn=app.warn,
        )
    if as_json:
        app.print_json({**done.summary(), "reasons": done.reasons})
        return
    verb = "would remove" if dry_run else "removed"
    _show(app, done.kept, done.removed, done.reasons, retention, verb)
    pruned = (
        f"; {verb} {counted(done.pruned_files, 'unneeded file')} "
        f"({format_bytes(done.pruned_bytes)})"
        if do_prune
        else ""
    )
    app.out.print(
        f"kept {counted(len(done.kept), 'snapshot')}, {verb} {len(done.removed)}{pruned}",
        markup=False,
        highlight=False,
    )


def _show(  # noqa: PLR0917
    app: App, keep: list[Snapshot], remove: list[Snapshot], reasons: dict[str, list[str]],
    policy: Policy, verb: str,
) -> None:  # fmt: skip
    """restic's forget table: each snapshot, newest first, kept (with every rule that keeps
    it: ``daily 2026-12-04``) or removed (no rule keeps it)."""
    if not keep and not remove:
        return
    from rich.table import Table
    from rich.text import Text

    table = Table(show_edge=False, pad_edge=False)
    for column in ("snapshot", "created", "", "why"):
        table.add_column(column)
    for snap in keep:
        why = ", ".join(reasons[snap.snapshot_id])
        table.add_row(*(Text(c) for c in (snap.snapshot_id, snap.created, "keep", why)))
    for snap in remove:
        cells = (snap.snapshot_id, snap.created, verb, "no rule keeps it")
        table.add_row(*(Text(c) for c in cells))
    app.out.print(table)
    if policy.within:
        app.out.print(f"(within: {format_duration(policy.within)} of the newest)", markup=False)
