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

The file lives in custode's private state directory and is plain JSON, never a format
that can run code when loaded (a pickle could: whoever could write the file would run a
program as custode). Loading is hostile-input reading: the file is opened without
blocking or following a link, must be a regular file owned by custode's user and not
writable by others, at most ``MAX_BYTES``, and every value is checked against the type of
its field. A cache that cannot be read (missing, damaged, unsafe, from another version) is
ignored with a log line, and the scan reads every repository afresh and writes a new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import typing
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from custode.base.atomicfile import write_atomically
from custode.base.fsread import FileTooLarge, NotRegularFile, Watch, read_all, read_prefix
from custode.base.secretfile import require_private_dir, require_private_file
from custode.errors import StateUnusableError
from custode.scan.discovery import Repository
from custode.scan.objectstore import TempFile
from custode.scan.refstore import REF_PREFIX
from custode.scan.repostate import RepoState

FORMAT = 7  # 3: RepoState.partial_clone; 4: files watched by content; 5: JSON, not pickle;
# 6: RepoState.oldest_loose_mtime, base_pack_bytes and cruft_pack_bytes; 7: base_pack_objects
RACY_NS = 2_000_000_000
#: about 1.5 kB an entry: room for well over 100,000 repositories, and a bound on memory
MAX_BYTES = 256 * 1024 * 1024
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    """One repository's state and what it was read from, packed small (10,000 of these
    cross processes from the scan's workers): watched paths relative to the git directory
    joined by newlines, their mtimes as a packed array of 64-bit integers; files watched
    by content the same way, with one digest of everything read from them."""

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
            data = _read(path)
        except FileNotFoundError:
            return cls()
        except StateUnusableError as exc:  # not trusted: read every repository afresh
            log.warning("scan cache not used: %s", exc)
            return cls()
        except OSError as exc:
            log.info("ignoring scan cache %s: %s", path, exc)
            return cls()
        try:
            entries = _decode(data)
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            # damaged or from another version: only a slower scan, then a fresh file
            log.info("ignoring scan cache %s: %s", path, exc)
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
        if _STATE_PLAN is None:
            return  # a RepoState field this codec cannot carry (see test_scancache)
        try:
            require_private_dir(path.parent, "state directory")
            data = _encode(self.entries.values())
            write_atomically(path, data)
        except (OSError, ValueError, StateUnusableError) as exc:
            log.warning("scan cache %s not saved: %s", path, exc)


# --------------------------------------------------------------------------- the file


def _read(path: Path) -> bytes:
    """The file's bytes: a regular file of custode's own, not writable by others, opened
    without blocking (a FIFO planted there must not hang the scan), at most MAX_BYTES."""
    require_private_dir(path.parent, "state directory")
    if not require_private_file(path, "scan cache"):
        raise FileNotFoundError(path)
    try:  # what was opened is checked, not what lstat saw before
        data, _ = read_all(str(path), MAX_BYTES, follow=False)
    except NotRegularFile:
        raise OSError(f"{path} is not a regular file") from None
    except FileTooLarge:
        raise OSError(f"{path} is larger than {MAX_BYTES} bytes") from None
    return data


# One entry is a JSON array: the repository (7 values), the state (RepoState's fields in
# order, named once in the header: a change of fields is another version), then the
# watched paths, their mtimes (hex of the packed array), read_at_ns, content paths, digest.
_REPO_FIELDS = tuple(f.name for f in fields(Repository))
_STATE_FIELDS = tuple(f.name for f in fields(RepoState))
_KINDS = frozenset(typing.get_args(typing.get_type_hints(Repository)["kind"]))

_Check = tuple[frozenset[type], Callable[[Any], Any] | None]


def _str_tuple(value: list[Any]) -> tuple[str, ...]:
    if not all(type(v) is str for v in value):
        raise ValueError("a list holds a value that is not a string")
    return tuple(value)


def _temp_files(value: list[Any]) -> tuple[TempFile, ...]:
    out = []
    for item in value:
        if type(item) is not list or len(item) != 3:
            raise ValueError("a temporary file is not [path, bytes, mtime]")
        name, size, mtime = item
        if type(name) is not str or type(size) is not int or type(mtime) is not float:
            raise ValueError("a temporary file has a value of the wrong type")
        out.append(TempFile(name, size, mtime))
    return tuple(out)


_PLAIN: dict[Any, frozenset[type]] = {
    str: frozenset({str}),
    int: frozenset({int}),
    float: frozenset({float}),
    bool: frozenset({bool}),
    str | None: frozenset({str, type(None)}),
}
_CONVERTED: dict[Any, Callable[[Any], Any]] = {
    tuple[str, ...]: _str_tuple,
    tuple[TempFile, ...]: _temp_files,
}


def _plan(hints: dict[str, Any], names: tuple[str, ...]) -> list[_Check] | None:
    """How to check (and convert) each field read back; None if a field's type is new."""
    plan: list[_Check] = []
    for name in names:
        hint = hints[name]
        if hint in _PLAIN:
            plan.append((_PLAIN[hint], None))
        elif hint in _CONVERTED:
            plan.append((frozenset({list}), _CONVERTED[hint]))
        else:
            return None
    return plan


