"""Large stored files as independently encrypted parts, decrypted on every core.

pyrage decrypts (and encrypts) on one core and holds the GIL while it does, so a single
stream of a large pack restores at one core's speed. A file larger than ``THRESHOLD`` is
therefore stored as parts of ``PART_BYTES`` of its plaintext each (the last: what is
left), every part an ordinary age file of its slice (what ``age -e`` would write: nothing
new in the cryptography, and ``age -d`` of the parts one after another gives the file).
The manifest lists the parts (``FileRef.parts``), each with its size and SHA-256.

Restoring one, a pool of processes (one per core this process may use, at most eight;
started on the first parted file met, kept for the run and shared by every repository a
restore runs at once) decrypts the parts side by side. A worker streams a part from a
local store itself, as a single stream is read (``streams.decrypt_to``: size and SHA-256
checked on the way, damage named before a decryption error); a part of another store
(S3) is read by the calling process and handed over, checked before a byte of it is
decrypted. The plaintext goes to its offset in the destination with ``pwrite``, 1 MiB at
a time (a bundle's header, the first ``skip`` bytes, is checked and dropped on the way).
At most two parts per worker are in flight (handed over: one a worker and one more), so
memory stays a few MiB a worker, a few parts at most, whatever the file's size.
The secret keys reach the workers as strings through the pool's pipe, never through argv,
the environment or a file. Backing up, the parts are encrypted one after another in the
calling process, each streamed straight into a local store (or put whole into another):
a backup runs beside others (the fleet's repositories take the other cores) and every
night, where its memory counts (a pool of workers tripled a full backup's peak, for 12%
of its time); a restore is the one job of its hour.

Errors are the ones a single stream gives (a missing or damaged part named exactly, the
wrong identity, a full disk); the caller discards what was written, as it does for a
single stream. The processes come from a ``forkserver`` (the calling process has threads:
a plain fork could copy a lock held by one of them).
"""

from __future__ import annotations

import atexit
import hashlib
import io
import os
import secrets
import signal
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import pyrage  # type: ignore[import-untyped]

from custode.backup.crypto import Identity, Recipient
from custode.backup.manifest import FileRef, part_key, parts_digest
from custode.backup.store import LocalStore, Store
from custode.backup.streams import Counting, Flusher, check, decrypt_to
from custode.errors import IntegrityError, StateError, UsageError

if TYPE_CHECKING:
    from concurrent.futures import Future, ProcessPoolExecutor

THRESHOLD = 64 << 20  # a file with more plaintext than this is stored as parts
PART_BYTES = 32 << 20  # plaintext per part: one worker's unit of work (and of memory)
PARTED_KEYS = ("/bundle.age", "/index.age")  # what may be parted (LFS objects are found by key)
_IN_FLIGHT = 2  # parts per worker queued or running: memory stays flat
_PIECE = 1 << 20

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None
_registered = False


_MOST_WORKERS = 8  # ~600 MB/s each: eight outrun most disks, and each holds a part


