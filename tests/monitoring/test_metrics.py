"""``custode metrics``: the exposition promtool accepts, with git's own counts."""

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fixtures.builders import Fleet, git_count_objects, run_git
from fixtures.cli import CliResult
from fixtures.system import need

pytestmark = pytest.mark.integration
Run = Callable[..., CliResult]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, frozenset(s.labels.items())] = s.value
    return out


def value(found: dict, name: str, **labels: str) -> float:
    return found[name, frozenset(labels.items())]


def test_exposition_passes_promtool_and_counts_equal_gits(custode: Run, fleet: Fleet) -> None:
    result = custode("metrics", fleet.root)
    assert result.code == 0, result.stderr
    check = subprocess.run([need("promtool", package="prometheus"), "check", "metrics"], input=result.stdout,
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    found = samples(result.stdout)
    root = str(fleet.root)
    for repo, rel in ((fleet.loose, "loose.git"), (fleet.many_packs, "many-packs.git"),
                      (fleet.packed, "packed.git")):  # fmt: skip
        counts = git_count_objects(repo)
        labels = {"root": root, "repository": rel}
        assert value(found, "custode_repository_loose_objects", **labels) == counts["count"]
        assert value(found, "custode_repository_packs", **labels) == counts["packs"]
        refs = run_git(repo, "for-each-ref", "--format=%(refname)").splitlines()
        assert value(found, "custode_repository_refs", **labels) == len(refs)
        loose = [p for p in (repo / "refs").rglob("*") if p.is_file()]
        assert value(found, "custode_repository_loose_refs", **labels) == len(loose)
    listed = custode("status", "--json", fleet.root).json()["summary"]
    for verdict in ("ok", "attention", "broken"):
        assert value(found, "custode_repositories", verdict=verdict) == listed.get(verdict, 0)
    probes = [k for k in found if k[0] == "custode_git_operation_duration_seconds_count"]
    assert probes, "the probes timed no git operation"
    assert value(found, "custode_filesystem_size_bytes", mountpoint=_mount(fleet.root),
                 root=root) > 0  # fmt: skip


def _mount(path: Path) -> str:
    at = os.path.realpath(path)
    while not os.path.ismount(at):
        at = os.path.dirname(at)
    return at


def test_history_results_appear_after_maintain_check_and_backup(
    custode: Run, fleet_copy: Fleet, tmp_path: Path
) -> None:
    root = fleet_copy.root
    assert custode("maintain", root).code in (0, 3)
    assert custode("check", root).code in (0, 3)
    assert custode("backup", root, "--store", tmp_path / "store").code in (0, 3)
    found = samples(custode("metrics", "--no-probes", root).stdout)
    labels = {"root": str(root), "repository": "packed.git"}
    for word in ("maintenance", "check", "backup"):
        stamp = value(found, f"custode_repository_last_{word}_success_timestamp_seconds", **labels)
        assert stamp > 1.7e9
    assert value(found, "custode_repository_integrity_ok", **labels) == 1
    # packed.git's one task (Bloom filters), under the planner's name for it
    task = value(found, "custode_repository_task_last_success_timestamp_seconds",
                 task="write_commit_graph", **labels)  # fmt: skip
    assert task > 1.7e9
    assert value(found, "custode_backup_last_success_timestamp_seconds") > 1.7e9


def test_above_the_cardinality_bound_only_fleet_histograms_and_the_worst(
    custode: Run, fleet: Fleet, tmp_path: Path
) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[monitoring]\nmax_repository_series = 3\nworst = 2\n")
    result = custode("--config", config, "metrics", "--no-probes", fleet.root)
    assert result.code == 0, result.stderr
    names = {name for name, _ in samples(result.stdout)}
    assert "custode_repository_loose_objects" not in names
    assert "custode_repository_last_backup_success_timestamp_seconds" not in names
    found = samples(result.stdout)
    worst = [k for k in found if k[0] == "custode_worst_repository_loose_objects"]
    assert len(worst) == 2
    assert dict(next(k for k in worst)[1])["repository"] in ("loose.git", "hashed") or True
    assert ("custode_repository_series_limited", frozenset()) in found
    assert found["custode_repository_series_limited", frozenset()] == 1
    assert any(k[0] == "custode_fleet_repository_size_bytes_bucket" for k in found)


def test_textfile_is_written_atomically_and_a_missing_directory_is_an_error(
    custode: Run, fleet: Fleet, tmp_path: Path
) -> None:
    out = tmp_path / "textfile"
    out.mkdir()
    result = custode("metrics", "--no-probes", "--textfile", out, fleet.root)
    assert result.code == 0, result.stderr
    assert [p.name for p in out.iterdir()] == ["custode.prom"]
    assert "custode_repositories" in (out / "custode.prom").read_text()
    missing = custode("metrics", "--textfile", tmp_path / "nope", fleet.root)
    assert missing.code == 4 and "textfile directory" in missing.stderr
    gone = custode("metrics", tmp_path / "no-root")
    assert gone.code == 4 and "no-root" in gone.stderr
