"""Git-native backup files: refs captured at one moment, and a bundle of the objects they
need beyond a parent backup, with the pack index beside it for restores at copy speed.

Capture: one ``for-each-ref`` gives every ref with its object id (symbolic refs with their
targets); HEAD is read from its file; each linked worktree's HEAD and per-worktree refs are
added under ``refs/custode/worktrees/`` (``custode.backup.roots``). The walk starts from
every one of them and from a detached HEAD: all that git counts as reachable. The objects
come from ``pack-objects --revs`` fed the captured ids, not ref names, so a push landing
meanwhile cannot slip into (or out of) the backup: it is exactly the captured state.
``^<oid>`` lines exclude a parent backup's tips that still exist here (one a force-push or
a deleted branch made unreachable is simply not excluded, so the chain never depends on a
vanished object). The pack is not thin: it holds no delta against an object outside it,
so it can be installed as it is.

Two ways to the pack, and ``PackFiles.method``/``reason`` say which was taken and why:

* **copy**, for a full bundle (nothing excluded) only, when the repository's objects are
  in exactly one pack (no loose object, no other pack, cruft or not, no promisor pack, no
  ``objects/info/alternates``) and that pack holds exactly the objects the captured refs
  reach. The second part is proved, not assumed: the pack and its ``.idx`` are opened
  first (a repack replacing them meanwhile cannot swap what is walked and copied), then
  ``rev-list --objects --count`` of the captured ids runs in an object directory holding
  only links to those descriptors and no alternates. rev-list dies on any missing object,
  so its success means every reachable object is in that pack, and its count equal to the
  ``.idx``'s means the pack holds nothing else. The bundle is then the header and the
  pack's bytes as they are, the stored index that ``.idx``; each is hashed as it is
  copied, and a trailer that is not the hash of the bytes before it, or an ``.idx`` that
  names another pack checksum, is refused (IntegrityError naming the file). The proving
  walk and the copy run at once (git on one core, the copy on another); a caller that
  passes ``Early`` also stores the copy during the walk, and is told to take it back
  when the walk does not prove it (a bare repository's pack usually is the closure).
* **generate**, anything else: ``pack-objects --revs`` fed the captured ids writes the pack
  by name into a scratch object directory that borrows the repository's objects through
  ``GIT_ALTERNATE_OBJECT_DIRECTORIES`` (git stages its temporary pack there, never in the
  repository, and no rename crosses filesystems; the repository's own alternates are
  still followed). Writing by name, git checks each reused object's CRC against its
  source ``.idx`` (a damaged source pack is refused, where ``--stdout`` copied it) and
  writes the ``.idx``: no ``index-pack``.

The walks trust no derived data (``DISTRUST_DERIVED``: no bitmap, commit-graph or
multi-pack-index, which can lie: one wrong bit in a ``.bitmap`` left a blob out). Then
a generated pack's object count is checked against ``rev-list --objects --count`` of the same
ids, a second walk that never reads bitmaps: a pack short of any object is refused, and
no backup is recorded. An incremental with a minimal header walks once: the walk that
finds its boundary lists its objects, and pack-objects packs that list (dying on a listed
object it lacks) into a pack whose count must be the list's. Otherwise both walks mark
the excluded side alike (``pack.useSparse=false``: the sparse walk may add objects), so
the counts agree exactly. In a shallow repository both stop at the commits of its
``shallow`` file, which the manifest records.

The bundle is git's own format (gitformat-bundle: ``# v2 git bundle`` for SHA-1, ``# v3``
with ``@object-format=sha256``), the prerequisites being the excluded tips (by default), then
the pack bytes; plain ``git fetch``/``git clone`` read it (the disaster-recovery path). custode
restores faster (``custode.backup.restore``): the pack is copied out of the bundle beside
its stored ``.idx`` into ``objects/pack/`` (no ``index-pack`` hashing every object).

A minimal header (``header_refs``, for an incremental whose refs are recorded elsewhere)
lists only the refs given and, as prerequisites, only the boundary commits the new pack
points at (``rev-list --boundary``, as ``git bundle create`` does), not every excluded tip:
an incremental may then have no prerequisite at all. Fetched in order without
``--prune``, such a chain still gives plain git every object; deletions are not in it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

from custode.backup.roots import worktree_refs
from custode.errors import IntegrityError
from custode.git.refsnapshot import SYMREF_PREFIX, snapshot
from custode.git.runner import DISTRUST_DERIVED, Git, ObjectDirs, git_dir_of

_OID_LEN = (40, 64)
_CHUNK = 1 << 20  # bytes copied at a time: memory stays flat whatever the pack's size
_FANOUT_DIR = re.compile(r"[0-9a-f]{2}")  # objects/ab/: loose objects
_PACK_NAME = re.compile(r"pack-(?:[0-9a-f]{40}|[0-9a-f]{64})")


@dataclass(frozen=True)
class Refs:
    """A repository's refs at one moment."""

    head: str  # "ref:refs/heads/main", an object id (detached), or "" (unreadable)
    refs: dict[str, str]  # name -> object id
    symrefs: dict[str, str] = field(default_factory=dict)  # name -> target (not HEAD)

    def detached(self) -> str:
        """HEAD's object id when it is detached, else ""."""
        if self.head.startswith(SYMREF_PREFIX) or len(self.head) not in _OID_LEN:
            return ""
        return self.head if all(c in "0123456789abcdef" for c in self.head) else ""

    def tips(self) -> set[str]:
        """What the walk starts from: every ref's object and a detached HEAD's."""
        head = self.detached()
        return set(self.refs.values()) | ({head} if head else set())

    def to_json(self) -> dict[str, object]:
        return {"head": self.head, "refs": self.refs, "symrefs": self.symrefs}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Refs:
        head, refs, symrefs = data.get("head"), data.get("refs"), data.get("symrefs", {})
        if not isinstance(head, str) or not isinstance(refs, dict) or not isinstance(symrefs, dict):
            raise IntegrityError("refs record is malformed (head, refs, symrefs)")
        return cls(head, {str(k): str(v) for k, v in refs.items()},
                   {str(k): str(v) for k, v in symrefs.items()})  # fmt: skip


