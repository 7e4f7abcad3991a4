"""A push landing while custode repacks is never rejected (issue 11, §4).

git's ``prune-packed`` (inside every ``repack -d`` and ``prune``) removes each emptied
``objects/XX``; receive-pack migrates a push's quarantine with ``mkdir(objects/XX)`` and
then ``link()``, and fails the push ("unable to migrate objects to permanent storage")
when the directory vanished in between. The real-server soak hit it about once in four
runs. These tests do not wait for luck: they run receive-pack's migration step by step
(tmp-objdir.c's ``migrate_one``) and stop it at the worst moment, between the
``mkdir()`` and the ``link()``, for a whole custode repack. On the code before
``maintenance/objectdirs.py`` every case here fails with ENOENT.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from custode.config.maintenance import HOUR
from custode.git.runner import Git
from custode.maintenance import executor
from custode.maintenance.executor import PackLimits, execute
from custode.maintenance.objectdirs import HOLDER, LOOSE_DIRS, hold_object_dirs
from custode.maintenance.planner import Plan, Repack, Task
from custode.scan.discovery import Repository
from fixtures.builders import git_env, run_git

pytestmark = pytest.mark.integration

GIT = Git()
REPACKS = {
    "full, cruft pack": Task("full_repack", "test", Repack(unreachable="cruft", expire=HOUR)),
    "full, unreachable kept": Task("full_repack", "test", Repack(unreachable="keep")),
    "full, loosened then pruned": Task(
        "full_repack", "test", Repack(unreachable="loosen", expire=HOUR)
    ),
    "geometric": Task("geometric_repack", "test", Repack(geometric_factor=2)),
    "incremental, with a multi-pack-index": Task(
        "incremental_repack", "test", Repack(write_midx=True)
    ),
}


def _server(tmp_path: Path, loose: int) -> Path:
    """A bare repository with two packs and ``loose`` reachable loose objects."""
    bare = tmp_path / "server.git"
    run_git(None, "init", "-q", "--bare", bare)
    work = tmp_path / "work"
    run_git(None, "init", "-q", "-b", "main", work)
    for batch in range(2):
        for i in range(5):
            (work / f"f{batch}-{i}").write_text(f"{batch} {i}\n")
        run_git(work, "add", "-A")
        run_git(work, "commit", "-q", "-m", f"batch {batch}")
        run_git(work, "push", "-q", bare, "main")  # a pack per push (no unpack limit here)
        run_git(bare, "repack", "-q")
    if loose:
        tree_lines = []
        for i in range(loose):
            oid = run_git(bare, "hash-object", "-w", "--stdin", input=f"loose {i}\n".encode())
            tree_lines.append(f"100644 blob {oid.strip()}\tl{i}")
        tree = run_git(bare, "mktree", input="\n".join(tree_lines).encode() + b"\n").strip()
        commit = run_git(bare, "commit-tree", tree, "-p", "main", "-m", "loose").strip()
        run_git(bare, "update-ref", "refs/heads/loose", commit)
    return bare


def _quarantined(bare: Path, prefixes: set[str], want: bool) -> tuple[Path, str]:
    """A blob written into a push quarantine whose fan-out directory is (not) in ``prefixes``."""
    objects = bare / "objects"
    quarantine = objects / "tmp_objdir-incoming-test"
    env = git_env() | {
        "GIT_OBJECT_DIRECTORY": str(quarantine),
        "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(objects),
    }
    quarantine.mkdir(exist_ok=True)
    for i in range(20_000):
        data = f"pushed {i}\n".encode()
        oid = subprocess.run(
            ["git", "hash-object", "--stdin"], input=data, capture_output=True, check=True,
            env=env,
        ).stdout.decode().strip()  # fmt: skip
        if (oid[:2] in prefixes) == want:
            subprocess.run(
                ["git", "hash-object", "-w", "--stdin"], input=data, check=True, env=env,
                cwd=bare, capture_output=True,
            )  # fmt: skip
            return quarantine / oid[:2] / oid[2:], oid
    raise AssertionError("no blob with a fitting prefix")


def _loose_dirs(bare: Path) -> set[str]:
    return {p.name for p in (bare / "objects").iterdir() if p.name in LOOSE_DIRS}


def _migrate_around(bare: Path, src: Path, oid: str, during: Callable[[], None]) -> None:
    """tmp-objdir.c ``migrate_one`` for one object, with ``during()`` between its steps."""
    dst_dir = bare / "objects" / oid[:2]
    with contextlib.suppress(FileExistsError):  # git: EEXIST is fine, go on to link
        os.mkdir(dst_dir, 0o777)
    during()
    os.link(src, dst_dir / oid[2:])  # git: no retry; ENOENT fails the push


def _repack(bare: Path, task: Task) -> None:
    repo = Repository(bare.parent, bare, bare, "bare", bare.name)
    plan = Plan(str(bare), (task,))
    result = execute(repo, plan, GIT, None, now=time.time(), limits=PackLimits())
    assert result.outcome == "ok", result


@pytest.mark.parametrize("kind", sorted(REPACKS))
@pytest.mark.parametrize("where", ["a new directory", "a directory the repack empties"])
def test_a_push_migrating_across_a_repack_lands(tmp_path: Path, kind: str, where: str) -> None:
    bare = _server(tmp_path, loose=300 if where != "a new directory" else 0)
    existing = _loose_dirs(bare)
    src, oid = _quarantined(bare, existing, want=where != "a new directory")
    assert (oid[:2] in existing) == (where != "a new directory")

    _migrate_around(bare, src, oid, lambda: _repack(bare, REPACKS[kind]))

    run_git(bare, "cat-file", "-e", oid)
    assert not list((bare / "objects").glob(f"*/{HOLDER}")), "holders left behind"


def test_holders_make_missing_directories_like_git_and_leave_only_them(tmp_path: Path) -> None:
    bare = _server(tmp_path, loose=0)
    objects = bare / "objects"
    objects.chmod(0o2770)  # core.sharedRepository=group makes objects/ like this
    before = _loose_dirs(bare)
    with hold_object_dirs(objects) as created:
        assert created == 256 - len(before)
        for name in LOOSE_DIRS:
            d = objects / name
            if name not in before:
                assert stat.S_IMODE(d.stat().st_mode) == 0o2770, name
            with pytest.raises(OSError) as exc:
                d.rmdir()  # what git's prune-packed tries
            assert exc.value.errno == errno.ENOTEMPTY
    assert not list(objects.glob(f"*/{HOLDER}"))
    assert _loose_dirs(bare) == set(LOOSE_DIRS)  # removing them again is the race itself
    run_git(bare, "fsck", "--strict")


def test_a_symlinked_fan_out_directory_gets_nothing_written_through_it(tmp_path: Path) -> None:
    bare = _server(tmp_path, loose=0)
    outside = tmp_path / "outside"
    outside.mkdir()
    (bare / "objects" / "ab").symlink_to(outside)
    with hold_object_dirs(bare / "objects"):
        assert list(outside.iterdir()) == []
    assert list(outside.iterdir()) == []


def test_a_directory_that_cannot_be_held_stops_the_repack_before_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bare = _server(tmp_path, loose=30)
    packs = sorted(p.name for p in (bare / "objects" / "pack").iterdir())
    real_open, real_link, refused = os.open, os.link, LOOSE_DIRS[99]

    def read_only(dir_fd: int | None) -> bool:  # the 100th directory (root ignores modes)
        return dir_fd is not None and os.readlink(f"/proc/self/fd/{dir_fd}").endswith(refused)

    def refusing(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if path == HOLDER and read_only(dir_fd):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def refusing_link(src: str, dst: str, **kw: Any) -> None:
        if read_only(kw.get("dst_dir_fd")):
            raise PermissionError(errno.EACCES, "Permission denied", dst)
        real_link(src, dst, **kw)

    monkeypatch.setattr(os, "open", refusing)
    monkeypatch.setattr(os, "link", refusing_link)
    repo = Repository(bare.parent, bare, bare, "bare", bare.name)
    result = execute(repo, Plan(str(bare), (REPACKS["full, cruft pack"],)), GIT, None, now=1e9)
    monkeypatch.undo()
    assert result.outcome == "failed"
    assert "objects/" in result.message and "did not run" in result.message, result.message
    assert sorted(p.name for p in (bare / "objects" / "pack").iterdir()) == packs
    assert not list((bare / "objects").glob(f"*/{HOLDER}"))


def test_holders_left_by_a_killed_custode_go_with_its_next_maintenance(tmp_path: Path) -> None:
    bare = _server(tmp_path, loose=30)
    for name in sorted(_loose_dirs(bare))[:3]:
        (bare / "objects" / name / HOLDER).touch(0o444)
    _repack(bare, Task("write_midx", "test"))
    assert not list((bare / "objects").glob(f"*/{HOLDER}"))


def test_without_leftovers_the_256_directories_are_not_listed_for_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inspection that starts a maintenance counts a holder as garbage: with none, the
    search for holders (a listing of every ``objects/XX``) is skipped."""
    bare = _server(tmp_path, loose=30)
    calls: list[Path] = []
    monkeypatch.setattr(executor, "release_leftovers", calls.append)
    _repack(bare, Task("write_midx", "test"))
    assert calls == []
    (bare / "objects" / sorted(_loose_dirs(bare))[0] / HOLDER).touch(0o444)
    _repack(bare, Task("write_midx", "test"))
    assert calls == [bare / "objects"]


def test_one_holder_file_is_linked_into_every_directory(tmp_path: Path) -> None:
    """The hold comes before every repack: one file hard-linked into the 256 directories
    (no new inode each), all of it gone after, and a directory where linking fails (say,
    another file system mounted there) still gets a holder of its own."""
    bare = _server(tmp_path, loose=0)
    objects = bare / "objects"
    real_link = os.link

    def no_link_into_7f(src: str, dst: str, **kw: Any) -> None:
        if os.readlink(f"/proc/self/fd/{kw['dst_dir_fd']}").endswith("/7f"):
            raise OSError(errno.EXDEV, "Invalid cross-device link", dst)
        real_link(src, dst, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "link", no_link_into_7f)
        with hold_object_dirs(objects):
            links = {(objects / n / HOLDER).stat().st_ino: (objects / n / HOLDER).stat().st_nlink
                     for n in LOOSE_DIRS}  # fmt: skip
            # 00 to 7e share one file; 7f made its own, linked on into 80 to ff
            assert sorted(links.values()) == [127, 129]
    assert not list(objects.glob(f"*/{HOLDER}"))
