"""Restoring a pool's members and forks as borrowers (``custode restore --borrow``).

A repository whose backup builds on another repository's (a GitLab pool's member, a fork:
``backup/plan.py``) is restored complete unless asked otherwise. Asked to, when that
other repository (its base) is put in place by the same restore (same snapshot, same
target), it is restored as a borrower: the packs of its chain that the restored base
holds are not installed again, and its ``objects/info/alternates`` names the base's
``objects`` directory by a relative path (as ``git clone --shared`` and GitLab's pools
do), so the target directory can be moved as a whole.

Here is only what decides it, with no store read and no git run: which repositories may
borrow and from which (``plan``), the waves that restore bases before their borrowers
and a repository nested in another's path after it (``wave``), and, once the base is in
place, which links of the borrower's chain its packs cover (``covered``). Anything else
restores complete, with the reason in one line. A base that itself borrows is not
borrowed from (one level, as the backup plan keeps it).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from custode.backup.manifest import RepoManifest, repo_prefix
from custode.base.pathtext import display


@dataclass(frozen=True)
class Borrowing:
    """How one repository was restored as a borrower."""

    base: str  # the repository it borrows from, put in place by the same restore
    alternates: str  # its objects/info/alternates line (relative to its objects directory)
    links: int  # links of its chain whose packs it borrows (not installed again)


def plan(
    manifests: Mapping[str, RepoManifest],
    in_snapshot: Mapping[str, str],
    restoring: Collection[str],
    in_run: Collection[str],
) -> tuple[dict[str, str], dict[str, str]]:
    """(borrower -> its base, repository -> why it is restored complete) for the
    repositories ``restoring`` whose manifest is in ``manifests`` and builds on another
    repository's. ``in_snapshot``: every repository of the snapshot by its store
    directory (``repo_prefix``); ``in_run``: the repositories this restore puts in place,
    now or (an unfinished one's) before."""
    wanted: dict[str, str] = {}
    complete: dict[str, str] = {}
    restoring = set(restoring)
    for name in sorted(restoring):
        m = manifests.get(name)
        if m is None or not m.base_dir:
            continue
        base = in_snapshot.get(m.base_dir)
        if base is None:
            complete[name] = "the repository its backup builds on is not in this snapshot"
        elif base not in in_run:
            complete[name] = f"its base {display(base)} is not restored with it (name both)"
        else:
            wanted[name] = base
    borrowers: dict[str, str] = {}
    for name, base in wanted.items():
        if base in wanted:
            complete[name] = f"its base {display(base)} itself builds on {display(wanted[base])}"
        elif base in restoring and depth(base, restoring) > depth(name, restoring):
            complete[name] = (
                f"its base {display(base)} lies inside another repository restored here, "
                "so it comes after it"
            )
        else:
            borrowers[name] = base
    return borrowers, complete


def depth(name: str, names: Collection[str]) -> int:
    """How many of ``names`` hold ``name`` in their path (each restored before it)."""
    parts = name.split("/")
    return sum(1 for i in range(1, len(parts)) if "/".join(parts[:i]) in names)


def wave(name: str, names: Collection[str], borrowers: Collection[str]) -> int:
    """The wave ``name`` is restored in: a repository after those whose path holds it (the
    outer one's restore may replace its destination), a borrower after its base (``plan``
    lets one borrow only from a base nested no deeper than itself)."""
    return 2 * depth(name, names) + (name in borrowers)


def git_dir(dest: Path, bare: bool) -> Path:
    return dest if bare else dest / ".git"


def covered(m: RepoManifest, base_git_dir: Path) -> frozenset[str]:
    """The bundle keys of the links of ``m``'s chain that are not its own and whose pack
    (and index) the base at ``base_git_dir`` holds, by name: those it borrows."""
    pack = base_git_dir / "objects" / "pack"
    own = repo_prefix(m.host, m.repository)
    return frozenset(
        link.bundle.key
        for link in m.chain
        if link.index is not None
        and not link.bundle.key.startswith(own)
        and (pack / f"{link.pack_name}.pack").is_file()
        and (pack / f"{link.pack_name}.idx").is_file()
    )


def alternates(own_git_dir: Path, base_git_dir: Path) -> str:
    """The base's ``objects`` relative to the borrower's (git reads an alternates path
    relative to the object directory it is in)."""
    return os.path.relpath(base_git_dir / "objects", own_git_dir / "objects")
