"""``custode init``: write the commented default config file."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from custode.base import paths
from custode.base.atomicfile import write_atomically
from custode.errors import EXIT_CODES_SEE, ConfigError

if TYPE_CHECKING:
    from custode.cli.app import App


@click.command(epilog=EXIT_CODES_SEE)
@click.option("--force", is_flag=True, help="Overwrite an existing config file.")
@click.option("--reference", is_flag=True, help="Print the configuration reference (Markdown).")
@click.pass_obj
def init(app: App, force: bool, reference: bool) -> None:
    """Write a commented default config (to --config, or $XDG_CONFIG_HOME/custode/config.toml)."""
    from custode.config.model import render_default_config, render_reference

    if reference:
        click.echo(render_reference())
        return
    path = app.config_path or paths.default_config_file()
    if path.exists() and not force:
        raise ConfigError(f"config file {path} already exists; pass --force to overwrite it")
    try:
        write_atomically(path, render_default_config())
    except OSError as exc:
        raise ConfigError(f"cannot write config file {path}: {exc.strerror}") from None
    app.out.print(f"wrote {path}; edit it to set your roots", markup=False, highlight=False)
