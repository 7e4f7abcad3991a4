"""RepoState: the cheap facts about one repository, read from the filesystem only.

No git process runs on this path: reading ten thousand repositories must take seconds.
The object store and the refs are read by their own modules; this one reads the rest of
the git directory (config, worktrees, locks, logs) for its size and temporary files,
and combines everything with a fingerprint that changes whenever refs or objects change.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from custode.base.fsread import NotRegularFile, UnfitFile, Watch, problem, read_all
from custode.base.units import counted
from custode.git import configfile as gitconfig
from custode.git import files as gitfiles
from custode.scan.discovery import Repository
from custode.scan.objectstore import ObjectStore, TempFile, read_object_store
from custode.scan.refstore import RefStore, read_ref_store

HEXSZ = {"sha1": 40, "sha256": 64}
_READ_KEYS = ("objectformat", "partialclone", "promisor")  # lower-case words of keys we read
_OWN = {"objects", "refs", "packed-refs", "HEAD", "modules"}  # read elsewhere, or not ours


@dataclass(frozen=True)
class RepoState:
    """Everything ``custode status`` knows about a repository. Sizes are bytes on disk
    except ``pack_bytes`` (file sizes of .pack and .idx, as ``git count-objects``)."""

    path: str
    relative: str
    root: str
    git_dir: str
    kind: str
    bare: bool
    object_format: str
    head: str | None
    loose_objects: int
    loose_objects_bytes: int
    packs: int
    pack_bytes: int
    packed_objects: int
    largest_pack_bytes: int
    kept_packs: int
    cruft_packs: int
    pack_bitmaps: int
    multi_pack_index: bool
    midx_packs: int
    midx_bitmap: bool
    commit_graph: bool
    commit_graph_chain: int
    commit_graph_changed_paths: bool
    loose_refs: int
    packed_refs: int
    refs: int
    symbolic_refs: int
    garbage_files: int
    garbage_bytes: int
    temp_files: tuple[TempFile, ...]
    alternates: tuple[str, ...]
    borrowed_by: tuple[str, ...]
    superproject: str | None
    worktrees: int
    prunable_worktrees: int
    #: git prunes a dead worktree once its index is older than --expire (at once without
    #: one): the oldest such index mtime, 0.0 when one has none (or no worktree is dead)
    dead_worktree_mtime: float
    gc_log: bool  # git gc --auto left gc.log: its last background run failed
    size_bytes: int
    newest_mtime: float
    newest_pack_mtime: float
    base_pack_mtime: float  # the largest non-cruft pack's: when the last full repack ran
    oldest_cruft_mtime: float  # 0.0 without cruft packs
    fingerprint: str
    #: the oldest loose object's mtime (0.0 with none): older than the cruft expiration,
    #: an unreachable one is due for git prune
    oldest_loose_mtime: float = 0.0
    base_pack_bytes: int = 0  # the largest non-cruft pack's .pack bytes
    base_pack_objects: int = 0  # its objects (0 with no such pack, or its index unreadable)
    cruft_pack_bytes: int = 0  # .pack and .idx bytes of the cruft packs (in pack_bytes)
    #: what makes it a partial clone ("" if nothing does): objects it lacks live on a
    #: promisor remote, and custode never fetches (git would run the remote's programs)
    partial_clone: str = ""
    problems: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in _FIELDS}
        data["temp_files"] = [
            {"path": t.path, "bytes": t.bytes, "mtime": t.mtime} for t in self.temp_files
        ]
        return data


_FIELDS = tuple(f.name for f in fields(RepoState))


def _object_format(config: dict[str, str]) -> str:
    return config.get("extensions.objectformat", "sha1").lower()


def inspect(repo: Repository, watch: Watch | None = None) -> RepoState:
    """Read ``repo``; problems (corrupt files, missing HEAD) are recorded, never raised.

    ``watch`` collects what was read, to tell later whether it may have changed.
    """
    git_dir = str(repo.git_dir)
    problems: list[str] = []
    watch = Watch() if watch is None else watch
    try:
        data, st = read_all(os.path.join(git_dir, "config"), gitconfig.CONFIG_MAX)
        watch.file(os.path.join(git_dir, "config"), st)
        text = data.decode("utf-8", "replace")
    except FileNotFoundError:
        problems.append("config is missing")
        text = ""
    except OSError as exc:
        problems.append(problem("config", exc))
        text = ""
    # parsing is only needed when the file can name a non-default value we read
    lowered = text.lower()
    config = gitconfig.parse(text) if any(w in lowered for w in _READ_KEYS) else {}
    fmt = _object_format(config)
    if fmt not in HEXSZ:
        problems.append(f"unknown object format {fmt!r}")
    hexsz = HEXSZ.get(fmt, 40)
    rest = _read_rest(git_dir, watch)
    objects = read_object_store(git_dir, hexsz, watch)
    refs = read_ref_store(git_dir, hexsz, watch)
    for alternate in objects.alternates:
        watch.path(alternate)
    problems += refs.problems + objects.problems + rest.problems
    # what git would hang on or read without end (some already said by the readers above)
    doubts = gitfiles.doubts(
        git_dir, config=text, watch=watch, skip=gitfiles.SCANNED, listing=rest.listing
    )
    problems = list(dict.fromkeys(problems + doubts))
    partial = _partial_clone(config, objects)
    if partial:
        problems.append(
            f"partial clone ({partial}): custode never fetches the objects it lacks, and "
            "does not maintain or back up what it cannot see; make it a full clone to have "
            "custode look after it"
        )
    digest = hashlib.blake2b(digest_size=16)
    for part in (*refs.signature, *objects.signature):
        digest.update(part.encode())
        digest.update(b"\n")
    return _assemble(
        repo,
        fmt=fmt,
        objects=objects,
        refs=refs,
        rest=rest,
        problems=problems,
        fingerprint=digest.hexdigest(),
        partial_clone=partial,
    )


def _partial_clone(config: dict[str, str], objects: ObjectStore) -> str:
    """What makes the repository a partial clone, as git sees it, or "" if nothing does.

    ``extensions.partialClone`` is read only from this file (git reads extensions without
    includes); a promisor remote set in an included file is missed here, but git still
    cannot fetch through the runner: the repository then fails where it needs an object.
    """
    if remote := config.get("extensions.partialclone"):
        return f"extensions.partialClone = {remote}"
    for key, value in config.items():
        if key.startswith("remote.") and key.endswith(".promisor") and gitconfig.is_true(value):
            return f"{key} = true"
    if objects.promisor_packs:
        return counted(objects.promisor_packs, "promisor pack")
    return ""


def _assemble(
    repo: Repository,
    *,
    fmt: str,
    objects: ObjectStore,
    refs: RefStore,
    rest: _Rest,
    problems: list[str],
    fingerprint: str,
    partial_clone: str = "",
) -> RepoState:
    return RepoState(
        path=str(repo.path),
        relative=repo.relative,
        root=str(repo.root),
        git_dir=str(repo.git_dir),
        kind=repo.kind,
        bare=repo.bare,
        object_format=fmt,
        head=refs.head,
        loose_objects=objects.loose_objects,
        loose_objects_bytes=objects.loose_objects_bytes,
        packs=objects.packs,
        pack_bytes=objects.pack_bytes,
        packed_objects=objects.packed_objects,
        largest_pack_bytes=objects.largest_pack_bytes,
        kept_packs=objects.kept_packs,
        cruft_packs=objects.cruft_packs,
        pack_bitmaps=objects.pack_bitmaps,
        multi_pack_index=objects.multi_pack_index,
        midx_packs=objects.midx_packs,
        midx_bitmap=objects.midx_bitmap,
        commit_graph=objects.commit_graph,
        commit_graph_chain=objects.commit_graph_chain,
        commit_graph_changed_paths=objects.commit_graph_changed_paths,
        loose_refs=refs.loose_refs,
        packed_refs=refs.packed_refs,
        refs=refs.refs,
        symbolic_refs=refs.symbolic_refs,
        garbage_files=objects.garbage_files,
        garbage_bytes=objects.garbage_bytes,
        temp_files=tuple(sorted(objects.temp + refs.temp + rest.temp, key=lambda t: t.path)),
        alternates=tuple(objects.alternates),
        borrowed_by=(),
        superproject=str(repo.superproject) if repo.superproject else None,
        worktrees=rest.worktrees,
        prunable_worktrees=rest.prunable_worktrees,
        dead_worktree_mtime=rest.dead_worktree_mtime,
        gc_log=rest.gc_log,
        size_bytes=objects.size_bytes + refs.size_bytes + rest.size_bytes,
        newest_mtime=max(objects.newest_mtime, refs.newest_mtime, rest.newest_mtime),
        newest_pack_mtime=objects.newest_pack_mtime,
        base_pack_mtime=objects.base_pack_mtime,
        oldest_cruft_mtime=objects.oldest_cruft_mtime,
        fingerprint=fingerprint,
        oldest_loose_mtime=objects.oldest_loose_mtime,
        base_pack_bytes=objects.base_pack_bytes,
        base_pack_objects=objects.base_pack_objects,
        cruft_pack_bytes=objects.cruft_pack_bytes,
        partial_clone=partial_clone,
        problems=tuple(problems),
    )


@dataclass
class _Rest:
    worktrees: int = 0
    prunable_worktrees: int = 0
    dead_worktree_mtime: float = 0.0
    gc_log: bool = False
    size_bytes: int = 0
    newest_mtime: float = 0.0
    temp: list[TempFile] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    listing: set[str] = field(default_factory=set)  # the names in the git dir


#: Types of file that git (and custode) would block on or read without end where it
#: expects a regular file (a socket is fine: ``git fsmonitor--daemon`` keeps one here).
_ODD = (stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK)
GITDIR_MAX = 4096  # bytes read of a worktree's gitdir file: one path


def _read_rest(top: str, watch: Watch) -> _Rest:
    rest = _Rest()
    stack = [top]
    while stack:
        current = stack.pop()
        try:
            entries = watch.scandir(current)
        except OSError:
            continue
        if current == top:
            rest.listing = {e.name for e in entries}
        for e in entries:
            if current == top and e.name in _OWN:
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            rest.size_bytes += st.st_blocks * 512
            rest.newest_mtime = max(rest.newest_mtime, st.st_mtime)
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
                continue
            if stat.S_IFMT(st.st_mode) in _ODD:
                rel = os.path.relpath(e.path, top)
                rest.problems.append(problem(rel, NotRegularFile(e.path, st.st_mode)))
                continue
            if e.name.endswith(".lock") or e.name == "gc.pid":
                rest.temp.append(TempFile(os.path.relpath(e.path, top), st.st_size, st.st_mtime))
            if current == top and e.name == "gc.log":
                rest.gc_log = st.st_size > 0
    _read_worktrees(os.path.join(top, "worktrees"), rest, watch)
    return rest


def _read_worktrees(path: str, rest: _Rest, watch: Watch) -> None:
    try:
        entries = watch.scandir(path)
    except OSError:
        return
    for e in entries:
        if not e.is_dir(follow_symlinks=False):
            continue
        rest.worktrees += 1
        wt = Path(e.path)
        if (wt / "locked").exists():
            continue
        try:
            raw, _ = read_all(str(wt / "gitdir"), GITDIR_MAX)
        except UnfitFile as exc:  # git worktree prune would block on it, or read on
            rest.problems.append(problem(f"worktrees/{e.name}/gitdir", exc))
            continue
        except OSError:
            _dead_worktree(rest, None)
            continue
        target = raw.decode("utf-8", "replace").strip()
        if "\0" in target:  # zeroed by a power loss: names nothing, as git prune sees it
            target = ""
        watch.path(os.path.dirname(target))  # the worktree itself lives outside the git dir
        if not target or not os.path.exists(target):
            _dead_worktree(rest, wt / "index")


def _dead_worktree(rest: _Rest, index: Path | None) -> None:
    try:
        mtime = index.stat().st_mtime if index else 0.0
    except OSError:
        mtime = 0.0
    first = rest.prunable_worktrees == 0
    rest.prunable_worktrees += 1
    rest.dead_worktree_mtime = mtime if first else min(rest.dead_worktree_mtime, mtime)


def link_borrowers(states: list[RepoState]) -> list[RepoState]:
    """Fill ``borrowed_by``: which repositories' alternates point at each one's objects."""
    borrowers_of = [s for s in states if s.alternates]
    if not borrowers_of:
        return states
    by_objects = {os.path.realpath(os.path.join(s.git_dir, "objects")): s for s in states}
    borrowers: dict[str, list[str]] = {}
    for s in borrowers_of:
        for alt in s.alternates:
            lender = by_objects.get(os.path.realpath(alt))
            if lender is not None:
                borrowers.setdefault(lender.path, []).append(s.relative)
    return [
        replace(s, borrowed_by=tuple(sorted(borrowers[s.path]))) if s.path in borrowers else s
        for s in states
    ]


def inspect_failed(repo: Repository, message: str) -> RepoState:
    """A placeholder state for a repository that could not be read at all."""
    return _assemble(
        repo,
        fmt="unknown",
        objects=ObjectStore(),
        refs=RefStore(),
        rest=_Rest(),
        problems=[message],
        fingerprint="",
    )
