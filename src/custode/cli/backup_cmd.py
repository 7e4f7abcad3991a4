"""``custode backup``: an encrypted, incremental, git-native snapshot of every repository.
The backup itself is the core's (``custode.jobs.backup``: which repositories are unchanged
and why, the pool, the snapshot, the records); here are its options, the scan with its
progress, and what it shows: the summary (text or JSON), the progress bar, the messages
and the errors."""

from __future__ import annotations

import shlex
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import click

from custode import interrupts
from custode.base.units import format_bytes
from custode.cli import backup_common as bc
from custode.cli.params import JOBS
from custode.errors import EXIT_CODES_SEE

if TYPE_CHECKING:  # the rest is imported where used: --help imports none of it
    from custode.cli.app import App
    from custode.cli.progress import Bar
    from custode.git.runner import Git
    from custode.jobs.backup import BackupResult, Progress
    from custode.jobs.backupplan import BackupPlan


@click.command(epilog=EXIT_CODES_SEE)
@click.argument("roots", nargs=-1, type=click.Path(path_type=Path))
@bc.store_option
@click.option(
    "--recipient",
    "recipient",
    multiple=True,
    metavar="AGE_PUBLIC_KEY",
    help="Encrypt to this age public key (repeatable) [default: backup.recipients, else the "
    "public key of the identity file].",
)
@click.option(
    "--jobs",
    type=JOBS,
    default=None,
    help="Repositories backed up at once, 0 = one per CPU [default: backup.jobs].",
)
@click.option(
    "--full",
    is_flag=True,
    help="Start a new chain: a full bundle of every repository under ROOTS, even an "
    "unchanged one (the fix for a chain verify found damaged).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the backup plan and write nothing: per repository unchanged, in place, "
    "incremental on which backup or a new chain (on which base), copy or generate, and why.",
)
@bc.json_option
@click.pass_obj
def backup(  # noqa: PLR0917
    app: App,
    roots: tuple[Path, ...],
    store_url: str | None,
    recipient: tuple[str, ...],
    jobs: int | None,
    full: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Back up every repository under ROOTS into the store, as one snapshot.

    Each repository's refs are captured at one moment, and only the objects new since its
    previous backup are stored (an unchanged repository stores nothing). With --full every
    repository gets a full bundle with no parent, changed or not. Everything is encrypted
    with age to public keys: restoring needs the matching identity.
    """
    from custode.cli.progress import progress_bar
    from custode.git.runner import Git
    from custode.jobs import backupsetup, fleet
    from custode.jobs.backup import BackupJob
    from custode.jobs.backup import backup as backup_job

    app.stop_on_signals()
    started = time.monotonic()
    cfg = app.config.backup
    host = bc.host(app, None)
    git = Git.from_config(app.config.git)
    git.lower_own_priority()
    git.check_version()
    if dry_run:
        _dry_run(app, roots, store_url, recipient, git, full=full, as_json=as_json)
        return
    found = fleet.read(app.roots(roots), app.config, app.state_dir(),
                       bar=partial(progress_bar, app), notice=app.say)  # fmt: skip
    # after the scan: no key made for a wrong root; the notice of a key made now is said
    # last, after the summary, where the progress and the messages do not hide it
    created: list[str] = []
    keys = bc.recipients(app, recipient, notice=created.append)
    try:
        job = BackupJob(
            store=bc.open_app_store(app, store_url),
            host=host,
            recipients=keys,
            state_dir=app.state_dir(),
            git=git,
            scratch=backupsetup.scratch_base(cfg, app.state_dir()),
            full_every=cfg.full_every,
            full_after=cfg.full_after,
            full=full,
            jobs=bc.jobs(app, jobs),
        )
        with progress_bar(app, "backing up") as bar:
            result = backup_job(job, found.states, started=started, warn=app.warn,
                                notice=app.say, status=partial(_status, bar))  # fmt: skip
        _show(app, result, as_json=as_json)
        for line in _next_steps(result):
            app.say(line)
    finally:  # even when the backup failed: the key exists from now on
        for line in created:
            app.say(line)
    if result.interrupted:
        done = len(result.repositories) - len(result.failed)
        line = interrupts.summary("backup", done, result.stopped, result.cancelled)
        raise interrupts.Interrupted(line)
    error = result.failure()
    if error is not None:
        raise error


def _status(bar: Bar, now: Progress) -> None:
    """The bar: the phase, repositories done of all, bytes added, and which repository
    is in hand (the first of them, when several are)."""
    bar(now.done, now.total)
    if now.phase == "comparing":
        what = "comparing with the fleet"
    else:
        what = f"backing up, {format_bytes(now.bytes_added)} added"
    more = f" (+{len(now.current) - 1})" if len(now.current) > 1 else ""
    bar.describe(f"{what}: {now.current[0]}{more}" if now.current else what)


def _next_steps(result: BackupResult) -> list[str]:
    """What a person should do next, one line each: the repositories that could not be
    backed up, and the command that shows why (an interrupt says its own)."""
    broken = [r for r in result.failed
              if not r.cancelled and not r.message.startswith("interrupted")]  # fmt: skip
    if not broken:
        return []
    names = ", ".join(r.repository for r in broken[:3])
    names += f" and {len(broken) - 3} more" if len(broken) > 3 else ""
    roots = " ".join(shlex.quote(root) for root in sorted({r.root for r in broken}))
    return [
        f"next: custode check {roots} shows what is wrong with {names} (not backed up); "
        "fix it, then run custode backup again"
    ]


def _show(app: App, result: BackupResult, *, as_json: bool) -> None:
    if as_json:
        repos = [
            {
                "repository": r.repository,
                "root": r.root,
                "outcome": r.outcome,
                "full": r.full,
                "action": r.action,  # what was decided, as --dry-run plans it
                "decided": r.decided,  # why, with numbers
                "method": r.method,  # how a new bundle's pack was made, and why
                "reason": r.reason,
                "bytes_added": r.bytes_added,
                "seconds": round(r.seconds, 3),
                "backup_id": r.backup_id,
                "message": r.message,
            }
            for r in result.repositories
        ]
        app.print_json({"summary": result.summary(), "repositories": repos})
        return
    snap = result.snapshot
    name = f"snapshot {snap.snapshot_id}" if snap else "no snapshot"
    app.out.print(
        f"{name}: {result.count('new')} new, {result.count('unchanged')} unchanged, "
        f"{result.count('failed')} failed; {format_bytes(result.bytes_added)} added to "
        f"{result.store} in {result.seconds:.1f}s",
        markup=False,
        highlight=False,
    )


def _dry_run(
    app: App, roots: tuple[Path, ...], store_url: str | None, recipient: tuple[str, ...],
    git: Git, *, full: bool, as_json: bool,
) -> None:  # fmt: skip
    """The backup plan (``custode.jobs.backupplan``): what a backup would do, writing
    nothing (no store, key, lock, history, cache or scratch file is made)."""
    from custode.cli.progress import progress_bar
    from custode.jobs import backupplan as planner
    from custode.jobs import backupsetup
    from custode.jobs.backup import BackupJob

    cfg = app.config.backup
    found = planner.read_fleet(app.roots(roots), app.config, bar=partial(progress_bar, app),
                               notice=app.say)  # fmt: skip
    store, exists = planner.open_for_plan(cfg, store_url)
    if not exists:
        app.say(f"store {store.url} does not exist yet: every repository starts a new chain")
    keys = planner.known_recipients(cfg, recipient)
    if not keys:
        app.say(f"no backup key yet: the backup would create {backupsetup.identity_path(cfg)}")
    job = BackupJob(store=store, host=bc.host(app, None), recipients=keys,
                    state_dir=app.state_dir(), git=git,
                    scratch=backupsetup.scratch_base(cfg, app.state_dir()),
                    full_every=cfg.full_every, full_after=cfg.full_after, full=full)  # fmt: skip
    _show_plan(app, planner.plan(job, found.states, store_exists=exists, warn=app.warn),
               as_json=as_json)  # fmt: skip


def _show_plan(app: App, plan: BackupPlan, *, as_json: bool) -> None:
    from rich.table import Table
    from rich.text import Text

    if as_json:
        repos = [r.to_json() for r in plan.repositories]
        app.print_json({"summary": plan.summary(), "repositories": repos})
        return
    table = Table(show_edge=False, pad_edge=False)
    for column in ("repository", "action", "on", "pack (predicted)", "why"):
        table.add_column(column)
    for r in plan.repositories:
        pack = f"{r.pack}: {r.pack_why.removeprefix('predicted: ')}" if r.pack else ""
        table.add_row(*(Text(cell) for cell in (r.repository, r.action, r.on, pack, r.why)))
    app.out.print(table)
    counts = ", ".join(f"{plan.count(a)} {a}" for a in
                       ("unchanged", "in-place", "incremental", "new-chain", "failed"))  # fmt: skip
    app.out.print(f"plan (dry run, nothing written): {counts}; into {plan.store}",
                  markup=False, highlight=False)  # fmt: skip
