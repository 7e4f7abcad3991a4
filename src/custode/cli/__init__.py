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

#: Every command: the module and attribute that define it, and its summary (the first
#: sentence of its help, what ``custode --help`` lists). ``--help`` shows the summaries from
#: here so that listing the commands imports none of them; a test keeps them equal.
COMMANDS: dict[str, tuple[str, str]] = {
    "status": ("custode.cli.status_cmd:status",
               "Show the health of every repository under ROOTS (default: roots from config)."),
    "init": ("custode.cli.init_cmd:init",
             "Write a commented default config (to --config, or "
             "$XDG_CONFIG_HOME/custode/config.toml)."),
    "audit": ("custode.cli.audit_cmd:audit",
              "Check and read the audit log of every action custode took."),
    "doctor": ("custode.cli.doctor_cmd:doctor",
               "Show custode's and git's versions, git features in use, and custode's paths."),
    "maintain": ("custode.cli.maintain_cmd:maintain",
                 "Clean up and optimise every repository under ROOTS that needs it."),
    "check": ("custode.cli.check_cmd:check",
              "Verify the integrity of every repository under ROOTS (default: roots from "
              "config)."),
    "backup": ("custode.cli.backup_cmd:backup",
               "Back up every repository under ROOTS into the store, as one snapshot."),
    "snapshots": ("custode.cli.snapshots_cmd:snapshots",
                  "List the snapshots of this host (or --host) in the store, oldest first (in "
                  "the order their machine wrote them: a snapshot dated in the future is "
                  "marked, never the latest by its date)."),
    "restore": ("custode.cli.restore_cmd:restore",
                "Restore REPOSITORIES (all when none is named) from a snapshot into --to."),
    "verify": ("custode.cli.verify_cmd:verify_cmd",
               "Check that the backups in the store are whole and restorable, and that the "
               "store still holds the last snapshot this host wrote (it did not go back in "
               "time)."),
    "forget": ("custode.cli.forget_cmd:forget",
               "Remove the snapshots the policy does not keep (restic's forget semantics)."),
    "trace2": ("custode.cli.trace2_cmd:trace2",
               "Live git telemetry: every git on the host reports its duration to custode "
               "serve."),
    "serve": ("custode.cli.serve_cmd:serve",
              "Serve metrics of the repositories under ROOTS (default: roots from config)."),
    "metrics": ("custode.cli.metrics_cmd:metrics",
                "Print every custode metric in the Prometheus text format, once."),
    "report": ("custode.cli.report_cmd:report",
               "Report from the history database on the repositories under ROOTS (default: "
               "roots from config; none there: every root recorded): fleet summary, "
               "repositories needing attention and why, maintenance and space reclaimed, "
               "backups per store and freshness, restore-drill times against the 5-minute "
               "target, alerts, and host resource use against the 70% target."),
    "run": ("custode.cli.run_cmd:run",
            "One nightly cycle on every repository under ROOTS: check, maintain (only what the "
            "check found sound), back up, verify (quick, and a restore drill of a few "
            "repositories), forget old snapshots, report."),
    "rules": ("custode.cli.rules_cmd:rules",
              "Print the alert rules custode serve evaluates (the config's [alerting] rules, "
              "else the shipped ones) as a Prometheus rules file: same names, thresholds, "
              "durations, labels and annotations, plus CustodeMetricsStale, which only "
              "Prometheus can raise."),
}  # fmt: skip


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs (or shows its own help)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module, attr = entry[0].split(":")
        command: click.Command = getattr(importlib.import_module(module), attr)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``--help``, from the summaries: click shortens each one to
        the width exactly as it would the command's own help."""
        listing = click.Group(commands=[click.Command(name, help=summary)
                                        for name, (_, summary) in COMMANDS.items()])  # fmt: skip
        listing.format_commands(ctx, formatter)


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