@dataclass(frozen=True)
class PackFiles:
    """A written bundle and the index of the pack inside it, and how the pack was made."""

    bundle: Path
    index: Path | None  # None: the pack holds no object (only the refs changed)
    pack_name: str  # pack-<hash>: the name its .pack/.idx take in objects/pack ("" if empty)
    header_bytes: int  # where the pack starts inside the bundle
    prerequisites: tuple[str, ...]
    method: Literal["copy", "generate"] = "generate"  # the repository's pack as it is, or new
    reason: str = ""  # why, with numbers: "one pack of 91,413 objects, exactly the refs' closure"


@dataclass(frozen=True)
class Early:
    """How a caller stores a copied bundle while its proving walk still runs: ``deliver``
    stores the files; ``undo`` removes what it stored when the walk disproves the copy
    (then the pack is generated and ``deliver`` is not called for it)."""

    deliver: Callable[[PackFiles], None]
    undo: Callable[[], None]


def capture(git: Git, git_dir: Path) -> Refs:
    """Every ref with its object id, symbolic refs with their targets, HEAD, and each
    linked worktree's HEAD and per-worktree refs (in custode's namespace)."""
    snap = snapshot(git, git_dir)
    refs = snap.direct()
    for name, oid in worktree_refs(git_dir).items():
        at, n = name, 1
        while refs.get(at, oid) != oid:  # a real ref of that name: keep both
            at, n = name.replace("/worktrees/", f"/worktrees-{n}/", 1), n + 1
        refs[at] = oid
    return Refs(snap.head, refs, snap.symrefs)


def existing_commits(git: Git, git_dir: Path, oids: set[str]) -> set[str]:
    """The commits ``oids`` name (tags peeled) that the repository still has: a bundle's
    prerequisites must be commits; an excluded tag object is simply sent again, it is small,
    but the history under it is not."""
    commits, tags = _object_types(git, git_dir, sorted(oids))
    if tags:  # peeling parses a name per line (costly by the thousand): only for tags
        commits |= _object_types(git, git_dir, [f"{oid}^{{}}" for oid in sorted(tags)])[0]
    return commits


def _object_types(git: Git, git_dir: Path, names: list[str]) -> tuple[set[str], set[str]]:
    """Of ``names`` (object ids, or ``<id>^{}``): the ids that are commits, and the ids of
    tag objects; a missing object is in neither."""
    if not names:
        return set(), set()
    data = "".join(f"{name}\n" for name in names).encode()
    fmt = "--batch-check=%(objectname) %(objecttype)"
    out = git.run(["cat-file", "--buffer", fmt], repo=git_dir, input=data).text
    found: dict[str, set[str]] = {"commit": set(), "tag": set()}
    for oid, _, kind in (line.partition(" ") for line in out.splitlines()):
        found.get(kind, set()).add(oid)
    return found["commit"], found["tag"]


