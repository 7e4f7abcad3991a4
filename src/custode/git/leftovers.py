"""What git leaves behind in a git directory when it is killed (stale locks, temporary
files, ``gc.pid``), for the planner's clean-up: only git's own paths, each with the age
after which it counts as stale (``[maintenance]``, ``custode.config.maintenance``)."""

from __future__ import annotations

import math
import os
import re

from custode.config.maintenance import MaintenancePolicy

#: ``git repack``'s own temporary packs: ``objects/pack/.tmp-<pid>-pack-<hash>.<ext>``,
#: written by its pack-objects and renamed into place at its end. Killed in between, it
#: leaves them; git 2.39's next ``repack --cruft`` then dies on them ("could not find
#: pack '.tmp-…'"), so no cruft repack works until they are gone.
REPACK_TEMP = re.compile(r"objects/pack/\.tmp-(?P<pid>[0-9]+)-[^/]*")

#: Lock files git (and Gitaly) take at these paths of a git directory and leave behind
#: when killed (git's lockfile.c users; Gitaly's clean_stale_data.go ``lockfiles``);
#: docs/maintenance-heuristics.md lists them with their sources.
GIT_LOCKS = frozenset({
    "config.lock", "config.worktree.lock", "HEAD.lock", "ORIG_HEAD.lock", "index.lock",
    "shallow.lock", "packed-refs.lock", "info/attributes.lock", "reftable/tables.list.lock",
    "objects/info/alternates.lock", "objects/info/commit-graph.lock",
    "objects/info/commit-graphs/commit-graph-chain.lock", "objects/pack/multi-pack-index.lock",
})  # fmt: skip
#: The same inside ``worktrees/<id>/`` (a linked worktree's own HEAD, index and config).
WORKTREE_LOCKS = frozenset({"HEAD.lock", "ORIG_HEAD.lock", "index.lock", "config.worktree.lock"})


def stale_kind(path: str) -> str | None:
    """What git leftover ``path`` (relative to the git dir) is, for its stale age: gc.pid,
    lock or temporary file; None for anything else, which is never removed.

    Only git's own paths count: tools keep content in the git dir too (git-annex under
    ``annex/objects/``, a ``Cargo.lock`` anywhere), and a name ending in ``.lock`` says
    nothing about who wrote it.
    """
    parts = path.split("/")
    name = parts[-1]
    if path == "gc.pid":
        return "gc.pid"
    inner = parts[2:] if parts[0] == "worktrees" else []  # inside worktrees/<id>/
    locks = (
        path in GIT_LOCKS
        # a ref's lock: git refuses ref names ending in .lock, so no ref is named so
        or (parts[0] == "refs" and len(parts) > 1 and name.endswith(".lock"))
        or "/".join(inner) in WORKTREE_LOCKS
        or (inner[:1] == ["refs"] and name.endswith(".lock"))
    )
    if locks:
        return "lock"
    temporary = (
        parts[0] == "objects"
        and len(parts) > 1
        and (
            name.startswith("tmp_")  # git's object-store tempfiles (tmp_obj_, tmp_pack_, …)
            or REPACK_TEMP.fullmatch(path) is not None
            # quarantine directories: listed, but the executor never removes a directory
            or (len(parts) == 2 and name.startswith(("tmp_objdir", "incoming-")))
        )
    )
    return "temporary file" if temporary else None


def stale_age(policy: MaintenancePolicy, path: str) -> float:
    """How old the lock or temporary file ``path`` must be to be stale; infinite for a
    file git and Gitaly do not leave behind (it is someone's content, never stale)."""
    kind = stale_kind(path)
    if kind is None:
        return math.inf
    if kind == "gc.pid":
        return policy.stale_gc_pid_age
    return policy.stale_lock_age if kind == "lock" else policy.stale_temp_age


def orphaned(path: str) -> bool:
    """Whether ``path`` is a temporary pack of a ``git repack`` no longer running here:
    the pid in its name is no process on this host, or the process under that pid now
    names no repack in its command line (pids are reused: with Linux's default 32,768 a
    busy host hands a dead repack's pid to another process within minutes, and its
    leftovers then held every repack of the repository back until their stale age). Such
    a file is stale at once (its repack cannot rename it any more); one whose pid may
    still be a repack is left to its stale age (or the repack another host's on shared
    storage: removing its files makes that repack fail, never lose an object)."""
    m = REPACK_TEMP.fullmatch(path)
    if m is None:
        return False
    try:
        pid = int(m["pid"])
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False  # someone else's process (or no valid pid): not known to be gone
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read(1 << 16).split(b"\0")
    except OSError:
        return False  # no /proc, or it went meanwhile: not known
    return not any(b"repack" in word for word in argv)
