"""Back up one repository into a store: refs at one moment, the bundle of what is new since
the parent backup, the non-object files and LFS objects, then the manifest (data first).

* Nothing changed since the last backup by the history's record → not read at all: that
  is decided before this module is called (``custode.jobs.backup``).
* Nothing changed (same refs, same files, same LFS objects) → no new file at all: the
  snapshot points at the parent's manifest again.
* ``full`` (``custode backup --full``) → a new chain with no parent for every repository,
  changed or not: neither skip above applies. It is the way out of a damaged chain (a
  bundle ``verify --level full`` found lacking objects): otherwise an unchanged
  repository's damaged chain would stay its latest backup for ever.
* Refs changed → one new bundle, excluding the parent's tips that still exist (a deleted
  branch or a force-push only shrinks the exclusion; nothing usable → a full bundle).
* The chain is cut (a full bundle) once it is ``full_every`` bundles long or its first
  bundle is older than ``full_after``: restore time stays bounded. It is cut too when a
  shallow repository's ``shallow`` file changed (deepened, or made complete): excluding
  the parent's tips would then exclude history the chain never held.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from custode.backup.bundle import Refs, capture, write_bundle
from custode.backup.crypto import Recipient
from custode.backup.extras import build_tar, compress, lfs_objects
from custode.backup.freshness import FUTURE_TOLERANCE
from custode.backup.manifest import (
    Entry,
    FileRef,
    Link,
    RepoManifest,
    Snapshot,
    backup_prefix,
    canonical,
    id_time,
    lfs_key,
    new_id,
    repo_prefix,
    salted_digest,
)
from custode.backup.manifest import read_manifest as bounded_read_manifest
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
    return bounded_read_manifest(store, key)  # bounded in size, nesting and numbers


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
) -> RepoBackup:  # fmt: skip
    """Back up one repository; failures come back as a ``failed`` result, never raised."""
    started = time.monotonic()
    result = RepoBackup(repository, root, "failed")
    work = settings.scratch / f"{repository.replace('/', '_')[:60]}-{new_id()}"
    try:
        work.mkdir(parents=True)
        _backup(store, git, settings, result, git_dir, bare, object_format, manifests, work)
    except CustodeError as exc:
        result.outcome, result.message = "failed", exc.message
    except OSError as exc:
        result.outcome = "failed"
        result.message = f"{exc.strerror or exc} ({exc.filename or git_dir})"
    finally:
        shutil.rmtree(work, ignore_errors=True)
        result.seconds = time.monotonic() - started
    return result


def _backup(  # noqa: PLR0917  (one repository's facts, passed through once)
    store: Store, git: Git, settings: BackupSettings, result: RepoBackup, git_dir: Path,
    bare: bool, object_format: str, manifests: list[str], work: Path,
) -> None:  # fmt: skip
    if not git_dir.is_dir():
        raise StateError(f"{git_dir} is gone (deleted or moved since it was found)")
    repository, host = result.repository, settings.host
    parent = _parent(store, settings, manifests, result, object_format, bare)
    refs = capture(git, git_dir)
    shallow = read_shallow(git_dir)
    refs_json, tar = refs.to_json(), build_tar(git_dir)
    tar_hex = tar.hex()  # what the files digest is of
    lfs = lfs_objects(git_dir)
    same_shallow = parent is not None and shallow == _shallow_of(parent)
    same_refs = (
        parent is not None
        and same_shallow
        and salted_digest(parent.backup_id, refs_json) == parent.refs_digest
    )
    same_files = parent is not None and salted_digest(parent.backup_id, tar_hex) == (
        parent.files_digest
    )
    if parent is not None and same_refs and same_files and set(lfs) == set(parent.lfs_oids()):
        result.outcome, result.manifest, result.manifest_key = "unchanged", parent, parent.key
        return
    now = datetime.now(UTC)
    backup_id = new_id(now)
    own = backup_prefix(host, repository, backup_id)
    chain: list[Link] = list(parent.chain) if parent else []
    if not same_refs:
        full = parent is None or not same_shallow or _chain_is_long(chain, settings, now)
        if full:
            chain = []
        exclude = set() if full or parent is None else set(parent.tips)
        files = write_bundle(git, git_dir, refs, exclude, work, object_format=object_format)
        if files is None:  # no ref at all: nothing to bundle, nothing earlier is needed
            chain = []
        else:
            bundle = _put(store, own + "bundle.age", files.bundle, settings, work, result)
            index = None
            if files.index is not None:
                index = _put(store, own + "index.age", files.index, settings, work, result)
            chain.append(Link(backup_id, bundle, index, files.pack_name, files.header_bytes,
                              _objects(files.index), files.prerequisites, shallow))  # fmt: skip
        result.full = len(chain) <= 1
    refs_file = put_bytes(store, own + "refs.age", _refs_bytes(refs), settings.recipients)
    result.bytes_added += refs_file.size
    if parent is not None and same_files:
        files_ref = parent.files
    else:
        files_ref = put_bytes(store, own + "files.age", compress(tar), settings.recipients)
        result.bytes_added += files_ref.size
        result.files_added += 1
    lfs_refs = _store_lfs(store, settings, parent, lfs, work, result)
    manifest = RepoManifest(
        host, repository, backup_id, now.isoformat(timespec="seconds"),
        parent.backup_id if parent else None, object_format, bare,
        tuple(sorted(refs.tips())), salted_digest(backup_id, refs_json),
        len(refs.refs) + len(refs.symrefs), refs_file, files_ref,
        salted_digest(backup_id, tar_hex), tuple(chain), tuple(lfs_refs),
    )  # fmt: skip
    data = manifest.to_bytes()
    store.put_bytes(manifest.manifest_key, data)  # last: the backup exists from here on
    result.bytes_added += len(data)
    result.outcome, result.manifest = "new", manifest
    result.manifest_key = manifest.manifest_key


def _parent(  # noqa: PLR0917
    store: Store, settings: BackupSettings, manifests: list[str], result: RepoBackup,
    object_format: str, bare: bool,
) -> RepoManifest | None:  # fmt: skip
    """The backup to build on: none with ``full`` (a new chain, however sound the old one
    looks), none when the repository changed its object format or kind."""
    if settings.full:
        return None
    parent = latest_usable(store, manifests, result.repository, result.warnings.append)
    if parent is not None and (parent.object_format != object_format or parent.bare != bare):
        return None
    return parent


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


def _shallow_of(manifest: RepoManifest) -> tuple[str, ...]:
    """The shallow commits a backup's chain was made with (a chain holds one set)."""
    return manifest.chain[-1].shallow if manifest.chain else ()


