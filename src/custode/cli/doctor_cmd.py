"""``custode doctor``: what custode runs with, where it keeps things, and whether it can."""

from __future__ import annotations

import click

from custode import __version__
from custode.base import paths
from custode.cli.app import App
from custode.errors import EXIT_CODES_SEE
from custode.git.runner import FEATURES, MINIMUM_VERSION, Git


@click.command(epilog=EXIT_CODES_SEE)
@click.pass_obj
def doctor(app: App) -> None:
    """Show custode's and git's versions, git features in use, and custode's paths.

    Fails (exit 5) when git is missing or older than custode supports, and (exit 2) when
    the config file is invalid.
    """
    config = app.config  # raises on an invalid config file
    git = Git.from_config(config.git)
    version = git.version()  # raises when git is missing
    config_file = app.config_path or paths.default_config_file()
    lines = [
        f"custode {__version__}",
        f"git {version} ({git.executable()}); custode needs {MINIMUM_VERSION} or newer",
        "git features: "
        + ", ".join(f"{name} {'yes' if version >= v else 'no'}" for name, v in FEATURES.items()),
        f"config: {config_file}"
        + ("" if config_file.exists() else " (not present: built-in defaults in use)"),
        f"state: {app.state_dir()} (history state.db, audit log audit.jsonl)",
        f"data: {paths.data_dir()}",
    ]
    for line in lines:
        app.out.print(line, markup=False, highlight=False)
    git.check_version()  # raises with the upgrade hint when git is too old
