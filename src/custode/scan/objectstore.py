"""Facts about a repository's object store (``objects/``), read from the filesystem only.

Counts follow ``git count-objects -v`` exactly: a loose object is a regular file in
``objects/XX/`` named by the rest of its hex id, its size is the disk usage
(``st_blocks * 512``, as git's ``on_disk_bytes``); a pack counts when both ``.pack``
and ``.idx`` exist, its size is ``.pack`` plus ``.idx`` bytes and its object count is read
from the index's fan-out table; garbage is what git reports as garbage (non-object files
in loose directories; pack-directory files that are not part of a complete pack).
"""

from __future__ import annotations

import math
import os
import re
import stat
import struct
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

from custode.base.fsread import NotRegularFile, Watch, problem, read_all, read_prefix

HEX_DIR = re.compile(r"[0-9a-f]{2}")
TEMP_PREFIXES = ("tmp_pack_", "tmp_idx_", "tmp_rev_", "tmp_bitmap_", "tmp_mtimes_", "tmp_obj_")
OTHER_DEPTH = 3
PACK_EXTS = ("idx", "rev", "pack", "bitmap", "keep", "promisor", "mtimes")


@dataclass(frozen=True)
class TempFile:
    """A lock or temporary file: stale once older than any git command could be."""

    path: str  # relative to the git directory
    bytes: int
    mtime: float


@dataclass
class ObjectStore:
    loose_objects: int = 0
    loose_objects_bytes: int = 0
    packs: int = 0
    pack_bytes: int = 0
    packed_objects: int = 0
    largest_pack_bytes: int = 0
    kept_packs: int = 0
    promisor_packs: int = 0  # fetched from a promisor remote: a partial clone's
    cruft_packs: int = 0
    pack_bitmaps: int = 0
    newest_pack_mtime: float = 0.0
    #: the mtime of the largest pack that is not a cruft pack: what the last full repack,
    #: clone or gc wrote (a geometric repack rewrites it rarely); 0.0 with no such pack
    base_pack_mtime: float = 0.0
    base_pack_bytes: int = 0
    base_pack_objects: int = 0  # its objects: those outside it are a geometric repack's
    #: the mtime of the oldest cruft pack, 0.0 with none
    oldest_cruft_mtime: float = 0.0
    cruft_pack_bytes: int = 0  # .pack and .idx bytes of the cruft packs
    #: the mtime of the oldest loose object, 0.0 with none: past the cruft expiration, the
    #: unreachable ones are git prune's (a cruft repack leaves them loose)
    oldest_loose_mtime: float = 0.0
    multi_pack_index: bool = False
    midx_packs: int = 0
    midx_bitmap: bool = False
    commit_graph: bool = False
    commit_graph_chain: int = 0
    commit_graph_changed_paths: bool = False
    alternates: list[str] = field(default_factory=list)
    garbage_files: int = 0
    garbage_bytes: int = 0
    temp: list[TempFile] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    size_bytes: int = 0
    newest_mtime: float = 0.0
    signature: list[str] = field(default_factory=list)  # fed into the repository fingerprint


