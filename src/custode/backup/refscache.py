"""This machine's copy of the refs each repository had at its last backup into a store.

A store's refs files are encrypted to public keys: the machine making backups holds no
secret and cannot read its parent backup's refs back. To store only what changed
(``backup/refsfile.py``) it keeps the refs it last stored, per store, host and
repository, in ``<state>/backup-refs/`` (mode 0600: ref names are no more secret than the
repositories on this machine). A cached copy is used only when it is exactly the parent's:
its digest salted with the parent's backup id must equal the parent manifest's
``refs_digest``. Anything else — no file, a damaged, foreign or stale one — costs one whole
refs file in the store, never a wrong delta.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from custode.backup.bundle import Refs
from custode.backup.manifest import salted_digest
from custode.base.atomicfile import write_atomically
from custode.base.fsread import read_all
from custode.errors import IntegrityError

REFS_CACHE = "backup-refs"  # its directory under the state directory
_LIMIT = 1 << 30  # ~100 bytes a ref, as the store's own bound (records.REFS_LIMIT)


class RefsCache:
    def __init__(self, directory: Path, store_url: str, host: str) -> None:
        self.directory = directory
        self.slot = hashlib.sha256(f"{store_url}#{host}".encode()).hexdigest()[:16]

    def _path(self, repository: str) -> Path:
        name = hashlib.sha256(repository.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return self.directory / self.slot / f"{name}.json"

    def parent_refs(self, repository: str, backup_id: str, refs_digest: str) -> Refs | None:
        """The refs stored by backup ``backup_id`` (recorded as ``refs_digest``), if this
        machine still has exactly them; None otherwise."""
        entry = self._read(self._path(repository))
        if entry is None or entry.repository != repository:
            return None
        if salted_digest(backup_id, entry.refs.to_json()) != refs_digest:
            return None
        return entry.refs

    def remember(self, repository: str, refs: Refs, base: str = "") -> None:
        """Keep ``refs`` as the repository's last stored refs (after its manifest is in),
        and the repository its chain builds on ("" for none)."""
        path = self._path(repository)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        body = {"repository": repository, "base": base, "refs": refs.to_json()}
        write_atomically(path, json.dumps(body).encode(), mode=0o600)

    def entries(self) -> Iterator[Entry]:
        """Every repository this machine backed up into the store: what a backup plan
        knows of the fleet's tips without reading a repository or the store."""
        try:
            names = sorted(os.listdir(self.directory / self.slot))
        except OSError:
            return
        for name in names:
            if name.endswith(".json"):
                entry = self._read(self.directory / self.slot / name)
                if entry is not None:
                    yield entry

    @staticmethod
    def _read(path: Path) -> Entry | None:
        try:
            data, _ = read_all(str(path), _LIMIT, follow=False)
            body = json.loads(data)
            repository, base = body["repository"], body.get("base", "")
            if not isinstance(repository, str) or not isinstance(base, str):
                return None
            return Entry(repository, Refs.from_json(body["refs"]), base)
        except (OSError, ValueError, KeyError, IntegrityError, RecursionError, TypeError,
                AttributeError):  # fmt: skip
            return None  # no copy, or not one custode wrote: refs are stored whole


@dataclass(frozen=True)
class Entry:
    repository: str
    refs: Refs
    base: str  # the repository its chain builds on ("" for none)
