"""The small files git reads on its own, checked before git is trusted with them.

git opens these without ``O_NONBLOCK`` and reads most of them whole: a FIFO planted as a
repository's ``commondir``, ``shallow``, ``info/grafts``, ``objects/info/alternates``,
``packed-refs`` or config ``include.path`` target blocks every git command on it until
its timeout (git 2.39; an hour by default), and ``/dev/zero`` or a sparse giant there
keeps git reading. ``doubts`` names each such file, with the fix, from a listing, a few
``stat`` calls and bounded reads of what the config includes: the scan reports them
against the repository, and the git runner gives a repository in doubt only a short
timeout (``git.doubt_timeout``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Collection

from custode.base.fsread import FileTooLarge, NotRegularFile, Watch, problem, read_all
from custode.git.configfile import CONFIG_MAX, include_paths

PATH_MAX = 4096  # bytes: a file that holds one path (commondir, gitdir)
INCLUDE_DEPTH = 10  # git's own limit on nested includes
INCLUDE_FILES = 64  # include targets followed per repository, at most
WORKTREES = 1000  # linked worktrees looked at per repository, at most
#: Files of a linked worktree's directory git reads whole, with their caps in bytes.
WORKTREE_FILES = {"gitdir": PATH_MAX, "commondir": PATH_MAX}

#: Files of the git dir that git reads (whole, when a size is given: larger ones are in
#: doubt), then files further down. HEAD, config and packed-refs are also read by the scan.
TOP: dict[str, int | None] = {
    "HEAD": None,  # git reads a prefix
    "config": CONFIG_MAX,
    "config.worktree": CONFIG_MAX,
    "commondir": PATH_MAX,
    "packed-refs": 256 << 20,
    "shallow": 64 << 20,
    "index": None,  # fsck reads a working copy's index
}
DEEPER: tuple[tuple[str, int | None], ...] = (
    ("info/grafts", 64 << 20),
    ("objects/info/alternates", 1 << 20),
    ("objects/info/commit-graph", None),  # mapped, not read whole
    ("objects/info/commit-graphs/commit-graph-chain", 1 << 20),
    ("objects/pack/multi-pack-index", None),
)
#: What the scan reads itself, through ``fsread``, with the same messages.
SCANNED = frozenset({"HEAD", "config", "packed-refs"})


def doubts(
    git_dir: str,
    *,
    config: str | None = None,
    watch: Watch | None = None,
    skip: frozenset[str] = frozenset(),
    listing: Collection[str] | None = None,
) -> list[str]:
    """Why git could hang or flood reading ``git_dir``: one line per file, [] if none.

    ``config`` is the config's text when the caller has read it already; ``watch``
    collects the include targets, which live anywhere; ``skip`` names top-level files
    the caller checks itself (``SCANNED``); ``listing``, the names in ``git_dir`` when
    the caller has listed it (the scan: a stat saved per file that is not there).
    """
    found: list[str] = []
    if listing is None:
        try:
            with os.scandir(git_dir) as it:
                listing = {e.name for e in it}
        except OSError:
            return found
    wanted = [(n, limit) for n, limit in TOP.items() if n in listing and n not in skip]
    wanted += [(rel, limit) for rel, limit in DEEPER if rel.split("/", 1)[0] in listing]
    for rel, limit in wanted:
        if why := _check(os.path.join(git_dir, rel), rel, limit):
            found.append(why)
    if "worktrees" in listing:
        found += _worktrees(git_dir)
    if config is None:
        try:
            data, _ = read_all(os.path.join(git_dir, "config"), CONFIG_MAX)
        except OSError:  # reported above, or missing (which git reports better)
            return found
        config = data.decode("utf-8", "replace")
    found += _includes(git_dir, config, watch)
    return found


def _worktrees(git_dir: str) -> list[str]:
    """The files of each linked worktree's administrative directory, which ``git fsck``
    and ``git worktree prune`` of the repository read (its HEAD, gitdir, commondir...)."""
    found: list[str] = []
    top = os.path.join(git_dir, "worktrees")
    try:
        with os.scandir(top) as it:
            admin = [e.path for e in it if e.is_dir(follow_symlinks=False)]
    except OSError:
        return found
    for path in admin[:WORKTREES]:
        try:
            with os.scandir(path) as it:
                names = [e.name for e in it if not e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
        for name in names:
            rel = f"worktrees/{os.path.basename(path)}/{name}"
            if why := _check(os.path.join(path, name), rel, WORKTREE_FILES.get(name)):
                found.append(why)
    return found


def _check(path: str, name: str, limit: int | None) -> str:
    """Why the file at ``path`` is in doubt, "" when it is not (or does not exist)."""
    try:
        st = os.stat(path)  # follows a symbolic link: what git would open
    except OSError:  # missing (fine), a dangling link or a loop (git fails at once)
        return ""
    if not stat.S_ISREG(st.st_mode):
        return problem(name, NotRegularFile(path, st.st_mode))
    if limit is not None and st.st_size > limit:
        return problem(name, FileTooLarge(path, st.st_size, limit))
    return ""


def _includes(git_dir: str, text: str, watch: Watch | None) -> list[str]:
    """Every file the config includes, followed as git does (relative to the including
    file, ``~/`` from HOME, nested up to git's depth), whatever the condition of an
    ``includeIf``: a condition git finds true elsewhere is as bad."""
    found: list[str] = []
    seen: set[str] = set()
    stack = [(os.path.join(git_dir, "config"), text, 0)]
    while stack:
        base, body, depth = stack.pop()
        if depth >= INCLUDE_DEPTH or "include" not in body.lower():
            continue
        for value in include_paths(body):
            target = _resolve(base, value)
            if target in seen or len(seen) >= INCLUDE_FILES:
                continue
            seen.add(target)
            if watch is not None:
                watch.path(target)
            try:
                data, _ = read_all(target, CONFIG_MAX)
            except (FileNotFoundError, NotADirectoryError):  # git skips a missing include
                continue
            except OSError as exc:
                found.append(problem(f"config include {target}", exc))
                continue
            stack.append((target, data.decode("utf-8", "replace"), depth + 1))
    return found


def _resolve(base: str, value: str) -> str:
    if value.startswith("~/"):
        value = os.path.expanduser(value)
    return os.path.normpath(os.path.join(os.path.dirname(base), value))
