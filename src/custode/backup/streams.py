"""Moving files between a repository and a store: encrypt and put, get and decrypt.

Reading streams: the store writes the ciphertext into a pipe from a thread while age
decrypts from the other end, and the ciphertext's size and SHA-256 are checked against
the manifest on the way, so a restore never holds a second copy of a file on disk and a
swapped or damaged file is named exactly. The stream stops as soon as more bytes come
than the manifest records: a huge (or endless) file in a stored file's place costs no
more time than the real one would.

Speed: pyrage's ``decrypt_io`` holds the GIL while it decrypts, so everything else runs
in calls that let go of it, on the other core: the store thread reads and hashes, and a
second thread writes the plaintext to the destination in 1 MiB pieces (a write is a
system call, the decryption need not wait for it). Pipe and buffers are 1 MiB, not the
8 KiB age reads and writes at a time. Memory stays a few MiB whatever the file's size.

A large file stored as parts (``backup/parts.py``) is written by ``parts.put_parts``;
``decrypt_to`` and ``require`` take one part after another (a restore of a pack decrypts
them on every core instead: ``parts.decrypt_parts``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import queue
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
    """Encrypt ``src`` to ``key``, hashing the ciphertext as it is written. A store that
    takes a stream (``LocalStore.put_stream``) gets it directly; another (S3, which may
    resend a part) gets it through a file in ``scratch``. (A large bundle or index is
    stored as parts instead: ``parts.put_parts``.)"""
    stream = getattr(store, "put_stream", None)
    if stream is not None:
        sink = Counting()

        def write(out: BinaryIO) -> None:
            sink.out = out
            encrypt_file(src, sink, recipients)  # type: ignore[arg-type]

        stream(key, write)
        return FileRef(key, sink.size, sink.digest.hexdigest())
    tmp = scratch / f"{src.name}.age"
    try:
        with tmp.open("wb") as out:
            encrypt_file(src, out, recipients)
        ref = FileRef(key, tmp.stat().st_size, sha256_file(tmp))
        store.put(key, tmp)
    finally:
        tmp.unlink(missing_ok=True)
    return ref


class Counting:
    """A write-only sink that passes bytes on to ``out``, hashing and counting them."""

    def __init__(self) -> None:
        self.out: BinaryIO | None = None
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        if self.out is None:
            raise StateError("no store file to write to")
        self.digest.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)

    def flush(self) -> None:
        if self.out is not None:
            self.out.flush()


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


_PIECE = 1 << 20  # pipe, read buffer and plaintext pieces: 8 KiB ones cost a system call each
_DEPTH = 4  # plaintext pieces waiting to be written: memory stays flat


def _widen(fd: int) -> None:
    with contextlib.suppress(OSError):  # a user over the pipe-buffer quota keeps 64 KiB
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIECE)


_FLUSH_EVERY = 32 << 20


class Flusher:
    """Has the kernel write a file to disk while it is being written: ``fdatasync`` in a
    thread of its own after every 32 MiB, so the caller's fsync before its rename waits
    for the last few MiB only, not for the whole file. Its error is kept (the kernel
    reports a failed write-back once per open file: it must not be lost). A write-back
    asked for is done, even when ``close`` comes before the thread has woken for it."""

    def __init__(self, fd: int) -> None:
        self.fd, self.unsynced, self.stop = fd, 0, False
        self.owed = False  # a write-back was asked for and not yet begun
        self.error: OSError | None = None
        self.due = threading.Event()
        self.thread = threading.Thread(target=self._run, name="custode-flush", daemon=True)
        self.thread.start()

    def wrote(self, n: int) -> None:
        self.unsynced += n
        if self.unsynced >= _FLUSH_EVERY:
            self.unsynced = 0
            self.owed = True  # a sync running now takes the next as well: at most one waits
            self.due.set()

    def _run(self) -> None:
        while self.error is None:
            self.due.wait()
            self.due.clear()  # before reading owed: a later request wakes it again
            if self.owed:
                self.owed = False
                try:
                    os.fdatasync(self.fd)
                except OSError as exc:
                    self.error = exc
            if self.stop:
                return

    def close(self) -> None:
        self.stop = True
        self.due.set()
        self.thread.join()


class _Writer:
    """A write-only sink that gathers the plaintext into pieces and writes them to ``sink``
    from a thread of its own, so that writing overlaps decrypting.

    ``sink`` is only ever called from that thread, one piece after another, in order. Its
    first error is kept and raised at the next ``write`` (which stops the decryption) and
    by ``close``; the pieces after it are dropped."""

    def __init__(self, sink: BinaryIO, flush: int | None = None) -> None:
        self.sink = sink
        self.flusher = None if flush is None else Flusher(flush)
        self.pending: list[bytes] = []
        self.buffered = 0
        self.error: BaseException | None = None
        self.pieces: queue.Queue[bytes | None] = queue.Queue(_DEPTH)
        self.thread = threading.Thread(target=self._drain, name="custode-plain-write", daemon=True)
        self.thread.start()

    def write(self, data: bytes) -> int:
        if self.error is not None:
            raise self.error
        self.pending.append(data)
        self.buffered += len(data)
        if self.buffered >= _PIECE:
            self._hand_over()
        return len(data)

    def _hand_over(self) -> None:
        piece = self.pending[0] if len(self.pending) == 1 else b"".join(self.pending)
        self.pending, self.buffered = [], 0
        self.pieces.put(piece)  # never blocks for good: the thread takes pieces until None

    def _drain(self) -> None:
        while (piece := self.pieces.get()) is not None:
            if self.error is None:
                try:
                    self._write(piece)
                except BaseException as exc:
                    self.error = exc
                if self.flusher is not None:
                    self.flusher.wrote(len(piece))

    def _write(self, piece: bytes) -> None:
        done = self.sink.write(piece)
        while done < len(piece):  # a raw file may take less than it was given
            more = self.sink.write(piece[done:])
            if not more:
                raise OSError(errno.EIO, "the destination took no more bytes")
            done += more

    def close(self) -> None:
        """Write what is left and wait for it; raise the sink's error, if any."""
        if self.pending:
            self._hand_over()
        self.finish()
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        """Stop the thread once it has taken every piece given (written or dropped)."""
        if self.thread.is_alive():
            self.pieces.put(None)
            self.thread.join()
        if self.flusher is not None:
            self.flusher.close()
            if self.error is None:
                self.error = self.flusher.error


