"""age encryption for backups, through pyrage: standard x25519 recipients and identities.

Backups are encrypted to *public-key recipients* (``age1...`` strings), so the host that
makes them holds no secret: stealing it does not let anyone read old backups. The matching
*identity* (an ``AGE-SECRET-KEY-1...`` file as written by ``age-keygen``) is needed only to
restore or verify, and is refused unless only its owner can read it (mode 0600).

Nothing here invents a format: every file written is a plain age file, so it can be
decrypted without custode by ``age -d -i key.txt``. Encryption and decryption stream, so
memory use does not grow with the size of the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

import pyrage  # type: ignore[import-untyped]

from custode.base.secretfile import read_secret
from custode.errors import IntegrityError, UsageError

if TYPE_CHECKING:

    class Recipient(Protocol):
        """An age x25519 public key (pyrage.x25519.Recipient)."""

    class Identity(Protocol):
        """An age x25519 secret key (pyrage.x25519.Identity). str() of it is the secret."""

        def to_public(self) -> Recipient: ...

else:
    Recipient = pyrage.x25519.Recipient
    Identity = pyrage.x25519.Identity

__all__ = [
    "Identity",
    "Recipient",
    "decrypt_file",
    "encrypt_file",
    "generate_identity",
    "load_identity",
    "parse_recipient",
    "public_key",
]

_SECRET_PREFIX = "AGE-SECRET-KEY-1"  # noqa: S105  (the key prefix, not a secret)
_MAX_IDENTITY_FILE = 64 * 1024


def _shorten(text: str, limit: int = 24) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_recipient(text: str) -> Recipient:
    """Parse an ``age1...`` public key; UsageError naming the value if it is not one."""
    value = text.strip()
    if value.startswith(_SECRET_PREFIX):  # never echo a secret key back
        raise UsageError(
            "recipient is a secret key, not a public key: give an age public key starting with "
            "age1 (the '# public key:' line of the identity file)"
        )
    try:
        recipient: Recipient = pyrage.x25519.Recipient.from_str(value)
    except pyrage.RecipientError:
        raise UsageError(
            f"not an age public key: {_shorten(value)}: give an age public key starting with age1"
        ) from None
    return recipient


def public_key(identity: Identity) -> str:
    """The ``age1...`` public key of an identity: the recipient to encrypt backups to."""
    return str(identity.to_public())


def load_identity(
    path: Path, *, missing: str = "give the path of an age identity file"
) -> Identity:
    """Read an age identity file written by ``age-keygen``; refused unless mode is 0600-like.
    ``missing``: the fix when there is no such file (a new key decrypts no backup made
    before it, so making one is never suggested here)."""
    data = read_secret(
        path, "identity file", limit=_MAX_IDENTITY_FILE, expected="an age key file",
        missing=missing,
    )  # fmt: skip
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise UsageError(f"identity file {path} is not text: give an age key file") from None
    keys: list[str] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not line.startswith(_SECRET_PREFIX):
            raise UsageError(
                f"identity file {path} line {number} is not an AGE-SECRET-KEY-1 key or a comment: "
                "give a file written by age-keygen"
            )
        keys.append(line)
    if not keys:
        raise UsageError(f"identity file {path} holds no AGE-SECRET-KEY-1 key: give an age key")
    if len(keys) > 1:
        raise UsageError(f"identity file {path} holds {len(keys)} keys: give a file with one key")
    try:
        identity: Identity = pyrage.x25519.Identity.from_str(keys[0])
    except pyrage.IdentityError:
        raise UsageError(
            f"identity file {path} holds a malformed AGE-SECRET-KEY-1 key: "
            "give a file written by age-keygen"
        ) from None
    return identity


def _make_private_dirs(directory: Path) -> None:
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for each in reversed(missing):
        each.mkdir(mode=0o700, exist_ok=True)


def generate_identity(path: Path) -> str:
    """Create a new identity file (mode 0600, age-keygen format); return its public key."""
    identity: Identity = pyrage.x25519.Identity.generate()
    recipient = public_key(identity)
    created = datetime.now().astimezone().isoformat(timespec="seconds")
    text = f"# created: {created}\n# public key: {recipient}\n{identity}\n"
    _make_private_dirs(path.parent)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise UsageError(
            f"identity file {path} already exists: refusing to overwrite a key; "
            "choose another path or remove it first"
        ) from None
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text.encode("ascii"))
        handle.flush()
        os.fsync(handle.fileno())
    return recipient


def encrypt_file(src: Path, dst: BinaryIO, recipients: Sequence[Recipient]) -> None:
    """Stream ``src`` into ``dst`` as a binary age file readable by any of ``recipients``."""
    if not recipients:
        raise UsageError("no recipients to encrypt to: give at least one age public key")
    with src.open("rb") as reader:
        pyrage.encrypt_io(reader, dst, list(recipients))


def decrypt_file(
    src: BinaryIO, dst: BinaryIO, identities: Sequence[Identity], name: str = "backup"
) -> None:
    """Stream the age file ``src`` into ``dst``; IntegrityError if it cannot be decrypted.

    Plaintext is written as it is authenticated, so on error ``dst`` holds a partial
    result that the caller must discard.
    """
    if not identities:
        raise UsageError("no identity to decrypt with: give an age identity file")
    try:
        pyrage.decrypt_io(src, dst, list(identities))
    except pyrage.DecryptError:
        raise IntegrityError(f"cannot decrypt {name}: wrong identity or damaged file") from None
    except OSError as exc:
        if exc.errno is not None:  # a real I/O error from src or dst, not bad ciphertext
            raise
        raise IntegrityError(f"cannot decrypt {name}: wrong identity or damaged file") from None
