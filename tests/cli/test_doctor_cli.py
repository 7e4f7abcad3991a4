from collections.abc import Callable
from pathlib import Path

from fixtures.cli import CliResult

Run = Callable[..., CliResult]


def test_doctor_reports_versions_and_paths(custode: Run, isolated_env: dict[str, str]) -> None:
    result = custode("doctor")
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("custode ")
    assert lines[1].startswith("git 2.") and "custode needs 2.30.0 or newer" in lines[1]
    assert "cruft-packs yes" in result.stdout
    config_home = isolated_env["XDG_CONFIG_HOME"]
    assert (
        f"config: {config_home}/custode/config.toml (not present: built-in defaults in use)"
        in lines
    )
    assert (
        f"state: {isolated_env['XDG_STATE_HOME']}/custode (history state.db, audit log audit.jsonl)"
        in lines
    )


def _fake_git(tmp_path: Path, version: str) -> Path:
    git = tmp_path / "git"
    git.write_text(f'#!/bin/sh\necho "git version {version}"\n')
    git.chmod(0o755)
    config = tmp_path / "config.toml"
    config.write_text(f'[git]\nbinary = "{git}"\n')
    return config


def test_doctor_refuses_old_git(custode: Run, tmp_path: Path) -> None:
    result = custode("--config", _fake_git(tmp_path, "2.20.1"), "doctor")
    assert result.code == 5
    assert result.stderr == (
        "custode: git 2.20.1 is older than 2.30.0, the oldest custode supports: upgrade git\n"
    )


def test_doctor_without_git(custode: Run, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[git]\nbinary = "/nonexistent/git"\n')
    result = custode("--config", config, "doctor")
    assert result.code == 5
    assert result.stderr == (
        "custode: git not found ('/nonexistent/git' is not an executable file or on PATH): "
        "install git or set git.binary in config\n"
    )