def decrypt_to(
    store: Store, ref: FileRef, sink: BinaryIO, identities: Sequence[Identity],
    *, flush: int | None = None,
) -> None:  # fmt: skip
    """Decrypt the stored file ``ref`` into ``sink``, checking the ciphertext on the way.

    ``sink`` is written from another thread (one at a time, in order), every write done
    when this returns. On error it holds a partial plaintext the caller must discard; an
    error of ``sink`` itself is raised as it is. ``flush``, the descriptor of the file
    ``sink`` writes to, is written back to disk as the plaintext comes (the caller still
    fsyncs it: this only leaves that fsync little to wait for). A parted file's parts are
    decrypted one after another, their plaintexts in order."""
    for part in ref.stored():
        _decrypt_one(store, part, sink, identities, flush)


def _decrypt_one(
    store: Store, ref: FileRef, sink: BinaryIO, identities: Sequence[Identity], flush: int | None
) -> None:
    rfd, wfd = os.pipe()
    _widen(wfd)
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
    writer = _Writer(sink, flush)
    decrypt_error: IntegrityError | None = None
    try:
        with os.fdopen(rfd, "rb", buffering=_PIECE) as reader:
            try:
                decrypt_file(reader, writer, identities, name=ref.key)  # type: ignore[arg-type]
            except BaseException as exc:
                if writer.error is not None and isinstance(exc, Exception):
                    pass  # the sink failed: close raises its own error
                elif isinstance(exc, IntegrityError):
                    decrypt_error = exc
                else:
                    raise
            if writer.error is None:
                while reader.read(_PIECE):  # a clean end: the store sent nothing more
                    pass
        writer.close()
    finally:
        writer.finish()
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
    """Raise StateError unless ``ref`` (each of its parts) is present in ``store`` with its
    recorded size."""
    for part in ref.stored():
        size = store.size(part.key)
        if size is None:
            raise StateError(f"stored file {part.key} is missing from {store.url}")
        if size != part.size:
            raise IntegrityError(
                f"stored file {part.key} is damaged: it has {size} bytes, its manifest says "
                f"{part.size}"
            )
