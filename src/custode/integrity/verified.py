"""What a clean check proved about one repository, and what is there now: the record an
incremental check starts from (``integrity.incremental``).

A pack and its index are immutable once written: git names a pack by its content and
never rewrites it. A pack is identified by what the file system says of its ``.pack`` and
``.idx`` (size, mtime and ctime in nanoseconds, inode, device). Any write to a file, even
one that restores its mtime with ``utime``, moves its ctime; a pack replaced by another
file has another inode. So a pack whose key is unchanged holds the bytes that were
verified. Two limits, both handled here rather than trusted away:

* **A write in the same clock tick.** ctime has the kernel's coarse clock (a few ms; a
  whole second on some file systems), so a write right after the stat could keep it.
  A file changed less than ``SETTLE_NS`` (``SETTLE_COARSE_NS`` where timestamps are whole
  seconds) before it was looked at is not recorded as verified: it is read again next
  time.
* **Damage below the file system** (a disk's bit rot) changes no timestamp. Each pack is
  read again at the latest ``REVERIFY_S`` (plus a spread taken from its name, so a fleet
  verified on one night does not come due on one night) after it was last verified.

The record (``Record``) keeps, per repository: every pack present when it was made, with
its key and when it was last verified in full (``None`` after a connectivity check, which
reads no pack in full); the loose objects present then; the ref tips whose reachability
was proven (every object reachable from them was present); the keys of the commit-graph
and multi-pack-index files verified; and the format warnings the objects carry (so a
check that skips a pack still reports them). It is stored as JSON in the history
(``StateDB.check_records``); a record that does not parse is no record: the next check is
whole.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from custode.base.fsread import read_prefix

RECORD_VERSION = 1
SETTLE_NS = 100_000_000  # 0.1 s: well above the kernel's coarse clock tick
SETTLE_COARSE_NS = 2_000_000_000  # whole-second (or 2 s) timestamps
REVERIFY_S = 21 * 86400  # every pack read in full again within 21 to 35 days
REVERIFY_SPREAD_S = 14 * 86400
MAX_LOOSE = 200_000  # loose objects recorded at most (beyond: reachability is walked whole)
MAX_WARNING_KEYS = 5_000  # format warnings kept by object id (beyond: counts only)

_PACK = re.compile(r"pack-([0-9a-f]{40}|[0-9a-f]{64})\.pack")
_HEX2 = re.compile(r"[0-9a-f]{2}")
_LOOSE = re.compile(r"[0-9a-f]{38}|[0-9a-f]{62}")
#: an object id (SHA-1 or SHA-256), as the record keeps it and git lists it
OID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")

FileKey = tuple[int, int, int, int, int]  # size, mtime_ns, ctime_ns, inode, device
PackKey = tuple[FileKey, FileKey]  # the .pack's, the .idx's


def file_key(st: os.stat_result) -> FileKey:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def settled(key: FileKey, now_ns: int) -> bool:
    """The file's last change is far enough in the past that any later write moves its
    ctime (module docstring)."""
    coarse = key[1] % 1_000_000_000 == 0 and key[2] % 1_000_000_000 == 0
    margin = SETTLE_COARSE_NS if coarse else SETTLE_NS
    return now_ns - max(key[1], key[2]) > margin


def due(name: str, verified_at: float, now: float) -> bool:
    """The pack ``name`` was last read in full long enough ago to be read again."""
    spread = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % REVERIFY_SPREAD_S
    return now - verified_at >= REVERIFY_S + spread


@dataclass(frozen=True)
class Snapshot:
    """What is in the repository's object store now (nothing read but directories and
    stats: a loose object's type is read only where it is needed, ``loose_type``).
    ``doubts``: what makes an incremental check unsound here, each a reason; a whole check
    is run instead."""

    packs: dict[str, PackKey]  # pack name → (.pack key, .idx key)
    loose: frozenset[str]  # the loose objects' ids
    graphs: dict[str, tuple[str, bool]]  # "commit-graph" / "multi-pack-index" → (digest of
    # its files' keys, "" when there is none; all its files settled)
    doubts: tuple[str, ...]
    taken_ns: int


def snapshot(git_dir: Path, *, loose: bool = True) -> Snapshot:
    """The object store of ``git_dir`` as it is now (``Snapshot``). ``loose=False``: the
    loose-object directories are not listed (the caller knows them empty; up to 256
    directories listed is most of a snapshot's cost) and ``Snapshot.loose`` is empty."""
    taken_ns = time.time_ns()
    objects = git_dir / "objects"
    info = objects / "info"
    doubts = list(whole_only(git_dir))
    packs, pack_doubts = _packs(objects / "pack")
    doubts += pack_doubts
    loose_objects, loose_doubts = _loose(objects) if loose else (frozenset[str](), [])
    doubts += loose_doubts
    graphs = {
        "commit-graph": _digest([info / "commit-graph"], info / "commit-graphs", taken_ns),
        "multi-pack-index": _digest([objects / "pack" / "multi-pack-index"], None, taken_ns),
    }
    return Snapshot(packs, loose_objects, graphs, tuple(doubts), taken_ns)


def whole_only(git_dir: Path) -> tuple[str, ...]:
    """What makes an incremental check of ``git_dir`` unsound whatever changed, each a
    reason (the first of ``Snapshot.doubts``): objects borrowed from another repository,
    linked worktrees (their HEADs, indexes and reflogs hold objects the tips do not name),
    a shallow history. Three ``lstat``: the caller can skip everything else, since such a
    repository is checked whole and keeps no record."""
    doubts: list[str] = []
    if _exists(git_dir / "objects" / "info" / "alternates"):
        doubts.append("it borrows objects from another repository (alternates)")
    if _exists(git_dir / "worktrees"):
        doubts.append("it has linked worktrees")
    if _exists(git_dir / "shallow"):
        doubts.append("it is shallow")
    return tuple(doubts)


#: What the refs' reachability stands on besides the objects: HEAD, the packed refs, the
#: index, the config (extensions, fsck settings), grafts, and every file below refs/ and
#: logs/ (loose refs, reflogs).
_REF_FILES = ("HEAD", "packed-refs", "index", "config", "info/grafts", "objects/info/grafts")
_REF_TREES = ("refs", "logs")


def refs_state(git_dir: Path, now_ns: int | None = None) -> str:
    """A digest of the keys (``file_key``: any write moves the ctime) of every file the
    refs' reachability stands on (``_REF_FILES``, every file below ``_REF_TREES``), by
    path; "" when one is not settled or a directory cannot be read: then it proves
    nothing. Equal digests: not one of those files was written, added or removed."""
    now = time.time_ns() if now_ns is None else now_ns
    paths = [git_dir / name for name in _REF_FILES]
    for tree in _REF_TREES:
        failed: list[OSError] = []
        for top, dirs, files in os.walk(git_dir / tree, onerror=failed.append):
            dirs.sort()
            links = [d for d in dirs if os.path.islink(os.path.join(top, d))]  # not walked
            paths += [Path(top, name) for name in sorted([*files, *links])]
        if [e for e in failed if not isinstance(e, FileNotFoundError)]:
            return ""
    keyed, calm, readable = _keyed(paths, now, lambda p: str(p.relative_to(git_dir)))
    return _sha(keyed) if calm and readable else ""


def _exists(path: Path) -> bool:
    try:
        path.lstat()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: in doubt
    return True


def _packs(pack_dir: Path) -> tuple[dict[str, PackKey], list[str]]:
    packs: dict[str, PackKey] = {}
    doubts: list[str] = []
    try:
        names = sorted(os.listdir(pack_dir))
    except FileNotFoundError:
        return packs, doubts
    except OSError as exc:
        return packs, [f"its pack directory cannot be listed ({exc.strerror})"]
    present = set(names)
    for name in names:
        if name.endswith(".promisor"):
            doubts.append("it is a partial clone (promisor packs)")
        if not _PACK.fullmatch(name):
            continue
        base = name[: -len(".pack")]
        if f"{base}.idx" not in present:
            doubts.append(f"pack {name} has no index (being written?)")
            continue
        try:
            pst = os.lstat(pack_dir / name)
            ist = os.lstat(pack_dir / f"{base}.idx")
        except OSError as exc:
            doubts.append(f"pack {name} cannot be read ({exc.strerror})")
            continue
        if not (stat.S_ISREG(pst.st_mode) and stat.S_ISREG(ist.st_mode)):
            doubts.append(f"pack {name} or its index is not a regular file")
            continue
        packs[base] = (file_key(pst), file_key(ist))
    for name in names:
        if name.endswith(".idx") and f"{name[: -len('.idx')]}.pack" not in present:
            doubts.append(f"index {name} has no pack")
    return packs, sorted(set(doubts))


def _loose(objects: Path) -> tuple[frozenset[str], list[str]]:
    """The loose objects' ids (the names only: nothing is opened)."""
    loose: set[str] = set()
    try:
        dirs = [d for d in os.listdir(objects) if _HEX2.fullmatch(d)]
    except OSError as exc:
        return frozenset(loose), [f"its object directory cannot be listed ({exc.strerror})"]
    for d in sorted(dirs):
        where = os.path.join(objects, d)  # strings: pathlib would double the cost
        try:
            names = os.listdir(where)
        except NotADirectoryError:
            continue
        except OSError as exc:
            return frozenset(loose), [f"objects/{d} cannot be listed ({exc.strerror})"]
        loose.update(d + name for name in names if _LOOSE.fullmatch(name))
    return frozenset(loose), []


def loose_path(git_dir: Path, oid: str) -> str:
    """Where the loose object ``oid`` of ``git_dir`` is (a string: see ``_loose``)."""
    return os.path.join(git_dir, "objects", oid[:2], oid[2:])


def loose_type(path: str) -> str:
    """A loose object's type from its zlib header (``?`` when it cannot be read: fsck then
    says why). One open and read per object: only the caller that needs a type pays it."""
    try:  # never blocks: a FIFO planted as an object would hang a plain open for ever
        head = read_prefix(path, 64, regular=True)
        text = zlib.decompressobj().decompress(head, 32)
    except (OSError, zlib.error):
        return "?"
    kind = text.split(b" ", 1)[0]
    return kind.decode() if kind in {b"blob", b"tree", b"commit", b"tag"} else "?"


def _digest(files: list[Path], directory: Path | None, now_ns: int) -> tuple[str, bool]:
    """A digest of the keys of ``files`` and of every file in ``directory`` ("" if none),
    and whether all of them are settled."""
    parts: list[str] = []
    calm = True
    paths = list(files)
    if directory is not None:
        try:
            paths += [directory / n for n in sorted(os.listdir(directory))]
        except FileNotFoundError:
            pass
        except OSError:
            parts.append(f"{directory.name}: unreadable")
    keyed, calm, _ = _keyed(paths, now_ns, lambda p: p.name)
    parts += keyed
    return (_sha(parts) if parts else ""), calm


def _keyed(
    paths: list[Path], now_ns: int, name: Callable[[Path], str]
) -> tuple[list[str], bool, bool]:
    """``name: key`` of each of ``paths`` that exists (``name: unreadable`` when it cannot
    be looked at), whether all of them are settled, and whether all could be looked at."""
    parts: list[str] = []
    calm = readable = True
    for path in paths:
        try:
            key = file_key(os.lstat(path))
        except FileNotFoundError:
            continue
        except OSError:
            parts.append(f"{name(path)}: unreadable")
            readable = False
            continue
        calm = calm and settled(key, now_ns)
        parts.append(f"{name(path)}:{key}")
    return parts, calm, readable


def _sha(parts: list[str]) -> str:
    # surrogateescape: a file name that is not UTF-8 is bytes git wrote, not an error
    return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class PackRecord:
    key: PackKey
    verified_at: float | None  # when read in full (Unix time); None: only known present
    settled: bool = True  # False: changed just before it was looked at; counts as gone next


@dataclass(frozen=True)
class Record:
    """What the last clean check proved (module docstring)."""

    packs: dict[str, PackRecord]
    loose: frozenset[str] | None  # None: too many to record
    tips: tuple[str, ...]  # sorted, unique
    graphs: dict[str, str]  # verified: name → digest of its files' keys
    warnings: dict[str, str] = field(default_factory=dict)  # "msgId oid" → git's line
    warning_counts: dict[str, int] = field(default_factory=dict)  # msgId → objects
    #: ``refs_state`` taken before the proven tips were listed; "" when unsettled
    refs: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "packs": {
                n: {
                    "key": [list(p.key[0]), list(p.key[1])],
                    "verified_at": p.verified_at,
                    "settled": p.settled,
                }
                for n, p in sorted(self.packs.items())
            },
            "loose": None if self.loose is None else sorted(self.loose),
            "tips": list(self.tips),
            "graphs": dict(self.graphs),
            "warnings": dict(self.warnings),
            "warning_counts": dict(self.warning_counts),
            "refs": self.refs,
        }


