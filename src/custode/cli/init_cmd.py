"""``custode init``: write the commented default config file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click

from custode.base import paths
from custode.cli.app import App
from custode.config.model import render_default_config, render_reference
from custode.errors import EXIT_CODES_HELP, ConfigError


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@click.command(epilog=EXIT_CODES_HELP)
@click.option("--force", is_flag=True, help="Overwrite an existing config file.")
@click.option("--reference", is_flag=True, help="Print the configuration reference (Markdown).")
@click.pass_obj
def init(app: App, force: bool, reference: bool) -> None:
    """Write a commented default config (to --config, or $XDG_CONFIG_HOME/custode/config.toml)."""
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