class _Reader:
    def __init__(self, git_dir: str, hexsz: int, watch: Watch) -> None:
        self.watch = watch
        self.objects = os.path.join(git_dir, "objects")
        self.git_dir = git_dir
        self.hexsz = hexsz
        self.s = ObjectStore()

    def listing(self, path: str) -> Iterator[tuple[os.DirEntry[str], os.stat_result]]:
        """Entries of ``path`` with their lstat, minus any a git at work removed meanwhile."""
        for e in self.watch.scandir(path):
            try:
                yield e, e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue

    def account(self, st: os.stat_result) -> None:
        self.s.size_bytes += st.st_blocks * 512
        self.s.newest_mtime = max(self.s.newest_mtime, st.st_mtime)

    def temp(self, path: str, st: os.stat_result) -> None:
        rel = os.path.relpath(path, self.git_dir)
        self.s.temp.append(TempFile(rel, st.st_size, st.st_mtime))

    def garbage(self, st: os.stat_result | None) -> None:
        self.s.garbage_files += 1
        self.s.garbage_bytes += st.st_size if st else 0

    def read(self) -> ObjectStore:
        for entry in self.watch.scandir(self.objects):
            if HEX_DIR.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                self.loose_dir(entry.path)
            elif entry.name == "pack":
                self.pack_dir(entry.path)
            elif entry.name == "info":
                self.info_dir(entry.path)
            elif entry.name.startswith(("tmp_objdir", "incoming-")):
                self.walk_other(entry.path, temp=True)
            else:
                self.walk_other(entry.path, temp=entry.name.startswith(TEMP_PREFIXES))
        self.s.signature.append(f"loose {self.s.loose_objects} {self.s.loose_objects_bytes}")
        return self.s

    def loose_dir(self, path: str) -> None:
        # The hot loop of a scan (one iteration per loose object): kept free of calls.
        want = self.hexsz - 2
        count = disk = total = 0
        newest = self.s.newest_mtime
        oldest = self.s.oldest_loose_mtime or math.inf
        for e, st in self.listing(path):
            blocks = st.st_blocks * 512
            total += blocks
            newest = max(newest, st.st_mtime)
            name = e.name
            if len(name) == want and _is_hex(name) and e.is_file(follow_symlinks=False):
                count += 1
                disk += blocks
                oldest = min(oldest, st.st_mtime)
                continue
            self.garbage(st)
            if name.startswith("tmp_obj_"):
                self.temp(e.path, st)
            if stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                odd = NotRegularFile(e.path, st.st_mode)  # git fsck would wait on it for ever
                self.s.problems.append(problem(os.path.relpath(e.path, self.git_dir), odd))
        s = self.s
        s.loose_objects += count
        s.loose_objects_bytes += disk
        s.size_bytes += total
        s.newest_mtime = newest
        s.oldest_loose_mtime = oldest if count or s.oldest_loose_mtime else 0.0

    def pack_dir(self, path: str) -> None:
        groups: dict[str, dict[str, os.stat_result]] = defaultdict(dict)
        for e, st in self.listing(path):
            self.account(st)
            name = e.name
            if stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                # git opens packs without O_NONBLOCK: it would wait on this for ever
                odd = NotRegularFile(e.path, st.st_mode)
                self.s.problems.append(problem(f"objects/pack/{name}", odd))
                continue
            if name == "multi-pack-index":
                self.s.multi_pack_index = True
                self.s.midx_packs = _midx_packs(e.path)
                continue
            if name.startswith("multi-pack-index") and name.endswith((".bitmap", ".rev")):
                self.s.midx_bitmap |= name.endswith(".bitmap")
                continue
            base, dot, ext = name.rpartition(".")
            # .tmp-<pid>-pack-*: git repack's own, renamed into place at its end (they
            # count as a pack or garbage as git counts them, and are a leftover too)
            if name.startswith((*TEMP_PREFIXES, ".tmp-")) or ext == "lock":
                self.temp(e.path, st)
            if dot and ext in PACK_EXTS:
                groups[base][ext] = st
            else:
                self.garbage(st)
        for base, files in sorted(groups.items()):
            if "pack" in files and "idx" in files:
                self.pack(path, base, files)
            else:
                for st in files.values():
                    self.garbage(st)

    def pack(self, path: str, base: str, files: dict[str, os.stat_result]) -> None:
        try:
            count = _idx_objects(os.path.join(path, base + ".idx"))
        except FileNotFoundError:  # deleted by a repack at work since the listing
            return
        size = files["pack"].st_size + files["idx"].st_size
        s = self.s
        s.packs += 1
        s.pack_bytes += size
        s.largest_pack_bytes = max(s.largest_pack_bytes, files["pack"].st_size)
        s.newest_pack_mtime = max(s.newest_pack_mtime, files["pack"].st_mtime)
        s.kept_packs += "keep" in files
        s.promisor_packs += "promisor" in files
        if "mtimes" in files:
            s.cruft_packs += 1
            s.cruft_pack_bytes += size
            mtime = files["pack"].st_mtime
            s.oldest_cruft_mtime = min(s.oldest_cruft_mtime or mtime, mtime)
        elif files["pack"].st_size >= s.base_pack_bytes:
            s.base_pack_bytes = files["pack"].st_size
            s.base_pack_mtime = files["pack"].st_mtime
            s.base_pack_objects = count or 0
        s.pack_bitmaps += "bitmap" in files
        if count is None:
            s.problems.append(f"pack index {base}.idx is unreadable or corrupt")
        else:
            s.packed_objects += count
        s.signature.append(f"pack {base} {files['pack'].st_size}")

    def info_dir(self, path: str) -> None:
        for e in self.watch.scandir(path):
            if e.name == "commit-graphs" and e.is_dir(follow_symlinks=False):
                self.graph_chain(e.path)
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:  # renamed or deleted by a git at work
                continue
            self.account(st)
            if e.name == "commit-graph":
                self.s.commit_graph = True
                self.s.commit_graph_chain = max(self.s.commit_graph_chain, 1)
                self.s.commit_graph_changed_paths = _graph_has_bloom(e.path)
            elif e.name == "alternates":
                self.alternates(e.path)
            elif e.name.endswith(".lock") or e.name.startswith("tmp_"):
                self.temp(e.path, st)

    def graph_chain(self, path: str) -> None:
        chain: list[str] = []
        for e, st in self.listing(path):
            self.account(st)
            if e.name == "commit-graph-chain":
                chain = _lines(e.path)
            elif e.name.endswith(".lock") or e.name.startswith("tmp_"):
                self.temp(e.path, st)
        if not chain:
            return
        self.s.commit_graph = True
        self.s.commit_graph_chain = len(chain)
        top = os.path.join(path, f"graph-{chain[-1]}.graph")
        missing = [h for h in chain if not os.path.exists(os.path.join(path, f"graph-{h}.graph"))]
        if missing:
            self.s.problems.append(f"commit-graph chain names {len(missing)} missing layer(s)")
        else:
            self.s.commit_graph_changed_paths = _graph_has_bloom(top)

    def alternates(self, path: str) -> None:
        for name in alternates_entries("\n".join(_lines(path))):
            if "\0" in name:  # zeroed in place (a power loss): git cannot use it either
                self.s.problems.append("objects/info/alternates holds NUL bytes; restore it")
                continue
            target = os.path.normpath(os.path.join(self.objects, name))
            self.s.alternates.append(target)
            if not os.path.isdir(target):
                self.s.problems.append(f"alternate object store {target} does not exist")

    def walk_other(self, path: str, *, temp: bool, depth: int = 0) -> None:
        """Anything else in objects/ (e.g. a receive-pack quarantine: ``incoming-*/XX/…``).

        Depth-bounded: an untrusted repository must not send the scan across a tree.
        """
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            return
        self.account(st)
        if temp:
            self.temp(path, st)
        if depth < OTHER_DEPTH and stat.S_ISDIR(st.st_mode):
            for e in self.watch.scandir(path):
                self.walk_other(e.path, temp=False, depth=depth + 1)


