"""What the backup commands share on the command line: the ``--store``, ``--host``,
``--identity`` and ``--json`` options, the rules of ``custode.jobs.backupsetup`` (store,
host, keys, jobs) applied to the App's config, and the jobs' notices on stderr."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # imported where used: a command's --help needs only the options
    from custode.backup.crypto import Identity, Recipient
    from custode.backup.store import Store
    from custode.cli.app import App

store_option = click.option(
    "--store", "store_url", metavar="URL",
    help="Backup store: a directory, file:// or s3://BUCKET/PREFIX [default: backup.store, "
    "else $XDG_DATA_HOME/custode/backups].",
)  # fmt: skip
host_option = click.option(
    "--host", "host_name", metavar="NAME",
    help="Whose backups: the host name they were made under [default: backup.host, else "
    "this host's name].",
)  # fmt: skip
identity_option = click.option(
    "--identity", "identity_path", type=click.Path(path_type=Path, dir_okay=False),
    help="age identity (secret key) file [default: backup.identity, else "
    "$XDG_CONFIG_HOME/custode/identity.txt].",
)  # fmt: skip
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def open_app_store(app: App, given: str | None, *, create: bool = True) -> Store:
    from custode.jobs import backupsetup

    return backupsetup.open_backup_store(app.config.backup, given, create=create)


def host(app: App, given: str | None) -> str:
    from custode.jobs import backupsetup

    return backupsetup.host(app.config.backup, given)


def identity_path(app: App, given: Path | None) -> Path:
    from custode.jobs import backupsetup

    return backupsetup.identity_path(app.config.backup, given)


def recipients(
    app: App, given: tuple[str, ...], notice: Callable[[str], None] | None = None
) -> list[Recipient]:
    """--recipient, else backup.recipients, else the identity file's public key (the file
    is generated on first use, with a notice to keep a copy elsewhere: ``notice``, else on
    stderr at once)."""
    from custode.jobs import backupsetup

    return backupsetup.recipients(app.config.backup, given, notice=notice or app.say)


def identities(app: App, given: Path | None) -> list[Identity]:
    from custode.jobs import backupsetup

    return backupsetup.identities(app.config.backup, given)


def jobs(app: App, given: int | None) -> int:
    from custode.jobs import backupsetup

    return backupsetup.jobs(app.config.backup, given)
