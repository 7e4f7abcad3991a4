"""RepoStates kept between runs, reused only while nothing they were read from changed.

Each entry holds the state, the repository it belongs to, and the mtimes of every
directory and key file its inspection read (``fsread.Watch``). A later scan stats those
paths instead of reading the repository again: one ``stat`` per directory instead of a
directory read plus a ``stat`` per file. An entry is trusted only if every mtime is
unchanged and was already older than ``RACY_NS`` when the entry was read (a change in
the same clock tick as the read would not move the mtime: the "racy git" problem).

Small files that can change in place with no mtime to show it (HEAD and the loose refs:
a power loss leaves them empty or NUL-filled, with any mtime) are watched by content
instead: re-read on every lookup and compared by digest. They are few and tiny next to
what the cache saves (object directories, pack listings), and this keeps the cache from
hiding a broken repository that ``--rescan`` would show.

The file lives in custode's private state directory (mode 0700) and is a pickle; a cache
that cannot be read (missing, damaged, from another version) is simply empty.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import tempfile
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from custode.discovery import Repository
from custode.fsread import Watch, read_prefix
from custode.refstore import REF_PREFIX
from custode.repostate import RepoState

FORMAT = 4  # 3: RepoState.partial_clone; 4: files watched by content
RACY_NS = 2_000_000_000
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    """One repository's state and what it was read from, packed small (10,000 of these
    are pickled across processes and to disk): watched paths relative to the git
    directory joined by newlines, their mtimes as a packed array of 64-bit integers; files
    watched by content the same way, with one digest of everything read from them."""

    repo: Repository
    state: RepoState
    paths: str
    mtimes: bytes
    read_at_ns: int
    content_paths: str = ""
    content_digest: bytes = b""

    @classmethod
    def make(cls, repo: Repository, state: RepoState, watch: Watch, read_at_ns: int) -> Entry:
        top = str(repo.git_dir) + os.sep
        cut = len(top)
        rel = "\n".join(p[cut:] if p.startswith(top) else p for p in watch.paths)
        content_rel = "\n".join(p[cut:] if p.startswith(top) else p for p, _ in watch.contents)
        digest = _digest(data for _, data in watch.contents)
        return cls(
            repo, state, rel, array("q", watch.mtimes).tobytes(), read_at_ns, content_rel, digest
        )

    def trusted_at_read(self) -> bool:
        limit = self.read_at_ns - RACY_NS
        return all(m < limit for m in array("q", self.mtimes))

    def still_valid(self) -> bool:
        watch = Watch()
        top = str(self.repo.git_dir)
        watch.paths = [os.path.join(top, p) for p in self.paths.split("\n")]
        watch.mtimes = list(array("q", self.mtimes))
        return watch.unchanged(self.read_at_ns - RACY_NS) and self._contents_unchanged(top)

    def _contents_unchanged(self, top: str) -> bool:
        if not self.content_paths:
            return self.content_digest == _digest(())
        try:
            now = [
                read_prefix(os.path.join(top, p), REF_PREFIX)
                for p in self.content_paths.split("\n")
            ]
        except OSError:  # gone or unreadable: read the repository again
            return False
        return _digest(now) == self.content_digest


def _digest(contents: Iterable[bytes]) -> bytes:
    """One digest of several files' contents, each length-prefixed so none can blur."""
    h = hashlib.blake2b(digest_size=16)
    for data in contents:
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.digest()


class ScanCache:
    def __init__(self, entries: dict[str, Entry] | None = None) -> None:
        self.entries = entries or {}

    @classmethod
    def load(cls, path: Path) -> ScanCache:
        try:
            with path.open("rb") as f:
                version, entries = pickle.load(f)  # noqa: S301  (our own 0700 state dir)
        except FileNotFoundError:
            return cls()
        except Exception as exc:  # a damaged cache is only a slower scan
            log.info("ignoring scan cache %s: %s", path, exc)
            return cls()
        if version != FORMAT or not isinstance(entries, dict):
            return cls()
        return cls(entries)

    def lookup(self, repo: Repository) -> RepoState | None:
        entry = self.entries.get(str(repo.git_dir))
        if entry is None or entry.repo != repo or not entry.still_valid():
            return None
        return entry.state

    def update(self, fresh: Iterable[Entry], scanned_roots: Iterable[Path], seen: set[str]) -> bool:
        """Add fresh entries; forget repositories under a scanned root that were not seen.

        Returns whether anything changed (and the file needs saving).
        """
        roots = {str(r) for r in scanned_roots}
        before = len(self.entries)
        self.entries = {
            key: e
            for key, e in self.entries.items()
            if key in seen or str(e.repo.root) not in roots
        }
        changed = len(self.entries) != before
        for entry in fresh:
            changed = True
            if entry.trusted_at_read():
                self.entries[str(entry.repo.git_dir)] = entry
            else:
                self.entries.pop(str(entry.repo.git_dir), None)
        return changed

    def save(self, path: Path) -> None:
        """Write atomically (temporary file, then rename); failures only cost speed."""
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".scan-cache.", dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    pickle.dump((FORMAT, self.entries), f, protocol=pickle.HIGHEST_PROTOCOL)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            log.warning("scan cache %s not saved: %s", path, exc)