def _is_hex(name: str) -> bool:
    try:
        int(name, 16)
    except ValueError:
        return False
    return True


def alternates_entries(text: str) -> list[str]:
    """The object directories an ``objects/info/alternates`` file names, as written (relative
    ones are relative to its ``objects``): blank and ``#`` lines dropped, git's quoting of
    odd names undone."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith('"') and line.endswith('"'):
            line = line[1:-1].encode().decode("unicode_escape")
        out.append(line)
    return out


def _lines(path: str) -> list[str]:
    try:
        data, _ = read_all(path)
    except OSError:
        return []
    return [ln.strip() for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]


def _idx_objects(path: str) -> int | None:
    """Objects in a pack: the last fan-out entry of its v2 (or v1) index (None: damaged).

    Raises FileNotFoundError when the index is gone."""
    try:
        head = read_prefix(path, 8 + 256 * 4)
    except FileNotFoundError:
        raise
    except OSError:
        return None
    if head[:4] == b"\xfftOc":
        if len(head) < 8 + 256 * 4:
            return None
        return int(struct.unpack(">I", head[8 + 255 * 4 : 8 + 256 * 4])[0])
    if len(head) < 256 * 4:
        return None
    return int(struct.unpack(">I", head[255 * 4 : 256 * 4])[0])


def _midx_packs(path: str) -> int:
    try:
        head = read_prefix(path, 12)
    except OSError:
        return 0
    if len(head) < 12 or head[:4] != b"MIDX":
        return 0
    return int(struct.unpack(">I", head[8:12])[0])


def _graph_has_bloom(path: str) -> bool:
    """Whether a commit-graph file carries changed-path Bloom filters (a BIDX chunk)."""
    try:
        head = read_prefix(path, 8 + 12 * 256)  # the header and the largest chunk table
    except OSError:
        return False
    if len(head) < 8 or head[:4] != b"CGPH":
        return False
    table = head[8 : 8 + 12 * (head[6] + 1)]
    return any(table[i : i + 4] == b"BIDX" for i in range(0, len(table), 12))


def read_object_store(git_dir: str, hexsz: int, watch: Watch) -> ObjectStore:
    return _Reader(git_dir, hexsz, watch).read()
