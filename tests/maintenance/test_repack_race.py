"""A clone that started before a full repack survives it (the repack deletes the old packs).

A server answers a clone with ``pack-objects``, which opens the multi-pack-index and, if
there is one, its reachability bitmap, then the packs they name. A full repack meanwhile
writes new packs and a new multi-pack-index and deletes the old packs (``-d``). git before
2.42 then dies in the clone ("could not open pack"): opening a MIDX bitmap loads every
pack it names and gives up on the whole request when one is gone, where every other
reader falls back to the packs that exist (git 06f3867, "gracefully degrade on failure to
load MIDX'd pack"). So with such a git custode writes no multi-pack bitmap
(docs/maintenance-heuristics.md, "Concurrent clones and multi-pack bitmaps").

The race is made deterministic the way git's own t5326 does: the reader's view (the
multi-pack-index files as they were when it opened them, the packs as they are after the
repack) is rebuilt on a copy of the repository, and a plain ``git clone`` reads it.

The symptom the issue met (the same object missing from every clone, run after run) is a
wrong multi-pack bitmap that git's bitmap writer copies into the next one: a repository
given one (one bit flipped) must clone completely after ``custode maintain``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from test_planner import NOW, run, state, task

from custode.config.maintenance import HOUR, MIB
from custode.git.runner import FEATURES, GitVersion
from custode.maintenance.planner import Repack
from fixtures.builders import Fleet, fast_import, git_env, history_stream, run_git
from fixtures.cli import CliResult
from fixtures.lying import mislead_bitmap

pytestmark = pytest.mark.integration

OLD, FIXED = GitVersion(2, 39, 5), FEATURES["midx-bitmap-concurrent-repack"]


Custode = Callable[..., CliResult]


def _maintain(custode: Custode, root: Path) -> dict[str, str]:
    result = custode("maintain", "--json", root)
    assert result.code == 0, result.stderr + result.stdout
    return {t["kind"]: t["outcome"] for r in result.json()["repositories"] for t in r["tasks"]}


def _packs(bare: Path) -> set[str]:
    return {p.name for p in (bare / "objects" / "pack").glob("pack-*.pack")}


def test_a_clone_that_opened_the_midx_before_a_full_repack_survives_it(
    tmp_path: Path, fleet: Fleet, custode: Custode, isolated_env: dict[str, str]
) -> None:
    root = tmp_path / "root"
    bare = root / "many-packs.git"
    shutil.copytree(fleet.many_packs, bare, symlinks=True)
    config = Path(isolated_env["XDG_CONFIG_HOME"]) / "custode" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[maintenance]\nfull_repack_cooldown = 0\n")  # a full repack each run

    assert _maintain(custode, root).get("full_repack") == "ok"
    pack_dir = bare / "objects" / "pack"
    # a push (its own pack), and a multi-pack-index over both, as a geometric repack on
    # git 2.39 writes it (no bitmap)
    fast_import(bare, history_stream("refs/heads/main", 3, start=900, parent="refs/heads/main^0"))
    run_git(bare, "multi-pack-index", "write")
    for bitmap in pack_dir.glob("pack-*.bitmap"):  # lost: a full repack writes it again
        bitmap.unlink()
    # what a clone starting now opens first: the multi-pack-index
    opened = {p.name: p.read_bytes() for p in pack_dir.glob("multi-pack-index*")}
    assert "multi-pack-index" in opened, sorted(p.name for p in pack_dir.iterdir())
    before = _packs(bare)

    # then the repack
    assert _maintain(custode, root).get("full_repack") == "ok"
    assert before - _packs(bare), "the second full repack deleted none of the packs"
    assert not list(pack_dir.glob("multi-pack-index*"))  # one pack needs none

    # the clone's view: the packs as they are now, the multi-pack-index files as it opened them
    view = tmp_path / "view.git"
    shutil.copytree(bare, view, symlinks=True)
    for name, data in opened.items():
        (view / "objects" / "pack" / name).write_bytes(data)
    dest = tmp_path / "clone.git"
    clone = _clone(view, dest)
    assert clone.returncode == 0, clone.stderr  # git 2.39: "fatal: could not open pack ..."
    assert run_git(dest, "rev-parse", "refs/heads/main") == run_git(bare, "rev-parse", "main")
    run_git(dest, "fsck", "--strict", "--no-progress")  # raises on a missing object


def _lying_midx_bitmap(repo: Path) -> str:
    """Give ``repo`` a multi-pack bitmap with one wrong bit that makes plain git's
    ``pack-objects`` leave an object out of a clone, as the one the issue met (found by
    flipping bits from the end of the file, where the tips' bitmaps are). Returns the tip."""
    tip = run_git(repo, "rev-parse", "refs/heads/main").strip()
    run_git(repo, "repack", "-adq", "--write-midx", "--write-bitmap-index")
    mislead_bitmap(repo, next((repo / "objects" / "pack").glob("multi-pack-index-*.bitmap")), tip)
    return tip


def _clone(source: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "clone", "-q", "--bare", "--no-local", str(source), str(dest)],
        capture_output=True, text=True, env=git_env(), timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("push", [False, True], ids=["maintain", "push-then-full-repack"])
def test_a_wrong_multi_pack_bitmap_does_not_outlive_maintenance(
    tmp_path: Path, custode: Custode, isolated_env: dict[str, str], push: bool
) -> None:
    """The issue's failure: every clone missed the same object, run after run. git's
    bitmap writer starts from the bitmap already there, so once wrong (here: one bit) a
    multi-pack bitmap was copied by every later full repack; and one written earlier (by
    custode before, or another tool) stays trusted until something rewrites it."""
    root = tmp_path / "root"
    bare = root / "r.git"
    run_git(None, "init", "-q", "--bare", bare)
    fast_import(bare, history_stream("refs/heads/main", 12, files=3))
    _lying_midx_bitmap(bare)  # main keeps its tip: the repack reuses that tip's bitmap
    broken = _clone(bare, tmp_path / "before.git")
    # what the clients saw (a missing tree or blob; a missing commit reads differently)
    incomplete = ("did not receive expected object", "did not send all necessary objects")
    assert broken.returncode != 0 and any(m in broken.stderr for m in incomplete), broken
    config = Path(isolated_env["XDG_CONFIG_HOME"]) / "custode" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[maintenance]\nfull_repack_cooldown = 0\n")

    if push:  # a new pack: a full repack is due
        fast_import(bare, history_stream("refs/heads/other", 2, start=50))
    done = _maintain(custode, root)
    assert done and set(done.values()) == {"ok"}, done
    clone = _clone(bare, tmp_path / "after.git")
    assert clone.returncode == 0, clone.stderr  # before: "did not receive expected object"
    run_git(tmp_path / "after.git", "fsck", "--strict", "--no-progress")


def test_a_multi_pack_index_is_kept_current_even_when_the_policy_writes_none(
    tmp_path: Path, custode: Custode, isolated_env: dict[str, str]
) -> None:
    """A repository with a multi-pack-index (and bitmap) from another tool, maintained with
    ``multi_pack_index = false``: the full repack deletes the packs it names. Repacks run
    without reading the multi-pack-index (DISTRUST_DERIVED), so git does not remove it;
    left naming deleted packs, it made every clone fail ("could not open pack")."""
    root = tmp_path / "root"
    bare = root / "r.git"
    run_git(None, "init", "-q", "--bare", bare)
    fast_import(bare, history_stream("refs/heads/main", 10))
    fast_import(bare, history_stream("refs/heads/main", 10, start=20, parent="refs/heads/main^0"))
    run_git(bare, "multi-pack-index", "write", "--bitmap")
    config = Path(isolated_env["XDG_CONFIG_HOME"]) / "custode" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("[maintenance]\nfull_repack_cooldown = 0\nmulti_pack_index = false\n")
    assert _maintain(custode, root).get("full_repack") == "ok"
    clone = _clone(bare, tmp_path / "clone.git")
    assert clone.returncode == 0, clone.stderr  # before: "could not open pack ..."
    assert not list((bare / "objects" / "pack").glob("multi-pack-index*"))  # removed first


def test_multi_pack_bitmaps_only_with_a_git_whose_clones_survive_a_repack() -> None:
    s, last_full = state(packs=9, pack_bitmaps=0), NOW - HOUR  # a geometric repack
    for git, bitmaps in ((OLD, False), (FIXED, True)):
        p = run(s, git=git, last_full=last_full)
        args = task(p, "geometric_repack").args
        # with git 2.39 no multi-pack-index either: it would delete the pack's bitmap
        assert isinstance(args, Repack) and args.write_midx is bitmaps, (git, p)
        assert args.write_bitmaps is bitmaps, (git, args)
        assert any("no multi-pack" in n for n in p.notes) is not bitmaps, p.notes
    # a working repository wants no bitmaps: the multi-pack-index without one
    work = task(run(replace(s, kind="working", bare=False), git=OLD), "geometric_repack")
    assert isinstance(work.args, Repack) and work.args.write_midx and not work.args.write_bitmaps
    # a full repack leaves one pack: its own bitmap, as git gc writes, and no
    # multi-pack-index (one there is removed first: the executor)
    for there in (state(packs=4, base_pack_bytes=MIB), state(packs=4, base_pack_bytes=MIB,
                  multi_pack_index=True, midx_packs=4)):  # fmt: skip
        for git in (OLD, FIXED):
            single = task(run(there, git=git), "full_repack")
            assert isinstance(single.args, Repack) and single.args.write_bitmaps
            assert not single.args.write_midx


def test_a_multi_pack_bitmap_git_cannot_keep_safe_is_dropped() -> None:
    s = state(packs=1, multi_pack_index=True, midx_packs=1, pack_bitmaps=0, midx_bitmap=True)
    p = run(s, git=OLD, last_full=NOW - HOUR)
    assert [t.kind for t in p.tasks] == ["write_midx"], p
    assert "multi-pack bitmap, which git 2.39.5 cannot keep safe: dropped" in p.tasks[0].reason
    assert run(s, git=FIXED, last_full=NOW - HOUR).tasks == ()
    # a full repack removes it anyway
    full = run(replace(s, packs=3, base_pack_bytes=MIB), git=OLD)
    assert [t.kind for t in full.tasks][:1] == ["full_repack"], full
    assert "write_midx" not in [t.kind for t in full.tasks]


def test_no_repack_is_planned_for_a_bitmap_git_cannot_safely_write() -> None:
    """With git 2.39 a repository with a multi-pack-index and no bitmap is optimised: a
    "no reachability bitmap" repack would run on every visit and never write one."""
    s = state(packs=2, multi_pack_index=True, midx_packs=2, pack_bitmaps=0)
    assert run(s, git=OLD, last_full=NOW - HOUR).tasks == ()
    p = run(s, git=FIXED, last_full=NOW - HOUR)
    assert p.tasks and p.tasks[0].reason.startswith("no reachability bitmap"), p
