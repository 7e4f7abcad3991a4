"""Moving files between a repository and a store: encrypt and put, get and decrypt.

Reading streams: the store writes the ciphertext into a pipe from a thread while age
decrypts from the other end into the destination, and the ciphertext's size and SHA-256
are checked against the manifest on the way, so a restore never holds a second copy of a
file on disk and a swapped or damaged file is named exactly. The stream stops as soon as
more bytes come than the manifest records: a huge (or endless) file in a stored file's
place costs no more time than the real one would.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import pyrage  # type: ignore[import-untyped]

from custode.backup.bundle import sha256_file
from custode.backup.crypto import Identity, Recipient, decrypt_file, encrypt_file
from custode.backup.manifest import FileRef
from custode.backup.store import Store
from custode.errors import IntegrityError, StateError


def put_file(
    store: Store, key: str, src: Path, recipients: Sequence[Recipient], scratch: Path
) -> FileRef:
    """Encrypt ``src`` to ``key``; the ciphertext passes through ``scratch``."""
    tmp = scratch / f"{src.name}.age"
    try:
        with tmp.open("wb") as out:
            encrypt_file(src, out, recipients)
        ref = FileRef(key, tmp.stat().st_size, sha256_file(tmp))
        store.put(key, tmp)
    finally:
        tmp.unlink(missing_ok=True)
    return ref


def put_bytes(store: Store, key: str, data: bytes, recipients: Sequence[Recipient]) -> FileRef:
    sealed: bytes = pyrage.encrypt(data, list(recipients))
    store.put_bytes(key, sealed)
    return FileRef(key, len(sealed), hashlib.sha256(sealed).hexdigest())


class _Hashing:
    """A write-only sink that hashes and counts what passes into a pipe, refusing more
    than ``ref``'s recorded size."""

    def __init__(self, fd: int, ref: FileRef) -> None:
        self.fd, self.ref = fd, ref
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        if self.size > self.ref.size:
            raise IntegrityError(
                f"stored file {self.ref.key} is damaged: it holds more than the "
                f"{self.ref.size} bytes its manifest records"
            )
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        return len(data)


def check(ref: FileRef, size: int, sha256: str) -> None:
    if size != ref.size or sha256 != ref.sha256:
        raise IntegrityError(
            f"stored file {ref.key} is damaged: {size} bytes with SHA-256 {sha256[:12]}…, "
            f"its manifest says {ref.size} bytes with {ref.sha256[:12]}…"
        )


def decrypt_to(store: Store, ref: FileRef, sink: BinaryIO, identities: Sequence[Identity]) -> None:
    """Decrypt the stored file ``ref`` into ``sink``, checking the ciphertext on the way.

    On error ``sink`` holds a partial plaintext the caller must discard."""
    rfd, wfd = os.pipe()
    tee = _Hashing(wfd, ref)
    failure: list[BaseException] = []

    def pump() -> None:
        try:
            store.get(ref.key, tee)  # type: ignore[arg-type]
        except BrokenPipeError:
            pass  # the reader stopped early: its own error says why
        except BaseException as exc:
            failure.append(exc)
        finally:
            os.close(wfd)

    thread = threading.Thread(target=pump, name="custode-store-get", daemon=True)
    thread.start()
    decrypt_error: IntegrityError | None = None
    try:
        with os.fdopen(rfd, "rb") as reader:
            try:
                decrypt_file(reader, sink, identities, name=ref.key)
            except IntegrityError as exc:
                decrypt_error = exc
            while reader.read(1 << 20):  # a clean end: the store sent nothing more
                pass
    finally:
        thread.join()
    if failure:
        raise failure[0]
    check(ref, tee.size, tee.digest.hexdigest())  # damage is named before a decrypt error
    if decrypt_error is not None:  # the bytes are the ones stored: the key is wrong
        raise IntegrityError(
            f"cannot decrypt {ref.key}: the file is intact but not encrypted to this identity; "
            "give the identity file of the key the backups were made with (--identity)"
        ) from None


def require(store: Store, ref: FileRef) -> None:
    """Raise StateError unless ``ref`` is present in ``store`` with its recorded size."""
    size = store.size(ref.key)
    if size is None:
        raise StateError(f"stored file {ref.key} is missing from {store.url}")
    if size != ref.size:
        raise IntegrityError(
            f"stored file {ref.key} is damaged: it has {size} bytes, its manifest says {ref.size}"
        )
