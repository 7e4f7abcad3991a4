"""``custode status`` end to end: real command, real repositories, exact exit codes."""

import os
import pwd
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures.builders import Fleet, git_count_objects, git_refs, run_git
from fixtures.cli import CliResult

pytestmark = pytest.mark.integration
Run = Callable[..., CliResult]


def test_json_numbers_equal_gits_own_on_every_fixture(custode: Run, fleet: Fleet) -> None:
    result = custode("status", "--json", fleet.root)
    assert result.code == 0, result.stderr
    data = result.json()
    repos = data["repositories"]
    assert data["summary"]["repositories"] == len(repos) >= 17
    assert data["problems"] == []
    for repo in repos:
        git = git_count_objects(Path(repo["git_dir"]))
        assert repo["loose_objects"] == git["count"], repo["path"]
        assert repo["loose_objects_bytes"] // 1024 == git["size"], repo["path"]
        assert repo["packs"] == git["packs"], repo["path"]
        assert repo["pack_bytes"] // 1024 == git["size-pack"], repo["path"]
        assert repo["packed_objects"] == git["in-pack"], repo["path"]
        assert repo["refs"] == len(git_refs(Path(repo["git_dir"]))), repo["path"]
        assert repo["verdict"] in {"ok", "attention"}
        assert Path(repo["path"]).is_absolute()
    by_rel = {r["relative"]: r for r in repos}
    reasons = {rel: [x["text"] for x in r["reasons"]] for rel, r in by_rel.items()}
    assert (
        by_rel["loose.git"]["verdict"] == "attention"
        or by_rel["loose.git"]["loose_objects"] <= 6700
    )
    assert "objects borrowed by 3 repositories" in reasons["pool.git"]
    assert any("stale lock/temporary file" in t for t in reasons["stale.git"])
    assert "1 dead worktree" in reasons["worktrees-main"]


def test_table_and_problems_only(custode: Run, fleet: Fleet) -> None:
    full = custode("status", fleet.root, env={"COLUMNS": "250"})
    assert full.code == 0, full.stderr
    assert "packed.git" in full.stdout and "repositories:" in full.stdout
    assert "objects borrowed by 3 repositories" in full.stdout
    only = custode("status", "--json", "--problems-only", fleet.root)
    assert only.code == 0
    assert all(r["verdict"] != "ok" for r in only.json()["repositories"])
    assert only.json()["summary"] == custode("status", "--json", fleet.root).json()["summary"]


def test_roots_from_config(custode: Run, fleet: Fleet, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f"roots = [{str(fleet.root)!r}]\n")
    result = custode("--config", config, "status", "--json")
    assert result.code == 0, result.stderr
    assert result.json()["roots"] == [str(fleet.root)]


def test_missing_root(custode: Run, tmp_path: Path) -> None:
    result = custode("status", tmp_path / "nope")
    assert result.code == 4
    assert (
        result.stderr
        == f"custode: root {tmp_path / 'nope'} does not exist; check the path (or the roots in your config)\n"
    )


