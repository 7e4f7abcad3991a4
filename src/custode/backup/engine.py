"""Back up one repository into a store: refs at one moment, the bundle of what is new since
the parent backup, the non-object files and LFS objects, then the manifest (data first).
Which of the cases below applies is decided by ``backup/decide.py`` from what ``observe``
reads (``plan_repository``: the decision ``custode backup --dry-run`` prints).

* Nothing changed since the last backup by the history's record → not read at all: that
  is decided before this module is called (``custode.jobs.backup``).
* Nothing changed (same refs, same files, same LFS objects) → no new file at all: the
  snapshot points at the parent's manifest again.
* Only kept files or LFS objects changed → a manifest in the parent's place: same link,
  refs file and tips, built on the same manifest (a chain grows only when refs change).
* ``full`` (``custode backup --full``) → a new chain for every repository, changed or not:
  neither skip above applies. It is the way out of a damaged chain (a bundle ``verify
  --level full`` found lacking objects): otherwise an unchanged repository's damaged chain
  would stay its latest backup for ever.
* Refs changed → one new bundle (none when no object is new), excluding the parent's tips
  that still exist (a deleted branch or a force-push only shrinks the exclusion), its
  header naming only the refs that moved; the refs stored as the change since the
  parent's when this machine still knows those exactly (``backup/refscache.py``).
* A new chain starts once the chain is ``full_every`` long or its first bundle is older
  than ``full_after`` (restore time stays bounded), and when a shallow repository's
  ``shallow`` file changed (excluding the parent's tips would then exclude history the
  chain never held). It starts with a full bundle — copied from the repository's one
  pack when that pack is exactly what the refs reach (``backup/bundle.py``) — or, for a
  repository sharing history with another (``backup/plan.py``: a fork, a pool's
  borrower), on that one's latest backup: only its own objects are stored.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from custode.backup.bundle import Early, PackFiles, Refs, capture, existing_commits, write_bundle
from custode.backup.chain import pinned, resolve_on
from custode.backup.chain import read_manifest as chain_manifest
from custode.backup.crypto import Recipient
from custode.backup.decide import NO_PARENT, Decision, Facts, Policy, decide
from custode.backup.extras import build_tar, compress, lfs_objects
from custode.backup.freshness import FUTURE_TOLERANCE
from custode.backup.manifest import (
    Entry,
    FileRef,
    Link,
    RepoManifest,
    Snapshot,
    backup_prefix,
    id_time,
    lfs_key,
    new_id,
    repo_prefix,
    salted_digest,
)
from custode.backup.parts import parted, put_parts
from custode.backup.plan import Sharing
from custode.backup.refscache import RefsCache
from custode.backup.refsfile import RefsDelta, changed, diff, encode
from custode.backup.roots import read_shallow
from custode.backup.store import KeyExistsError, Store
from custode.backup.streams import put_bytes, put_file
from custode.errors import CustodeError, IntegrityError, StateError
from custode.git.runner import Git

Warn = Callable[[str], None]


@dataclass(frozen=True)
class BackupSettings:
    host: str
    recipients: Sequence[Recipient]
    scratch: Path
    full_every: int = 30  # bundles in a chain before a full one
    full_after: float = 30 * 86400.0  # seconds since the chain's first bundle
    full: bool = False  # a new chain for every repository, changed or not (backup --full)
    refs_cache: RefsCache | None = None  # the refs last stored: incrementals store a delta


@dataclass
class RepoBackup:
    repository: str
    root: str
    outcome: str  # "new", "unchanged" or "failed"
    manifest: RepoManifest | None = None
    full: bool = False
    bytes_added: int = 0
    files_added: int = 0
    seconds: float = 0.0
    message: str = ""
    warnings: list[str] = field(default_factory=list)
    manifest_key: str = ""  # set with ``manifest``, or alone when history showed no change
    fingerprint: str = ""  # the repository's fingerprint and kept-files stamp before it began
    stamp: str = ""
    method: str = ""  # how its new bundle was made: "copy" or "generate" (bundle.py)
    method_why: str = ""
    base: str = ""  # the repository whose backup a new chain of this one builds on
    base_why: str = ""
    decision: Decision | None = None  # what it was decided to do, and why (backup/decide.py)

    @property
    def action(self) -> str:
        """The decision's action ("" when not read: the history showed no change)."""
        return self.decision.action if self.decision else ""

    @property
    def backup_id(self) -> str | None:
        return self.manifest_key.rsplit("/", 2)[1] if self.manifest_key else None


