"""Facts about a repository's references, read from the filesystem only.

The ref count equals what ``git for-each-ref`` lists: every valid loose ref under
``refs/`` plus every ``packed-refs`` entry not shadowed by a loose ref of the same name,
with symbolic refs counted only when their target exists. A malformed ``packed-refs``
line makes the repository broken (git itself refuses to read it).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from custode.base.fsread import NotRegularFile, Watch, problem, read_all, read_prefix
from custode.scan.objectstore import TempFile

_SYMREF = "ref: "


@dataclass
class RefStore:
    head: str | None = None  # "refs/heads/main" for a symbolic HEAD, a hex id when detached
    loose_refs: int = 0
    packed_refs: int = 0
    refs: int = 0
    symbolic_refs: int = 0
    temp: list[TempFile] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    size_bytes: int = 0
    newest_mtime: float = 0.0
    signature: list[str] = field(default_factory=list)


_OID = {40: re.compile(r"[0-9a-f]{40}"), 64: re.compile(r"[0-9a-f]{64}")}


def read_ref_store(git_dir: str, hexsz: int, watch: Watch) -> RefStore:
    s = RefStore()
    oid = _OID[hexsz]
    _read_head(git_dir, oid, s, watch)
    loose: dict[str, str] = {}  # name -> symbolic target, or "" for a direct ref
    stack = [os.path.join(git_dir, "refs")]
    if os.path.islink(stack[0]):  # it could lead anywhere: refuse to walk it
        s.problems.append("refs is a symbolic link; custode does not follow it")
        stack = []
    while stack:
        try:
            entries = watch.scandir(stack.pop())
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):
                s.problems.append(f"cannot read refs directory: {exc.strerror}")
            continue
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:  # renamed or deleted by a git at work
                continue
            s.size_bytes += st.st_blocks * 512
            s.newest_mtime = max(s.newest_mtime, st.st_mtime)
            rel = os.path.relpath(e.path, git_dir)
            if e.name.endswith(".lock"):
                s.temp.append(TempFile(rel, st.st_size, st.st_mtime))
                continue
            s.signature.append(f"{rel} {st.st_ino} {st.st_size} {st.st_mtime_ns}")
            try:
                raw = _prefix(e.path)
            except NotRegularFile as exc:  # a FIFO, or a link to /dev/zero: git hangs on it
                s.problems.append(problem(rel, exc))
                continue
            watch.content(e.path, raw)
            value = raw.decode("utf-8", "replace").split("\n", 1)[0].strip()
            if value.startswith(_SYMREF):
                loose[rel] = value[len(_SYMREF) :].strip()
            elif oid.fullmatch(value):
                loose[rel] = ""
            else:
                s.problems.append(f"loose ref {rel} is corrupt")
    s.loose_refs = sum(1 for _ in loose)
    packed = _read_packed(os.path.join(git_dir, "packed-refs"), hexsz, s, watch)
    s.packed_refs = len(packed)
    names = set(loose) | packed
    s.symbolic_refs = sum(1 for t in loose.values() if t)
    dangling = sum(1 for t in loose.values() if t and t not in names)
    s.refs = len(names) - dangling
    return s


REF_PREFIX = 4096  # what is read of a loose ref: a valid one is far shorter


def _prefix(path: str) -> bytes:
    """What a loose ref says (b"" when unreadable); NotRegularFile when it is no file."""
    try:
        return read_prefix(path, REF_PREFIX, regular=True)
    except NotRegularFile:
        raise
    except OSError:
        return b""


def _read_head(git_dir: str, oid: re.Pattern[str], s: RefStore, watch: Watch) -> None:
    path = os.path.join(git_dir, "HEAD")
    try:
        data, st = read_all(path, REF_PREFIX)  # a valid HEAD is far shorter
    except FileNotFoundError:
        s.problems.append("HEAD is missing")
        return
    except OSError as exc:
        s.problems.append(problem("HEAD", exc))
        return
    watch.file(path, st)
    watch.content(path, data[:REF_PREFIX])  # a power loss can empty it in place, too
    value = data[:REF_PREFIX].decode("utf-8", "replace").split("\n", 1)[0].strip()
    s.signature.append(f"HEAD {value}")
    s.size_bytes += st.st_blocks * 512
    if value.startswith(_SYMREF):
        s.head = value[len(_SYMREF) :].strip()
    elif oid.fullmatch(value):
        s.head = value
    else:
        s.problems.append("HEAD is corrupt (neither a ref nor an object id)")


def _read_packed(path: str, hexsz: int, s: RefStore, watch: Watch) -> set[str]:
    try:
        data, st = read_all(path)
    except FileNotFoundError:
        return set()
    except OSError as exc:
        s.problems.append(problem("packed-refs", exc))
        return set()
    watch.file(path, st)
    s.size_bytes += st.st_blocks * 512
    s.newest_mtime = max(s.newest_mtime, st.st_mtime)
    s.signature.append(f"packed-refs {st.st_ino} {st.st_size} {st.st_mtime_ns}")
    names: set[str] = set()
    for number, raw in enumerate(data.decode("utf-8", "replace").split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line or line.startswith("#"):
            continue
        if line.startswith("^") and len(line) == hexsz + 1:
            continue
        hexid, _, name = line.partition(" ")
        # length and prefix catch damage; a full hex check per line costs a regex each
        if len(hexid) != hexsz or not name.startswith("refs/"):
            s.problems.append(f"packed-refs line {number} is corrupt")
            return names
        names.add(name)
    return names
