"""Find the git repositories under a set of roots, fast and without running git.

A directory is a git directory when it holds ``objects/`` and ``refs/`` directories and a
``HEAD`` or ``config`` file (a git directory missing ``HEAD`` is found, so that it can be
reported as broken). Bare repositories and the ``.git`` of working copies are found; so
are submodule git directories (under ``<gitdir>/modules/``, attached to their
superproject) and repositories nested inside working trees. Linked worktrees (``.git``
files pointing into ``<gitdir>/worktrees/``) are attached to their repository, never
counted as repositories. Every repository is counted once, however many paths (symbolic
links, submodule checkouts) lead to it. Discovery never descends into a git directory
(so never into an object store). Unreadable directories and symbolic-link loops become
``Problem`` entries; they never stop the walk.

Nothing outside the roots joins the fleet: a ``.git`` file (or a ``.git`` symbolic link)
whose git directory, or a git directory whose ``commondir``, resolves outside every root
is reported as a ``Problem`` and left out, so no command maintains or backs it up. Those
paths are repository content; a root names what the operator entrusted to custode.
"""

from __future__ import annotations

import errno
import fnmatch
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from custode.base.fsread import UnfitFile, fault, read_all, read_prefix
from custode.config.model import DiscoveryConfig
from custode.errors import PathNotFoundError
from custode.scan.objectstore import alternates_entries

Kind = Literal["bare", "working", "submodule"]


@dataclass(frozen=True)
class Repository:
    """One repository: where it lives, its git directory, and its identity under a root."""

    root: Path
    path: Path  # the working tree for working copies, the git directory otherwise
    git_dir: Path
    kind: Kind
    relative: str  # path relative to the root, POSIX separators: the repository's identity
    superproject: Path | None = None  # for submodules: the repository that contains it
    worktrees: tuple[Path, ...] = ()  # linked worktrees found under the roots

    @property
    def bare(self) -> bool:
        return self.kind != "working"


@dataclass(frozen=True)
class Problem:
    path: Path
    message: str


@dataclass
class Discovery:
    repositories: list[Repository] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    roots: list[Path] = field(default_factory=list)  # absolute, as walked


Listing = dict[str, os.DirEntry[str]]


def is_git_dir(listing: Listing) -> bool:
    return (
        _has_dir(listing, "objects")
        and _has_dir(listing, "refs")
        and ("HEAD" in listing or "config" in listing)
    )


def _has_dir(listing: Listing, name: str) -> bool:
    entry = listing.get(name)
    return entry is not None and _is_dir(entry)


def _scan(path: str | Path) -> Listing:
    with os.scandir(path) as it:
        return {e.name: e for e in it}


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


GITFILE_MAX = 4096  # bytes read of a .git file, commondir or gitdir: one path


def _read_gitfile(path: Path) -> Path | None:
    """The target of a ``.git`` file (``gitdir: <path>``), resolved against its directory.

    Raises UnfitFile for a FIFO, a device... (read without blocking, never waited on) or
    a file larger than any path.
    """
    try:
        data, _ = read_all(str(path), GITFILE_MAX)
    except UnfitFile:
        raise
    except OSError:
        return None
    text = data.decode("utf-8", "replace").split("\n", 1)[0].strip()
    if not text.startswith("gitdir:") or "\0" in text:  # NULs: zeroed by a power loss
        return None
    target = Path(text.removeprefix("gitdir:").strip())
    return Path(os.path.normpath(path.parent / target))


def within(path: str | Path, roots: Iterable[str | Path]) -> bool:
    """Whether ``path`` resolves (symbolic links followed) inside one of ``roots``."""
    real = os.path.realpath(path)
    for root in roots:
        top = os.path.realpath(root)
        if real == top or real.startswith(top.rstrip(os.sep) + os.sep):
            return True
    return False


OUTSIDE = "not maintained or backed up; add its directory to roots if custode should look after it"


