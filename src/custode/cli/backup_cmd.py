"""``custode backup``: an encrypted, incremental, git-native snapshot of every repository.
The backup itself is the core's (``custode.jobs.backup``: which repositories are unchanged
and why, the pool, the snapshot, the records); here are its options, the scan with its
progress, and what it shows: the summary (text or JSON), the progress bar, the messages
and the errors."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import click

from custode import interrupts
from custode.base.units import format_bytes
from custode.cli import backup_common as bc
from custode.cli.app import App
from custode.cli.progress import progress_bar
from custode.errors import EXIT_CODES_HELP
from custode.git.runner import Git
from custode.jobs import backupsetup, fleet
from custode.jobs.backup import BackupJob, BackupResult
from custode.jobs.backup import backup as backup_job


@click.command(epilog=EXIT_CODES_HELP)
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
    type=click.IntRange(1, 64),
    default=None,
    help="Repositories backed up at once [default: backup.jobs, 0 = one per CPU].",
)
@click.option(
    "--full",
    is_flag=True,
    help="Start a new chain: a full bundle of every repository under ROOTS, even an "
    "unchanged one (the fix for a chain verify found damaged).",
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
    as_json: bool,
) -> None:
    """Back up every repository under ROOTS into the store, as one snapshot.

    Each repository's refs are captured at one moment, and only the objects new since its
    previous backup are stored (an unchanged repository stores nothing). With --full every
    repository gets a full bundle with no parent, changed or not. Everything is encrypted
    with age to public keys: restoring needs the matching identity.
    """
    app.stop_on_signals()
    started = time.monotonic()
    cfg = app.config.backup
    host = bc.host(app, None)
    git = Git.from_config(app.config.git)
    git.lower_own_priority()
    git.check_version()
    found = fleet.read(app.roots(roots), app.config, app.state_dir(),
                       bar=partial(progress_bar, app), notice=app.say)  # fmt: skip
    keys = bc.recipients(app, recipient)  # after the scan: no key made for a wrong root
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
    with progress_bar(app, "backing up") as tick:
        result = backup_job(
            job, found.states, started=started, warn=app.warn, notice=app.say, progress=tick
        )
    _show(app, result, as_json=as_json)
    if result.interrupted:
        done = len(result.repositories) - len(result.failed)
        line = interrupts.summary("backup", done, result.stopped, result.cancelled)
        raise interrupts.Interrupted(line)
    error = result.failure()
    if error is not None:
        raise error


def _show(app: App, result: BackupResult, *, as_json: bool) -> None:
    if as_json:
        repos = [
            {
                "repository": r.repository,
                "root": r.root,
                "outcome": r.outcome,
                "full": r.full,
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
