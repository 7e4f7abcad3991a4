"""A repository's refs at one moment, listed through the git runner: every ref with its
object id, symbolic refs with their targets, and HEAD read from its file (as git does).
The maintenance executor compares two of them; a backup records one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from custode.base.fsread import read_prefix
from custode.git.runner import Git

SYMREF_PREFIX = "ref:"


@dataclass(frozen=True)
class RefSnapshot:
    head: str  # "ref:<target>" or an object id, "" if unreadable
    refs: dict[str, str]  # name -> object id (symbolic refs: their target's)
    symrefs: dict[str, str]  # name -> target
    verified: bool = False  # every object in ``refs`` was found when it was taken

    def direct(self) -> dict[str, str]:
        """The refs that are not symbolic."""
        return {n: o for n, o in self.refs.items() if n not in self.symrefs}


def snapshot(
    git: Git, git_dir: Path, pass_fds: tuple[int, ...] = (), *, verify: bool = False
) -> RefSnapshot:
    """Every ref with its object id, the symbolic refs' targets, and HEAD (read from its
    file, as git does). With ``verify`` the listing also reads each ref's object type, so
    a ref pointing at a missing object fails it; then the plain listing is returned,
    unverified, and ``compare`` asks the object store which objects are missing."""
    fields = "%(objectname) %(refname) %(symref)"
    out = None
    if verify:
        listed = git.run(["for-each-ref", f"--format=%(objecttype) {fields}"], repo=git_dir,
                         pass_fds=pass_fds, check=False)  # fmt: skip
        if listed.returncode == 0:
            out = "".join(line.partition(" ")[2] + "\n" for line in listed.text.splitlines())
    verified = out is not None
    if out is None:
        out = git.run(["for-each-ref", f"--format={fields}"], repo=git_dir, pass_fds=pass_fds).text
    refs: dict[str, str] = {}
    symrefs: dict[str, str] = {}
    for line in out.splitlines():
        oid, _, rest = line.partition(" ")
        name, _, target = rest.partition(" ")
        refs[name] = oid
        if target:
            symrefs[name] = target
    try:
        head = read_prefix(str(git_dir / "HEAD"), 4096).decode("utf-8", "replace")
    except OSError:
        head = ""
    head = head.split("\n", 1)[0].strip()
    if head.startswith(SYMREF_PREFIX):
        head = SYMREF_PREFIX + head[len(SYMREF_PREFIX) :].strip()
    return RefSnapshot(head, refs, symrefs, verified)