def manifests_by_repo(store: Store, host: str) -> dict[str, list[str]]:
    """Every manifest key under the host, grouped by repository directory, oldest first."""
    out: dict[str, list[str]] = {}
    for key in store.list(f"hosts/{host}/repos/"):
        if key.endswith("/manifest.json"):
            repo_dir = key.rsplit("/", 2)[0] + "/"
            out.setdefault(repo_dir, []).append(key)
    return out


def read_manifest(store: Store, key: str) -> RepoManifest:
    """The manifest at ``key``, resolved along its chain (``backup/chain.py``)."""
    return chain_manifest(store, key)  # bounded in size, nesting, numbers and depth


def by_age(keys: Sequence[str], now: datetime) -> list[str]:
    """Manifest keys oldest first by their backup id's time, those dated in the future (a
    clock that was ahead) before all others: one backup made a year ahead must not be the
    parent of every backup for a year (each would hold everything new since it)."""
    limit = now + FUTURE_TOLERANCE

    def order(key: str) -> tuple[int, str]:
        ident = key.rsplit("/", 2)[-2] if key.count("/") >= 2 else ""
        try:
            ahead = id_time(ident) > limit
        except ValueError:
            ahead = False
        return (0 if ahead else 1, ident)

    return sorted(keys, key=order)


def latest_usable(
    store: Store, keys: list[str], repository: str, warn: Warn
) -> RepoManifest | None:
    """The newest manifest of ``repository`` that reads cleanly (a damaged one is skipped)."""
    for key in reversed(by_age(keys, datetime.now(UTC))):
        try:
            manifest = read_manifest(store, key)
        except (IntegrityError, StateError) as exc:
            warn(f"{repository}: ignoring an unusable earlier backup: {exc}")
            continue
        if manifest.repository == repository:
            return manifest
    return None


def backup_repository(
    store: Store, git: Git, settings: BackupSettings, *, repository: str, root: str,
    git_dir: Path, bare: bool, object_format: str, manifests: list[str],
    base: Sharing | None = None,
) -> RepoBackup:  # fmt: skip
    """Back up one repository; failures come back as a ``failed`` result, never raised.
    ``base``: the repository it shares history with (``backup/plan.py``), whose latest
    backup (``base_key``) a new chain of this one builds on."""
    started = time.monotonic()
    result = RepoBackup(repository, root, "failed")
    work = settings.scratch / f"{repository.replace('/', '_')[:60]}-{new_id()}"
    try:
        work.mkdir(parents=True)
        _backup(store, git, settings, result, git_dir, bare, object_format, manifests, work,
                base)  # fmt: skip
    except CustodeError as exc:
        result.outcome, result.message = "failed", exc.message
    except OSError as exc:
        result.outcome = "failed"
        result.message = f"{exc.strerror or exc} ({exc.filename or git_dir})"
    finally:
        shutil.rmtree(work, ignore_errors=True)
        result.seconds = time.monotonic() - started
    return result


@dataclass(frozen=True)
class Observed:
    """One repository as its backup finds it: the facts its decision is made from
    (``backup/decide.py``), and what a new backup stores."""

    facts: Facts
    refs: Refs
    shallow: tuple[str, ...]
    tar: bytes  # the kept files (config, hooks, info), as stored
    lfs: dict[str, Path]

    @property
    def parent(self) -> RepoManifest | None:
        return self.facts.parent


