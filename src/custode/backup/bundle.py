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

The walk trusts no derived data (``DISTRUST_DERIVED``: no bitmap, commit-graph or
multi-pack-index, which can lie: one wrong bit in a ``.bitmap`` left a blob out). Then
the pack's object count is checked against ``rev-list --objects --count`` of the same
ids, a second walk that never reads bitmaps: a pack short of any object is refused, and
no backup is recorded. Both walks mark the excluded side alike (``pack.useSparse=false``:
the sparse walk may add objects), so the counts agree exactly. In a shallow repository
both stop at the commits of its ``shallow`` file, which the manifest records.

The bundle is git's own format (gitformat-bundle: ``# v2 git bundle`` for SHA-1, ``# v3``
with ``@object-format=sha256``), the prerequisites being the excluded tips, then the pack
bytes; plain ``git fetch``/``git clone`` read it (the disaster-recovery path). custode
restores faster (``custode.backup.restore``): the pack is copied out of the bundle beside
its stored ``.idx`` into ``objects/pack/`` (no ``index-pack`` hashing every object).
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from custode.backup.roots import worktree_refs
from custode.errors import IntegrityError
from custode.git.refsnapshot import SYMREF_PREFIX, snapshot
from custode.git.runner import DISTRUST_DERIVED, Git

_OID_LEN = (40, 64)


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
    """A written bundle and the index of the pack inside it."""

    bundle: Path
    index: Path | None  # None: the pack holds no object (only the refs changed)
    pack_name: str  # pack-<hash>: the name its .pack/.idx take in objects/pack ("" if empty)
    header_bytes: int  # where the pack starts inside the bundle
    prerequisites: tuple[str, ...]


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
    if not oids:
        return set()
    data = "".join(f"{oid}^{{}}\n" for oid in sorted(oids)).encode()
    fmt = "--batch-check=%(objectname) %(objecttype)"
    out = git.run(["cat-file", fmt], repo=git_dir, input=data).text
    return {oid for oid, _, kind in (line.partition(" ") for line in out.splitlines())
            if kind == "commit"}  # fmt: skip


def write_bundle(
    git: Git, git_dir: Path, refs: Refs, exclude: set[str], out_dir: Path, *, object_format: str
) -> PackFiles | None:
    """Write ``bundle`` (and ``index``) into ``out_dir`` for ``refs`` minus what ``exclude``
    reaches (only tips the repository still has are used). A tip the parent already had is
    in the chain: it is not sent again. With no new object the bundle still records the
    refs (a deleted branch), over an empty pack and without index; None when there is no
    ref at all (an empty repository)."""
    if not refs.tips():
        return None
    tips = sorted(refs.tips() - exclude)
    have = sorted(existing_commits(git, git_dir, exclude))
    header = _header(refs, have, object_format)
    bundle = out_dir / "bundle"
    pack = out_dir / "objects.pack"
    objects = 0
    if tips:
        revs = "".join(f"{oid}\n" for oid in tips) + "".join(f"^{oid}\n" for oid in have)
        # --stdout into the scratch directory: written by name, git would stage the pack
        # in the repository's own objects/pack and fail to move it to another filesystem
        with pack.open("wb") as out:
            git.run(["pack-objects", "--revs", "--stdout", "--delta-base-offset", "--quiet"],
                    repo=git_dir, input=revs.encode(), stdout=out,
                    config=(*DISTRUST_DERIVED, ("pack.useSparse", "false")))  # fmt: skip
        objects = _pack_objects(pack)
        check_complete(git, git_dir, revs, objects)
    with bundle.open("wb") as out:
        out.write(header)
        if objects == 0:
            out.write(_empty_pack(object_format))
        else:
            with pack.open("rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
    if objects == 0:
        pack.unlink(missing_ok=True)
        return PackFiles(bundle, None, "", len(header), tuple(have))
    index = out_dir / "index"
    # outside any repository (no collision check against the source's objects, which all
    # exist there): hashes each object once, like the idx pack-objects would have written
    name = git.run(["index-pack", f"--object-format={object_format}", "-o", str(index),
                    str(pack)], repo=None, cwd=out_dir).text.strip()  # fmt: skip
    pack.unlink()
    return PackFiles(bundle, index, f"pack-{name.split()[-1]}", len(header), tuple(have))


def check_complete(git: Git, git_dir: Path, revs: str, objects: int) -> None:
    """Refuse a pack that holds fewer (or more) objects than an independent walk of the
    same ids finds: ``rev-list`` reads no bitmap, and here no other derived data."""
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


def _header(refs: Refs, prerequisites: list[str], object_format: str) -> bytes:
    lines = ["# v2 git bundle"] if object_format == "sha1" else [
        "# v3 git bundle", f"@object-format={object_format}"]  # fmt: skip
    lines += [f"-{oid}" for oid in prerequisites]
    lines += [f"{oid} {name}" for name, oid in sorted(refs.refs.items())]
    if refs.detached():  # as git bundle create HEAD does: a clone of it checks that out
        lines.append(f"{refs.detached()} HEAD")
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
