"""Following a backup's chain: from one manifest back through its pinned parents.

A format 3 manifest records only its own link and pins its parent manifest by size and
SHA-256 (``backup/manifest.py``). Resolving it reads the parents back to the chain's start
(a manifest with no parent, or one of formats 1 and 2, which lists its whole chain), each
checked against its child's pin, and gives the manifest what a restore, a verify and a
prune need: every bundle in order (``chain``), the refs files to apply (``refs_chain``, a
whole one first), every tip (``tips``) and the ancestor manifests (``ancestors``, kept by
prune as files the backup needs).

A chain is bounded (``MAX_DEPTH`` manifests; ``backup.full_every`` keeps custode's own far
below): a forged store cannot make a reader follow parents for ever. Parents must be of
the same host and object format; a parent of another repository is allowed (a fork
built on the repository it shares history with). ``Manifests`` reads each manifest once
and keeps it, so resolving every snapshot of a store reads each manifest once.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from custode.backup.manifest import FileRef, RepoManifest
from custode.backup.records import MANIFEST_LIMIT
from custode.backup.store import Store
from custode.errors import CustodeError, IntegrityError, StateError

MAX_DEPTH = 1024


class DamagedManifest(IntegrityError):
    """A manifest that cannot be read or resolved; ``key`` is the one at fault (the
    manifest asked for, or an ancestor it builds on)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class Manifests:
    """Resolved manifests of one store, each read once."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._known: dict[str, RepoManifest] = {}

    def load(self, key: str) -> RepoManifest:
        """The resolved manifest at ``key``; IntegrityError/StateError naming what is wrong
        (the manifest itself, or the first ancestor that is missing, damaged or swapped)."""
        return self._load(key, None, ())

    def _load(self, key: str, pin: FileRef | None, below: tuple[str, ...]) -> RepoManifest:
        if key in below or len(below) >= MAX_DEPTH:
            raise DamagedManifest(below[-1], (
                f"manifest {below[0]}: its chain of parents is longer than {MAX_DEPTH} or "
                "loops; the store is damaged or forged"))  # fmt: skip
        m = self._known.get(key)
        if m is None:
            try:
                data = self.store.get_bytes(key, MANIFEST_LIMIT)
                m = RepoManifest.from_bytes(data, key)
            except DamagedManifest:
                raise
            except CustodeError as exc:
                raise DamagedManifest(key, exc.message) from None
            m = replace(m, stored=FileRef(key, len(data), hashlib.sha256(data).hexdigest()))
            if not m.resolved:
                m = self._resolve(m, (*below, key))
            self._known[key] = m
        if pin is not None and m.stored != pin:
            raise DamagedManifest(key, (
                f"manifest {key} is not the one {below[-1]} builds on (its size or SHA-256 "
                "differ): it was replaced or damaged"))  # fmt: skip
        return m

    def _resolve(self, m: RepoManifest, below: tuple[str, ...]) -> RepoManifest:
        if m.base is None:  # a chain's first backup
            return resolve_on(m, None)
        p = self._load(m.base.key, m.base, below)
        try:
            return resolve_on(m, p)
        except IntegrityError as exc:
            raise DamagedManifest(m.key, exc.message) from None


def resolve_on(m: RepoManifest, parent: RepoManifest | None) -> RepoManifest:
    """``m`` (as stored, format 3) resolved on its already resolved ``parent`` (None for a
    chain's first backup)."""
    own = (m.link,) if m.link else ()
    if parent is None:
        return replace(m, chain=own, refs_chain=(m.refs,), tips=tuple(sorted(m.tips_added)),
                       resolved=True)  # fmt: skip
    p = parent
    if (p.host, p.object_format) != (m.host, m.object_format):
        raise IntegrityError(
            f"manifest {m.key} builds on {p.key}, of another host or object format; "
            "the store is damaged or forged"
        )
    if m.link is not None and m.link.full:
        raise IntegrityError(f"manifest {m.key} has a parent and a full bundle; it is damaged")
    tips = (set(p.tips) - set(m.tips_removed)) | set(m.tips_added)
    refs_chain = (*p.refs_chain, m.refs) if m.refs_delta else (m.refs,)
    return replace(m, chain=(*p.chain, *own), refs_chain=refs_chain, tips=tuple(sorted(tips)),
                   ancestors=(*p.ancestors, pinned(p)), resolved=True)  # fmt: skip


def pinned(m: RepoManifest) -> FileRef:
    """The stored bytes of a manifest read or written here (what a child pins)."""
    if m.stored is None:
        raise StateError(f"manifest {m.manifest_key} was not read from a store")
    return m.stored


def read_manifest(store: Store, key: str) -> RepoManifest:
    """One resolved manifest (for many, share a ``Manifests``)."""
    return Manifests(store).load(key)