def workers() -> int:
    """One process per core this process may run on, at most ``_MOST_WORKERS``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, _MOST_WORKERS))


def _executor() -> ProcessPoolExecutor:
    global _pool, _registered  # noqa: PLW0603  (one pool per process, shared by its threads)
    import multiprocessing  # noqa: PLC0415  (only when a parted file is met)
    from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415

    with _lock:
        if _pool is None:
            ctx = multiprocessing.get_context("forkserver")
            # workers fork from a server that has already imported what they run
            ctx.set_forkserver_preload(["__main__", __name__])
            _pool = ProcessPoolExecutor(workers(), mp_context=ctx, initializer=_worker_start)
            if not _registered:
                atexit.register(shutdown)
                _registered = True
        return _pool


def _worker_start() -> None:
    """Ctrl-C is the calling process's to handle: it waits for the parts running, which
    a worker finishes, then stops the pool (no worker dies in the middle of a write)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def shutdown() -> None:
    """Stop the pool (its processes end once their current part is done)."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def _discard(pool: ProcessPoolExecutor) -> None:
    """A worker died: this pool is broken; the next parted file starts a new one."""
    global _pool  # noqa: PLW0603
    with _lock:
        if _pool is pool:
            _pool = None
    pool.shutdown(wait=False, cancel_futures=True)


def parted(key: str, size: int) -> bool:
    """Whether a file of ``size`` plaintext bytes at ``key`` is stored as parts."""
    return size > THRESHOLD and key.endswith(PARTED_KEYS)


# -- writing ------------------------------------------------------------------------------


def put_parts(store: Store, key: str, src: Path, recipients: Sequence[Recipient]) -> FileRef:
    """Store ``src`` as parts of ``key``, encrypted one after another; their record."""
    if not recipients:
        raise UsageError("no recipients to encrypt to: give at least one age public key")
    size = src.stat().st_size
    token = secrets.token_hex(4)
    with src.open("rb", buffering=_PIECE) as f:
        parts = [
            _seal(store, part_key(key, token, n + 1), _Slice(f, min(PART_BYTES, size - at)),
                  recipients, src)
            for n, at in enumerate(range(0, size, PART_BYTES))
        ]  # fmt: skip
    return FileRef(key, sum(p.size for p in parts), parts_digest(parts), tuple(parts), PART_BYTES)


def _seal(
    store: Store, key: str, reader: _Slice, recipients: Sequence[Recipient], src: Path
) -> FileRef:
    """Encrypt one part, hashing the ciphertext as it is written: streamed into a store
    that takes a stream, else (S3) put whole."""
    stream = getattr(store, "put_stream", None)
    if stream is None:
        out = io.BytesIO()
        pyrage.encrypt_io(reader, out, list(recipients))
        reader.done(src)
        sealed = out.getvalue()
        store.put_bytes(key, sealed)
        return FileRef(key, len(sealed), hashlib.sha256(sealed).hexdigest())
    sink = Counting()

    def write(out: BinaryIO) -> None:
        sink.out = out
        pyrage.encrypt_io(reader, sink, list(recipients))
        reader.done(src)  # before the part is in the store

    stream(key, write)
    return FileRef(key, sink.size, sink.digest.hexdigest())


class _Slice:
    """A read-only file of the next ``left`` bytes of ``f``."""

    def __init__(self, f: BinaryIO, left: int) -> None:
        self.f, self.left = f, left

    def read(self, n: int = -1) -> bytes:
        want = self.left if n is None or n < 0 else min(n, self.left)
        data = self.f.read(want) if want else b""
        self.left -= len(data)
        return data

    def done(self, src: Path) -> None:
        if self.left:
            raise StateError(f"{src} changed while it was stored; back up again")


# -- reading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Open:
    store: Store | None  # a local store the worker reads the part from; None: ``data``
    ref: FileRef  # the part
    data: bytes | None = field(repr=False)
    identities: tuple[str, ...] = field(repr=False)  # the secret keys: never in a message
    dest: str = ""
    offset: int = 0  # where the part's plaintext lies in the whole file's
    skip: int = 0  # the whole file's first bytes, not written (a bundle's header)
    most: int = 0  # the part's plaintext: exactly this (the last part: at most)
    last: bool = False
    heads: tuple[bytes, ...] = ()  # what the whole plaintext starts with (checked in part 1)
    what: str = ""  # the error when it does not


def decrypt_parts(
    store: Store, ref: FileRef, dest: Path, identities: Sequence[Identity], *,
    skip: int = 0, heads: tuple[bytes, ...] = (), what: str = "", flush: int | None = None,
) -> int:  # fmt: skip
    """Write the plaintext of the parted file ``ref`` into ``dest`` (an existing file,
    custode's own), its first ``skip`` bytes dropped once they are found to start with
    one of ``heads``; the bytes written. ``flush``: as for ``streams.decrypt_to``."""

    if not identities:
        raise UsageError("no identity to decrypt with: give an age identity file")
    local = store if type(store) is LocalStore else None
    secret = tuple(str(i) for i in identities)
    count = len(ref.parts)

    def jobs() -> Any:
        for n, part in enumerate(ref.parts):
            data = None if local is not None else _fetch(store, part)
            yield _Open(local, part, data, secret, str(dest), n * ref.part_bytes, skip,
                        ref.part_bytes, n == count - 1, heads, what)  # fmt: skip

    flusher = None if flush is None else Flusher(flush)
    end = 0
    try:
        for job, n in _run(_open_part, jobs(), ref.key, with_job=True, carried=local is None):
            end = max(end, job.offset + n)
            if flusher is not None:
                flusher.wrote(n)
    finally:
        if flusher is not None:
            flusher.close()
    if flusher is not None and flusher.error is not None:
        raise flusher.error
    return max(0, end - skip)


def _run(fn: Any, jobs: Any, key: str, *, with_job: bool = False, carried: bool = False) -> Any:
    """Run ``fn`` over ``jobs`` in the pool, at most ``_IN_FLIGHT`` a worker at a time
    (``carried``: the jobs carry the parts' bytes, so one a worker and one more); yield
    the results in order. On an error, wait for the parts still running (none may write
    after this returns), then raise the first one's."""
    from concurrent.futures import wait  # noqa: PLC0415
    from concurrent.futures.process import BrokenProcessPool  # noqa: PLC0415

    pool = _executor()
    pending: deque[tuple[Any, Future[Any]]] = deque()
    limit = workers() + 1 if carried else _IN_FLIGHT * workers()
    try:
        for job in jobs:
            pending.append((job, pool.submit(fn, job)))
            while len(pending) >= limit:
                done, future = pending.popleft()
                yield (done, future.result()) if with_job else future.result()
        while pending:
            done, future = pending.popleft()
            yield (done, future.result()) if with_job else future.result()
    except BrokenProcessPool:
        _discard(pool)
        raise StateError(
            f"a process encrypting or decrypting {key} stopped (killed, or out of memory); "
            "run the command again"
        ) from None
    finally:
        for _, future in pending:
            future.cancel()
        wait([future for _, future in pending])


def _fetch(store: Store, ref: FileRef) -> bytes:
    """A part's stored bytes, refused once more come than its manifest records."""
    sink = _Gather(ref, bytearray(ref.size))
    store.get(ref.key, sink)  # type: ignore[arg-type]
    return bytes(sink.buf) if sink.size == ref.size else bytes(sink.buf[: sink.size])


class _Gather:
    """A write-only sink that keeps a part's stored bytes, refusing more than ``ref``'s
    recorded size (the same refusal as a single stream's)."""

    def __init__(self, ref: FileRef, buf: bytearray) -> None:
        self.ref, self.size, self.buf = ref, 0, buf

    def write(self, data: bytes) -> int:
        end = self.size + len(data)
        if end > self.ref.size:
            raise IntegrityError(
                f"stored file {self.ref.key} is damaged: it holds more than the "
                f"{self.ref.size} bytes its manifest records"
            )
        self.buf[self.size : end] = data
        self.size = end
        return len(data)


class _Reader:
    """A read-only file over bytes in memory (``io.BytesIO`` would copy them first)."""

    def __init__(self, data: memoryview) -> None:
        self.data, self.at = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n is None or n < 0 else min(len(self.data), self.at + n)
        out = self.data[self.at : end].tobytes()
        self.at = end
        return out


class _Spill:
    """A write-only sink that writes a part's plaintext at its place in the destination,
    1 MiB at a time: the whole file's first ``skip`` bytes are dropped (their start kept in
    ``head`` for the check), and nothing past the part's size is written (it is counted).
    A write error is kept, nothing more is written, and it is raised as it is once the
    decryption is over (a full disk must reach the restore as ENOSPC)."""

    def __init__(self, job: _Open, buf: bytearray) -> None:
        self.job, self.buf = job, memoryview(buf)[:_PIECE]
        self.fill = 0  # bytes waiting in buf
        self.at = job.offset  # the whole plaintext's position after the bytes taken
        self.head = bytearray()
        self.size = 0
        self.error: OSError | None = None
        self.fd = os.open(job.dest, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def write(self, data: bytes) -> int:
        n = len(data)
        self.size += n
        if self.size > self.job.most or self.error is not None:
            return n
        view = memoryview(data)
        if self.at < self.job.skip:
            take = min(n, self.job.skip - self.at)
            self.head += view[: max(0, min(take, _HEAD - len(self.head)))]
            view, self.at = view[take:], self.at + take
        while view:
            take = min(len(self.buf) - self.fill, len(view))
            self.buf[self.fill : self.fill + take] = view[:take]
            self.fill, self.at, view = self.fill + take, self.at + take, view[take:]
            if self.fill == len(self.buf):
                self.flush()
        return n

    def flush(self) -> None:
        if self.fill and self.error is None:
            try:
                _pwrite(self.fd, self.buf[: self.fill], self.at - self.fill - self.job.skip)
            except OSError as exc:
                self.error = exc
        self.fill = 0


_HEAD = 64  # plaintext bytes kept to check what a file starts with


# a worker's buffer, kept from part to part
_buffers: dict[str, bytearray] = {}


def _buffer(name: str, size: int) -> bytearray:
    buf = _buffers.get(name)
    if buf is None or len(buf) < size:
        _buffers.pop(name, None)
        buf = _buffers[name] = bytearray(size)
    return buf


def _open_part(job: _Open) -> int:
    """In a worker: decrypt one part, its stored bytes checked against the manifest, and
    write the plaintext at its offset; the plaintext's length."""
    identities = [pyrage.x25519.Identity.from_str(s) for s in job.identities]
    sink = _Spill(job, _buffer("plain", _PIECE))
    try:
        if job.data is None:  # streamed from a local store, checked on the way
            assert job.store is not None  # noqa: S101  (a local store, or the bytes themselves)
            decrypt_to(job.store, job.ref, sink, identities)  # type: ignore[arg-type]
        else:
            _decrypt_held(job, sink, identities)
        sink.flush()
    finally:
        os.close(sink.fd)
    if sink.error is not None:
        raise sink.error
    n = sink.size
    if n > job.most or (not job.last and n != job.most) or n == 0:
        raise IntegrityError(
            f"stored file {job.ref.key} is damaged: it decrypts to {n} bytes, its manifest "
            f"says {'at most ' if job.last else ''}{job.most}"
        )
    if job.offset == 0 and job.heads and not bytes(sink.head).startswith(job.heads):
        raise IntegrityError(job.what)
    return n


def _decrypt_held(job: _Open, sink: _Spill, identities: list[Any]) -> None:
    """Decrypt a part handed over in memory, its bytes checked first."""

    assert job.data is not None  # noqa: S101
    check(job.ref, len(job.data), hashlib.sha256(job.data).hexdigest())
    try:
        pyrage.decrypt_io(_Reader(memoryview(job.data)), sink, identities)
    except (pyrage.DecryptError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        # the bytes are the ones stored: the key is wrong
        raise IntegrityError(
            f"cannot decrypt {job.ref.key}: the file is intact but not encrypted to this "
            "identity; give the identity file of the key the backups were made with "
            "(--identity)"
        ) from None


def _pwrite(fd: int, data: memoryview, at: int) -> None:
    while data:
        done = os.pwrite(fd, data, at)
        if not done:
            raise OSError(28, "the destination took no more bytes")
        data, at = data[done:], at + done
