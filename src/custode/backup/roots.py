"""What a backup's walk starts from beyond ``for-each-ref``: everything git itself counts
as reachable in a repository that the ref listing of its common dir does not show.

* Each linked worktree's ``HEAD`` and per-worktree refs (``refs/bisect/``,
  ``refs/worktree/``, ``refs/rewritten/``, which git never packs) live in
  ``worktrees/<id>/``, also when the worktree's directory was deleted but not pruned. A
  restored repository has no such worktree, so they come back as ordinary refs in
  custode's namespace, ``refs/custode/worktrees/<id>/HEAD`` and
  ``refs/custode/worktrees/<id>/refs/bisect/…``: ``git fsck`` and ``gc`` see them, and
  nothing is lost silently. (The main worktree's detached ``HEAD`` is restored as it was.)
* A shallow repository's ``shallow`` file lists its boundary commits, whose parents it
  does not have: the walk stops there, and a restore writes the same file back.

The files are read, never run through git (a worktree's ``commondir`` may point
anywhere): without following symbolic links, without blocking, with bounded sizes.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from custode.base.fsread import read_all, read_prefix
from custode.errors import StateError

NAMESPACE = "refs/custode/worktrees/"
PER_WORKTREE = ("bisect", "worktree", "rewritten")  # git's per-worktree ref families
MAX_WORKTREES = 10_000
MAX_REFS = 100_000  # in all worktrees
MAX_SHALLOW = 256 << 20  # bytes: millions of boundary commits
_OID = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


def worktree_refs(git_dir: Path) -> dict[str, str]:
    """Every linked worktree's detached HEAD and per-worktree refs, named in custode's
    namespace (name -> object id). A symbolic HEAD names a ref the listing already has."""
    base = git_dir / "worktrees"
    if not _is_dir(base):  # (a symbolic link is not followed)
        return {}
    try:
        ids = sorted(os.listdir(base))[:MAX_WORKTREES]
    except OSError:
        return {}
    found: dict[str, str] = {}
    for wt_id in ids:
        admin = base / wt_id
        if not _is_dir(admin) or len(found) >= MAX_REFS:
            continue
        prefix = f"{NAMESPACE}{_segment(wt_id)}/"
        head = _oid_in(admin / "HEAD")
        if head and valid_ref_name(prefix + "HEAD"):
            found[prefix + "HEAD"] = head
        refs: dict[str, str] = {}
        for family in PER_WORKTREE:
            _loose(admin / "refs" / family, f"refs/{family}", refs, depth=16)
        found.update({prefix + n: oid for n, oid in refs.items() if valid_ref_name(prefix + n)})
    return found


def read_shallow(git_dir: Path) -> tuple[str, ...]:
    """The commits of the ``shallow`` file, in its order; () for a complete repository."""
    path = git_dir / "shallow"
    try:
        info = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return ()
    if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_SHALLOW:
        raise StateError(f"{path} is not a plain file of commit ids; git cannot use it either")
    data, _ = read_all(str(path))
    lines = data.decode("ascii", "replace").split()
    if not all(_OID.match(line) for line in lines):
        raise StateError(f"{path} holds a line that is not a commit id; repair it (git fsck)")
    return tuple(lines)


def _segment(wt_id: str) -> str:
    """A worktree id as one valid ref-name component (git's own ids always are)."""
    if _ID.match(wt_id) and not wt_id.endswith((".lock", ".")) and ".." not in wt_id:
        return wt_id
    return "x" + os.fsencode(wt_id).hex()


def _is_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return False


def _oid_in(path: Path) -> str:
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return ""
        text = read_prefix(str(path), 256).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if _OID.match(text) else ""


def _loose(path: Path, name: str, out: dict[str, str], depth: int) -> None:
    if depth < 0 or len(out) >= MAX_REFS or not _is_dir(path):
        return
    try:
        children = sorted(os.listdir(path))
    except OSError:
        return
    for child in children:
        if child.startswith(".") or child.endswith(".lock"):
            continue
        at, ref = path / child, f"{name}/{child}"
        oid = _oid_in(at)
        if oid:
            out[ref] = oid
        else:
            _loose(at, ref, out, depth - 1)


def valid_ref_name(name: str) -> bool:
    """git check-ref-format's rules, for a full name under refs/."""
    if not name.startswith("refs/") or name.endswith(("/", ".", ".lock")):
        return False
    if "//" in name or ".." in name or "@{" in name:
        return False
    if any(c in name for c in " ~^:?*[\\") or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return False
    return all(part and not part.startswith(".") for part in name.split("/"))
