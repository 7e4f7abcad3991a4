"""``custode restore``: repositories back from a snapshot, each at its relative path."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import click

from custode import interrupts
from custode.backup import restorejournal
from custode.backup.catalog import Catalog, choose, load
from custode.backup.engine import read_manifest
from custode.backup.guard import check_restore
from custode.backup.manifest import Entry
from custode.backup.restore import Restored, destination, occupied, restore_repository
from custode.base.pathtext import display
from custode.base.units import format_bytes
from custode.cli import backup_common as bc
from custode.cli.app import App
from custode.cli.params import SNAPSHOT_OR_TIME
from custode.errors import EXIT_CODES_HELP, CustodeError, RepositoryError, UsageError
from custode.git.runner import Git
from custode.records.state import RepositoryResult


@click.command(epilog=EXIT_CODES_HELP)
@click.argument("repositories", nargs=-1)
@bc.store_option
@bc.host_option
@bc.identity_option
@click.option(
    "--to",
    "target",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory to restore into; each repository goes to its path relative to "
    "its root below it.",
)
@click.option(
    "--at",
    "at",
    type=SNAPSHOT_OR_TIME,
    metavar="SNAPSHOT|TIME",
    help="A snapshot id (or prefix), or the latest snapshot at or before a time "
    "such as 2026-11-20 or 2026-11-20T14:00 [default: the latest; required when the "
    "store went back in time].",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace repositories that exist at the destination (of a working copy only its "
    ".git: the files beside it are kept).",
)
@click.option(
    "--jobs",
    type=click.IntRange(1, 64),
    default=None,
    help="Repositories restored at once [default: backup.jobs, 0 = one per CPU].",
)
@bc.json_option
@click.pass_obj
def restore(  # noqa: PLR0917
    app: App,
    repositories: tuple[str, ...],
    store_url: str | None,
    host_name: str | None,
    identity_path: Path | None,
    target: Path,
    at: str | None,
    force: bool,
    jobs: int | None,
    as_json: bool,
) -> None:
    """Restore REPOSITORIES (all when none is named) from a snapshot into --to.

    Each repository is assembled beside its destination and moved into place only when
    complete: an error never leaves a half-restored repository behind.
    """
    app.stop_on_signals()
    started = time.monotonic()
    target = target.absolute()
    keys = bc.identities(app, identity_path)
    store = bc.open_app_store(app, store_url, create=False)
    host = bc.host(app, host_name)
    journal = None if force else restorejournal.read(target)
    catalog = load(store, host, app.warn)
    if journal is not None:
        at = _resume(journal, catalog, at, store.url, host)
    elif at is None:  # the "latest" of a store that went back in time is old data
        check_restore(app.state_dir(), store.url, host, catalog, app.warn)
    snap = choose(catalog, at, store.url, host)
    entries = _select(snap.entries, repositories, snap.snapshot_id)
    if entries:
        bc.check_identity(app, store, entries[0].manifest, keys, identity_path)
    dests = {e.repository: destination(target, e.repository) for e in entries}
    if journal is None:
        journal = restorejournal.Journal(target, store.url, host, snap.snapshot_id)
    kept, todo = _split(app, journal, entries, dests, force=force)
    git = Git.from_config(app.config.git)
    git.check_version()

    def one(e: Entry) -> Restored:
        manifest = read_manifest(store, e.manifest)
        return restore_repository(store, manifest, keys, git, dests[e.repository], force=force)

    remembered = _Remember(app, journal)
    done, failed = _restore_all(app, todo, one, bc.jobs(app, jobs), remembered)
    if len(done) == len(todo) and not interrupts.requested():
        journal.remove()  # every repository asked for is in place
    seconds = time.monotonic() - started
    size = sum(r.bytes for r in done)
    summary = {
        "snapshot": snap.snapshot_id,
        "host": host,
        "store": store.url,
        "to": str(target),
        "restored": len(done),
        "already_restored": len(kept),
        "failed": len(failed),
        "bytes": size,
        "seconds": round(seconds, 3),
    }
    now = datetime.now(UTC).isoformat()
    rows = [
        RepositoryResult(
            r.repository,
            str(target),
            "restore",
            "ok",
            now,
            r.seconds,
            {"snapshot": snap.snapshot_id},
        )
        for r in done
    ]
    rows += [
        RepositoryResult(
            name,
            str(target),
            "restore",
            "failed",
            now,
            0.0,
            {"snapshot": snap.snapshot_id, "message": msg},
        )
        for name, msg in failed.items()
    ]
    bc.record(app, "restore", rows, "partial" if failed else "ok", summary)
    bc.audit(app, "restore", str(target), summary)
    if as_json:
        app.print_json(
            {
                "summary": summary,
                "failed": failed,
                "repositories": [
                    {
                        "repository": r.repository,
                        "path": str(r.path),
                        "seconds": round(r.seconds, 3),
                    }
                    for r in done
                ],
                "already_restored": [e.repository for e in kept],
            }
        )
    else:
        app.out.print(
            f"restored {_count(len(done))} from snapshot {snap.snapshot_id} into {target} "
            f"({format_bytes(size)} read) in {seconds:.1f}s"
            + (f"; {len(kept)} were already in place" if kept else ""),
            markup=False,
            highlight=False,
        )
    _notes(app, done)
    _raise_if_interrupted(len(todo), len(done), failed, remembered.working)
    if failed:
        again = (
            "run the same custode restore again to retry them"
            if remembered.working
            else "nothing was left in their place"
        )
        raise RepositoryError(
            f"{len(failed)} of {len(entries)} repositories were not restored; see the "
            f"messages above ({again})"
        )


def _split(
    app: App, journal: restorejournal.Journal, entries: list[Entry], dests: dict[str, Path],
    *, force: bool,
) -> tuple[list[Entry], list[Entry]]:  # fmt: skip
    """The entries an unfinished restore already put in place, and those still to do
    (refused when one's destination is taken, unless ``force``)."""
    kept = [
        e for e in entries
        if journal.finished(e.repository, e.backup_id) and occupied(dests[e.repository])
    ]  # fmt: skip
    todo = [e for e in entries if e not in kept]
    if kept:
        app.err.print(
            f"custode: finishing the unfinished restore of snapshot {journal.snapshot} into "
            f"{journal.target}: {_count(len(kept))} already in place are kept, {len(todo)} "
            "to go (--force restores them all again)",
            markup=False,
            highlight=False,
        )
    busy = [str(dests[e.repository]) for e in todo if occupied(dests[e.repository])]
    if busy and not force:
        raise UsageError(
            f"{busy[0]} is not empty{f' (and {len(busy) - 1} more)' if len(busy) > 1 else ''}; "
            "restore into an empty --to, or pass --force to replace"
        )
    return kept, todo


def _resume(
    journal: restorejournal.Journal, catalog: Catalog, at: str | None, store: str, host: str
) -> str:
    """The snapshot to restore when ``--to`` holds an unfinished restore: that one's, so
    the same command finishes it; another store, host or ``--at`` is refused."""
    way = f"finish it with --at {journal.snapshot}, or pass --force to replace it"
    if (journal.store, journal.host) != (store, host):
        raise UsageError(
            f"{journal.target} holds an unfinished restore from host {journal.host} of "
            f"{journal.store}; restore into another --to, or pass --force to replace it"
        )
    if at is not None and choose(catalog, at, store, host).snapshot_id != journal.snapshot:
        raise UsageError(
            f"{journal.target} holds an unfinished restore of snapshot {journal.snapshot}; {way}"
        )
    if all(s.snapshot_id != journal.snapshot for s in catalog.snapshots):
        raise UsageError(
            f"{journal.target} holds an unfinished restore of snapshot {journal.snapshot}, "
            "which the store no longer holds (forgotten, or unreadable: see custode "
            "snapshots); pass --force to restore another snapshot over it"
        )
    return journal.snapshot


class _Remember:
    """Marks each restored repository in the journal; a journal that cannot be written
    is said once and the restore goes on (only finishing it later needs --force)."""

    def __init__(self, app: App, journal: restorejournal.Journal) -> None:
        self.app, self.journal, self.working = app, journal, True

    def __call__(self, e: Entry) -> None:
        if not self.working:
            return
        try:
            self.journal.mark(e.repository, e.backup_id)
        except OSError as exc:
            self.working = False
            self.app.warn(
                f"cannot record progress in {self.journal.path} ({exc.strerror or exc}); "
                "the restore goes on, but finishing it after an interruption will take --force"
            )


def _count(n: int) -> str:
    return f"{n} repositor{'y' if n == 1 else 'ies'}"


def _restore_all(
    app: App, entries: list[Entry], one: Callable[[Entry], Restored], jobs: int,
    remember: Callable[[Entry], None],
) -> tuple[list[Restored], dict[str, str]]:  # fmt: skip
    """Restore in waves; on SIGINT or SIGTERM no further one starts (``custode.interrupts``)."""
    done: list[Restored] = []
    failed: dict[str, str] = {}
    n = 0
    with bc.progress_bar(app, "restoring") as tick, ThreadPoolExecutor(jobs) as pool:
        for wave in _waves(entries):  # a repository inside another comes after it
            if interrupts.requested():
                break
            futures = {pool.submit(one, e): e for e in wave}
            for future in interrupts.harvest(futures):
                e = futures[future]
                try:
                    done.append(future.result())
                    remember(e)
                except CustodeError as exc:
                    failed[e.repository] = exc.message
                    app.err.print(
                        f"custode: {e.repository}: {exc.message}", markup=False, highlight=False
                    )
                n += 1
                tick(n, len(entries))
    return done, failed


def _raise_if_interrupted(total: int, done: int, failed: dict[str, str], journal: bool) -> None:
    stopped = sum(1 for m in failed.values() if m.startswith("interrupted"))
    if interrupts.requested():
        cancelled = total - done - len(failed)
        again = (  # the journal in --to lets the same command skip the finished ones
            "run the same custode restore again for the rest (the finished ones are kept)"
            if journal
            else "run the same custode restore again with --force for the rest (the "
            "finished ones are replaced by the same data)"
        )
        raise interrupts.Interrupted(
            interrupts.summary("restore", done, stopped, cancelled, again=again)
        )


def _notes(app: App, done: list[Restored]) -> None:
    """What the owner of each restored working copy still has to do."""
    in_place = [r for r in done if r.in_place]
    if in_place:
        app.err.print(
            f"custode: {len(in_place)} working copies had only their .git replaced; their "
            f"files were left as they were: run git reset (not --hard) to rebuild the index, "
            f"e.g. git -C {in_place[0].path} reset",
            markup=False,
            highlight=False,
        )
    worktrees = [r for r in done if not r.bare and not r.in_place]
    if worktrees:
        app.err.print(
            f"custode: {len(worktrees)} working copies were restored without checking files "
            f"out (custode never runs a repository's filters); run git reset --hard in each, "
            f"e.g. git -C {worktrees[0].path} reset --hard",
            markup=False,
            highlight=False,
        )


def _select(entries: tuple[Entry, ...], names: tuple[str, ...], snapshot: str) -> list[Entry]:
    if not names:
        return list(entries)
    # a name that is not UTF-8 may also be given as shown (caf\xe9.git, see pathtext)
    known = {display(e.repository): e for e in entries} | {e.repository: e for e in entries}
    missing = [n for n in names if n.strip("/") not in known]
    if missing:
        raise UsageError(
            f"snapshot {snapshot} holds no repository {missing[0]!r}; "
            "name repositories by their path relative to their root (see custode snapshots --json)"
        )
    return [known[n.strip("/")] for n in names]


def _waves(entries: list[Entry]) -> list[list[Entry]]:
    """Entries grouped so that one nested in another's path (a submodule's git dir in its
    superproject's .git, a working copy inside another's work tree) is restored after it:
    the outer repository's restore may replace its destination (a bare one; of a working
    copy only its .git)."""
    names = {e.repository for e in entries}

    def depth(name: str) -> int:
        parts = name.split("/")
        return sum(1 for i in range(1, len(parts)) if "/".join(parts[:i]) in names)

    waves: dict[int, list[Entry]] = {}
    for e in entries:
        waves.setdefault(depth(e.repository), []).append(e)
    return [waves[k] for k in sorted(waves)]
