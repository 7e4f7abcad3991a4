"""``custode check`` end to end: real repositories, real corruption, real git."""

import json
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures.builders import Fleet
from fixtures.cli import CliResult
from fixtures.hostile import build_hostile_repo

pytestmark = pytest.mark.integration
Run = Callable[..., CliResult]
FIX = (
    "see the findings above; restore the repository from a backup or investigate — "
    "custode never repairs by deleting"
)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def _files(repo: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(repo)), p.stat().st_size) for p in repo.rglob("*"))


def _copy(fleet: Fleet, name: str, root: Path) -> Path:
    shutil.copytree(fleet.root / name, root / name, symlinks=True)
    return root / name


def _results(isolated_env: dict[str, str]) -> list[tuple[str, str, str, dict[str, object]]]:
    path = Path(isolated_env["XDG_STATE_HOME"]) / "custode" / "state.db"
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT repository, task, outcome, details FROM repository_results ORDER BY id"
        ).fetchall()
    return [(r, t, o, json.loads(d)) for r, t, o, d in rows]


def test_clean_fleet_is_ok_and_recorded(
    custode: Run, fleet: Fleet, isolated_env: dict[str, str]
) -> None:
    result = custode("check", "--json", fleet.root)
    assert result.code == 0, result.stderr
    data = result.json()
    repos = data["repositories"]
    assert len(repos) >= 10
    assert data["summary"]["repositories"] == data["summary"]["ok"] == len(repos)
    assert data["summary"]["corrupt"] == data["summary"]["error"] == 0
    for repo in repos:
        assert set(repo) == {
            "path", "relative", "verdict", "findings", "warnings", "read", "seconds",
        }  # fmt: skip
        assert repo["verdict"] == "ok" and repo["findings"] == [], repo
        assert repo["warnings"] == {"total": 0, "ids": {}, "examples": []}, repo
        assert isinstance(repo["seconds"], float)
    rows = _results(isolated_env)
    assert {r[0] for r in rows} == {r["relative"] for r in repos}
    assert {(r[1], r[2]) for r in rows} == {("check", "ok")}
    table = custode("check", "--full", fleet.root)
    assert table.code == 0, table.stderr
    assert f"{len(repos)} repositories checked in full: {len(repos)} ok, 0 corrupt" in table.stdout
    assert {(r[1], r[2]) for r in _results(isolated_env)} == {("check", "ok"), ("check-full", "ok")}


def test_missing_object_is_corrupt_exit_3_and_left_untouched(
    custode: Run, fleet: Fleet, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    root = tmp_path / "root"
    _copy(fleet, "packed.git", root)
    broken = _copy(fleet, "loose.git", root)
    tree = _git(broken, "rev-parse", "refs/heads/main^{tree}")
    (broken / "objects" / tree[:2] / tree[2:]).unlink()  # the tip commit needs it
    files_before = _files(broken)
    result = custode("check", "--json", root)
    assert result.code == 3, result.stderr
    repos = {r["relative"]: r for r in result.json()["repositories"]}
    assert repos["packed.git"]["verdict"] == "ok"
    assert repos["loose.git"]["verdict"] == "corrupt"
    assert any(tree in line for line in repos["loose.git"]["findings"])
    assert all(len(line) <= 300 for line in repos["loose.git"]["findings"])
    assert result.stderr.strip().splitlines()[-1] == (
        f"custode: 1 of 2 repositories failed the integrity check (1 corrupt); {FIX}"
    )
    assert _files(broken) == files_before  # nothing repaired, nothing deleted
    failed = [r for r in _results(isolated_env) if r[2] == "failed"]
    assert [(r[0], r[1], r[3]["verdict"]) for r in failed] == [("loose.git", "check", "corrupt")]
    table = custode("check", root)
    assert table.code == 3
    assert "loose.git" in table.stdout and "corrupt" in table.stdout
    assert "1 ok, 1 corrupt, 0 could not be checked" in table.stdout


def test_truncated_pack_is_corrupt(custode: Run, fleet: Fleet, tmp_path: Path) -> None:
    repo = _copy(fleet, "packed.git", tmp_path / "root")
    (pack,) = (repo / "objects" / "pack").glob("pack-*.pack")
    pack.chmod(0o644)
    with pack.open("r+b") as f:
        f.truncate(pack.stat().st_size - 200)
    for args in (("check", "--full", "--json"), ("check", "--json")):
        result = custode(*args, repo.parent)
        assert result.code == 3, (args, result.stderr)
        (found,) = result.json()["repositories"]
        assert found["verdict"] == "corrupt", args
        assert any("pack" in line for line in found["findings"]), found


def test_corrupt_commit_graph_is_found_by_full(custode: Run, fleet: Fleet, tmp_path: Path) -> None:
    repo = _copy(fleet, "packed.git", tmp_path / "root")
    graph = repo / "objects" / "info" / "commit-graph"
    assert graph.is_file()
    graph.chmod(0o644)
    with graph.open("r+b") as f:  # inside the OID fanout: a checksum and fanout mismatch
        f.seek(200)
        f.write(b"XXXXXXXX")
    result = custode("check", "--full", "--json", repo.parent)
    assert result.code == 3, result.stderr
    (found,) = result.json()["repositories"]
    assert found["verdict"] == "corrupt"
    assert any(line.startswith("commit-graph verify: ") for line in found["findings"]), found
    assert len(found["findings"]) <= 12


def test_not_a_repository_any_more_is_an_error(custode: Run, fleet: Fleet, tmp_path: Path) -> None:
    root = tmp_path / "root"
    _copy(fleet, "packed.git", root)
    broken = _copy(fleet, "loose.git", root)
    (broken / "HEAD").unlink()
    result = custode("check", "--json", root)
    assert result.code == 3
    repos = {r["relative"]: r for r in result.json()["repositories"]}
    assert repos["packed.git"]["verdict"] == "ok"
    assert repos["loose.git"]["verdict"] == "error"
    assert repos["loose.git"]["findings"] == [f"fsck: fatal: not a git repository: '{broken}'"]
    assert "(1 could not be checked)" in result.stderr


def test_hostile_repository_runs_nothing_during_check(custode: Run, tmp_path: Path) -> None:
    repo = build_hostile_repo(tmp_path / "hostile")
    for args in (("check", "--json"), ("check", "--full", "--json")):
        result = custode(*args, repo.path.parent)
        assert result.code == 0, result.stderr
        assert [r["verdict"] for r in result.json()["repositories"]] == ["ok", "ok"]
    assert repo.markers() == []


def test_help_lists_exit_codes(custode: Run) -> None:
    result = custode("check", "--help")
    assert result.code == 0
    assert "--full" in result.stdout and "Exit status: see custode --help." in result.stdout