def observe(  # noqa: PLR0917  (one repository's facts, passed through once)
    store: Store, git: Git, settings: BackupSettings, repository: str, git_dir: Path,
    bare: bool, object_format: str, manifests: list[str], warn: Warn,
) -> Observed:  # fmt: skip
    """Read one repository and its latest backup: refs captured at one moment, kept files,
    LFS objects, shallow commits, each compared with the parent's. Reads only."""
    if not git_dir.is_dir():
        raise StateError(f"{git_dir} is gone (deleted or moved since it was found)")
    parent, no_parent = _parent(store, settings, manifests, repository, object_format, bare,
                                warn)  # fmt: skip
    refs = capture(git, git_dir)
    shallow = read_shallow(git_dir)
    tar = build_tar(git_dir)
    lfs = lfs_objects(git_dir)
    same_shallow = parent is not None and shallow == parent.shallow
    same_refs = (
        parent is not None
        and same_shallow
        and salted_digest(parent.backup_id, refs.to_json()) == parent.refs_digest
    )
    same_files = parent is not None and salted_digest(parent.backup_id, tar.hex()) == (
        parent.files_digest
    )
    same_lfs = parent is not None and set(lfs) == set(parent.lfs_oids())
    facts = Facts(parent, no_parent, same_refs, same_files, same_lfs, same_shallow,
                  bool(shallow))  # fmt: skip
    return Observed(facts, refs, shallow, tar, lfs)


def plan_repository(
    store: Store, git: Git, settings: BackupSettings, obs: Observed, *, repository: str,
    git_dir: Path, object_format: str, base: Sharing | None, now: datetime, warn: Warn,
) -> tuple[Decision, RepoManifest | None]:  # fmt: skip
    """What the backup of an observed repository does (``backup/decide.py``), and the
    manifest of the base a new chain builds on (None: none). Reads only: the dry run's
    decision and the backup's are this one."""
    policy = Policy(settings.full_every, settings.full_after)
    decision = decide(obs.facts, policy, now, base)
    if decision.action == "new-chain" and base is None and obs.parent is not None:
        current = _current_base(store, obs.parent)  # a fork's next chain: on the same base
        decision = decide(obs.facts, policy, now, current) if current else decision
    if decision.base is None:
        return decision, None
    found = _base_manifest(store, git, git_dir, repository, object_format,
                           decision.base.key, warn, obs.refs.tips())  # fmt: skip
    if isinstance(found, str):
        return decision.without_base(found), None
    if not decision.base.base:  # its chain's base, known by its backup's key until read
        decision = decide(obs.facts, policy, now, replace(decision.base, base=found.repository))
    return decision, found


def _backup(  # noqa: PLR0917  (one repository's facts, passed through once)
    store: Store, git: Git, settings: BackupSettings, result: RepoBackup, git_dir: Path,
    bare: bool, object_format: str, manifests: list[str], work: Path, base: Sharing | None,
) -> None:  # fmt: skip
    repository, host = result.repository, settings.host
    obs = observe(store, git, settings, repository, git_dir, bare, object_format, manifests,
                  result.warnings.append)  # fmt: skip
    parent, refs, tar = obs.parent, obs.refs, obs.tar
    now = datetime.now(UTC)
    decision, on_base = plan_repository(
        store, git, settings, obs, repository=repository, git_dir=git_dir,
        object_format=object_format, base=base, now=now, warn=result.warnings.append,
    )  # fmt: skip
    result.decision = decision
    if decision.action == "unchanged" and parent is not None:
        result.outcome, result.manifest, result.manifest_key = "unchanged", parent, parent.key
        return
    backup_id = new_id(now)
    own = backup_prefix(host, repository, backup_id)
    if parent is not None and obs.facts.same_files:
        files_ref = parent.files
    else:
        files_ref = put_bytes(store, own + "files.age", compress(tar), settings.recipients)
        result.bytes_added += files_ref.size
        result.files_added += 1
    lfs_refs = tuple(_store_lfs(store, settings, parent, obs.lfs, work, result))
    refs_json = refs.to_json()
    head = RepoManifest(
        host, repository, backup_id, now.isoformat(timespec="seconds"), None, object_format,
        bare, (), salted_digest(backup_id, refs_json), len(refs.refs) + len(refs.symrefs),
        files_ref, files_ref, salted_digest(backup_id, tar.hex()), (), lfs_refs,
    )  # fmt: skip
    on = parent  # the manifest the new one is resolved on
    in_place = decision.action == "in-place" and parent is not None
    if in_place and parent is not None:
        manifest = _in_place_of(parent, head)
    else:
        manifest, on = _new_link(store, git, settings, result, parent, refs, head,
                                 git_dir=git_dir, shallow=obs.shallow, decision=decision,
                                 on_base=on_base, work=work)  # fmt: skip
    data = manifest.to_bytes()
    store.put_bytes(manifest.manifest_key, data)  # last: the backup exists from here on
    result.bytes_added += len(data)
    manifest = replace(manifest, stored=FileRef(manifest.manifest_key, len(data),
                                                hashlib.sha256(data).hexdigest()))  # fmt: skip
    if in_place and parent is not None and parent.version >= 3:
        # in its parent's place: on the same manifest, so with the same resolution
        manifest = replace(manifest, chain=parent.chain, refs_chain=parent.refs_chain,
                           tips=parent.tips, ancestors=parent.ancestors, resolved=True)  # fmt: skip
    else:
        manifest = resolve_on(manifest, on if manifest.base else None)
    if settings.refs_cache is not None:  # the next backup stores only what changes
        settings.refs_cache.remember(repository, refs, manifest.base_dir)
    result.outcome, result.manifest = "new", manifest
    result.manifest_key = manifest.manifest_key