def write_bundle(
    git: Git,
    git_dir: Path,
    refs: Refs,
    exclude: set[str],
    out_dir: Path,
    *,
    object_format: str,
    header_refs: Mapping[str, str] | None = None,
    early: Early | None = None,
) -> PackFiles | None:
    """Write ``bundle`` (and ``index``) into ``out_dir`` for ``refs`` minus what ``exclude``
    reaches (only tips the repository still has are used). A tip the parent already had is
    in the chain: it is not sent again. With no new object the bundle still records the
    refs (a deleted branch), over an empty pack and without index.

    ``header_refs`` None: the header lists every ref and every excluded commit as a
    prerequisite. Given (a minimal header): it lists those refs (the ones added or moved
    since the parent; a detached HEAD that is a new tip is added as ``HEAD``) and only the
    boundary commits the pack needs; every new tip must be among them (ValueError).

    None: nothing to store, when there is no ref at all (an empty repository), or with
    ``header_refs`` empty and no new tip (the refs are recorded elsewhere).

    ``early``: a copied bundle is handed to ``early.deliver`` while the walk proving it
    runs (module docstring); the result then is that same PackFiles. Other bundles are
    only returned."""
    if not refs.tips():
        return None
    out_dir = out_dir.absolute()  # git runs elsewhere and is given object directories in it
    tips = sorted(refs.tips() - exclude)
    have = sorted(existing_commits(git, git_dir, exclude))
    revs = "".join(f"{oid}\n" for oid in tips) + "".join(f"^{oid}\n" for oid in have)
    listed = _listed(refs, tips, header_refs)
    if header_refs is not None and not listed:
        return None  # every new tip is listed (_listed), so there is no new object either
    prerequisites, walked = have, None
    if header_refs is not None and tips and have:
        # only what the pack's objects point at, as git bundle does; the same walk lists
        # the objects the pack is made of (no second walk)
        walked = _walk(git, git_dir, revs)
        prerequisites = walked.boundary
    elif header_refs is not None:
        prerequisites = []
    header = _header(listed, prerequisites, object_format)
    if tips and not exclude:
        copied = _copy(git, git_dir, revs, out_dir, header, object_format, early)
        if isinstance(copied, PackFiles):
            return copied
        why = copied
    else:
        why = "an incremental: only the objects new since the parent"
    return _generate(git, git_dir, tips, revs, out_dir, header, object_format,
                     tuple(prerequisites), why, walked)  # fmt: skip


def _listed(refs: Refs, tips: list[str], header_refs: Mapping[str, str] | None) -> list[str]:
    """The header's ref lines: ``<oid> <name>``, sorted by name."""
    named = dict(refs.refs if header_refs is None else header_refs)
    head = refs.detached()
    if head and (header_refs is None or head in tips):  # a clone of it checks that out
        named.setdefault("HEAD", head)
    if missing := set(tips) - set(named.values()):
        raise ValueError(f"header_refs names no ref for the new tips {sorted(missing)[:3]}")
    lines = [f"{oid} {name}" for name, oid in sorted(named.items()) if name != "HEAD"]
    return lines + ([f"{named['HEAD']} HEAD"] if "HEAD" in named else [])


@dataclass(frozen=True)
class _Walked:
    """One walk's result: the objects beyond the excluded side (``oid[ path]`` lines, as
    pack-objects reads them), their count, and the boundary commits."""

    objects: bytes
    count: int
    boundary: list[str]


def _walk(git: Git, git_dir: Path, revs: str) -> _Walked:
    """One walk of ``revs`` (no derived data): the objects they reach beyond the excluded
    side, and the excluded commits the new commits have as parents — what the pack may
    point at without holding (``--boundary``, as ``git bundle create`` lists them;
    boundary commits are printed with ``-`` and are not objects of the pack). Names stay
    with the objects: pack-objects groups deltas by them."""
    out = git.run(["rev-list", "--objects", "--boundary", "--stdin"], repo=git_dir,
                  input=revs.encode(), config=DISTRUST_DERIVED).stdout  # fmt: skip
    objects, boundary = [], set()
    for line in out.splitlines(keepends=True):
        if line.startswith(b"-"):
            boundary.add(line[1:].split(b" ", 1)[0].strip().decode("ascii"))
        elif line.strip():
            objects.append(line)
    return _Walked(b"".join(objects), len(objects), sorted(boundary))


