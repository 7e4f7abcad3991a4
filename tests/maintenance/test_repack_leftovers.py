"""What a killed ``git repack`` leaves in ``objects/pack``: its temporary packs
(``.tmp-<pid>-pack-<hash>.pack``/``.idx``, renamed into place at its end).

git 2.39's next ``repack --cruft`` dies on them ("could not find pack '.tmp-…'"), so the
repository could not be repacked again. custode removes them once their repack is known
to be gone (its pid runs no more) or they are older than the temporary-file age, and
leaves the objects alone while the repack that wrote them still runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fixtures.builders import fast_import, history_stream, run_git
from fixtures.cli import CliResult

pytestmark = pytest.mark.integration
Run = Callable[..., CliResult]


def _dead_pid() -> int:
    """The pid of a process that has ended (reaped: nothing runs under it now)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _repository(tmp_path: Path, pid: int) -> tuple[Path, list[Path]]:
    """A small bare repository in three packs, and a leftover of a repack killed after its
    pack-objects wrote the new pack under its temporary name."""
    repo = tmp_path / "root" / "r.git"
    run_git(None, "init", "-q", "--bare", repo)
    start, parent = 0, None
    for n in (30, 5, 5):
        fast_import(repo, history_stream("refs/heads/main", n, start=start, parent=parent))
        start, parent = start + n, "refs/heads/main^0"
    pack_dir = repo / "objects" / "pack"
    first = sorted(pack_dir.glob("pack-*.pack"))[0]
    name = first.name.removesuffix(".pack").removeprefix("pack-")
    left = []
    for ext in ("pack", "idx"):
        copy = pack_dir / f".tmp-{pid}-pack-{name}.{ext}"
        shutil.copyfile(first.with_suffix(f".{ext}"), copy)
        left.append(copy)
    return repo, left


def _fsck(repo: Path) -> None:
    subprocess.run(["git", "--git-dir", str(repo), "fsck", "--no-dangling"], check=True,
                   capture_output=True)  # fmt: skip


def _repo(result: CliResult) -> dict[str, object]:
    assert result.code == 0, result.stderr
    [repo] = result.json()["repositories"]
    return repo


def test_a_killed_repacks_temporary_pack_is_removed_and_the_repack_runs(
    custode: Run, tmp_path: Path
) -> None:
    repo, left = _repository(tmp_path, _dead_pid())
    refs = run_git(repo, "for-each-ref")
    planned = _repo(custode("maintain", "--dry-run", "--json", repo.parent))
    kinds = [t["kind"] for t in planned["tasks"]]  # type: ignore[attr-defined]
    assert kinds[0] == "remove_stale_files" and "full_repack" in kinds, planned
    reason = planned["tasks"][0]["reason"]  # type: ignore[index]
    assert "2 temporary pack files of a git repack no longer running (pid" in reason
    done = _repo(custode("maintain", "--json", repo.parent))
    assert done["outcome"] == "ok", done
    assert not [p for p in left if p.exists()]
    assert not list((repo / "objects" / "pack").glob(".tmp-*"))
    assert len(list((repo / "objects" / "pack").glob("pack-*.pack"))) == 1
    assert run_git(repo, "for-each-ref") == refs
    _fsck(repo)


@pytest.fixture
def repacking() -> Iterator[int]:
    """The pid of a running process whose command line is a repack's (argv[0] git-repack)."""
    proc = subprocess.Popen(["git-repack", "60"], executable="sleep")
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_the_objects_of_a_running_repack_are_left_to_it_until_it_is_stale(
    custode: Run, tmp_path: Path, repacking: int
) -> None:
    repo, left = _repository(tmp_path, repacking)  # a repack at work
    planned = _repo(custode("maintain", "--dry-run", "--json", repo.parent))
    assert not [t for t in planned["tasks"] if "repack" in t["kind"]], planned  # type: ignore[attr-defined]
    notes = " ".join(planned["notes"])  # type: ignore[arg-type]
    assert f"a git repack is at work (objects/pack/.tmp-{repacking}-pack-" in notes
    assert "objects are left to it" in notes
    custode("maintain", "--json", repo.parent)
    assert all(p.exists() for p in left)  # not removed under a running repack
    when = time.time() - 2 * 86400  # older than the temporary-file age (1 day)
    for p in left:
        os.utime(p, (when, when))
    done = _repo(custode("maintain", "--json", repo.parent))
    assert done["outcome"] == "ok", done
    assert not [p for p in left if p.exists()]
    _fsck(repo)


def test_a_dead_repacks_pid_reused_by_another_process_holds_nothing_back(
    custode: Run, tmp_path: Path
) -> None:
    """Pids are reused (32,768 on Linux by default): the pid in a killed repack's
    temporary pack may run something else by the next night. What runs under it is no
    repack (a sleep), so the leftovers are a dead repack's: removed, and the repack runs,
    where before they held every repack back for a day."""
    other = subprocess.Popen(["sleep", "60"])
    try:
        _reused(custode, tmp_path, other.pid)
    finally:
        other.kill()
        other.wait()


def _reused(custode: Run, tmp_path: Path, pid: int) -> None:
    repo, left = _repository(tmp_path, pid)
    planned = _repo(custode("maintain", "--dry-run", "--json", repo.parent))
    kinds = [t["kind"] for t in planned["tasks"]]  # type: ignore[attr-defined]
    assert kinds[0] == "remove_stale_files" and "full_repack" in kinds, planned
    done = _repo(custode("maintain", "--json", repo.parent))
    assert done["outcome"] == "ok", done
    assert not [p for p in left if p.exists()]
    assert len(list((repo / "objects" / "pack").glob("pack-*.pack"))) == 1
    _fsck(repo)
