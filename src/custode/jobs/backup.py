"""The fleet backup: every repository a scan found, backed up into the store as one
snapshot; per repository what was done (new, unchanged, failed) and why, bytes added and
seconds taken.

Which repositories are unchanged since their last backup is decided here, from the
history row this job wrote for each then (its fingerprint of refs and object files, the
kept files' stamp, the store, host and keys): an unchanged one is not read at all. The
rest go to ``backup/engine.py``, in a pool (first, those starting a chain are compared with
the fleet for shared history: the backup's own scan); on SIGINT or SIGTERM no further one starts
(``custode.interrupts``) and those not started are in the snapshot as not backed up.
Under the store's shared lock, with this machine's lineage checks (``backup/guard.py``:
another machine under the same host name is refused; a store that went back in time is
backed up anyway, with a warning). The history gets a ``backup`` run with a row per
repository, the audit log an entry.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from custode import interrupts
from custode.backup import extras
from custode.backup.bundle import capture
from custode.backup.catalog import load
from custode.backup.crypto import Recipient
from custode.backup.engine import BackupSettings, RepoBackup, backup_repository, write_snapshot
from custode.backup.guard import after_backup, before_backup
from custode.backup.locks import store_lock
from custode.backup.manifest import Snapshot, repo_prefix
from custode.backup.plan import Known, Sharing, share
from custode.backup.refscache import REFS_CACHE, RefsCache
from custode.backup.store import Store
from custode.base.units import counted
from custode.errors import CustodeError, RepositoryError
from custode.git.runner import Git
from custode.jobs import backupsetup
from custode.jobs import record as history
from custode.records.state import RepositoryResult, StateDB, TaskHistory
from custode.scan.repostate import RepoState

Say = Callable[[str], None]

CANCELLED = "not backed up: the backup was interrupted before it started"

#: what the history row of a backup must still match for the repository to be unchanged
_COMPARED = {
    "store": "the store",
    "host": "the host name",
    "fingerprint": "its refs or object files",
    "stamp": "its kept files (config, hooks, info)",
    "recipients": "the keys backups are encrypted to",
}


def _quiet(message: str) -> None:
    pass


def _no_progress(done: int, total: int) -> None:
    pass


@dataclass(frozen=True)
class Progress:
    """Where a backup is, for a display (the CLI draws it; this layer draws nothing):
    ``phase`` is "comparing" while repositories starting a chain are read for history
    they share with the fleet (``done``/``total`` of those), then "backing up"
    (``done``/``total`` repositories); ``bytes_added`` by the repositories done, and
    ``current``: the repositories being worked on now."""

    phase: str
    done: int
    total: int
    bytes_added: int = 0
    current: tuple[str, ...] = ()


def _no_status(progress: Progress) -> None:
    pass


@dataclass(frozen=True)
class BackupJob:
    """What to back up, into where, encrypted to whom."""

    store: Store
    host: str
    recipients: Sequence[Recipient]
    state_dir: Path  # custode's own: the store's lineage, the history, the audit log
    git: Git
    scratch: Path  # where bundles are built (a run directory is made and removed in it)
    full_every: int = 30
    full_after: float = 30 * 86400.0
    full: bool = False  # a new chain for every repository, changed or not
    jobs: int = 1


@dataclass(frozen=True)
class RepositoryBackup:
    """What the backup did to one repository, and why."""

    repository: str
    root: str
    outcome: str  # "new", "unchanged" or "failed"
    reason: str  # why it was read or not, or why it failed
    full: bool = False  # a new chain (a full bundle)
    method: str = ""  # a new bundle's pack: "copy" or "generate" (reason says why)
    action: str = ""  # what was decided (backup/decide.py), as --dry-run plans it
    decided: str = ""  # why, with numbers
    bytes_added: int = 0
    files_added: int = 0
    seconds: float = 0.0
    backup_id: str | None = None
    message: str = ""  # the failure, as the snapshot records it
    warnings: tuple[str, ...] = ()
    manifest_key: str = ""
    fingerprint: str = ""
    stamp: str = ""

    @property
    def cancelled(self) -> bool:
        """Not started: an interrupt came first."""
        return self.message == CANCELLED


@dataclass(frozen=True)
class BackupResult:
    """What a backup did."""

    store: str
    host: str
    snapshot: Snapshot | None  # None: no repository could be backed up
    repositories: list[RepositoryBackup]  # by relative path
    recipients: str  # the digest of the keys
    seconds: float
    interrupted: bool

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.repositories if r.outcome == outcome)

    @property
    def failed(self) -> list[RepositoryBackup]:
        return [r for r in self.repositories if r.outcome == "failed"]

    @property
    def bytes_added(self) -> int:
        return sum(r.bytes_added for r in self.repositories)

    @property
    def cancelled(self) -> int:
        return sum(1 for r in self.repositories if r.cancelled)

    @property
    def stopped(self) -> int:
        """Started, then stopped by the interrupt."""
        return sum(1 for r in self.failed if r.message.startswith("interrupted"))

    def summary(self) -> dict[str, Any]:
        """The history's and audit log's record of it (and ``--json``'s summary)."""
        return {
            "snapshot": self.snapshot.snapshot_id if self.snapshot else None,
            "store": self.store,
            "host": self.snapshot.host if self.snapshot else None,
            "repositories": len(self.repositories),
            **{o: self.count(o) for o in ("new", "unchanged", "failed")},
            "full": sum(1 for r in self.repositories if r.full and r.outcome == "new"),
            "bytes_added": self.bytes_added,
            "seconds": round(self.seconds, 3),
        }

    def failure(self) -> RepositoryError | None:
        """Repositories that could not be backed up (exit status 3); None when none."""
        if not self.failed:
            return None
        return RepositoryError(
            f"backup failed for {len(self.failed)} of "
            f"{counted(len(self.repositories), 'repository', 'repositories')}; see the "
            "messages above (the others are in the snapshot)"
        )


def backup(
    job: BackupJob,
    states: Sequence[RepoState],
    *,
    started: float | None = None,
    warn: Say = _quiet,
    notice: Say = _quiet,
    progress: Callable[[int, int], None] = _no_progress,
    status: Callable[[Progress], None] = _no_status,
) -> BackupResult:
    """Back up ``states`` (a scan's repositories) as one snapshot. ``started``: when the
    job began (``time.monotonic()``, before its scan), else now. ``warn``: what went wrong
    beside the backup; ``notice``: each repository that failed (``<repository>:
    <why>``); ``progress``: (done, total) repositories; ``status``: the same with the
    phase, bytes added and the repositories in hand (:class:`Progress`)."""
    started = time.monotonic() if started is None else started
    store, host = job.store, job.host
    digest = backupsetup.recipients_digest(job.recipients)
    created = datetime.now(UTC)
    with (
        store_lock(store, host, exclusive=False, purpose="custode backup"),
        backupsetup.scratch(job.scratch) as scratch,
    ):
        # another machine under this host name is refused; this one numbers its snapshots
        ticket = before_backup(job.state_dir, store.url, host, load(store, host), warn)
        cache = RefsCache(job.state_dir / REFS_CACHE, store.url, host)
        settings = BackupSettings(host, job.recipients, scratch, job.full_every,
                                  job.full_after, job.full, cache)  # fmt: skip
        done = _run(job, settings, states, digest, warn=warn, progress=progress,
                    status=status)  # fmt: skip
        for d, _ in done:
            for warning in d.warnings:
                warn(warning)
            if d.outcome == "failed" and d.message != CANCELLED:
                notice(f"{d.repository}: {d.message}")
        snap = write_snapshot(store, host, created, [d for d, _ in done], seq=ticket.seq,
                              machine=ticket.machine)  # fmt: skip
    if snap is not None:
        after_backup(job.state_dir, store.url, host, snap, ticket=ticket, warn=warn)
    result = BackupResult(
        store=store.url,
        host=host,
        snapshot=snap,
        repositories=[_outcome(d, why) for d, why in done],
        recipients=digest,
        seconds=time.monotonic() - started,
        interrupted=interrupts.requested(),
    )
    summary = result.summary()
    overall = "partial" if result.failed else "ok"
    history.results(job.state_dir, "backup", _rows(result), overall, summary, warn)
    history.audit(job.state_dir, "backup", store.url, summary, warn)
    return result


def why_read(before: TaskHistory | None, known: dict[str, str], *, full: bool) -> str:
    """Why a repository must be read, given the history's record of its last backup
    (``before``) and what it is now (``known``: store, host, fingerprint, stamp,
    recipients); "" when nothing changed since and its last backup can stand."""
    if full:
        return "a new chain was asked for (--full)"
    if before is None:
        return "no earlier backup in the history"
    changed = [what for k, what in _COMPARED.items() if before.details.get(k) != known[k]]
    reasons = (
        (before.outcome != "ok", "its last backup failed"),
        (not known["fingerprint"], "no fingerprint to compare it by"),
        (bool(changed), f"{', '.join(changed)} changed since its last backup"),
        (not before.details.get("manifest"), "its last backup is not recorded"),
    )
    return next((why for wrong, why in reasons if wrong), "")


def _run(
    job: BackupJob, settings: BackupSettings, states: Sequence[RepoState], digest: str, *,
    warn: Say, progress: Callable[[int, int], None], status: Callable[[Progress], None],
) -> list[tuple[RepoBackup, str]]:  # fmt: skip
    """Each repository's backup with its reason, by relative path."""
    results, todo, seen = _triage(states)
    total, n, added = len(todo), 0, 0
    progress(0, total)  # the total is known before any repository is done
    status(Progress("backing up", 0, total))
    before = _history(job.state_dir, warn)
    sharing = _sharing(job, settings, todo, before, warn, status=status)
    done: dict[str, RepoBackup] = {}  # by relative path: a base's backup, for its forks
    busy: set[str] = set()  # the repositories being backed up now, for the display
    lock = threading.Lock()

    def report() -> None:
        with lock:
            current = tuple(sorted(busy))
        status(Progress("backing up", n, total, added, current))

    def one(s: RepoState) -> tuple[RepoBackup, str]:
        with lock:
            busy.add(s.relative)
        report()
        try:
            return backed_up(s)
        finally:
            with lock:
                busy.discard(s.relative)

    def backed_up(s: RepoState) -> tuple[RepoBackup, str]:
        if interrupts.requested():  # taken from the queue before the loop could cancel it
            return RepoBackup(s.relative, s.root, "failed", message=CANCELLED), CANCELLED
        base = sharing.get(s.relative)
        if base is not None:  # its latest backup: written in the first wave, or earlier
            row = before.get((seen[base.base], base.base)) if base.base in seen else None
            key = done[base.base].manifest_key if base.base in done else ""
            key = key or (str(row.details.get("manifest") or "") if row else "")
            base = replace(base, key=key) if key else None
        return _one(job, settings, s, before.get((s.root, s.relative)), digest, base)

    # bases (and every repository sharing nothing) first, then the forks built on them
    waves = [[s for s in todo if s.relative not in sharing],
             [s for s in todo if s.relative in sharing]]  # fmt: skip
    report()
    left: dict[Future[tuple[RepoBackup, str]], RepoState] = {}
    with ThreadPoolExecutor(job.jobs) as pool:
        for wave in waves:
            futures = {pool.submit(one, s): s for s in wave}
            left.update(futures)
            for future in interrupts.harvest(futures):
                result = future.result()
                results.append(result)
                done[result[0].repository] = result[0]
                del left[future]
                n += 1
                added += result[0].bytes_added
                progress(n, total)
                report()
    for s in left.values():  # cancelled by an interrupt: in the snapshot as not backed up
        results.append((RepoBackup(s.relative, s.root, "failed", message=CANCELLED), CANCELLED))
    results.sort(key=lambda r: r[0].repository)
    return results


def _triage(
    states: Sequence[RepoState],
) -> tuple[list[tuple[RepoBackup, str]], list[RepoState], dict[str, str]]:
    """The repositories that cannot be backed up (with why), those to back up, and the
    root of each of those by relative path."""
    results: list[tuple[RepoBackup, str]] = []
    todo: list[RepoState] = []
    seen: dict[str, str] = {}
    for s in states:
        if s.problems:
            why = "; ".join(p for p in s.problems)
            results.append((RepoBackup(s.relative, s.root, "failed", message=why), why))
        elif s.relative in seen:
            why = (
                f"another root ({seen[s.relative]}) holds a repository at the same relative "
                "path; back the roots up under different backup.host names"
            )
            results.append((RepoBackup(s.relative, s.root, "failed", message=why), why))
        else:
            seen[s.relative] = s.root
            todo.append(s)
    return results, todo, seen


def _sharing(
    job: BackupJob, settings: BackupSettings, todo: Sequence[RepoState],
    before: dict[tuple[str, str], TaskHistory], warn: Say, *,
    status: Callable[[Progress], None] = _no_status,
) -> dict[str, Sharing]:  # fmt: skip
    """Which repositories starting a chain tonight build on another's backup
    (``backup/plan.py``): those new to this store (no history row), or all with
    ``--full``. What the others hold is known from this machine's refs cache."""
    starters = [s for s in todo if job.full or before.get((s.root, s.relative)) is None]
    if not starters or settings.refs_cache is None or len(todo) < 2:
        return {}
    names = {s.relative for s in todo}
    known: dict[str, Known] = {}
    for entry in settings.refs_cache.entries():
        if entry.repository in names:
            known[entry.repository] = Known(entry.repository, frozenset(entry.refs.tips()),
                                            is_fork=bool(entry.base))  # fmt: skip
    objects = {os.path.realpath(os.path.join(s.git_dir, "objects")): s.relative for s in todo}
    objects = {**objects, **{os.path.normpath(os.path.join(s.git_dir, "objects")): s.relative
                             for s in todo}}  # fmt: skip
    for nr, s in enumerate(starters):
        status(Progress("comparing", nr, len(starters), current=(s.relative,)))
        try:
            tips = frozenset(capture(job.git, Path(s.git_dir)).tips())
        except CustodeError as exc:  # its own backup says what is wrong
            warn(f"{s.relative}: not compared with the fleet for shared history: {exc}")
            continue
        named = [p for a in s.alternates for p in (os.path.normpath(a), os.path.realpath(a))]
        borrows = next((objects[p] for p in named if p in objects), "")
        known[s.relative] = Known(s.relative, tips, borrows, starts_chain=True)
    return share(known)


def _one(  # noqa: PLR0917
    job: BackupJob, settings: BackupSettings, s: RepoState, before: TaskHistory | None,
    digest: str, base: Sharing | None = None,
) -> tuple[RepoBackup, str]:  # fmt: skip
    """Back up one repository, unread when the history shows nothing changed since its
    last backup (whose manifest is still stored)."""
    started = time.monotonic()
    stamp = extras.stamp(Path(s.git_dir))
    known = {"store": job.store.url, "host": job.host, "fingerprint": s.fingerprint,
             "stamp": stamp, "recipients": digest}  # fmt: skip
    why = why_read(before, known, full=job.full)
    if not why:
        key = str(before.details["manifest"]) if before else ""
        if job.store.size(key) is not None:  # nothing changed since: no git, no read
            done = RepoBackup(s.relative, s.root, "unchanged", manifest_key=key,
                              fingerprint=s.fingerprint, stamp=stamp,
                              seconds=time.monotonic() - started)  # fmt: skip
            return done, f"not read: nothing changed since backup {done.backup_id}"
        why = f"its last backup's manifest {key} is no longer in the store"
    manifests = [k for k in job.store.list(repo_prefix(job.host, s.relative))
                 if k.endswith("/manifest.json")]  # fmt: skip
    done = backup_repository(
        job.store, job.git, settings, repository=s.relative, root=s.root,
        git_dir=Path(s.git_dir), bare=s.bare, object_format=s.object_format,
        manifests=manifests, base=base,
    )  # fmt: skip
    done.fingerprint, done.stamp = s.fingerprint, stamp
    if done.outcome == "failed":
        return done, done.message
    if done.outcome == "unchanged":
        return done, f"{why}; read: the same refs and files as backup {done.backup_id}"
    stored = "a full bundle (a new chain)" if done.full else "what is new"
    if done.base:
        stored = f"a new chain on {done.base}'s backup ({done.base_why})"
    how = f", {'copied' if done.method == 'copy' else 'packed'}: {done.method_why}"
    return done, f"{why}; {stored} stored{how if done.method else ''}"


def _outcome(d: RepoBackup, why: str) -> RepositoryBackup:
    return RepositoryBackup(
        repository=d.repository,
        root=d.root,
        outcome=d.outcome,
        reason=why,
        full=d.full,
        method=d.method,
        action=d.action or ("unchanged" if d.outcome == "unchanged" else ""),
        decided=d.decision.why if d.decision else "",
        bytes_added=d.bytes_added,
        files_added=d.files_added,
        seconds=d.seconds,
        backup_id=d.backup_id,
        message=d.message,
        warnings=tuple(d.warnings),
        manifest_key=d.manifest_key,
        fingerprint=d.fingerprint,
        stamp=d.stamp,
    )


def _rows(result: BackupResult) -> list[RepositoryResult]:
    """The history's row per repository: what the next backup compares (``why_read``)."""
    started = datetime.now(UTC).isoformat()
    snapshot = result.snapshot.snapshot_id if result.snapshot else None
    host = result.snapshot.host if result.snapshot else None
    return [
        RepositoryResult(
            r.repository,
            r.root,
            "backup",
            "failed" if r.outcome == "failed" else "ok",
            started,
            r.seconds,
            {
                "snapshot": snapshot,
                "change": r.outcome,
                "backup_id": r.backup_id,
                "full": r.full,
                "bytes_added": r.bytes_added,
                "message": r.message,
                # what the next backup compares to skip an unchanged repository unread
                "store": result.store,
                "host": host,
                "manifest": r.manifest_key,
                "fingerprint": r.fingerprint,
                "stamp": r.stamp,
                "recipients": result.recipients,
            },
        )
        for r in result.repositories
    ]


def _history(state_dir: Path, warn: Say) -> dict[tuple[str, str], TaskHistory]:
    try:
        with StateDB.open(history.database(state_dir)) as db:
            return db.task_history("backup")
    except CustodeError as exc:
        warn(f"history unreadable, reading every repository afresh: {exc}")
        return {}
