"""What the backup commands share: the store, the host, keys, scratch space, records."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from custode.backup.crypto import (
    Identity,
    Recipient,
    generate_identity,
    load_identity,
    parse_recipient,
)
from custode.backup.manifest import check_host
from custode.backup.store import Store
from custode.backup.stores import open_store
from custode.base import paths
from custode.base.process import process_alive
from custode.cli.app import App
from custode.jobs import record as history
from custode.jobs import restore as restore_job
from custode.records.state import RepositoryResult

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


def store_url(app: App, given: str | None) -> str:
    return given or app.config.backup.store or str(paths.data_dir() / "backups")


def open_app_store(app: App, given: str | None, *, create: bool = True) -> Store:
    cfg = app.config.backup
    url = store_url(app, given)
    if "://" not in url and not create and not Path(url).exists():
        from custode.errors import PathNotFoundError

        raise PathNotFoundError(
            f"store directory {url} does not exist; pass --store with the store that holds "
            "the backups"
        )
    return open_store(url, s3_endpoint=cfg.s3_endpoint, s3_region=cfg.s3_region)


def host(app: App, given: str | None) -> str:
    name = given or app.config.backup.host or socket.gethostname().split(".")[0]
    return check_host(name)


def identity_path(app: App, given: Path | None) -> Path:
    return given or app.config.backup.identity or paths.config_dir() / "identity.txt"


def recipients(app: App, given: tuple[str, ...]) -> list[Recipient]:
    """--recipient, else backup.recipients, else the identity file's public key (the file
    is generated on first use, with a notice to keep a copy elsewhere)."""
    keys = list(given) or list(app.config.backup.recipients)
    if keys:
        return [parse_recipient(k) for k in keys]
    path = identity_path(app, None)
    if not path.exists():
        public = generate_identity(path)
        app.err.print(
            f"custode: created the backup key {path} (public key {public}); keep a copy of "
            "it somewhere else: without it no backup can be restored",
            markup=False, highlight=False,
        )  # fmt: skip
    return [load_identity(path).to_public()]


def identities(app: App, given: Path | None) -> list[Identity]:
    return [load_identity(identity_path(app, given))]


@contextmanager
def scratch(app: App) -> Iterator[Path]:
    """This run's own scratch directory (``run-<pid>-…``), removed afterwards; those of
    runs that were killed (their process is gone) are removed first."""
    base = app.config.backup.scratch or app.state_dir() / "scratch"
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    for old in base.glob("run-*"):
        pid = old.name.split("-")[1]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    mine = Path(tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=base))
    try:
        yield mine
    finally:
        shutil.rmtree(mine, ignore_errors=True)


def jobs(app: App, given: int | None) -> int:
    return given or app.config.backup.jobs or os.cpu_count() or 1


def audit(app: App, action: str, target: str, details: dict[str, Any]) -> None:
    history.audit(app.state_dir(), action, target, details, app.warn)


def record(
    app: App, command: str, rows: list[RepositoryResult], status: str, summary: dict[str, Any]
) -> None:
    history.results(app.state_dir(), command, rows, status, summary, app.warn)


def check_identity(app: App, store: Store, manifest_key: str, keys: list[Identity],
                   given: Path | None) -> None:  # fmt: skip
    """Fail once, naming the identity file, when it cannot open the backups (rather than
    once per repository)."""
    restore_job.check_identity(store, manifest_key, keys, identity_path(app, given))


def recipients_digest(keys: Sequence[Recipient]) -> str:
    """Which keys backups are encrypted to (a change makes every repository read afresh)."""
    return hashlib.sha256("\n".join(sorted(str(k) for k in keys)).encode()).hexdigest()[:16]
