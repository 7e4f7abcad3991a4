"""Loose objects older than the cruft expiration: ``custode maintain`` packs the reachable
ones and prunes the unreachable ones, as the plan says ("dropped after 2w"), and then
plans nothing more for them; a repository others borrow from keeps every one.

A cruft repack (``repack -a --cruft --cruft-expiration=X -d``) leaves the expired loose
objects loose: git gc runs ``git prune --expire X`` after it, and so does custode.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures.builders import fast_import, history_stream, run_git
from fixtures.cli import CliResult

pytestmark = pytest.mark.integration
Run = Callable[..., CliResult]
MONTHS = 120 * 86400


def _blobs(repo: Path, label: str, count: int, age: float) -> list[str]:
    """``count`` unreachable loose blobs, their mtime ``age`` seconds ago."""
    oids = []
    for i in range(count):
        data = f"{label} stray blob {i}\n".encode()
        oid = run_git(repo, "hash-object", "-w", "--no-filters", "--stdin", input=data).strip()
        oids.append(oid)
        _age(repo, oid, age)
    return oids


def _age(repo: Path, oid: str, age: float) -> None:
    when = time.time() - age
    os.utime(repo / "objects" / oid[:2] / oid[2:], (when, when))


def _loose(repo: Path) -> set[str]:
    return {f"{d.name}{f.name}" for d in (repo / "objects").glob("??") for f in d.iterdir()
            if len(f.name) == 38}  # fmt: skip


def _exists(repo: Path, oid: str) -> bool:
    cmd = ["git", "--git-dir", str(repo), "cat-file", "-e", oid]
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


def _refs(repo: Path) -> str:
    return run_git(repo, "for-each-ref", "--format=%(objectname) %(refname)")


def _repository(repo: Path) -> tuple[list[str], list[str], list[str]]:
    """A bare repository with a pack, reachable loose objects (old), and unreachable loose
    blobs, old and recent: returns (reachable loose, old unreachable, recent unreachable)."""
    run_git(None, "init", "-q", "--bare", repo)
    fast_import(repo, history_stream("refs/heads/main", 20))
    before = _loose(repo)
    more = history_stream("refs/heads/main", 3, start=40, parent="refs/heads/main^0")
    fast_import(repo, more, pack=False)  # loose, and reachable
    reachable = sorted(_loose(repo) - before)
    assert len(reachable) == 12, reachable
    for oid in reachable:  # as old as the strays: only reachability tells them apart
        _age(repo, oid, MONTHS)
    old = _blobs(repo, "old", 5, MONTHS)
    recent = _blobs(repo, "recent", 3, 3600)
    return reachable, old, recent


def _config(env: dict[str, str], text: str) -> None:
    path = Path(env["XDG_CONFIG_HOME"]) / "custode" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _tasks(result: CliResult) -> dict[str, dict[str, str]]:
    assert result.code == 0, result.stderr + result.stdout
    return {t["kind"]: t for r in result.json()["repositories"] for t in r["tasks"]}


@pytest.mark.parametrize("size", ["small", "large"])
def test_old_unreachable_loose_objects_are_pruned_and_stay_gone(
    custode: Run, tmp_path: Path, isolated_env: dict[str, str], size: str
) -> None:
    root = tmp_path / "root"
    repo = root / "r.git"
    reachable, old, recent = _repository(repo)
    if size == "large":  # treated as large: an incremental repack, then git prune
        _config(isolated_env, "[maintenance]\nsmall_repository = 0\n")
    refs = _refs(repo)

    plan = _tasks(custode("maintain", "--dry-run", "--json", root))
    repack = "full_repack" if size == "small" else "incremental_repack"
    assert repack in plan, plan
    assert "loose objects up to 120 days old > the 2w expiration" in plan[repack]["reason"]

    done = _tasks(custode("maintain", "--json", root))
    assert done[repack]["outcome"] == "ok", done
    assert [o for o in old if _exists(repo, o)] == []
    assert all(_exists(repo, o) for o in recent + reachable)
    assert not set(reachable) & _loose(repo)  # packed
    assert _refs(repo) == refs
    run_git(repo, "fsck", "--strict", "--no-progress")
    assert not list(root.rglob("tmp_obj_custode_keepdir"))

    # nothing left of them for the next night, even at a forced look (the large one's two
    # packs now call for a geometric repack of their own)
    again = _tasks(custode("maintain", "--dry-run", "--force", "--json", root))
    assert not {"full_repack", "incremental_repack"} & set(again), again
    assert not any("loose" in t["reason"] for t in again.values()), again
    assert size == "large" or not again, again


def test_a_repository_others_borrow_from_keeps_its_loose_objects(
    custode: Run, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    pool, fork = root / "pool.git", root / "fork.git"
    _, old, recent = _repository(pool)
    run_git(None, "clone", "-q", "--bare", "--shared", pool, fork)
    done = _tasks(custode("maintain", "--json", root))
    assert all(t["outcome"] != "failed" for t in done.values()), done
    assert all(_exists(pool, o) for o in old + recent)
    assert set(old) <= _loose(pool)  # not pruned
    run_git(fork, "fsck", "--strict", "--no-progress")
