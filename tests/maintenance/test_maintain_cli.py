"""``custode maintain`` end to end on real neglected repositories."""

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures.builders import Fleet, git_count_objects, git_refs
from fixtures.cli import CliResult
from fixtures.hostile import build_hostile_repo

pytestmark = pytest.mark.integration
Run = Callable[..., CliResult]
NEGLECTED = ("loose.git", "many-packs.git", "many-refs.git", "stale.git")


@pytest.fixture
def neglected(tmp_path: Path, fleet: Fleet) -> Path:
    return fleet.copy_some(tmp_path / "root", NEGLECTED)


def _refs(repo: Path) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(repo), "for-each-ref", "--format=%(objectname) %(refname)"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def test_dry_run_plans_with_reasons_and_changes_nothing(custode: Run, neglected: Path) -> None:
    before = custode("status", "--json", "--rescan", neglected).json()["repositories"]
    result = custode("maintain", "--dry-run", "--json", neglected)
    assert result.code == 0, result.stderr
    plans = {r["relative"]: r for r in result.json()["repositories"]}
    assert set(plans) == set(NEGLECTED)
    assert all(t["reason"] for p in plans.values() for t in p["tasks"])
    assert any("loose objects" in t["reason"] for t in plans["loose.git"]["tasks"])
    assert "remove_stale_files" in [t["kind"] for t in plans["stale.git"]["tasks"]]
    after = custode("status", "--json", "--rescan", neglected).json()["repositories"]
    assert [r["fingerprint"] for r in after] == [r["fingerprint"] for r in before]
    table = custode("maintain", "--dry-run", neglected)
    assert table.code == 0 and "(dry run)" in table.stdout


def test_neglected_repositories_end_optimised(
    custode: Run, neglected: Path, isolated_env: dict[str, str]
) -> None:
    refs_before = {name: _refs(neglected / name) for name in NEGLECTED}
    result = custode("maintain", "--json", "--jobs", "2", neglected)
    assert result.code == 0, result.stderr
    summary = result.json()["summary"]
    assert summary["failed"] == 0 and summary["maintained"] == len(NEGLECTED)
    assert not list(neglected.rglob("custode-lock"))  # nothing of custode's stays behind
    for name in NEGLECTED:
        repo = neglected / name
        counts = git_count_objects(repo)
        # many-refs' 30 loose tags are under the loose-object limit, and with git 2.39 no
        # missing (multi-pack) bitmap calls for a repack either (test_repack_race.py)
        assert counts["count"] == 0 or name == "many-refs.git", (name, counts)
        assert counts["packs"] <= 3, name
        assert (repo / "objects" / "info" / "commit-graph").exists() or (
            repo / "objects" / "info" / "commit-graphs"
        ).exists(), name
        assert _refs(repo) == refs_before[name], name
        assert git_refs(repo), name
        fsck = subprocess.run(["git", "--git-dir", str(repo), "fsck", "--strict"],
                              capture_output=True, check=False)  # fmt: skip
        assert fsck.returncode == 0, (name, fsck.stderr)
    assert not (neglected / "stale.git" / "refs" / "heads" / "main.lock").exists()
    assert (neglected / "stale.git" / "refs" / "heads" / "fresh.lock").exists()
    # a second plan has nothing left to do, and nothing was logged out of order
    again = custode("maintain", "--dry-run", "--json", neglected).json()["repositories"]
    assert {r["relative"]: r["tasks"] for r in again} == {name: [] for name in NEGLECTED}
    assert custode("audit", "verify").code == 0
    assert "maintain.full_repack" in custode("audit", "show", "--json", "--last", "100").stdout


def test_unchanged_repositories_are_skipped_until_they_change(
    custode: Run, neglected: Path
) -> None:
    assert custode("maintain", "--json", neglected).code == 0
    repo = neglected / "many-refs.git"  # gets a new ref below: planned again
    plans = custode("maintain", "--dry-run", "--json", neglected).json()["repositories"]
    why = {r["relative"]: r["skipped_reason"] for r in plans}
    assert why["loose.git"].startswith("nothing to do: unchanged since its last maintenance")
    assert why["stale.git"] == "nothing to do: already optimised"  # a fresh lock: replanned
    forced = custode("maintain", "--dry-run", "--json", "--force", neglected).json()
    assert all(r["skipped_reason"] == "nothing to do: already optimised"
               for r in forced["repositories"] if r["relative"] != "stale.git")  # fmt: skip
    subprocess.run(["git", "--git-dir", str(repo), "update-ref", "refs/heads/new", "HEAD"],
                   check=True)  # fmt: skip
    plans = custode("maintain", "--dry-run", "--json", neglected).json()["repositories"]
    why = {r["relative"]: r["skipped_reason"] for r in plans}
    assert why["many-refs.git"] == "nothing to do: already optimised"  # changed: replanned
    assert why["loose.git"].startswith("nothing to do: unchanged since")