def _generate(  # noqa: PLR0917  (one bundle's facts, passed through once)
    git: Git, git_dir: Path, tips: list[str], revs: str, out_dir: Path, header: bytes,
    object_format: str, prerequisites: tuple[str, ...], why: str, walked: _Walked | None,
) -> PackFiles:  # fmt: skip
    """A new pack of exactly the captured ids' objects, written by name into a scratch
    object directory that borrows the repository's objects (git stages its temporary pack
    there, never in the repository; when it reuses packed data it checks each object's
    CRC against the source's .idx), with the .idx git writes for it: no index-pack.

    ``walked`` (an incremental's walk, made without derived data): pack-objects is given
    its object list instead of walking again (it dies on a listed object it lacks), and
    the pack's count must be the list's. Otherwise pack-objects walks ``revs`` and a
    second walk that reads no derived data checks its count (``check_complete``)."""
    scratch, source = out_dir / "objects", out_dir / "source-objects"
    try:
        pack, objects = None, 0
        if tips and (walked is None or walked.count):
            (scratch / "pack").mkdir(parents=True, exist_ok=True)
            # the repository's objects by a plain path, whatever characters its own holds
            source.unlink(missing_ok=True)
            source.symlink_to(git_dir_of(git_dir) / "objects", target_is_directory=True)
            how = ["--revs"] if walked is None else []  # else: the walk's objects, listed
            name = git.run(["pack-objects", *how, "--delta-base-offset", "--quiet",
                            str(scratch / "pack" / "pack")], repo=git_dir,
                           input=revs.encode() if walked is None else walked.objects,
                           objects=ObjectDirs(scratch, (source,)),
                           config=(*DISTRUST_DERIVED, ("pack.useSparse", "false"),
                                   ("pack.writeReverseIndex", "false"))).text.strip()  # fmt: skip
            pack = scratch / "pack" / f"pack-{name}.pack"
            objects = _pack_objects(pack)
            check_complete(git, git_dir, revs, objects, walked.count if walked else None)
        bundle = out_dir / "bundle"
        with bundle.open("wb") as out:
            out.write(header)
            if pack is None or objects == 0:
                out.write(_empty_pack(object_format))
            else:
                with pack.open("rb") as src:
                    shutil.copyfileobj(src, out, _CHUNK)
        if pack is None or objects == 0:
            return PackFiles(bundle, None, "", len(header), prerequisites, "generate",
                             f"{why}; no new object")  # fmt: skip
        index = out_dir / "index"
        os.replace(pack.with_suffix(".idx"), index)
        return PackFiles(bundle, index, pack.stem, len(header), prerequisites, "generate",
                         f"{why}; {objects:,} objects packed")  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        source.unlink(missing_ok=True)


def _copy(  # noqa: PLR0917
    git: Git, git_dir: Path, revs: str, out_dir: Path, header: bytes, object_format: str,
    early: Early | None,
) -> PackFiles | str:  # fmt: skip
    """The copy path (module docstring): the bundle and index written from the
    repository's one pack (and given to ``early``) while git walks it, or why not (a
    reason for the generate path)."""
    found = _single_pack(git_dir_of(git_dir) / "objects")
    if isinstance(found, str):
        return found
    with contextlib.ExitStack() as stack:
        pinned = _pin(stack, found, _hash_size(object_format))
        if isinstance(pinned, str):
            return pinned
        pack_fd, idx_fd, count = pinned
        walked: list[int | str | BaseException] = []

        def walk() -> None:
            try:
                walked.append(_walk_pinned(git, git_dir, revs, out_dir, found.name,
                                           pack_fd, idx_fd))  # fmt: skip
            except BaseException as exc:  # raised below, in the caller's thread
                walked.append(exc)

        walker = threading.Thread(target=walk, name="custode-copy-walk", daemon=True)
        walker.start()
        delivered = False
        try:  # the descriptors stay open until git has finished with them
            _stream_checked(found, pack_fd, idx_fd, out_dir, header, object_format)
            reason = f"one pack of {count:,} objects, exactly the refs' closure"
            files = PackFiles(out_dir / "bundle", out_dir / "index", found.name, len(header),
                              (), "copy", reason)  # fmt: skip
            if early is not None:
                delivered = True  # a failed deliver is undone too: it may have stored part
                early.deliver(files)
        except BaseException:
            walker.join()
            if delivered and early is not None:
                early.undo()
            raise
        walker.join()
    result = walked[0] if walked else RuntimeError("the copy's walk ended without a result")
    if isinstance(result, BaseException):
        if delivered and early is not None:
            early.undo()
        raise result
    if result == count:
        return files  # bound: an error in the copy was raised above
    if delivered and early is not None:
        early.undo()
    return result if isinstance(result, str) else (
        f"one pack of {count:,} objects, but the refs reach {result:,} "
        "(it holds unreachable objects)")  # fmt: skip