def _in_place_of(parent: RepoManifest, head: RepoManifest) -> RepoManifest:
    """Only kept files or LFS objects changed: the new backup takes its parent's place in
    the chain (same bundle, refs file and tips, built on the same manifest), so a chain
    grows only when refs change. A format 1/2 parent is built on instead (once)."""
    if parent.version < 3:
        return replace(head, base=pinned(parent), refs=parent.refs, parent=parent.backup_id)
    return replace(head, base=parent.base, parent=parent.parent, link=parent.link,
                   refs=parent.refs, refs_delta=parent.refs_delta,
                   tips_added=parent.tips_added, tips_removed=parent.tips_removed)  # fmt: skip


def _new_link(  # noqa: PLR0917  (one repository's facts, passed through once)
    store: Store, git: Git, settings: BackupSettings, result: RepoBackup,
    parent: RepoManifest | None, refs: Refs, head: RepoManifest, *, git_dir: Path,
    shallow: tuple[str, ...], decision: Decision, on_base: RepoManifest | None, work: Path,
) -> tuple[RepoManifest, RepoManifest | None]:  # fmt: skip
    """Refs changed: a bundle of what is new (none when nothing is), and the refs whole
    or as the change since the parent's (when this machine still knows them exactly).
    A new chain builds on the repository it shares history with, when there is one."""
    full = decision.action == "new-chain"
    on = on_base if full else parent
    if on_base is not None and decision.base is not None:
        result.base, result.base_why = on_base.repository, decision.base.why
    known = None
    if not full and parent is not None and settings.refs_cache is not None:
        known = settings.refs_cache.parent_refs(
            head.repository, parent.backup_id, parent.refs_digest
        )
    exclude = set(on.tips) if on is not None else set()
    own = backup_prefix(head.host, head.repository, head.backup_id)
    header = None if known is None else changed(known, refs)
    if on is not None and on is not parent:  # on a base: its tips need no objects here
        header = {name: oid for name, oid in refs.refs.items() if oid not in set(on.tips)}
    stored: list[FileRef] = []
    early = _early(store, own, settings, work, result, stored) if head.bare else None
    files = write_bundle(git, git_dir, refs, exclude, work, object_format=head.object_format,
                         header_refs=header, early=early)  # fmt: skip
    link = None
    if files is not None and files.index is not None:
        if not stored:  # not stored early (``_early``)
            _put_pack(store, own, files, settings, work, result, stored)
        bundle, index = stored
        link = Link(head.backup_id, bundle, index, files.pack_name, files.header_bytes,
                    _objects(files.index), files.prerequisites, shallow, on is None,
                    files.method)  # fmt: skip
        result.method, result.method_why = files.method, files.reason
    content: Refs | RefsDelta = refs if known is None else diff(known, refs)
    refs_file = put_bytes(store, own + "refs.age", encode(content), settings.recipients)
    result.bytes_added += refs_file.size
    result.full = on is None
    tips = refs.tips()
    before = set(on.tips) if on is not None else set()
    return replace(
        head, parent=on.backup_id if on else None, base=pinned(on) if on else None,
        link=link, refs=refs_file, refs_delta=isinstance(content, RefsDelta),
        tips_added=tuple(sorted(tips - before)), tips_removed=tuple(sorted(before - tips)),
    ), on  # fmt: skip