_STATE_PLAN = _plan(typing.get_type_hints(RepoState), _STATE_FIELDS)
_STATE_WIDTH = len(_STATE_FIELDS)
_TEMP_AT = _STATE_FIELDS.index("temp_files")


def _encode(entries: Iterable[Entry]) -> bytes:
    rows = []
    for e in entries:
        r = e.repo
        repo = [str(r.root), str(r.path), str(r.git_dir), r.kind, r.relative,
                None if r.superproject is None else str(r.superproject),
                [str(w) for w in r.worktrees]]  # fmt: skip
        state = [getattr(e.state, name) for name in _STATE_FIELDS]
        state[_TEMP_AT] = [[t.path, t.bytes, t.mtime] for t in e.state.temp_files]
        rows.append([repo, state, e.paths, e.mtimes.hex(), e.read_at_ns, e.content_paths,
                     e.content_digest.hex()])  # fmt: skip
    doc = {"format": FORMAT, "fields": _STATE_FIELDS, "entries": rows}
    # ASCII with \u escapes: a non-UTF-8 name (a lone surrogate in a str) comes back as it was
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("ascii")


def _decode(data: bytes) -> dict[str, Entry]:
    doc = json.loads(data)
    if type(doc) is not dict or doc.get("format") != FORMAT:
        raise ValueError(f"not a version {FORMAT} scan cache")
    if doc.get("fields") != list(_STATE_FIELDS) or _STATE_PLAN is None:
        raise ValueError("written by another version of custode (other fields)")
    rows = doc.get("entries")
    if type(rows) is not list:
        raise ValueError("no list of entries")
    reader = _Reader(_STATE_PLAN)
    entries: dict[str, Entry] = {}
    for row in rows:
        entry = reader.entry(row)
        entries[str(entry.repo.git_dir)] = entry
    return entries


class _Reader:
    """Checks and builds entries; 10,000 of them must take a fraction of a second.

    A state's values are checked against their fields' types once per combination of
    types (there are a handful: ``head`` or ``superproject`` may be None), not once per
    value; lists are checked item by item as they are converted. A path parsed before (a
    root; a bare repository's path is its git directory) is not parsed again.
    """

    def __init__(self, plan: list[_Check]) -> None:
        self.plan = plan
        self.convert = [(i, c) for i, (_, c) in enumerate(plan) if c is not None]
        self.valid: set[tuple[type, ...]] = set()
        self.roots: dict[str, Path] = {}

    def entry(self, row: Any) -> Entry:
        if type(row) is not list or len(row) != 7:
            raise ValueError("an entry is not an array of 7 values")
        repo, state, paths, mtimes, read_at_ns, content_paths, digest = row
        if not (type(paths) is str and type(mtimes) is str and type(read_at_ns) is int
                and type(content_paths) is str and type(digest) is str):  # fmt: skip
            raise ValueError("an entry's watch list has a value of the wrong type")
        packed = bytes.fromhex(mtimes)
        if len(packed) % array("q").itemsize:
            raise ValueError("an entry's mtimes are not whole 64-bit integers")
        return Entry(self.repository(repo), self.state(state), paths, packed, read_at_ns,
                     content_paths, bytes.fromhex(digest))  # fmt: skip

    def state(self, values: Any) -> RepoState:
        if type(values) is not list or len(values) != _STATE_WIDTH:
            raise ValueError("a state has the wrong number of fields")
        kinds = tuple(map(type, values))
        if kinds not in self.valid:
            for kind, (allowed, _) in zip(kinds, self.plan, strict=True):
                if kind not in allowed:
                    raise ValueError(f"a state field holds a {kind.__name__}")
            self.valid.add(kinds)
        for i, convert in self.convert:
            values[i] = convert(values[i])
        # as unpickling does: every field is set, and checked above
        state: RepoState = object.__new__(RepoState)
        state.__dict__.update(zip(_STATE_FIELDS, values, strict=True))
        return state

    def repository(self, value: Any) -> Repository:
        if type(value) is not list or len(value) != len(_REPO_FIELDS):
            raise ValueError("a repository is not an array of its fields")
        root, path, git_dir, kind, relative, superproject, worktrees = value
        if not all(type(v) is str for v in (root, path, git_dir, relative)) or kind not in _KINDS:
            raise ValueError("a repository has a value of the wrong type")
        if superproject is not None and type(superproject) is not str:
            raise ValueError("a repository's superproject is not a path")
        if type(worktrees) is not list:
            raise ValueError("a repository's worktrees are not a list")
        top = self.roots.get(root)
        if top is None:
            top = self.roots[root] = Path(root)
        where = Path(path)
        return Repository(top, where, where if git_dir == path else Path(git_dir), kind,
                          relative, None if superproject is None else Path(superproject),
                          tuple(Path(w) for w in _str_tuple(worktrees)))  # fmt: skip