def from_json(data: object) -> Record | None:
    """The record stored as ``data``; None when it is not one this version wrote (the
    history is another process's file: nothing in it is trusted blindly)."""
    try:
        return _parse(data)
    except (TypeError, ValueError, KeyError, AttributeError):
        return None


def _parse(data: object) -> Record | None:
    if not isinstance(data, dict) or data.get("version") != RECORD_VERSION:
        return None
    packs: dict[str, PackRecord] = {}
    for name, entry in data["packs"].items():
        if not _PACK.fullmatch(f"{name}.pack"):
            return None
        pack_key, idx_key = (_key(k) for k in entry["key"])
        at = entry["verified_at"]
        if at is not None and not isinstance(at, (int, float)):
            return None
        calm = entry["settled"]
        if not isinstance(calm, bool):
            return None
        packs[name] = PackRecord((pack_key, idx_key), None if at is None else float(at), calm)
    raw_loose = data["loose"]
    loose = None if raw_loose is None else frozenset(_oids(raw_loose))
    tips = tuple(_oids(data["tips"]))
    graphs = {str(k): str(v) for k, v in data["graphs"].items()}
    warnings = {str(k): str(v) for k, v in data.get("warnings", {}).items()}
    counts = {str(k): int(v) for k, v in data.get("warning_counts", {}).items()}
    refs = data.get("refs", "")
    if not isinstance(refs, str):
        return None
    return Record(packs, loose, tips, graphs, warnings, counts, refs)


def _key(raw: object) -> FileKey:
    if not isinstance(raw, list) or len(raw) != 5 or not all(type(v) is int for v in raw):
        raise ValueError("bad key")
    return (raw[0], raw[1], raw[2], raw[3], raw[4])


def _oids(raw: object) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(o, str) and OID.fullmatch(o) for o in raw):
        raise ValueError("bad object ids")
    return list(raw)
