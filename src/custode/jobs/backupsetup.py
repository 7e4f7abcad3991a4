"""What every backup job starts from, read from ``backup.*`` in the config: the store
(opened from its URL), the host name backups are made under, the keys (the identity file,
created on first use when no recipient is configured), the run's scratch directory, how
many repositories run at once, and the digest that tells whether the keys changed.

The same rules for ``custode backup``, ``restore``, ``verify``, ``forget`` and
``snapshots`` and for the nightly cycle; the CLI only adds its options to them."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

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
from custode.base.process import process_alive, started
from custode.config.model import BackupConfig
from custode.errors import PathNotFoundError


def _quiet(message: str) -> None:
    pass


def store_url(config: BackupConfig, given: str | None = None) -> str:
    """``given``, else ``backup.store``, else ``$XDG_DATA_HOME/custode/backups``."""
    return given or config.store or str(paths.data_dir() / "backups")


def open_backup_store(config: BackupConfig, given: str | None = None, *,
                      create: bool = True) -> Store:  # fmt: skip
    """The store; without ``create`` a directory store that does not exist is refused
    (reading backups from an empty new directory would only say there are none)."""
    url = store_url(config, given)
    if "://" not in url and not create and not Path(url).exists():
        raise PathNotFoundError(
            f"store directory {url} does not exist; pass --store with the store that holds "
            "the backups"
        )
    return open_store(url, s3_endpoint=config.s3_endpoint, s3_region=config.s3_region)


def host(config: BackupConfig, given: str | None = None) -> str:
    """``given``, else ``backup.host``, else this machine's short host name."""
    name = given or config.host or socket.gethostname().split(".")[0]
    return check_host(name)


def identity_path(config: BackupConfig, given: Path | None = None) -> Path:
    return given or config.identity or paths.config_dir() / "identity.txt"


def recipients(
    config: BackupConfig, given: Sequence[str] = (), *, notice: Callable[[str], None] = _quiet
) -> list[Recipient]:
    """``given``, else ``backup.recipients``, else the identity file's public key (the file
    is generated on first use, and ``notice`` says so: a copy must be kept elsewhere)."""
    keys = list(given) or list(config.recipients)
    if keys:
        return [parse_recipient(k) for k in keys]
    path = identity_path(config)
    if not path.exists():
        public = generate_identity(path)
        notice(
            f"created the backup key {path} (public key {public}); keep a copy of it "
            "somewhere else: without it no backup can be restored"
        )
    return [load_identity(path).to_public()]


def identities(config: BackupConfig, given: Path | None = None) -> list[Identity]:
    """The key that decrypts the backups: ``given``, else ``backup.identity``, else the
    default file. Missing, the error names every place looked and asks for the key the
    backups were made with (a new one cannot decrypt them)."""
    path = identity_path(config, given)
    if _missing(path):
        looked = (
            f"the identity file {path} given with --identity does not exist"
            if given
            else f"the identity file {path} named by backup.identity does not exist "
            "(--identity was not given)"
            if config.identity
            else f"backup.identity is not set (nor --identity, where the command has it) "
            f"and the default identity file {path} does not exist"
        )
        raise PathNotFoundError(
            f"no backup key: {looked}; decrypting the backups needs the key they were "
            f"encrypted to: copy the identity file from the machine that made them to "
            f"{path}, or name it with backup.identity or --identity (a new key cannot "
            "decrypt them)"
        )
    return [load_identity(path)]


def _missing(path: Path) -> bool:
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False  # unreadable: load_identity says so
    return False


def recipients_digest(keys: Sequence[Recipient]) -> str:
    """Which keys backups are encrypted to (a change makes every repository read afresh)."""
    return hashlib.sha256("\n".join(sorted(str(k) for k in keys)).encode()).hexdigest()[:16]


def jobs(config: BackupConfig, given: int | None = None) -> int:
    """Repositories at once: ``given``, else ``backup.jobs``, else one per CPU."""
    return given or config.jobs or os.cpu_count() or 1


def _running(name: str) -> bool:
    """Whether the run that made the scratch directory ``name`` may still run."""
    parts = name.split("-")
    if len(parts) < 3 or not parts[1].isdigit():
        return True  # not one of ours: left alone
    tag = parts[2]
    since = int(tag[1:]) / 100 if len(parts) > 3 and tag[:1] == "s" and tag[1:].isdigit() else None
    return process_alive(int(parts[1]), since)


def scratch_base(config: BackupConfig, state_dir: Path) -> Path:
    """Where runs build their bundles: ``backup.scratch``, else ``<state_dir>/scratch``."""
    return config.scratch or state_dir / "scratch"


@contextmanager
def scratch(base: Path) -> Iterator[Path]:
    """This run's own scratch directory under ``base`` (``run-<pid>-s<start>-…``, the
    start in hundredths of a second: a pid alone is soon another process's), removed
    afterwards; those of runs that were killed (their process is gone) are removed first."""
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    for old in base.glob("run-*"):
        if not _running(old.name):
            shutil.rmtree(old, ignore_errors=True)
    since = started(os.getpid())
    tag = f"s{round(since * 100)}-" if since is not None else ""
    mine = Path(tempfile.mkdtemp(prefix=f"run-{os.getpid()}-{tag}", dir=base))
    try:
        yield mine
    finally:
        shutil.rmtree(mine, ignore_errors=True)