def _chain_is_long(chain: list[Link], settings: BackupSettings, now: datetime) -> bool:
    if not chain:
        return True
    if len(chain) >= settings.full_every:
        return True
    return (now - id_time(chain[0].backup_id)).total_seconds() >= settings.full_after


def _put(  # noqa: PLR0917
    store: Store, key: str, src: Path, settings: BackupSettings, work: Path, result: RepoBackup
) -> FileRef:
    ref = put_file(store, key, src, settings.recipients, work)
    result.bytes_added += ref.size
    result.files_added += 1
    return ref


def _objects(index: Path | None) -> int:
    """The object count of a pack index (v2: fan-out table's last entry)."""
    if index is None:
        return 0
    with index.open("rb") as f:
        head = f.read(8 + 256 * 4)
    if head[:4] != b"\xfftOc" or len(head) < 8 + 256 * 4:
        raise IntegrityError(f"{index} is not a version 2 pack index")
    return int.from_bytes(head[-4:], "big")


def _refs_bytes(refs: Refs) -> bytes:
    return canonical(refs.to_json()) + b"\n"


__all__ = [
    "BackupSettings",
    "RepoBackup",
    "backup_repository",
    "by_age",
    "latest_usable",
    "manifests_by_repo",
    "read_manifest",
    "repo_prefix",
    "write_snapshot",
]
