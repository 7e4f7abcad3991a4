"""The command line: parse, call the core, render. Only ``main`` turns errors into exits.

Each command lives in its own module (``<name>_cmd.py``) and is imported lazily so that
start-up stays fast.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from custode import __version__
from custode.base.pathtext import escape_streams
from custode.errors import EXIT_CODES_HELP, CustodeError, ExitCode

COMMANDS = {
    "status": "custode.cli.status_cmd:status",
    "init": "custode.cli.init_cmd:init",
    "audit": "custode.cli.audit_cmd:audit",
    "doctor": "custode.cli.doctor_cmd:doctor",
    "maintain": "custode.cli.maintain_cmd:maintain",
    "check": "custode.cli.check_cmd:check",
    "backup": "custode.cli.backup_cmd:backup",
    "snapshots": "custode.cli.snapshots_cmd:snapshots",
    "restore": "custode.cli.restore_cmd:restore",
    "verify": "custode.cli.verify_cmd:verify_cmd",
    "forget": "custode.cli.forget_cmd:forget",
    "trace2": "custode.cli.trace2_cmd:trace2",
    "serve": "custode.cli.serve_cmd:serve",
    "metrics": "custode.cli.metrics_cmd:metrics",
    "report": "custode.cli.report_cmd:report",
    "run": "custode.cli.run_cmd:run",
    "rules": "custode.cli.rules_cmd:rules",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        command: click.Command = getattr(importlib.import_module(module), attr)
        return command


@click.group(cls=LazyGroup, epilog=EXIT_CODES_HELP)
@click.version_option(__version__, prog_name="custode")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="CUSTODE_CONFIG",
    help="Config file (default: $XDG_CONFIG_HOME/custode/config.toml).",
)
@click.option("--debug", is_flag=True, help="Verbose logs and tracebacks.")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, debug: bool) -> None:
    """custode keeps a fleet of git repositories healthy."""
    from custode.cli.app import App
    from custode.cli.logs import configure

    app = App(config_path=config_path, debug=debug)
    configure(interactive=app.interactive, debug=debug)
    ctx.obj = app


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and map every outcome to one line and one exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv)
    escape_streams()  # a non-UTF-8 file name is shown as caf\xe9.git, never a crash
    try:
        code: Any = cli.main(args=argv, prog_name="custode", standalone_mode=False)
    except CustodeError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"custode: {exc.message}", err=True)
        sys.exit(int(exc.exit_code))
    except click.exceptions.Abort:
        click.echo("custode: interrupted", err=True)
        sys.exit(int(ExitCode.INTERRUPTED))
    except KeyboardInterrupt:
        click.echo("custode: interrupted", err=True)
        sys.exit(int(ExitCode.INTERRUPTED))
    except click.ClickException as exc:
        exc.show()
        sys.exit(ExitCode.USAGE if exc.exit_code == 2 else exc.exit_code)
    except BrokenPipeError:
        sys.exit(int(ExitCode.OK))
    except Exception as exc:  # a bug: one line unless --debug
        if debug:
            traceback.print_exc()
        click.echo(
            f"custode: internal error: {type(exc).__name__}: {exc} (rerun with --debug and "
            "report the traceback)",
            err=True,
        )
        sys.exit(int(ExitCode.ERROR))
    sys.exit(int(code) if isinstance(code, int) else 0)