class _Walker:
    def __init__(
        self, config: DiscoveryConfig, on_found: Callable[[Repository], None] | None = None
    ) -> None:
        self.config = config
        self.on_found = on_found
        self.result = Discovery()
        self.seen: dict[tuple[int, int], Repository] = {}
        self.worktrees: dict[tuple[int, int], list[Path]] = {}

    def outside(self, path: Path, target: Path, what: str) -> bool:
        """Report and return True when ``target``, named by ``path``, is outside the roots."""
        if within(target, self.result.roots):
            return False
        self.problem(path, f"{what} {os.path.realpath(target)} is outside every root: {OUTSIDE}")
        return True

    def excluded(self, rel: str, name: str) -> bool:
        for pat in self.config.exclude:
            if fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(name, pat):
                return True
            if pat.startswith("**/") and fnmatch.fnmatch(rel, pat[3:]):
                return True
        return False

    def problem(self, path: Path, message: str) -> None:
        self.result.problems.append(Problem(path, message))

    def add(self, repo: Repository, listing: Listing | None = None) -> None:
        try:
            st = os.stat(repo.git_dir)
        except OSError as exc:
            self.problem(repo.git_dir, f"cannot read git directory: {exc.strerror}")
            return
        common = repo.git_dir / "commondir"
        if (listing is None or "commondir" in listing) and common.exists():
            # a linked worktree's git directory: git works in the common one, which is
            # found on its own when it is under a root
            if (target := self.commondir(common)) is not None:
                self.outside(repo.git_dir, target, "its commondir")
            return
        key = (st.st_dev, st.st_ino)
        if key in self.seen:
            return
        self.seen[key] = repo
        self.result.repositories.append(repo)
        if self.on_found is not None:
            self.on_found(repo)
        self.submodules(repo, listing)

    def submodules(self, repo: Repository, listing: Listing | None) -> None:
        """Submodule git directories live under ``<gitdir>/modules/<name>`` (names may nest).

        ``listing`` is the git directory's listing when the walk already has it.
        """
        if listing is not None and not _has_dir(listing, "modules"):
            return
        top = str(repo.git_dir)
        modules = os.path.join(top, "modules")
        stack = [modules]
        while stack:
            d = stack.pop()
            try:
                found = _scan(d)
            except OSError:
                continue
            if d != modules and is_git_dir(found):
                name = d[len(top) + 1 :]
                rel = f"{repo.relative}/{name}"
                if repo.kind == "working":
                    rel = f"{repo.relative}/.git/{name}"
                here = Path(d)
                self.add(
                    Repository(repo.root, here, here, "submodule", rel, superproject=repo.path)
                )
                continue
            stack.extend(e.path for e in found.values() if _is_dir(e) and not e.is_symlink())

    def gitfile(self, path: Path, root: Path, rel: str) -> None:
        """A ``.git`` file: a linked worktree, a submodule checkout or a separated git dir."""
        try:
            target = _read_gitfile(path / ".git")
        except UnfitFile as exc:
            self.problem(path / ".git", fault(exc))
            return
        if target is None:
            self.problem(path / ".git", "unreadable .git file (expected 'gitdir: <path>')")
            return
        if self.outside(path / ".git", target, "its git directory"):
            return
        if target.parent.name == "worktrees" and (target / "commondir").exists():
            self.linked_worktree(path, target)
            return
        kind: Kind = "submodule" if "modules" in target.parts else "working"
        if not target.is_dir():
            self.problem(path / ".git", f"points to missing git directory {target}")
            return
        self.add(Repository(root, path, target, kind, rel))

    def commondir(self, path: Path) -> Path | None:
        """The git directory a ``commondir`` file names, or None (reported) for a FIFO, a
        device, a giant, or a file of NUL bytes (as a power loss leaves it)."""
        try:
            line = _read_first_line(path)
        except UnfitFile as exc:
            self.problem(path, fault(exc, str(path)))
            return None
        if "\0" in line:
            self.problem(path, "holds NUL bytes, not a path; run git worktree repair")
            return None
        return Path(os.path.normpath(path.parent / line))

    def linked_worktree(self, path: Path, target: Path) -> None:
        """Attach the linked worktree at ``path`` (git dir ``target``) to its repository."""
        main = self.commondir(target / "commondir")
        if main is None:
            return
        if self.outside(path / ".git", main, "the repository of this linked worktree,"):
            return
        try:
            st = os.stat(main)
        except OSError:
            self.problem(path, f"linked worktree of missing repository {main}")
            return
        self.worktrees.setdefault((st.st_dev, st.st_ino), []).append(path)

    def walk(self, root: Path) -> None:
        # str paths while walking: a Path per directory costs measurable time at 10,000s
        # (path, relative name, depth, inside a working tree)
        stack: list[tuple[str, str, int, bool]] = [(str(root), "", 0, False)]
        while stack:
            path, rel, depth, in_tree = stack.pop()
            try:
                listing = _scan(path)
            except PermissionError:
                self.problem(
                    Path(path),
                    "permission denied; fix its permissions or add it to discovery.exclude",
                )
                continue
            except OSError as exc:
                self.problem(Path(path), f"cannot read directory: {exc.strerror}")
                continue
            shown = rel or root.name
            in_worktree = in_tree
            if is_git_dir(listing):
                here = Path(path)
                self.add(Repository(root, here, here, "bare", shown), listing)
                continue
            if _has_dir(listing, ".git"):
                here = Path(path)
                link = listing[".git"].is_symlink()  # content: it may point anywhere
                if not (link and self.outside(here / ".git", here / ".git", "its .git link to")):
                    self.add(Repository(root, here, here / ".git", "working", shown))
                in_worktree = True
            elif ".git" in listing:
                self.gitfile(Path(path), root, shown)
                in_worktree = True
            if in_worktree and not self.config.descend_into_worktrees:
                continue
            if depth < self.config.max_depth:
                stack.extend(self.children(path, rel, depth, listing, in_worktree))

    def children(
        self, path: str, rel: str, depth: int, listing: Listing, in_tree: bool
    ) -> list[tuple[str, str, int, bool]]:
        """Subdirectories to visit next (reverse order: the stack pops them in order).

        Symbolic links inside a working tree are never followed: they belong to the
        project checked out there and may point anywhere (``/``, a huge cache).
        """
        out = []
        for name in sorted(listing, reverse=True):
            entry = listing[name]
            if name == ".git" or not _is_dir(entry):
                continue
            child_rel = f"{rel}/{entry.name}" if rel else entry.name
            if self.excluded(child_rel, entry.name):
                continue
            if entry.is_symlink():
                if in_tree or not self.config.follow_symlinks:
                    continue
                target = os.path.realpath(entry.path)
                here = os.path.realpath(path)
                if here == target or here.startswith(target + os.sep):
                    self.problem(Path(entry.path), f"symbolic link loop (points to {target})")
                    continue
            out.append((entry.path, child_rel, depth + 1, in_tree))
        return out