def test_broken_repository_is_left_untouched_and_others_carry_on(
    custode: Run, neglected: Path, fleet: Fleet
) -> None:
    broken = neglected / "broken.git"
    shutil.copytree(fleet.root / "loose.git", broken, symlinks=True)
    (broken / "HEAD").unlink()
    files_before = sorted(str(p.relative_to(broken)) for p in broken.rglob("*"))
    result = custode("maintain", "--json", neglected)
    assert result.code == 3
    assert "custode: broken.git: left untouched: HEAD is missing" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "custode: 1 broken repository was left untouched; see the messages above "
        "(custode repaired or removed nothing there)"
    )
    repos = {r["relative"]: r for r in result.json()["repositories"]}
    assert repos["broken.git"]["outcome"] == "skipped"
    assert repos["broken.git"]["skipped_reason"].startswith("left untouched: HEAD is missing")
    assert repos["loose.git"]["outcome"] == "ok"
    assert sorted(str(p.relative_to(broken)) for p in broken.rglob("*")) == files_before


def test_hostile_repository_runs_nothing_while_maintained(custode: Run, tmp_path: Path) -> None:
    """pre-auto-gc, reference-transaction, fsmonitor, filters...: none may fire."""
    repo = build_hostile_repo(tmp_path / "hostile")
    root = repo.path.parent
    plans = custode("maintain", "--dry-run", "--json", root)
    assert plans.code in (0, 3), plans.stderr
    assert any(r["tasks"] for r in plans.json()["repositories"])  # there is work to do
    result = custode("maintain", "--json", root)
    assert result.code in (0, 3), result.stderr
    assert any(r["outcome"] == "ok" for r in result.json()["repositories"])
    assert repo.markers() == []


def test_budget_starts_nothing_once_spent(custode: Run, neglected: Path) -> None:
    before = custode("status", "--json", "--rescan", neglected).json()["repositories"]
    result = custode("maintain", "--json", "--budget", "0s", neglected)
    assert result.code == 0, result.stderr
    assert sorted(result.json()["summary"]["not_started"]) == sorted(NEGLECTED)
    assert result.stderr.count("not started, the budget ran out") == len(NEGLECTED)
    after = custode("status", "--json", "--rescan", neglected).json()["repositories"]
    assert [r["fingerprint"] for r in after] == [r["fingerprint"] for r in before]
    bad = custode("maintain", "--budget", "soon", neglected)
    assert bad.code == 2 and "'soon' is not a duration" in bad.stderr


def test_largest_repository_starts_first(
    custode: Run, neglected: Path, isolated_env: dict[str, str]
) -> None:
    from custode.records.audit import AuditLog

    states = custode("status", "--json", "--rescan", neglected).json()["repositories"]
    biggest = max(states, key=lambda r: r["pack_bytes"] + r["loose_objects_bytes"])
    assert custode("maintain", "--jobs", "1", neglected).code == 0
    log = AuditLog(Path(isolated_env["XDG_STATE_HOME"]) / "custode" / "audit.jsonl")
    assert next(iter(log.entries())).target == biggest["path"]


@pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv (util-linux) is not installed")
def test_read_only_repository_fails_alone_and_loses_nothing(custode: Run, neglected: Path) -> None:
    import os

    locked = neglected / "loose.git"
    files_before = sorted(str(p.relative_to(locked)) for p in locked.rglob("*"))
    modes = {p: p.stat().st_mode for p in [locked, *locked.rglob("*")] if p.is_dir()}
    for path in modes:
        path.chmod(0o555)
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:  # root ignores file modes: drop the capability that lets it
        prefix = ("setpriv", "--inh-caps=-all", "--bounding-set=-dac_override", "--")
    try:
        result = custode("maintain", "--json", neglected, prefix=prefix)
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    assert result.code == 3, result.stderr
    repos = {r["relative"]: r for r in result.json()["repositories"]}
    assert repos["loose.git"]["outcome"] == "failed"
    assert "custode needs write access to the repository" in repos["loose.git"]["message"]
    assert all(repos[n]["outcome"] == "ok" for n in NEGLECTED if n != "loose.git")
    assert sorted(str(p.relative_to(locked)) for p in locked.rglob("*")) == files_before


def test_git_too_old_or_missing(custode: Run, neglected: Path, tmp_path: Path) -> None:
    old = tmp_path / "git"
    old.write_text('#!/bin/sh\necho "git version 2.20.1"\n')
    old.chmod(0o755)
    for binary, code, message in (
        (old, 5, "git 2.20.1 is older than 2.30.0, the oldest custode supports: upgrade git"),
        (tmp_path / "none", 5, "install git or set git.binary in config"),
    ):
        config = tmp_path / "config.toml"
        config.write_text(f'[git]\nbinary = "{binary}"\n')
        result = custode("--config", config, "maintain", neglected)
        assert result.code == code and message in result.stderr, result.stderr
