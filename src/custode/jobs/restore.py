"""The fleet restore: repositories back from one snapshot, each at its path relative to
its root below a target directory; what was restored (with its path, time and bytes),
what an unfinished restore had already put in place, what failed and why.

Each repository is assembled aside and moved into place whole (``backup/restore.py``).
An interrupted or partly failed restore is finished by the same call: the journal in the
target (``backup/restorejournal.py``) names what is in place, and only the rest is done;
``force`` replaces everything. With no snapshot named, the latest of a store that went
back in time is refused (``backup/guard.py``). Repositories nested in another's path are
restored after it, in waves; on SIGINT or SIGTERM no further one starts
(``custode.interrupts``). The history gets a ``restore`` run with a row per repository,
the audit log an entry.

Asked to (``borrow``), a pool's member or a fork whose base repository this restore puts
in place too is restored as a borrower of it (``backup/borrowing.py``): after it, with only
its own packs and ``objects/info/alternates``. Any other, or one whose base failed, is
restored complete and the result says why.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from custode import interrupts
from custode.backup import borrowing, restorejournal
from custode.backup.borrowing import Borrowing
from custode.backup.catalog import Catalog, choose, load
from custode.backup.chain import Manifests, read_manifest  # (engine.read_manifest calls it)
from custode.backup.crypto import Identity
from custode.backup.guard import check_restore
from custode.backup.manifest import Entry, RepoManifest, repo_prefix
from custode.backup.restore import Restored, destination, occupied, restore_repository
from custode.backup.store import Store
from custode.backup.streams import decrypt_to
from custode.backup.target import check_target
from custode.base.pathtext import display
from custode.base.units import counted
from custode.errors import CustodeError, IntegrityError, UsageError
from custode.git.runner import Git
from custode.jobs import record as history
from custode.records.state import RepositoryResult

Say = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


def _no_progress(done: int, total: int) -> None:
    pass


@dataclass(frozen=True)
class RestoreJob:
    """What to restore, from where, into where."""

    store: Store
    host: str
    identities: Sequence[Identity]
    identity_file: Path  # named when it cannot decrypt the backups
    target: Path  # absolute
    state_dir: Path  # custode's own: the store's lineage, the history, the audit log
    git: Git
    at: str | None = None  # a snapshot id or prefix, or a time; None: the latest
    repositories: tuple[str, ...] = ()  # relative paths (as stored or as shown); (): all
    force: bool = False  # replace what is at the destination; ignore an unfinished restore
    jobs: int = 1
    borrow: bool = False  # forks and pool members borrow from their base restored with them


@dataclass(frozen=True)
class RestoreResult:
    """What a restore did."""

    snapshot: str
    host: str
    store: str
    target: Path
    restored: list[Restored]
    already_restored: list[str]  # put in place by the unfinished restore this one finished
    failed: dict[str, str]  # repository -> message
    to_do: int  # repositories this restore set out to restore
    seconds: float
    resumable: bool  # the journal holds the progress: the same call finishes the rest
    interrupted: bool
    # with ``borrow``: the repositories restored as borrowers, and those restored complete
    # although their backup builds on another repository's (repository -> why)
    borrowed: dict[str, Borrowing] = field(default_factory=dict)
    complete: dict[str, str] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.restored)

    @property
    def selected(self) -> int:
        """The repositories asked for, in place before or not."""
        return len(self.already_restored) + self.to_do

    def summary(self) -> dict[str, Any]:
        """The history's and audit log's record of it (and ``--json``'s summary)."""
        return {
            "snapshot": self.snapshot,
            "host": self.host,
            "store": self.store,
            "to": str(self.target),
            "restored": len(self.restored),
            "already_restored": len(self.already_restored),
            "failed": len(self.failed),
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
        } | ({"borrowers": len(self.borrowed)} if self.borrowed else {})


def restore(
    job: RestoreJob,
    *,
    warn: Say = _quiet,
    notice: Say = _quiet,
    progress: Callable[[int, int], None] = _no_progress,
) -> RestoreResult:
    """Restore ``job``'s repositories. ``warn``: what went wrong beside the restore (a
    damaged snapshot, a journal that cannot be written); ``notice``: what the person
    running it should see as it happens (an unfinished restore being finished, each
    repository that failed); ``progress``: (done, total) repositories."""
    started = time.monotonic()
    store, host, target = job.store, job.host, job.target
    check_target(target)  # before anything reads or writes there
    journal = None if job.force else restorejournal.read(target)
    catalog = load(store, host, warn)
    at = job.at
    if journal is not None:
        at = _resume(journal, catalog, at, store.url, host)
    elif at is None:  # the "latest" of a store that went back in time is old data
        check_restore(job.state_dir, store.url, host, catalog, warn)
    snap = choose(catalog, at, store.url, host)
    entries = _select(snap.entries, job.repositories, snap.snapshot_id)
    if entries:
        check_identity(store, entries[0].manifest, job.identities, job.identity_file)
    dests = {e.repository: destination(target, e.repository) for e in entries}
    if journal is None:
        journal = restorejournal.Journal(target, store.url, host, snap.snapshot_id)
    kept, todo = _split(journal, entries, dests, force=job.force, notice=notice)
    job.git.check_version()
    lend = _Lender(job, snap.entries, kept=kept, todo=todo, dests=dests) if job.borrow else None

    def one(e: Entry) -> Restored:
        if lend is not None:
            return lend.restore(e)
        manifest = read_manifest(store, e.manifest)
        return restore_repository(
            store, manifest, job.identities, job.git, dests[e.repository], force=job.force
        )

    remembered = _Remember(journal, warn)
    done, failed = _restore_all(
        todo, one, job.jobs, remember=remembered, notice=notice, progress=progress,
        borrowers=lend.borrowers if lend is not None else {},
    )  # fmt: skip
    names = {r.repository for r in done}
    interrupted = interrupts.requested()
    if len(done) == len(todo) and not interrupted:
        journal.remove()  # every repository asked for is in place
    result = RestoreResult(
        snapshot=snap.snapshot_id,
        host=host,
        store=store.url,
        target=target,
        restored=done,
        already_restored=[e.repository for e in kept],
        failed=failed,
        to_do=len(todo),
        seconds=time.monotonic() - started,
        resumable=remembered.working,
        interrupted=interrupted,
        borrowed={} if lend is None else {r: b for r, b in lend.borrowed.items() if r in names},
        complete={} if lend is None else {r: w for r, w in lend.complete.items() if r in names},
    )
    summary = result.summary()
    history.results(
        job.state_dir, "restore", _rows(result), "partial" if failed else "ok", summary, warn
    )
    history.audit(job.state_dir, "restore", str(target), summary, warn)
    return result


def _rows(result: RestoreResult) -> list[RepositoryResult]:
    """The history's row per repository restored or failed."""
    now = datetime.now(UTC).isoformat()
    where, snapshot = str(result.target), result.snapshot
    borrowed = result.borrowed
    rows = [
        RepositoryResult(r.repository, where, "restore", "ok", now, r.seconds,
                         {"snapshot": snapshot}
                         | ({"borrows": borrowed[r.repository].base}
                            if r.repository in borrowed else {}))
        for r in result.restored
    ]  # fmt: skip
    rows += [
        RepositoryResult(name, where, "restore", "failed", now, 0.0,
                         {"snapshot": snapshot, "message": msg})
        for name, msg in result.failed.items()
    ]  # fmt: skip
    return rows


def check_identity(
    store: Store, manifest_key: str, keys: Sequence[Identity], identity_file: Path
) -> None:
    """Fail once, naming the identity file, when it cannot open the backups (rather than
    once per repository)."""
    try:
        manifest = read_manifest(store, manifest_key)
    except CustodeError:
        return  # a damaged manifest is reported for its own repository
    sink = io.BytesIO()
    try:
        decrypt_to(store, manifest.refs, sink, keys)
    except IntegrityError as exc:
        if "not encrypted to this identity" in exc.message:
            raise UsageError(
                f"identity {identity_file} cannot decrypt these backups (they were encrypted "
                "to another key); give the matching identity with --identity"
            ) from None


def count(n: int) -> str:
    """``n repositories`` (or ``1 repository``)."""
    return counted(n, "repository", "repositories")


def _split(
    journal: restorejournal.Journal, entries: list[Entry], dests: dict[str, Path],
    *, force: bool, notice: Say,
) -> tuple[list[Entry], list[Entry]]:  # fmt: skip
    """The entries an unfinished restore already put in place, and those still to do
    (refused when one's destination is taken, unless ``force``)."""
    kept = [
        e for e in entries
        if journal.finished(e.repository, e.backup_id) and occupied(dests[e.repository])
    ]  # fmt: skip
    todo = [e for e in entries if e not in kept]
    if kept:
        notice(
            f"finishing the unfinished restore of snapshot {journal.snapshot} into "
            f"{journal.target}: {count(len(kept))} already in place are kept, {len(todo)} "
            "to go (--force restores them all again)"
        )
    busy = [dests[e.repository] for e in todo if occupied(dests[e.repository])]
    if busy and not force:
        what = "is not empty" if busy[0].is_dir() else "exists (not a directory)"
        more = f" (and {len(busy) - 1} more)" if len(busy) > 1 else ""
        raise UsageError(
            f"{busy[0]} {what}{more}; restore into an empty --to, or pass --force to replace"
        )
    return kept, todo


def _resume(
    journal: restorejournal.Journal, catalog: Catalog, at: str | None, store: str, host: str
) -> str:
    """The snapshot to restore when the target holds an unfinished restore: that one's, so
    the same command finishes it; another store, host or ``at`` is refused."""
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

    def __init__(self, journal: restorejournal.Journal, warn: Say) -> None:
        self.journal, self.warn, self.working = journal, warn, True

    def __call__(self, e: Entry) -> None:
        if not self.working:
            return
        try:
            self.journal.mark(e.repository, e.backup_id)
        except OSError as exc:
            self.working = False
            self.warn(
                f"cannot record progress in {self.journal.path} ({exc.strerror or exc}); "
                "the restore goes on, but finishing it after an interruption will take --force"
            )


def _restore_all(
    entries: list[Entry], one: Callable[[Entry], Restored], jobs: int, *,
    remember: Callable[[Entry], None], notice: Say, progress: Callable[[int, int], None],
    borrowers: dict[str, str],
) -> tuple[list[Restored], dict[str, str]]:  # fmt: skip
    """Restore in waves; on SIGINT or SIGTERM no further one starts (``custode.interrupts``)."""
    done: list[Restored] = []
    failed: dict[str, str] = {}
    n = 0
    with ThreadPoolExecutor(jobs) as pool:
        # a repository inside another comes after it, a borrower after its base
        for wave in _waves(entries, borrowers):
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
                    notice(f"{e.repository}: {exc.message}")
                n += 1
                progress(n, len(entries))
    return done, failed


def _select(entries: tuple[Entry, ...], names: tuple[str, ...], snapshot: str) -> list[Entry]:
    if not names:
        return list(entries)
    # a name that is not UTF-8 may also be given as shown (caf\xe9.git, see pathtext)
    known = {display(e.repository): e for e in entries} | {e.repository: e for e in entries}
    missing = [n for n in names if n.strip("/") not in known]
    if missing:
        near = close_matches(missing[0], [display(e.repository) for e in entries])
        hint = (
            f"did you mean {' or '.join(near)}?"
            if near
            else "name repositories by their path relative to their root"
        )
        raise UsageError(
            f"snapshot {snapshot} holds no repository {missing[0]!r}; {hint} "
            "(custode snapshots --repositories lists them)"
        )
    return [known[n.strip("/")] for n in names]


def close_matches(name: str, repositories: list[str], n: int = 3) -> list[str]:
    """The repositories ``name`` (not one of them) probably meant: those whose name (the
    last component, without .git) is ``name``'s (``httpie`` -> ``cli/httpie.git``), else the
    close spellings of the path and of the name, best first."""
    want = name.strip("/")
    stems: dict[str, list[str]] = {}
    for r in repositories:
        stems.setdefault(_stem(r), []).append(r)
    found = [r for r in repositories if _stem(r) == _stem(want) or _bare(r) == _bare(want)]
    if found:  # the same name elsewhere: close spellings of other names are noise
        return found[:n]
    found += difflib.get_close_matches(want, repositories, n=n)
    for stem in difflib.get_close_matches(_stem(want), list(stems), n=n):
        found += stems[stem]
    return list(dict.fromkeys(found))[:n]


def _bare(path: str) -> str:
    return path.removesuffix("/.git").removesuffix(".git")


def _stem(path: str) -> str:
    return _bare(path).rsplit("/", 1)[-1]


def _waves(entries: list[Entry], borrowers: dict[str, str]) -> list[list[Entry]]:
    """Entries grouped so that one nested in another's path (a submodule's git dir in its
    superproject's .git, a working copy inside another's work tree) is restored after it:
    the outer repository's restore may replace its destination (a bare one; of a working
    copy only its .git). A borrower comes after its base (``borrowing.wave``)."""
    names = {e.repository for e in entries}
    waves: dict[int, list[Entry]] = {}
    for e in entries:
        waves.setdefault(borrowing.wave(e.repository, names, borrowers), []).append(e)
    return [waves[k] for k in sorted(waves)]


class _Lender:
    """A ``borrow`` restore: reads the manifests first, says who borrows from whom
    (``borrowing.plan``), and restores each repository as a borrower of its base once that
    base is in place, or complete with the reason."""

    def __init__(
        self, job: RestoreJob, snapshot: tuple[Entry, ...], *, kept: list[Entry],
        todo: list[Entry], dests: dict[str, Path],
    ) -> None:  # fmt: skip
        self.job, self.dests = job, dests
        known = Manifests(job.store)  # a base's manifests are read once for all its borrowers
        self.manifests: dict[str, RepoManifest] = {}

        def load(e: Entry) -> None:  # read as the workers would, as many at once
            if not interrupts.requested():
                with contextlib.suppress(CustodeError):  # its restore fails with the reason
                    self.manifests[e.repository] = known.load(e.manifest)

        in_snapshot = {repo_prefix(job.host, e.repository): e.repository for e in snapshot}
        with ThreadPoolExecutor(job.jobs) as pool:
            list(pool.map(load, todo))
            bases = {in_snapshot.get(m.base_dir) for m in self.manifests.values()}
            list(pool.map(load, [e for e in kept if e.repository in bases]))
        self.borrowers, self.complete = borrowing.plan(
            self.manifests,
            in_snapshot,
            [e.repository for e in todo],
            {e.repository for e in [*kept, *todo]},
        )
        # repository -> its git dir, once in place: kept by an unfinished restore or
        # restored by this one (set from the workers; a borrower's wave comes later)
        self.placed: dict[str, Path] = {
            e.repository: borrowing.git_dir(dests[e.repository], m.bare)
            for e in kept
            if (m := self.manifests.get(e.repository)) is not None
        }
        self.borrowed: dict[str, Borrowing] = {}

    def restore(self, e: Entry) -> Restored:
        job, name, dest = self.job, e.repository, self.dests[e.repository]
        m = self.manifests.get(name) or read_manifest(job.store, e.manifest)
        own = borrowing.git_dir(dest, m.bare)
        base = self.borrowers.get(name)
        alternates, links = self._lend(m, own, base) if base is not None else ("", frozenset())
        restored = restore_repository(
            job.store, m, job.identities, job.git, dest, force=job.force,
            alternates=alternates, borrowed=links,
        )  # fmt: skip
        if base is not None and links:
            self.borrowed[name] = Borrowing(base, alternates, len(links))
        self.placed[name] = own
        return restored

    def _lend(self, m: RepoManifest, own: Path, base: str) -> tuple[str, frozenset[str]]:
        """The alternates line and the borrowed links of ``m`` restored at ``own`` on
        ``base`` as it is now; ("", nothing) with the reason when it is restored complete."""
        at = self.placed.get(base)
        why = f"its base {display(base)} was not restored"
        if at is not None:
            links, line = borrowing.covered(m, at), borrowing.alternates(own, at)
            if links and "\n" not in line:
                return line, links
            why = (
                f"its base {display(base)} holds none of the packs its backup builds on"
                if not links
                else "objects/info/alternates cannot name a path with a line break"
            )
        self.complete[m.repository] = why
        return "", frozenset()
