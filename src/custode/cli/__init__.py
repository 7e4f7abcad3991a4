"""The command line: parse, call the core, render. Only ``main`` turns errors into exits.

Each command lives in its own module (``<name>_cmd.py``) and is imported lazily so that
start-up stays fast: ``custode --help`` lists the summaries kept in ``COMMANDS`` and imports
no command, and a command module imports the core it runs inside the command, so that its
own ``--help`` does not load it (``tests/cli/test_startup.py`` keeps both true).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import click

from custode import __version__
from custode.base.pathtext import escape_streams
from custode.errors import EXIT_CODES_HELP, CustodeError, ExitCode

#: Every command: the module and attribute that define it, and its summary: one short
#: sentence, what ``custode --help`` lists for it, whole (it fits a line of 80 columns; a
#: narrower terminal wraps it, never cuts it). The listing comes from here so that it
#: imports no command; ``LazyGroup.get_command`` gives each command its summary as its
#: ``short_help``, so that click lists it the same way.
COMMANDS: dict[str, tuple[str, str]] = {
    "status": ("custode.cli.status_cmd:status",
               "Show the health of every repository under ROOTS."),
    "init": ("custode.cli.init_cmd:init",
             "Write a commented default config file."),
    "audit": ("custode.cli.audit_cmd:audit",
              "Check and read the audit log of every action custode took."),
    "doctor": ("custode.cli.doctor_cmd:doctor",
               "Show custode's and git's versions, git features and paths."),
    "maintain": ("custode.cli.maintain_cmd:maintain",
                 "Clean up and optimise every repository that needs it."),
    "check": ("custode.cli.check_cmd:check",
              "Verify the integrity of every repository under ROOTS."),
    "backup": ("custode.cli.backup_cmd:backup",
               "Back up every repository under ROOTS into the store."),
    "snapshots": ("custode.cli.snapshots_cmd:snapshots",
                  "List this host's snapshots in the store, oldest first."),
    "restore": ("custode.cli.restore_cmd:restore",
                "Restore repositories from a snapshot into a directory."),
    "verify": ("custode.cli.verify_cmd:verify_cmd",
               "Check that the backups in the store are whole and restorable."),
    "forget": ("custode.cli.forget_cmd:forget",
               "Remove the snapshots the retention policy does not keep."),
    "trace2": ("custode.cli.trace2_cmd:trace2",
               "Send every git's timings to custode serve (live telemetry)."),
    "serve": ("custode.cli.serve_cmd:serve",
              "Serve metrics and alerts, and run the scheduled jobs."),
    "metrics": ("custode.cli.metrics_cmd:metrics",
                "Print every custode metric in the Prometheus text format."),
    "report": ("custode.cli.report_cmd:report",
               "Report on the fleet from the history database."),
    "run": ("custode.cli.run_cmd:run",
            "One nightly cycle: check, maintain, back up, verify, forget."),
    "rules": ("custode.cli.rules_cmd:rules",
              "Print the alert rules as a Prometheus rules file."),
}  # fmt: skip


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs (or shows its own help).

    Its usage errors say the fix: a mistyped command its nearest names, and an option of
    custode itself given after the command where it belongs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module, attr = entry[0].split(":")
        command: click.Command = getattr(importlib.import_module(module), attr)
        command.short_help = entry[1]
        return command

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as exc:
            # click suggests from ``self.commands``, which a lazy group leaves empty
            raise click.exceptions.NoSuchCommand(
                exc.command_name, possibilities=self.list_commands(ctx), ctx=ctx
            ) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoSuchOption as exc:
            error = _misplaced(self, ctx, exc)
            if error is None:
                raise
            raise error from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``--help``: each summary whole, from ``COMMANDS``."""
        listing = click.Group(commands=[click.Command(name, short_help=summary)
                                        for name, (_, summary) in COMMANDS.items()])  # fmt: skip
        listing.format_commands(ctx, formatter)


def _misplaced(
    group: click.Group, ctx: click.Context, exc: click.exceptions.NoSuchOption
) -> click.UsageError | None:
    """The error for an option of ``group`` itself (``--config``, ``--debug``) given after
    a command, which only knows its own options; None for any other unknown option."""
    where = exc.ctx
    if where is None or where is ctx:
        return None
    for param in group.params:
        if isinstance(param, click.Option) and exc.option_name in param.opts:
            break
    else:
        return None
    name = exc.option_name
    value = "" if param.is_flag else f" {param.make_metavar(ctx)}"
    command = where.command_path.removeprefix(ctx.command_path).strip()
    return click.UsageError(
        f"{name} is an option of {ctx.command_path} itself: put it before the command "
        f"({ctx.command_path} {name}{value} {command} ...).",
        ctx=where,
    )


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
            _print_traceback()
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
    except PermissionError as exc:  # a file this user may not read or write, wherever it is
        if debug:
            _print_traceback()
        click.echo(f"custode: {denied(exc)}", err=True)
        sys.exit(int(ExitCode.NOT_FOUND))
    except Exception as exc:  # a bug: one line unless --debug
        if debug:
            _print_traceback()
        click.echo(
            f"custode: internal error: {type(exc).__name__}: {exc} (rerun with --debug and "
            "report the traceback)",
            err=True,
        )
        sys.exit(int(ExitCode.ERROR))
    sys.exit(int(code) if isinstance(code, int) else 0)


def denied(exc: PermissionError) -> str:
    """One line for a file custode was refused: which, whose it (or the directory in the
    way) is, and the fix (often the first run was as root, and the service's user now
    meets root's files)."""
    import os  # only on this error
    import pwd

    if exc.filename is None:
        return f"permission denied ({exc.strerror or exc}); run custode as its files' owner"
    name = os.path.abspath(os.fsdecode(exc.filename))
    at, whose, owner = name, "", ""
    while True:  # the file, or the nearest directory above it this user can look at
        try:
            st = os.stat(at)
        except OSError:
            parent = os.path.dirname(at)
            if parent == at:
                break
            at = parent
            continue
        try:
            owner = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            owner = f"uid {st.st_uid}"
        what = "" if at == name else f"{at}, in the way, is "
        whose = f" ({what}owned by {owner}, mode {st.st_mode & 0o777:04o})"
        break
    fix = (
        f"run custode as {owner}, or chown it to this user"
        if owner
        else "run custode as the user that owns it, or give this user access"
    )
    return f"permission denied: {name}{whose}; {fix}"


def _print_traceback() -> None:
    import traceback  # only for --debug: most runs never need it

    traceback.print_exc()