def _base_manifest(  # noqa: PLR0917
    store: Store, git: Git, git_dir: Path, repository: str, object_format: str, key: str,
    warn: Warn, tips: set[str],
) -> RepoManifest | str:  # fmt: skip
    """The latest backup of the repository this one shares history with, for a new chain
    to build on, or why it cannot be (then the chain starts with a full bundle)."""
    try:
        found = read_manifest(store, key)
    except CustodeError as exc:
        warn(f"{repository}: not building on {key}: {exc.message}")
        return f"its backup {key} is unusable ({exc.message})"
    reasons = (
        (found.object_format != object_format, f"its object format is {found.object_format}"),
        (bool(found.shallow), "its backup is of a shallow repository"),
        (found.repository == repository, "it is this repository"),
        (bool(found.base_dir), "it builds on another itself"),
    )
    why = next((why for bad, why in reasons if bad), "")
    # a tip of its own that is one of the base's proves shared history without asking git
    # (each of the base's commits it lacks costs git a rescan of its object directory)
    if (
        not why
        and not tips & set(found.tips)
        and not existing_commits(git, git_dir, set(found.tips))
    ):
        why = "none of its backup's tips is here: nothing shared after all"
    return why or found


def _current_base(store: Store, parent: RepoManifest) -> Sharing | None:
    """The repository ``parent``'s chain builds on, with its latest backup (None: its
    own): a fork whose chain grew too long starts the next one on the same base."""
    if not parent.base_dir:
        return None
    keys = [k for k in store.list(parent.base_dir) if k.endswith("/manifest.json")]
    latest = by_age(keys, datetime.now(UTC))[-1:]
    if not latest:
        return None
    return Sharing("", "its chain built on it before", latest[0])  # named once read


def _parent(  # noqa: PLR0917
    store: Store, settings: BackupSettings, manifests: list[str], repository: str,
    object_format: str, bare: bool, warn: Warn,
) -> tuple[RepoManifest | None, str]:  # fmt: skip
    """The backup to build on, or why there is none: none with ``full`` (a new chain,
    however sound the old one looks), none when the repository changed its object format
    or kind."""
    if settings.full:
        return None, "a new chain was asked for (--full)"
    parent = latest_usable(store, manifests, repository, warn)
    if parent is None:
        return None, NO_PARENT
    if parent.object_format != object_format or parent.bare != bare:
        kind = "bare" if parent.bare else "with a working tree"
        return None, (f"its object format or kind changed since backup {parent.backup_id} "
                      f"({parent.object_format}, {kind})")  # fmt: skip
    return parent, ""


def write_snapshot(
    store: Store, host: str, created: datetime, results: Sequence[RepoBackup], *,
    seq: int = 0, machine: str = "",
) -> Snapshot | None:  # fmt: skip
    """Group one run's repository backups into a snapshot, written last: it is visible only
    once every file it needs is stored. None when no repository was backed up. ``seq`` and
    ``machine``: the writing machine's sequence number and id (``backup/freshness.py``)."""
    entries = tuple(Entry(r.repository, r.root, r.manifest_key) for r in results if r.manifest_key)
    if not entries:
        return None
    failed = {r.repository: r.message for r in results if r.outcome == "failed"}
    finished = datetime.now(UTC).isoformat(timespec="seconds")
    snap = Snapshot(host, new_id(created), created.isoformat(timespec="seconds"), finished,
                    entries, failed, seq, machine)  # fmt: skip
    store.put_bytes(snap.key, snap.to_bytes())
    return snap


