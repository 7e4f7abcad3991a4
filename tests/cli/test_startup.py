"""Start-up stays fast: ``--version`` and ``--help`` import no command, and a command's own
``--help`` imports none of the core it runs (the config model, the backup engine, boto3);
the command list of ``custode --help`` says what each command's own help says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest

from custode.cli import COMMANDS, cli

#: Never imported just to show a version or a help text: the largest imports of custode.
HEAVY = ("pydantic", "custode.config.model", "custode.jobs", "custode.backup", "custode.scan",
         "custode.git", "boto3", "psutil", "jinja2", "prometheus_client")  # fmt: skip


#: ``python -m custode ARGS`` that writes, on its way out, every module it imported
#: (``-X importtime`` misses the command modules: importlib.import_module loads them).
_RUN = """
import atexit, runpy, sys
from pathlib import Path
listing = Path(sys.argv.pop(1))
atexit.register(lambda: listing.write_text("\\n".join(sys.modules)))
runpy.run_module("custode", run_name="__main__", alter_sys=True)
"""


def _imported(args: list[str], env: dict[str, str], tmp_path: Path) -> set[str]:
    """The modules ``python -m custode ARGS`` imports."""
    listing = tmp_path / "modules.txt"
    proc = subprocess.run(
        [sys.executable, "-c", _RUN, str(listing), *args],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(listing.read_text().split())


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.startswith(HEAVY))


@pytest.mark.parametrize("args", [["--version"], ["--help"]])
def test_version_and_help_import_no_command(
    args: list[str], isolated_env: dict[str, str], tmp_path: Path
) -> None:
    modules = _imported(args, isolated_env, tmp_path)
    assert "custode.cli" in modules  # the parse worked: it lists what was imported
    assert _heavy(modules) == []
    assert sorted(m for m in modules if m.startswith("custode.cli.")) == []


#: Not yet: verify (click.Choice of the levels from the core), serve, doctor, audit and
#: snapshots import their core at module level.
@pytest.mark.parametrize(
    "command", ["status", "backup", "restore", "check", "maintain", "forget", "init", "metrics",
                "run"]
)  # fmt: skip
def test_a_command_help_imports_none_of_the_core(
    command: str, isolated_env: dict[str, str], tmp_path: Path
) -> None:
    modules = _imported([command, "--help"], isolated_env, tmp_path)
    assert f"custode.cli.{command}_cmd" in modules
    assert _heavy(modules) == []


def test_help_lists_each_command_with_its_own_summary() -> None:
    ctx = click.Context(cli)
    for name, (_, summary) in COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command is not None and not command.hidden and not command.deprecated, name
        listed = click.Command(name, help=summary)
        for limit in range(1, 200):
            assert listed.get_short_help_str(limit) == command.get_short_help_str(limit), (
                f"{name}: make its summary in custode.cli.COMMANDS its help's first sentence"
            )


def test_help_lists_every_command_as_click_would() -> None:
    """The listing from the summaries equals click's own from the imported commands."""

    class Eager(click.Group):
        def list_commands(self, ctx: click.Context) -> list[str]:
            return cli.list_commands(ctx)

        def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
            return cli.get_command(ctx, cmd_name)

    for width in (40, 80, 200):
        lazy, eager = click.HelpFormatter(width=width), click.HelpFormatter(width=width)
        cli.format_commands(click.Context(cli), lazy)
        Eager().format_commands(click.Context(cli), eager)
        assert lazy.getvalue() == eager.getvalue()
        assert all(f"  {name}  " in lazy.getvalue() for name in COMMANDS)
