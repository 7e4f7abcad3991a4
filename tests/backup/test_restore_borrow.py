"""``custode restore --borrow``: a pool and its borrowers come back as pool + borrowers
(``backup/borrowing.py``): each borrower with only its own packs and an
``objects/info/alternates`` naming the restored pool by a relative path; a borrower whose
pool is not restored with it (not named, or failed) comes back complete, saying why.
Without the option every repository is complete (``test_backup_forks.py``)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from custode.backup import borrowing
from custode.backup.manifest import RepoManifest, repo_prefix
from fixtures.builders import fast_import, history_stream, run_git
from fixtures.cli import CliResult

pytestmark = pytest.mark.integration
Run = Callable[..., CliResult]
POOL = "@pools/pool.git"
MEMBERS = ("member0.git", "member1.git")


def _state(repo: Path) -> str:
    refs = run_git(repo, "for-each-ref", "--format=%(objectname) %(refname)")
    return refs + (repo / "HEAD").read_text()


def _packed(repo: Path) -> set[str]:
    """The objects in ``repo``'s own packs (not those it borrows)."""
    found: set[str] = set()
    for idx in (repo / "objects" / "pack").glob("*.idx"):
        lines = run_git(repo, "show-index", input=idx.read_bytes()).splitlines()
        found |= {line.split()[1] for line in lines}
    return found


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A GitLab-like pool and two thin members borrowing from it, a commit of their own each."""
    root = tmp_path / "root"
    pool = root / POOL
    run_git(None, "init", "-q", "--bare", pool)
    fast_import(pool, history_stream("refs/heads/main", 20, label="pool "))
    fast_import(pool, history_stream("refs/heads/dev", 3, start=100, parent="refs/heads/main~5",
                                     label="dev"))  # fmt: skip
    for n, name in enumerate(MEMBERS):
        member = root / name
        run_git(None, "clone", "-q", "--bare", "--shared", pool, member)
        run_git(member, "config", "--remove-section", "remote.origin")
        fast_import(member, history_stream("refs/heads/main", 1 + n, start=1000 + 10 * n,
                                           parent="refs/heads/main^0", label=name))  # fmt: skip
        run_git(member, "update-ref", "-d", "refs/heads/dev")
    return root


def refs_file(env: dict[str, str], repository: str) -> Path:
    """The stored refs file of ``repository`` (its restore fails when it is damaged)."""
    store = Path(env["XDG_DATA_HOME"]) / "custode" / "backups"
    (refs,) = [m.with_name("refs.age") for m in store.rglob("manifest.json")
               if json.loads(m.read_text())["repository"] == repository]  # fmt: skip
    return refs


def test_a_pool_and_its_borrowers_restore_as_pool_and_borrowers(
    custode: Run, root: Path, tmp_path: Path
) -> None:
    assert custode("backup", root).code == 0
    whole = tmp_path / "whole"
    assert custode("restore", "--to", whole).code == 0
    out = tmp_path / "out"
    done = custode("restore", "--to", out, "--borrow", "--json")
    assert done.code == 0, done.stderr
    rows = {r["repository"]: r for r in done.json()["repositories"]}
    assert done.json()["summary"]["borrowers"] == 2
    assert rows[POOL]["borrows"] is None and rows[POOL]["complete_because"] is None
    pool_objects = _packed(out / POOL)
    for name in MEMBERS:
        member = out / name
        line = (member / "objects" / "info" / "alternates").read_text()
        assert line == "../../@pools/pool.git/objects\n"  # relative: the target can move
        assert rows[name]["borrows"] == POOL and rows[name]["alternates"] == line.strip()
        own = _packed(member)
        assert own and not own & pool_objects  # only its own objects
        assert len(own) < len(_packed(whole / name))
        assert _state(member) == _state(root / name)
        run_git(member, "fsck", "--strict", "--no-dangling")
    assert _state(out / POOL) == _state(root / POOL)
    # the whole target moved elsewhere: the borrowers still find their pool
    moved = tmp_path / "moved"
    os.rename(out, moved)
    for name in MEMBERS:
        run_git(moved / name, "fsck", "--strict", "--no-dangling")
    # again over them with --force: the pool first, then borrowers of the new pool
    again = custode("restore", "--to", moved, "--borrow", "--force", "--json")
    assert again.code == 0, again.stderr
    assert {r["repository"]: r["borrows"] for r in again.json()["repositories"]} == {
        POOL: None, "member0.git": POOL, "member1.git": POOL}  # fmt: skip
    for name in MEMBERS:
        run_git(moved / name, "fsck", "--strict", "--no-dangling")
        assert _state(moved / name) == _state(root / name)


def test_a_borrower_restored_without_its_pool_is_complete_and_says_why(
    custode: Run, root: Path, tmp_path: Path
) -> None:
    assert custode("backup", root).code == 0
    alone = custode("restore", "member0.git", "--to", tmp_path / "out", "--borrow")
    assert alone.code == 0, alone.stderr
    assert f"member0.git: restored complete: its base {POOL} is not restored" in alone.stderr
    member = tmp_path / "out" / "member0.git"
    assert not (member / "objects" / "info" / "alternates").exists()
    run_git(member, "fsck", "--strict", "--no-dangling")
    assert _state(member) == _state(root / "member0.git")
    as_json = custode("restore", "member1.git", "--to", tmp_path / "j", "--borrow", "--json")
    (row,) = as_json.json()["repositories"]
    assert row["borrows"] is None and POOL in row["complete_because"]


def test_borrowers_of_a_pool_that_fails_are_complete_and_borrow_once_it_is_in_place(
    custode: Run, root: Path, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    """The pool's restore fails (its stored refs damaged): its members come back complete,
    never pointing at nothing. Repaired, the same command finishes the restore (the
    members are kept); a member finished later borrows from the pool put in place."""
    assert custode("backup", root).code == 0
    pool_refs = refs_file(isolated_env, POOL)
    good = pool_refs.read_bytes()
    pool_refs.write_bytes(b"not an age file\n")
    out = tmp_path / "out"
    first = custode("restore", "--to", out, "--borrow", "--json", "--jobs", "2")
    assert first.code != 0
    assert set(first.json()["failed"]) == {POOL}
    for row in first.json()["repositories"]:
        assert row["borrows"] is None
        assert row["complete_because"] == f"its base {POOL} was not restored"
        member = out / row["repository"]
        assert not (member / "objects" / "info" / "alternates").exists()
        run_git(member, "fsck", "--strict", "--no-dangling")
    pool_refs.write_bytes(good)
    shutil.rmtree(out / "member1.git")  # not in place: the finishing restore does it again
    second = custode("restore", "--to", out, "--borrow", "--json")
    assert second.code == 0, second.stderr
    assert {r["repository"]: r["borrows"] for r in second.json()["repositories"]} == {
        POOL: None, "member1.git": POOL}  # fmt: skip
    run_git(out / "member1.git", "fsck", "--strict", "--no-dangling")
    assert _state(out / "member1.git") == _state(root / "member1.git")


def test_a_borrower_finished_later_borrows_from_the_pool_already_in_place(
    custode: Run, root: Path, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    """A member fails (its stored refs damaged) while the pool lands; repaired, the same
    command restores only that member, as a borrower of the pool the first one put there."""
    assert custode("backup", root).code == 0
    refs = refs_file(isolated_env, "member1.git")
    good = refs.read_bytes()
    refs.write_bytes(b"not an age file\n")
    out = tmp_path / "out"
    first = custode("restore", "--to", out, "--borrow", "--json")
    assert set(first.json()["failed"]) == {"member1.git"}
    refs.write_bytes(good)
    pool = (out / POOL).stat().st_ino
    second = custode("restore", "--to", out, "--borrow", "--json")
    assert second.code == 0, second.stderr
    assert second.json()["summary"]["already_restored"] == 2
    (row,) = second.json()["repositories"]
    assert (row["repository"], row["borrows"]) == ("member1.git", POOL)
    assert (out / POOL).stat().st_ino == pool  # kept, not restored again
    run_git(out / "member1.git", "fsck", "--strict", "--no-dangling")
    assert _state(out / "member1.git") == _state(root / "member1.git")


def test_who_borrows_from_whom_and_why_the_others_are_complete() -> None:
    """The plan, alone: one level of borrowing, a base restored no later than its borrower."""
    names = ["p.git", "a.git", "q.git", "x.git", "o", "o/p2.git", "b.git", "n.git", "m.git",
             "u.git"]  # fmt: skip
    on = {"a.git": "p.git", "q.git": "p.git", "x.git": "q.git", "b.git": "o/p2.git",
          "n.git": "gone.git", "m.git": "u.git"}  # fmt: skip
    manifests = {
        name: cast(RepoManifest, SimpleNamespace(base_dir=repo_prefix("h", on.get(name, ""))
                                                 if name in on else ""))
        for name in names
    }  # fmt: skip
    in_snapshot = {repo_prefix("h", name): name for name in names}
    restoring = [name for name in names if name != "u.git"]
    borrowers, complete = borrowing.plan(manifests, in_snapshot, restoring, restoring)
    assert borrowers == {"a.git": "p.git", "q.git": "p.git"}
    assert complete == {
        "x.git": "its base q.git itself builds on p.git",
        "b.git": "its base o/p2.git lies inside another repository restored here, so it "
        "comes after it",
        "n.git": "the repository its backup builds on is not in this snapshot",
        "m.git": "its base u.git is not restored with it (name both)",
    }
    waves = {name: borrowing.wave(name, restoring, borrowers) for name in restoring}
    assert waves["p.git"] < waves["a.git"] == waves["q.git"]
    assert waves["o"] < waves["o/p2.git"]