def _store_lfs(  # noqa: PLR0917
    store: Store, settings: BackupSettings, parent: RepoManifest | None, lfs: dict[str, Path],
    work: Path, result: RepoBackup,
) -> list[FileRef]:  # fmt: skip
    """Each LFS object's stored record: the parent's, another repository's, or a new one."""
    known = parent.lfs_oids() if parent else {}
    refs = []
    for oid, path in sorted(lfs.items()):
        key = lfs_key(settings.host, oid)
        ref = known.get(oid) or _stored(store, key)
        if ref is None:
            try:
                ref = _put(store, key, path, settings, work, result)
            except KeyExistsError:  # a concurrent backup stored it first: same content
                ref = _stored(store, key)
        if ref is None:
            raise StateError(f"LFS object {key} vanished from {store.url} while stored")
        refs.append(ref)
    return refs


def _stored(store: Store, key: str) -> FileRef | None:
    """The record of an LFS object another repository already stored (hashed as it is)."""
    if (size := store.size(key)) is None:
        return None
    data = store.get_bytes(key, size)  # an LFS object may be larger than a record
    return FileRef(key, len(data), hashlib.sha256(data).hexdigest())


def _put(  # noqa: PLR0917
    store: Store, key: str, src: Path, settings: BackupSettings, work: Path, result: RepoBackup
) -> FileRef:
    if parted(key, src.stat().st_size):
        ref = put_parts(store, key, src, settings.recipients)
    else:
        ref = put_file(store, key, src, settings.recipients, work)
    result.bytes_added += ref.size
    result.files_added += 1
    return ref


def _early(  # noqa: PLR0917
    store: Store, own: str, settings: BackupSettings, work: Path, result: RepoBackup,
    stored: list[FileRef],
) -> Early:  # fmt: skip
    """Store a copied bundle and its index while git proves the copy (``bundle.Early``),
    into ``stored``; taken back out of the store if the proof fails. Only for a bare
    repository, whose one pack is usually exactly its refs' closure (a work tree's also
    holds what only its reflogs and index reach: the proof would fail, the work be lost)."""

    def deliver(files: PackFiles) -> None:
        _put_pack(store, own, files, settings, work, result, stored)

    def undo() -> None:
        for ref in stored:
            for part in ref.stored():  # its backup id is new: no manifest names it
                store.delete(part.key)
            result.bytes_added -= ref.size
            result.files_added -= 1
        stored.clear()

    return Early(deliver, undo)


def _put_pack(  # noqa: PLR0917
    store: Store, own: str, files: PackFiles, settings: BackupSettings, work: Path,
    result: RepoBackup, stored: list[FileRef],
) -> None:  # fmt: skip
    """Store a bundle and its pack's index, each added to ``stored`` once it is there."""
    if files.index is None:
        raise ValueError("a bundle with an empty pack has no index to store")
    stored.append(_put(store, own + "bundle.age", files.bundle, settings, work, result))
    stored.append(_put(store, own + "index.age", files.index, settings, work, result))


def _objects(index: Path | None) -> int:
    """The object count of a pack index (v2: fan-out table's last entry)."""
    if index is None:
        return 0
    with index.open("rb") as f:
        head = f.read(8 + 256 * 4)
    if head[:4] != b"\xfftOc" or len(head) < 8 + 256 * 4:
        raise IntegrityError(f"{index} is not a version 2 pack index")
    return int.from_bytes(head[-4:], "big")


__all__ = [
    "BackupSettings",
    "Observed",
    "RepoBackup",
    "backup_repository",
    "by_age",
    "latest_usable",
    "manifests_by_repo",
    "observe",
    "plan_repository",
    "read_manifest",
    "repo_prefix",
    "write_snapshot",
]