def _read_first_line(path: Path) -> str:
    """The first line of a ``commondir`` ("." when unreadable or empty, as git's own
    default); UnfitFile for a FIFO, a device or a giant, read without blocking."""
    try:
        data, _ = read_all(str(path), GITFILE_MAX)
    except UnfitFile:
        raise
    except OSError:
        return "."
    lines = data.decode("utf-8", "replace").splitlines()
    return lines[0].strip() if lines else "."


def check_root(root: Path) -> Path:
    """The root as an absolute path, or a PathNotFoundError naming it and the fix."""
    if not root.exists():
        raise PathNotFoundError(
            f"root {root} does not exist; check the path (or the roots in your config)"
        )
    if not root.is_dir():
        raise PathNotFoundError(
            f"root {root} is not a directory; pass the directory that holds the repositories"
        )
    return Path(os.path.abspath(root))


def discover(
    roots: Iterable[Path],
    config: DiscoveryConfig | None = None,
    on_found: Callable[[Repository], None] | None = None,
) -> Discovery:
    """Every repository under ``roots`` (each checked first), in a stable order.

    ``on_found`` is called with each repository as soon as the walk finds it (before
    linked worktrees are attached), so that inspection can overlap the walk.
    """
    walker = _Walker(config or DiscoveryConfig(), on_found)
    walker.result.roots = [check_root(r) for r in roots]
    for root in walker.result.roots:
        walker.walk(root)
    repos = [
        replace(repo, worktrees=tuple(sorted(walker.worktrees[key])))
        if key in walker.worktrees
        else repo
        for key, repo in walker.seen.items()
    ]
    repos.sort(key=lambda r: (str(r.root), r.relative))
    walker.result.repositories = repos
    return walker.result


