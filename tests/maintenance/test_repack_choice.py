"""Which repack ``custode maintain`` chooses, on real repositories: a full one for what it
buys, not for a pack's age (docs/maintenance-heuristics.md, "git 2.39 strategy")."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures.builders import Fleet, age_packs, fast_import, history_stream, run_git
from fixtures.cli import CliResult

pytestmark = pytest.mark.integration
Run = Callable[..., CliResult]


def _one_pack_and_pushes(fleet: Fleet, root: Path, pushes: int) -> Path:
    """many-packs.git made one pack with its bitmap (a first night), then ``pushes`` packs."""
    repo = root / "r.git"
    shutil.copytree(fleet.many_packs, repo, symlinks=True)
    run_git(repo, "repack", "-adq", "--write-bitmap-index")
    for n in range(pushes):
        stream = history_stream(f"refs/heads/push{n}", 2, start=700 + 10 * n, label=f"q{n} ")
        fast_import(repo, stream)
    return repo


def _packs(repo: Path) -> set[str]:
    return {p.name for p in (repo / "objects" / "pack").glob("pack-*.pack")}


def _tasks(result: CliResult) -> dict[str, dict[str, str]]:
    assert result.code == 0, result.stderr + result.stdout
    return {t["kind"]: t for r in result.json()["repositories"] for t in r["tasks"]}


def _config(env: dict[str, str], text: str) -> None:
    path = Path(env["XDG_CONFIG_HOME"]) / "custode" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_large_repository_keeps_its_old_pack_and_bitmap(
    custode: Run, fleet: Fleet, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    """Its pack a month old, no full repack on record: before, a full repack was due
    (Gitaly's 5-day rule); a geometric one on top buys the same reads."""
    root = tmp_path / "root"
    repo = _one_pack_and_pushes(fleet, root, 3)
    age_packs(repo, 30 * 86400)
    (big,) = (p for p in _packs(repo) if (repo / "objects" / "pack" / p[:-5]).with_suffix(
        ".bitmap").exists())  # fmt: skip
    _config(isolated_env, "[maintenance]\nsmall_repository = 0\n")  # as if large
    done = _tasks(custode("maintain", "--json", root))
    assert "full_repack" not in done and done["geometric_repack"]["outcome"] == "ok", done
    assert big in _packs(repo)  # kept, with its bitmap: git 2.39 serves clones from it
    assert (repo / "objects" / "pack" / big).with_suffix(".bitmap").exists()
    again = _tasks(custode("maintain", "--dry-run", "--force", "--json", root))
    assert not {"full_repack", "geometric_repack", "incremental_repack"} & set(again), again
    run_git(repo, "fsck", "--strict", "--no-progress")


def test_a_small_repository_is_repacked_whole(custode: Run, fleet: Fleet, tmp_path: Path) -> None:
    """Fresh packs (a full repack not due by age): any repack due is a full one."""
    root = tmp_path / "root"
    repo = _one_pack_and_pushes(fleet, root, 3)
    plan = _tasks(custode("maintain", "--dry-run", "--json", root))
    assert "repacked whole" in plan["full_repack"]["reason"], plan
    done = _tasks(custode("maintain", "--json", root))
    assert done["full_repack"]["outcome"] == "ok", done
    names = sorted(p.name for p in (repo / "objects" / "pack").iterdir())
    live = [n for n in names if n.endswith(".pack") and n[:-5] + ".mtimes" not in names]
    assert len(live) == 1 and live[0][:-5] + ".bitmap" in names, names
    assert "multi-pack-index" not in names
