"""What the command line says about itself and about a mistake: ``custode --help`` lists
every command's whole summary and the exit statuses (once); a mistyped command gets the
nearest name; an option of custode itself given after the command is told where it
belongs; every ``--jobs`` takes 0 for one per CPU; counts agree with their nouns."""

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import click
import pytest

from custode.cli import COMMANDS, cli
from custode.cli.params import JOBS
from fixtures.builders import Fleet
from fixtures.cli import CliResult

Run = Callable[..., CliResult]

GROUP_USAGE = "Usage: custode [OPTIONS] COMMAND [ARGS]...\nTry 'custode --help' for help.\n\n"


def test_help_lists_every_command_with_its_whole_summary(custode: Run) -> None:
    result = custode("--help", env={"COLUMNS": "80"})
    assert result.code == 0, result.stderr
    width = max(map(len, COMMANDS))
    for name, (_, summary) in COMMANDS.items():
        assert f"\n  {name.ljust(width)}  {summary}\n" in result.stdout, name
        assert summary.endswith(".") and ". " not in summary, name  # one whole sentence
    commands = result.stdout.split("\nCommands:\n")[1].split("\n\n")[0]
    assert len(commands.splitlines()) == len(COMMANDS) and "..." not in commands
    assert max(map(len, result.stdout.splitlines())) <= 80


def test_a_command_help_points_to_the_exit_statuses(custode: Run) -> None:
    result = custode("backup", "--help", env={"COLUMNS": "80"})
    assert result.code == 0, result.stderr
    assert result.stdout.endswith(
        "Show this message and exit.\n\n  Exit status: see custode --help.\n"
    )
    assert "0 ok" not in result.stdout


def test_a_mistyped_command_gets_the_nearest_name(custode: Run) -> None:
    result = custode("stauts", "/srv/git")
    assert (result.code, result.stdout) == (2, "")
    assert (
        result.stderr == f"{GROUP_USAGE}Error: No such command 'stauts'. Did you mean 'status'?\n"
    )
    nothing = custode("xyzzy")
    assert nothing.code == 2
    assert nothing.stderr == f"{GROUP_USAGE}Error: No such command 'xyzzy'.\n"


@pytest.mark.parametrize(
    ("args", "fix"),
    [
        (("status", "--config", "f.toml"), "custode --config FILE status ..."),
        (("status", "--config=f.toml"), "custode --config FILE status ..."),
        (("audit", "show", "--debug"), "custode --debug audit show ..."),
    ],
)
def test_an_option_of_custode_after_the_command_says_where_it_belongs(
    custode: Run, args: tuple[str, ...], fix: str
) -> None:
    result = custode(*args)
    option = args[-2] if args[-1] == "f.toml" else args[-1].split("=")[0]
    command = " ".join(a for a in args if not a.startswith("-") and a != "f.toml")
    assert (result.code, result.stdout) == (2, "")
    assert result.stderr == (
        f"Usage: custode {command} [OPTIONS]{' [ROOTS]...' if command == 'status' else ''}\n"
        f"Try 'custode {command} --help' for help.\n\n"
        f"Error: {option} is an option of custode itself: put it before the command ({fix}).\n"
    )


def test_an_unknown_option_is_still_suggested_its_nearest(custode: Run) -> None:
    result = custode("status", "--jsn")
    assert result.code == 2
    assert result.stderr.endswith(
        "Error: No such option '--jsn'. (Did you mean one of: '--json', '--rescan'?)\n"
    )


def _jobs_options() -> dict[str, click.Parameter]:
    ctx = click.Context(cli)
    found: dict[str, click.Parameter] = {}
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None
        for param in command.params:
            if "--jobs" in getattr(param, "opts", ()):
                found[name] = param
    return found


def test_every_jobs_option_takes_0_for_one_per_cpu() -> None:
    options = _jobs_options()
    assert set(options) == {"backup", "restore", "maintain", "check"}
    ctx = click.Context(cli)
    for name, option in options.items():
        assert option.type is JOBS, name
        assert option.type_cast_value(ctx, "0") == (os.cpu_count() or 1), name
        assert option.type_cast_value(ctx, "3") == 3, name
        assert "0 = one per CPU" in (getattr(option, "help", "") or ""), name
        with pytest.raises(click.BadParameter):
            option.type_cast_value(ctx, "65")


@pytest.mark.parametrize("command", ["backup", "restore", "maintain", "check"])
def test_jobs_below_0_is_refused_naming_the_rule(custode: Run, command: str) -> None:
    result = custode(command, "--jobs", "-1")
    assert result.code == 2
    assert result.stderr.endswith(
        "Error: Invalid value for '--jobs': '-1' is not a number of repositories at once; "
        "give 1 to 64, or 0 for one per CPU\n"
    )


def test_maintain_jobs_0_is_accepted(custode: Run, tmp_path: Path) -> None:
    result = custode("maintain", "--jobs", "0", "--dry-run", tmp_path)
    assert result.code == 4, result.stderr  # past the options: no repository there
    assert "no git repositories found under" in result.stderr


@pytest.mark.integration
def test_one_broken_repository_is_singular(custode: Run, fleet: Fleet, tmp_path: Path) -> None:
    shutil.copytree(fleet.packed, tmp_path / "nohead.git", symlinks=True)
    (tmp_path / "nohead.git" / "HEAD").unlink()
    result = custode("status", tmp_path)
    assert result.code == 3
    assert result.stderr.strip().splitlines()[-1] == (
        "custode: 1 broken repository; see the reasons above and repair or exclude them"
    )


@pytest.mark.integration
def test_one_corrupt_repository_of_one_is_singular(
    custode: Run, fleet: Fleet, tmp_path: Path
) -> None:
    broken = tmp_path / "loose.git"
    shutil.copytree(fleet.loose, broken, symlinks=True)
    tree = subprocess.run(
        ["git", "--git-dir", str(broken), "rev-parse", "refs/heads/main^{tree}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    (broken / "objects" / tree[:2] / tree[2:]).unlink()
    result = custode("check", tmp_path)
    assert result.code == 3
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("custode: 1 of 1 repository failed the integrity check (1 corrupt); ")
    )


def test_an_audit_log_of_one_entry_is_singular(custode: Run, isolated_env: dict[str, str]) -> None:
    from custode.records.audit import AuditLog

    log = AuditLog(Path(isolated_env["XDG_STATE_HOME"]) / "custode" / "audit.jsonl")
    log.append("maintain.repack", "/srv/git/a.git", {})
    result = custode("audit", "verify")
    assert (result.code, result.stdout) == (0, f"audit log {log.path}: 1 entry, chain intact\n")