# --------------------------------------------------------------------------- borrowers


@dataclass
class AlternatesSweep:
    """Who borrows objects from whom under a set of roots, as far as the sweep could see.

    ``links`` pairs a borrower's git directory with an object directory its
    ``objects/info/alternates`` names (both resolved); ``unsure`` says where a borrower
    may have hidden from the sweep (a directory or an alternates file it could not read).
    """

    links: set[tuple[str, str]] = field(default_factory=set)
    unsure: list[str] = field(default_factory=list)


ALTERNATES_MAX = 1 << 20  # bytes: git's own alternates files are a few lines


def read_alternates(git_dir: str | Path) -> list[str]:
    """The object directories ``git_dir`` borrows from, resolved; [] without alternates.

    Raises OSError when the file exists but cannot be read (the caller cannot be sure).
    """
    objects = os.path.join(git_dir, "objects")
    path = os.path.join(objects, "info", "alternates")
    try:
        data = read_prefix(path, ALTERNATES_MAX, regular=True)  # a FIFO: unsure, not none
    except (FileNotFoundError, NotADirectoryError):
        return []
    names = alternates_entries(data.decode("utf-8", "replace"))
    if any("\0" in name for name in names):  # zeroed in place: what it named is unknown
        raise OSError(errno.EINVAL, "it holds NUL bytes, not paths", path)
    return [os.path.realpath(os.path.join(objects, name)) for name in names]


def sweep_alternates(roots: Iterable[Path]) -> AlternatesSweep:
    """Every borrower under ``roots``: each directory once, ``discovery.exclude`` and the
    depth limit ignored (a borrower hides just as well in an excluded directory).

    Reads only alternates files and ``.git`` files; never enters an object store, never
    follows a symbolic link (one in a working tree may lead to ``/``; what a followed
    link leads to is in the fleet scan, whose borrowers are linked there). A ``.git``
    file's git directory is read wherever it is: a borrower outside the roots still
    needs its pool's objects.
    """
    sweep = AlternatesSweep()
    tops = {os.path.realpath(r) for r in roots}
    stack = sorted(t for t in tops if not within(t, tops - {t}))  # nested roots: once
    while stack:
        path = stack.pop()
        try:
            listing = _scan(path)
        except OSError as exc:
            sweep.unsure.append(f"{path} could not be read ({exc.strerror})")
            continue
        if is_git_dir(listing):
            _borrower(sweep, path)
            if "modules" in listing:  # submodules' own git directories
                stack.append(os.path.join(path, "modules"))
            continue
        if ".git" in listing and not _is_dir(listing[".git"]):
            try:
                target = _read_gitfile(Path(path) / ".git")
            except UnfitFile as exc:
                sweep.unsure.append(f"{path}/.git could not be read ({exc.strerror})")
                continue
            if target is not None and target.is_dir():
                _borrower(sweep, str(target))
        stack += (e.path for e in listing.values() if not e.is_symlink() and _is_dir(e))
    return sweep


def _borrower(sweep: AlternatesSweep, git_dir: str) -> None:
    try:
        lenders = read_alternates(git_dir)
    except OSError as exc:
        sweep.unsure.append(f"the alternates of {git_dir} could not be read ({exc.strerror})")
        return
    if lenders:
        real = os.path.realpath(git_dir)
        sweep.links.update((real, lender) for lender in lenders)