def test_file_as_root(custode: Run, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    result = custode("status", tmp_path / "f")
    assert result.code == 4
    assert "is not a directory; pass the directory that holds the repositories" in result.stderr


def test_no_roots_at_all(custode: Run) -> None:
    result = custode("status")
    assert result.code == 4
    assert "no roots given" in result.stderr and "set roots in" in result.stderr


def test_empty_root(custode: Run, tmp_path: Path) -> None:
    result = custode("status", tmp_path)
    assert result.code == 4
    assert "no git repositories found under" in result.stderr


def test_invalid_config(custode: Run, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[maintenance]\nloose_object = 5\n")
    result = custode("--config", config, "status", tmp_path)
    assert result.code == 2
    assert result.stderr == (
        f"custode: config file {config}: maintenance.loose_object: unknown key; "
        "did you mean 'maintenance.loose_objects'?\n"
    )


def test_broken_repositories_exit_3_and_others_still_shown(
    custode: Run, fleet: Fleet, tmp_path: Path
) -> None:
    shutil.copytree(fleet.packed, tmp_path / "ok.git", symlinks=True)
    # packed.git lacks only changed-path Bloom filters: with them maintain has nothing to do
    run_git(tmp_path / "ok.git", "commit-graph", "write", "--reachable", "--changed-paths")
    shutil.copytree(fleet.packed, tmp_path / "nohead.git", symlinks=True)
    (tmp_path / "nohead.git" / "HEAD").unlink()
    shutil.copytree(fleet.many_refs, tmp_path / "corrupt.git", symlinks=True)
    with (tmp_path / "corrupt.git" / "packed-refs").open("a") as f:
        f.write("garbage line\n")
    before = sorted(p.name for p in (tmp_path / "corrupt.git").iterdir())
    result = custode("status", "--json", tmp_path)
    assert result.code == 3
    assert result.stderr.strip().splitlines()[-1] == (
        "custode: 2 broken repositories; see the reasons above and repair or exclude them"
    )
    verdicts = {r["relative"]: r["verdict"] for r in result.json()["repositories"]}
    assert verdicts == {"corrupt.git": "broken", "nohead.git": "broken", "ok.git": "ok"}
    assert sorted(p.name for p in (tmp_path / "corrupt.git").iterdir()) == before  # nothing touched


@pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv (util-linux) is not installed")
def test_unreadable_directory_is_reported_not_fatal(
    custode: Run, fleet: Fleet, tmp_path: Path
) -> None:
    top = tmp_path / "fleet"
    shutil.copytree(fleet.packed, top / "a.git", symlinks=True)
    (top / "locked").mkdir()
    shutil.copytree(fleet.packed, top / "locked" / "b.git", symlinks=True)
    os.chmod(top / "locked", 0)
    # root ignores file modes; drop the capabilities that let it (the test runs as root in CI)
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        prefix = (
            "setpriv",
            "--inh-caps=-all",
            "--bounding-set=-dac_override,-dac_read_search",
            "--",
        )
    try:
        result = custode("status", "--json", top, prefix=prefix)
    finally:
        os.chmod(top / "locked", 0o755)
    assert result.code == 3, result.stderr
    assert (
        f"custode: {top / 'locked'}: permission denied; fix its permissions or add it to discovery.exclude"
        in result.stderr
    )
    assert "custode: 1 unreadable path; see the reasons above" in result.stderr
    assert [r["relative"] for r in result.json()["repositories"]] == ["a.git"]


@pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv (util-linux) is not installed")
def test_a_state_directory_this_user_cannot_enter_is_one_line_naming_it(
    custode: Run, fleet: Fleet, tmp_path: Path
) -> None:
    """As after a first run as root: the history is in a directory this user may not
    enter. One line names the file, the directory in the way, its owner and the fix; no
    "internal error"."""
    top = tmp_path / "fleet"
    shutil.copytree(fleet.packed, top / "a.git", symlinks=True)
    assert custode("status", top).code == 0
    state = tmp_path / "xdg" / "state" / "custode"
    assert (state / "state.db").is_file()
    os.chmod(state, 0)
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:  # root ignores file modes: drop what lets it
        prefix = ("setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search",
                  "--")  # fmt: skip
    try:
        result = custode("status", top, prefix=prefix)
    finally:
        os.chmod(state, 0o700)
    assert result.code == 4, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    owner = pwd.getpwuid(os.geteuid()).pw_name
    assert last == (
        f"custode: permission denied: {state / 'state.db'} ({state}, in the way, is owned by "
        f"{owner}, mode 0000); run custode as {owner}, or chown it to this user"
    )


def test_exit_statuses_are_in_custode_help_and_every_command_points_there(
    custode: Run,
) -> None:
    from custode.cli import COMMANDS

    main = custode("--help")
    assert main.code == 0
    assert "Exit status: 0 ok; 1 unexpected error;" in main.stdout.replace("\n", " ")
    subcommands = [["audit", "verify"], ["audit", "show"], ["trace2", "listen"]]
    for command in [*([name] for name in COMMANDS), *subcommands]:
        result = custode(*command, "--help")
        assert result.code == 0, command
        assert result.stdout.endswith("\n  Exit status: see custode --help.\n"), command
        assert "0 ok" not in result.stdout, command
    assert {"status", "maintain", "check", "doctor", "init", "audit"} <= set(COMMANDS)


def test_init_writes_config_once(custode: Run, tmp_path: Path) -> None:
    config = tmp_path / "c" / "config.toml"
    first = custode("--config", config, "init")
    assert first.code == 0 and config.exists()
    again = custode("--config", config, "init")
    assert again.code == 2
    assert (
        again.stderr
        == f"custode: config file {config} already exists; pass --force to overwrite it\n"
    )
    assert custode("--config", config, "init", "--force").code == 0
    assert custode("--config", config, "status", tmp_path).code == 4  # loads fine, finds nothing


def test_history_records_only_changes(
    custode: Run, fleet_copy: Fleet, isolated_env: dict[str, str]
) -> None:
    from custode.records.state import StateDB

    assert custode("status", "--json", fleet_copy.root).code == 0
    assert custode("status", "--json", fleet_copy.root).code == 0
    head = subprocess.run(
        ["git", "--git-dir", str(fleet_copy.packed), "rev-parse", "HEAD"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    (fleet_copy.packed / "refs" / "heads" / "new").write_text(head)
    assert custode("status", "--json", fleet_copy.root).code == 0
    db_path = Path(isolated_env["XDG_STATE_HOME"]) / "custode" / "state.db"
    with StateDB.open(db_path) as db:
        changed = [r.summary["changed"] for r in reversed(db.runs())]
    assert changed[0] >= 17
    assert changed[1:] == [0, 1]