def _pin(stack: contextlib.ExitStack, found: Path, size: int) -> tuple[int, int, int] | str:
    """Open descriptors of the pack and its index (closed with ``stack``) and its object
    count: what is walked and copied is that file, whatever a repack does to the names
    meanwhile. Else why not."""
    if not Path("/proc/self/fd").is_dir():
        return "no /proc/self/fd to pin the pack while it is walked"
    fds: list[int] = []
    for path in (found.with_suffix(".pack"), found.with_suffix(".idx")):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:  # gone (a repack) or a symlink: generate instead
            return f"{path.name} cannot be opened ({exc.strerror})"
        stack.callback(os.close, fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return f"{path.name} is not a regular file"
        fds.append(fd)
    count = _idx_objects(fds[1], size)
    if isinstance(count, str):
        return f"{found.name}.idx: {count}"
    head = os.pread(fds[0], 12, 0)
    if head[:4] != b"PACK" or int.from_bytes(head[8:12], "big") != count:
        return f"{found.name}.pack does not start as a pack of {count:,} objects"
    return fds[0], fds[1], count


def _single_pack(objects_dir: Path) -> Path | str:
    """``objects/pack/pack-<hash>`` (no suffix) when it is the repository's only store of
    objects, else why not, with numbers."""
    if os.path.lexists(objects_dir / "info" / "alternates"):
        return "objects/info/alternates borrows objects from another repository"
    loose = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(objects_dir) as entries:
        for entry in entries:
            if _FANOUT_DIR.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                with os.scandir(entry.path) as inner:
                    loose += sum(1 for _ in inner)
    pack_dir = objects_dir / "pack"
    try:
        names = sorted(os.listdir(pack_dir))
    except OSError:
        names = []
    packs = [n[: -len(".pack")] for n in names if n.endswith(".pack") and not n.startswith("tmp")]
    cruft = sum(1 for n in packs if f"{n}.mtimes" in names)
    if loose or len(packs) != 1:
        parts = [f"{len(packs)} pack{'s' * (len(packs) != 1)}"]
        parts += [f"{cruft} cruft"] if cruft else []
        parts += [f"{loose:,} loose object{'s' * (loose != 1)}"] if loose else []
        return " and ".join(parts)
    name = packs[0]
    if cruft:
        return "its one pack is a cruft pack"
    if f"{name}.promisor" in names:
        return "its one pack is a promisor pack (a partial clone)"
    if not _PACK_NAME.fullmatch(name) or f"{name}.idx" not in names:
        return f"its one pack {name!r} has no index or an unusual name"
    return pack_dir / name


def _hash_size(object_format: str) -> int:
    return hashlib.new(object_format).digest_size


def _idx_objects(fd: int, size: int) -> int | str:
    """The object count of a version 2 pack index (its fan-out's last entry), checked
    against the file's size; else why it cannot be copied."""
    head = os.pread(fd, 8 + 256 * 4, 0)
    if len(head) < 8 + 256 * 4 or head[:8] != b"\xfftOc\x00\x00\x00\x02":
        return "not a version 2 pack index"
    count = int.from_bytes(head[-4:], "big")
    least = 8 + 256 * 4 + count * (size + 8) + 2 * size
    have = os.fstat(fd).st_size
    if not least <= have <= least + count * 8:  # 64-bit offsets: at most one per object
        return f"{have} bytes do not fit {count:,} objects"
    return count


def _walk_pinned(  # noqa: PLR0917
    git: Git, git_dir: Path, revs: str, out_dir: Path, name: str, pack_fd: int, idx_fd: int
) -> int | str:
    """``rev-list --objects --count`` of ``revs`` in an object directory holding only the
    pinned pack: git dies on a missing object (rev-list's finish_object), so a count is
    proof that every object the refs reach is in that pack. The files are links to our
    open descriptors, which git inherits: a repack replacing the pack meanwhile cannot
    swap what is walked (nor what is then copied)."""
    pinned = out_dir / "pinned-objects"
    shutil.rmtree(pinned, ignore_errors=True)
    (pinned / "pack").mkdir(parents=True)
    try:
        for fd, suffix in ((pack_fd, ".pack"), (idx_fd, ".idx")):
            (pinned / "pack" / f"{name}{suffix}").symlink_to(f"/proc/self/fd/{fd}")
        result = git.run(["rev-list", "--objects", "--count", "--stdin"], repo=git_dir,
                         input=revs.encode(), config=DISTRUST_DERIVED, check=False,
                         objects=ObjectDirs(pinned), pass_fds=(pack_fd, idx_fd))  # fmt: skip
    finally:
        shutil.rmtree(pinned, ignore_errors=True)
    out = result.text.strip()
    if result.returncode != 0 or not out.isdigit():
        cause = result.stderr.decode("utf-8", "replace").strip().splitlines()[:1]
        return "its one pack lacks an object the refs reach" + (f" ({cause[0]})" if cause else "")
    return int(out)


def _stream_checked(  # noqa: PLR0917
    found: Path, pack_fd: int, idx_fd: int, out_dir: Path, header: bytes, object_format: str
) -> None:
    """The bundle (header, then the pack's bytes as they are) and the index, each hashed
    as it is copied: the pack's trailer must be the hash of all its bytes before it, the
    index's own trailer likewise, and the index must name that pack checksum."""
    size = _hash_size(object_format)
    with (out_dir / "bundle").open("wb") as out:
        out.write(header)
        pack_sum = _copy_hashed(pack_fd, out, object_format, size, f"{found}.pack")
    with (out_dir / "index").open("wb") as out:
        _copy_hashed(idx_fd, out, object_format, size, f"{found}.idx")
    if os.pread(idx_fd, size, os.fstat(idx_fd).st_size - 2 * size) != pack_sum:
        raise IntegrityError(
            f"{found}.idx does not belong to {found.name}.pack (its pack checksum differs); "
            "nothing was recorded: run git fsck on the repository"
        )


def _copy_hashed(fd: int, out: BinaryIO, object_format: str, size: int, name: str) -> bytes:
    """Copy the file behind ``fd`` to ``out`` and return its trailer, IntegrityError when
    the trailer is not the hash of the bytes before it."""
    total, at = os.fstat(fd).st_size, 0
    body = total - size
    digest = hashlib.new(object_format)
    while at < total:
        chunk = os.pread(fd, min(_CHUNK, total - at), at)
        if not chunk:
            break
        out.write(chunk)
        digest.update(chunk[: max(0, body - at)])
        at += len(chunk)
    trailer = os.pread(fd, size, body) if body >= 0 else b""
    if at != total or body < 0 or digest.digest() != trailer:
        raise IntegrityError(
            f"{name} is damaged: its checksum does not match its content; nothing was "
            "recorded: run git fsck on the repository and repair it from another copy"
        )
    return trailer


def check_complete(
    git: Git, git_dir: Path, revs: str, objects: int, walked: int | None = None
) -> None:
    """Refuse a pack that holds fewer (or more) objects than an independent walk of the
    same ids finds: ``rev-list`` reads no bitmap, and here no other derived data.
    ``walked``: that walk's count when it was already made (``_walk``)."""
    if walked is None:
        out = git.run(["rev-list", "--objects", "--count", "--stdin"], repo=git_dir,
                      input=revs.encode(), config=DISTRUST_DERIVED).text.strip()  # fmt: skip
        walked = int(out) if out.isdigit() else -1
    if walked != objects:
        raise IntegrityError(
            f"the backup's pack is incomplete: it holds {objects} objects where a walk of "
            f"the captured refs finds {walked}; nothing was recorded (derived data may be "
            "wrong: remove the packs' .bitmap files, the commit-graph and the "
            "multi-pack-index; git writes them again on its next repack)"
        )


def _empty_pack(object_format: str) -> bytes:
    body = b"PACK" + (2).to_bytes(4, "big") + (0).to_bytes(4, "big")
    return body + hashlib.new(object_format, body).digest()


def _header(listed: list[str], prerequisites: list[str], object_format: str) -> bytes:
    lines = ["# v2 git bundle"] if object_format == "sha1" else [
        "# v3 git bundle", f"@object-format={object_format}"]  # fmt: skip
    lines += [f"-{oid}" for oid in prerequisites]
    lines += listed
    return ("\n".join(lines) + "\n\n").encode()


def _pack_objects(pack: Path) -> int:
    with pack.open("rb") as f:
        head = f.read(12)
    if len(head) < 12 or head[:4] != b"PACK":
        raise IntegrityError(f"{pack} is not a pack")
    return int.from_bytes(head[8:12], "big")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
