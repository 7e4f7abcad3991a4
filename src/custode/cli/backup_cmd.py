"""``custode backup``: an encrypted, incremental, git-native snapshot of every repository."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import click

from custode import interrupts
from custode.backup.catalog import load
from custode.backup.engine import BackupSettings, RepoBackup, back_up, write_snapshot
from custode.backup.guard import after_backup, before_backup
from custode.backup.locks import store_lock
from custode.backup.manifest import Snapshot
from custode.backup.store import Store
from custode.base.units import format_bytes
from custode.cli import backup_common as bc
from custode.cli.app import App
from custode.cli.progress import progress_bar
from custode.cli.scanning import scan_fleet
from custode.errors import EXIT_CODES_HELP, CustodeError, RepositoryError
from custode.git.runner import Git
from custode.records.state import RepositoryResult, StateDB, TaskHistory
from custode.scan.repostate import RepoState

CANCELLED = "not backed up: the backup was interrupted before it started"


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
    found = scan_fleet(app, app.roots(roots))
    keys = bc.recipients(app, recipient)  # after the scan: no key made for a wrong root
    store = bc.open_app_store(app, store_url)
    created = datetime.now(UTC)
    with (
        store_lock(store, host, exclusive=False, purpose="custode backup"),
        bc.scratch(app) as scratch,
    ):
        # another machine under this host name is refused; this one numbers its snapshots
        ticket = before_backup(app.state_dir(), store.url, host, load(store, host), app.warn)
        settings = BackupSettings(host, keys, scratch, cfg.full_every, cfg.full_after, full)
        results = _run(app, store, git, settings, found.states, jobs=bc.jobs(app, jobs))
        snap = write_snapshot(store, host, created, results, seq=ticket.seq,
                              machine=ticket.machine)  # fmt: skip
    if snap is not None:
        after_backup(app.state_dir(), store.url, host, snap, ticket=ticket, warn=app.warn)
    seconds = time.monotonic() - started
    digest = bc.recipients_digest(keys)
    _report(app, store, snap, results, seconds=seconds, as_json=as_json, recipients=digest)
    failed = [r for r in results if r.outcome == "failed"]
    if interrupts.requested():
        cancelled = sum(1 for r in failed if r.message == CANCELLED)
        stopped = sum(1 for r in failed if r.message.startswith("interrupted"))
        line = interrupts.summary("backup", len(results) - len(failed), stopped, cancelled)
        raise interrupts.Interrupted(line)
    if failed:
        raise RepositoryError(
            f"backup failed for {len(failed)} of {len(results)} repositories; see the messages "
            "above (the others are in the snapshot)"
        )


def _run(
    app: App,
    store: Store,
    git: Git,
    settings: BackupSettings,
    states: list[RepoState],
    *,
    jobs: int,
) -> list[RepoBackup]:
    results: list[RepoBackup] = []
    todo: list[RepoState] = []
    seen: dict[str, str] = {}
    for s in states:
        if s.problems:
            results.append(
                RepoBackup(s.relative, s.root, "failed", message="; ".join(p for p in s.problems))
            )
        elif s.relative in seen:
            results.append(
                RepoBackup(
                    s.relative,
                    s.root,
                    "failed",
                    message=(
                        f"another root ({seen[s.relative]}) holds a repository at the same "
                        "relative path; back the roots up under different backup.host names"
                    ),
                )
            )
        else:
            seen[s.relative] = s.root
            todo.append(s)

    history = _history(app)
    recipients = bc.recipients_digest(settings.recipients)

    def one(s: RepoState) -> RepoBackup:
        if interrupts.requested():  # taken from the queue before the loop could cancel it
            return RepoBackup(s.relative, s.root, "failed", message=CANCELLED)
        before = history.get((s.root, s.relative))
        return back_up(store, git, settings, s, before=before, recipients=recipients)

    with progress_bar(app, "backing up") as tick, ThreadPoolExecutor(jobs) as pool:
        futures = {pool.submit(one, s): s for s in todo}
        left = dict(futures)
        for n, future in enumerate(interrupts.harvest(futures), start=1):
            results.append(future.result())
            del left[future]
            tick(n, len(futures))
    for s in left.values():  # cancelled by an interrupt: in the snapshot as not backed up
        results.append(RepoBackup(s.relative, s.root, "failed", message=CANCELLED))
    results.sort(key=lambda r: r.repository)
    for r in results:
        for warning in r.warnings:
            app.warn(warning)
        if r.outcome == "failed" and r.message != CANCELLED:
            app.err.print(f"custode: {r.repository}: {r.message}", markup=False, highlight=False)
    return results


def _report(
    app: App,
    store: Store,
    snap: Snapshot | None,
    results: list[RepoBackup],
    *,
    seconds: float,
    as_json: bool,
    recipients: str,
) -> None:
    counts = {o: sum(1 for r in results if r.outcome == o) for o in ("new", "unchanged", "failed")}
    added = sum(r.bytes_added for r in results)
    summary = {
        "snapshot": snap.snapshot_id if snap else None,
        "store": store.url,
        "host": snap.host if snap else None,
        "repositories": len(results),
        **counts,
        "full": sum(1 for r in results if r.full and r.outcome == "new"),
        "bytes_added": added,
        "seconds": round(seconds, 3),
    }
    started = datetime.now(UTC).isoformat()
    rows = [
        RepositoryResult(
            r.repository,
            r.root,
            "backup",
            "failed" if r.outcome == "failed" else "ok",
            started,
            r.seconds,
            {
                "snapshot": summary["snapshot"],
                "change": r.outcome,
                "backup_id": r.backup_id,
                "full": r.full,
                "bytes_added": r.bytes_added,
                "message": r.message,
                # what the next backup compares to skip an unchanged repository unread
                "store": store.url,
                "host": snap.host if snap else None,
                "manifest": r.manifest_key,
                "fingerprint": r.fingerprint,
                "stamp": r.stamp,
                "recipients": recipients,
            },
        )
        for r in results
    ]
    bc.record(app, "backup", rows, "partial" if counts["failed"] else "ok", summary)
    bc.audit(app, "backup", store.url, summary)
    if as_json:
        repos = [
            {
                "repository": r.repository,
                "root": r.root,
                "outcome": r.outcome,
                "full": r.full,
                "bytes_added": r.bytes_added,
                "seconds": round(r.seconds, 3),
                "backup_id": r.backup_id,
                "message": r.message,
            }
            for r in results
        ]
        app.print_json({"summary": summary, "repositories": repos})
        return
    name = f"snapshot {snap.snapshot_id}" if snap else "no snapshot"
    app.out.print(
        f"{name}: {counts['new']} new, {counts['unchanged']} unchanged, {counts['failed']} "
        f"failed; {format_bytes(added)} added to {store.url} in {seconds:.1f}s",
        markup=False,
        highlight=False,
    )


def _history(app: App) -> dict[tuple[str, str], TaskHistory]:
    try:
        with StateDB.open(app.state_dir() / "state.db") as db:
            return db.task_history("backup")
    except CustodeError as exc:
        app.warn(f"history unreadable, reading every repository afresh: {exc}")
        return {}
