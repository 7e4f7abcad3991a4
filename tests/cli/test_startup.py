"""Start-up stays fast: ``--version`` and ``--help`` import no command, and a command's own
``--help`` imports none of the core it runs (the config model, the backup engine, boto3);
``custode backup`` and ``custode restore`` import only what they use (no engine in a
restore, no terminal renderer into a pipe, no config validator without a config file);
the command list of ``custode --help`` shows what click would show for each command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest

from custode.backup.crypto import generate_identity
from custode.cli import COMMANDS, cli
from fixtures.builders import fast_import, history_stream, run_git

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


#: What ``custode backup`` and ``custode restore`` never import, each a measured part of
#: their start-up: rich draws only on a terminal; multiprocessing only for a fleet large
#: enough to be read by a process pool;
#: pydantic.plugin._loader is imported when pydantic builds a validator, which a run without
#: a config file never needs; monitoring, maintenance, jinja2, prometheus_client and boto3
#: belong to other commands (and to s3 stores).
NEVER_IN_A_RUN = ("rich", "multiprocessing", "pydantic.plugin._loader", "custode.monitoring",
                  "custode.maintenance", "jinja2", "prometheus_client", "boto3")  # fmt: skip
#: A restore also never imports what only a backup runs: the backup engine and its decision
#: and plan, the fleet scanner (custode.scan), and psutil (the backup lowers its priority).
NEVER_IN_A_RESTORE = (*NEVER_IN_A_RUN, "custode.backup.engine", "custode.backup.decide",
                      "custode.backup.plan", "custode.scan", "psutil")  # fmt: skip


def _named(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m in names or m.startswith(tuple(f"{n}." for n in names)))


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


def test_each_command_has_its_summary_whole() -> None:
    ctx = click.Context(cli)
    for name, (_, summary) in COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command is not None and not command.hidden and not command.deprecated, name
        assert command.get_short_help_str(1) == summary, name  # never shortened


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


_IMPORT = """
import sys
from pathlib import Path
for name in sys.argv[1:]:
    __import__(name)
import custode.config.model as model
model.load_config(Path("/nonexistent/custode.toml"), required=False)  # no file: the defaults
print("\\n".join(sys.modules))
"""


@pytest.mark.parametrize(
    ("modules", "never"),
    [
        (["custode.cli.app", "custode.cli.progress", "custode.cli.backup_cmd",
          "custode.jobs.backup", "custode.jobs.backupsetup", "custode.jobs.fleet"],
         NEVER_IN_A_RUN),
        (["custode.cli.app", "custode.cli.progress", "custode.cli.restore_cmd",
          "custode.jobs.restore", "custode.jobs.backupsetup"], NEVER_IN_A_RESTORE),
    ],
    ids=["backup", "restore"],
)  # fmt: skip
def test_backup_and_restore_modules_import_only_what_they_use(
    modules: list[str], never: tuple[str, ...], isolated_env: dict[str, str]
) -> None:
    """The command's module, its job's and what the command loads before it (the App, the
    progress bar, the config with no file), imported in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT, *modules],
        capture_output=True, text=True, env=isolated_env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = set(proc.stdout.split())
    assert set(modules) <= imported
    assert _named(imported, never) == []


@pytest.mark.integration
def test_backup_and_restore_into_a_pipe_import_only_what_they_use(
    isolated_env: dict[str, str], tmp_path: Path
) -> None:
    """The real runs, as a benchmark or a cron job makes them: --json into a pipe, keys
    given (so no key is made and no notice is printed), no config file."""
    repo = tmp_path / "root" / "a.git"
    run_git(None, "init", "-q", "--bare", repo)
    fast_import(repo, history_stream("refs/heads/main", 3))
    identity = tmp_path / "keys" / "identity.txt"
    recipient = generate_identity(identity)
    store = str(tmp_path / "store")
    for _ in range(2):  # the first run stores, the second finds the repository unchanged
        backed = _imported(["backup", str(tmp_path / "root"), "--store", store,
                            "--recipient", recipient, "--json"], isolated_env, tmp_path)  # fmt: skip
        assert "custode.jobs.backup" in backed
        assert _named(backed, NEVER_IN_A_RUN) == []
    restored = _imported(["restore", "--store", store, "--identity", str(identity),
                          "--to", str(tmp_path / "to"), "--json"], isolated_env, tmp_path)  # fmt: skip
    assert (tmp_path / "to" / "a.git" / "HEAD").is_file()
    assert "custode.jobs.restore" in restored
    assert _named(restored, NEVER_IN_A_RESTORE) == []
