"""Where encrypted backup files live: one small interface, a local directory implementation.

S3-compatible stores are in ``s3store``; ``stores.open_store`` opens either by URL.

Keys are '/'-separated relative strings (``hosts/web1/repos/org/a.git/<id>/pack.age``).
Every store gives these guarantees:

* Atomic writes: a reader sees the whole file or nothing, never a partial one.
* Never rewritten in place: ``put`` refuses a key that already exists.
* Concurrent writers are safe: of two writers racing on one key exactly one wins; the
  other gets an "already exists" error and the content stays whole.
* Hostile-store hardening (``LocalStore``): symlinks inside the store are never followed
  (every path step is opened relative to its parent with ``O_NOFOLLOW``), ``list`` does not
  descend into them, and keys cannot escape the root. A failed write (disk full included)
  leaves no temp file and no partial key behind.
* Every read is bounded: a key is opened without blocking (a FIFO in its place cannot hang
  a reader) and read only if it is a regular file; ``get_bytes`` refuses, by its size and
  before reading, a file larger than its caller's cap. Such a file raises
  ``StoreFileError``, naming it and the fix; ``strays`` names the entries of a directory
  that are not regular files (``list`` shows only regular files), so a caller listing
  records can report them.
"""

from __future__ import annotations

import builtins
import errno
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO, Protocol

from custode.base.fsread import kind
from custode.errors import IntegrityError, PathNotFoundError, StateError, UsageError

TMP_PREFIX = ".tmp-"
MAX_KEY_LEN = 1024
# what ``get_bytes`` reads at most unless its caller says otherwise: records are small,
# data files are streamed with ``get``
DEFAULT_READ_LIMIT = 64 << 20
_CHUNK = 1 << 20
# O_NONBLOCK: opening a FIFO for reading blocks until a writer comes, forever in a store
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class KeyExistsError(StateError):
    """``put`` refused: the key exists (another writer may have just won the race)."""


class StoreFileError(IntegrityError, StateError):
    """A file of the store cannot be what it should be: not a regular file, larger than its
    kind can be, or not the record it should hold. Exit status 6, like any damage found in
    a store; a ``StateError`` too, for callers that skip unreadable store files."""


STORE_FILE_FIX = "replace it with a good copy, or delete it"


def damaged_file(where: str, what: str) -> StoreFileError:
    """The one-line error for the store file at ``where`` (a path or URL) that ``what``."""
    return StoreFileError(f"store file {where} {what}; {STORE_FILE_FIX}")


def too_large(where: str, size: int, limit: int) -> StoreFileError:
    return damaged_file(
        where, f"holds {size} bytes, more than a file of its kind may ({limit}): it is "
        "damaged or forged"
    )  # fmt: skip


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid store key, else raise ``UsageError`` saying why."""
    why = ""
    if not key:
        why = "it is empty"
    elif len(key) > MAX_KEY_LEN:
        why = f"it is longer than {MAX_KEY_LEN} characters"
    elif "\\" in key or "\0" in key:
        why = "it contains a backslash or NUL"
    elif key.startswith("/"):
        why = "it is absolute"
    elif any(seg in ("", ".", "..") for seg in key.split("/")):
        why = "it has an empty, '.' or '..' segment"
    elif any(seg.startswith(TMP_PREFIX) for seg in key.split("/")):
        why = f"a segment starts with {TMP_PREFIX!r}, reserved for temp files"
    if why:
        raise UsageError(f"invalid store key {key!r}: {why}; use a relative '/'-separated key")
    return key


class Store(Protocol):
    """A place for backup files. See the module docstring for the guarantees."""

    url: str

    def put(self, key: str, src: Path) -> None: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get(self, key: str, dst: BinaryIO) -> None: ...
    def get_bytes(self, key: str, limit: int = DEFAULT_READ_LIMIT) -> bytes: ...
    def size(self, key: str) -> int | None: ...
    def list(self, prefix: str) -> Iterator[str]: ...
    def strays(self, prefix: str) -> Iterator[tuple[str, str]]: ...
    def locate(self, key: str) -> str: ...
    def delete(self, key: str) -> None: ...
    def remove_abandoned(self, prefix: str) -> int: ...


class LocalStore:
    """A store in a local directory: files 0o600, directories 0o700."""

    def __init__(self, root: Path, *, create: bool = True) -> None:
        self.root = Path(os.path.abspath(root))
        self.url = self.root.as_uri()
        if not self.root.exists() and create:
            try:
                self.root.mkdir(mode=0o700, parents=True)
            except OSError as e:
                raise PathNotFoundError(
                    f"cannot create store directory {self.root}: {e.strerror}; "
                    "create it or choose another path"
                ) from e
        if not self.root.exists():
            raise PathNotFoundError(
                f"store directory {self.root} does not exist; create it or choose another path"
            )
        if not self.root.is_dir():
            raise PathNotFoundError(
                f"store path {self.root} is not a directory; choose a directory for the store"
            )
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise PathNotFoundError(
                f"store directory {self.root} is not writable; fix its permissions "
                "(chmod u+rwx) or choose another path"
            )

    # -- path walking: every step relative to its parent fd, never through a symlink -----

    def _walk(self, key: str, *, create: bool) -> tuple[int | None, str]:
        """Open the directory holding ``key``; return (fd, file name), fd None if missing."""
        *dirs, name = check_key(key).split("/")
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for seg in dirs:
                if create:
                    with suppress(FileExistsError):
                        os.mkdir(seg, 0o700, dir_fd=fd)
                        os.fsync(fd)
                try:
                    nfd = os.open(seg, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    os.close(fd)
                    return None, name
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise StateError(
                            f"store key {key!r} in {self.url} crosses {seg!r}, which is a "
                            "symlink or not a directory; remove it from the store"
                        ) from e
                    raise
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd, name

    def locate(self, key: str) -> str:
        """Where ``key`` is, for messages: its path."""
        return os.path.join(self.root, *key.split("/"))

    def _open_key(self, key: str) -> int | None:
        """A descriptor of ``key``'s regular file, None if there is none; a FIFO, device,
        directory or symlink in its place is refused without blocking on it."""
        fd, name = self._walk(key, create=False)
        if fd is None:
            return None
        try:
            kfd = os.open(name, _READ_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise damaged_file(self.locate(key), "is a symlink") from None
            # ENXIO: a socket; EACCES and the like: not readable by this user
            raise damaged_file(self.locate(key), f"cannot be opened ({e.strerror})") from None
        finally:
            os.close(fd)
        mode = os.fstat(kfd).st_mode
        if not stat.S_ISREG(mode):
            os.close(kfd)
            raise damaged_file(self.locate(key), f"is {kind(mode)}, not a regular file")
        return kfd

    # -- writing ----------------------------------------------------------------------------

    def put(self, key: str, src: Path) -> None:
        try:
            f = open(src, "rb")  # noqa: SIM115  (closed below, after the copy)
        except OSError as e:
            raise PathNotFoundError(f"cannot read {src}: {e.strerror}; check the path") from e

        def write(out: BinaryIO) -> None:
            while chunk := f.read(_CHUNK):
                out.write(chunk)

        with f:
            self._put(key, write)

    def put_bytes(self, key: str, data: bytes) -> None:
        def write(out: BinaryIO) -> None:
            out.write(data)

        self._put(key, write)

    def put_stream(self, key: str, write: Callable[[BinaryIO], None]) -> None:
        """Store what ``write`` writes, with ``put``'s guarantees (no staging copy: an
        encrypted file goes straight into the store)."""
        self._put(key, write)

    def _put(self, key: str, write: Callable[[BinaryIO], None]) -> None:
        fd: int | None = None
        tmp = ""
        try:
            fd, name = self._walk(key, create=True)
            assert fd is not None  # noqa: S101  (create=True makes every directory)
            if _lexists(name, fd):  # cheap early refusal; os.link below is the real guard
                raise KeyExistsError(self._exists_msg(key))
            tmp = TMP_PREFIX + secrets.token_hex(8)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            with os.fdopen(os.open(tmp, flags, 0o600, dir_fd=fd), "wb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(tmp, name, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
            except FileExistsError as e:
                raise KeyExistsError(self._exists_msg(key)) from e
            os.fsync(fd)
        except OSError as e:
            if e.errno in _NO_SPACE:
                raise StateError(
                    f"store {self.url} is out of space writing {key!r}; free space and retry"
                ) from e
            raise
        finally:
            if fd is not None:
                if tmp:
                    with suppress(FileNotFoundError):
                        os.unlink(tmp, dir_fd=fd)
                os.close(fd)

    def _exists_msg(self, key: str) -> str:
        return (
            f"store key {key!r} already exists in {self.url}; backups are never rewritten "
            "in place, write a new key"
        )

    def delete(self, key: str) -> None:
        fd, name = self._walk(key, create=False)
        if fd is None:
            return
        try:
            with suppress(FileNotFoundError):
                os.unlink(name, dir_fd=fd)
                os.fsync(fd)
        finally:
            os.close(fd)

    # -- reading ----------------------------------------------------------------------------

    def get(self, key: str, dst: BinaryIO) -> None:
        kfd = self._open_key(key)
        if kfd is None:
            raise StateError(f"store key {key!r} not found in {self.url}")
        with os.fdopen(kfd, "rb") as f:
            while chunk := f.read(_CHUNK):
                dst.write(chunk)

    def get_bytes(self, key: str, limit: int = DEFAULT_READ_LIMIT) -> bytes:
        """The whole of a small file, refused by its size before reading when it holds
        more than ``limit`` bytes (and if it grows past that while read)."""
        kfd = self._open_key(key)
        if kfd is None:
            raise StateError(f"store key {key!r} not found in {self.url}")
        try:
            size = os.fstat(kfd).st_size
            if size > limit:
                raise too_large(self.locate(key), size, limit)
            # chunks, not read(limit + 1): a buffered read allocates all it may return
            chunks, total = [], 0
            while total <= limit and (chunk := os.read(kfd, min(_CHUNK, limit + 1 - total))):
                chunks.append(chunk)
                total += len(chunk)
        finally:
            os.close(kfd)
        if total > limit:  # it grew while read
            raise too_large(self.locate(key), total, limit)
        return b"".join(chunks)

    def size(self, key: str) -> int | None:
        kfd = self._open_key(key)
        if kfd is None:
            return None
        try:
            return os.fstat(kfd).st_size
        finally:
            os.close(kfd)

    def list(self, prefix: str) -> Iterator[str]:
        """Every key starting with ``prefix`` (a string prefix, as in S3), sorted."""
        base = prefix.rpartition("/")[0]
        try:
            fd = (
                self._walk(f"{base}/x", create=False)[0] if base else os.open(self.root, _DIR_FLAGS)
            )
        except StateError:
            return  # the prefix crosses a symlink: nothing under it is part of the store
        if fd is None:
            return
        found: builtins.list[str] = []
        self._scan(fd, base + "/" if base else "", found)
        yield from sorted(k for k in found if k.startswith(prefix))

    def strays(self, prefix: str) -> Iterator[tuple[str, str]]:
        """The entries directly in the directory ``prefix`` (ending in '/') that are not
        regular files, as (key, what it is): a FIFO, a symlink, a device or a directory
        where a caller listing records (the snapshots) expects files."""
        base = prefix.rstrip("/")
        try:
            fd = (
                self._walk(f"{base}/x", create=False)[0] if base else os.open(self.root, _DIR_FLAGS)
            )
        except StateError:
            return
        if fd is None:
            return
        found = []
        try:
            with os.scandir(fd) as it:
                for e in it:
                    with suppress(FileNotFoundError):  # removed meanwhile: not there
                        found.append((e.name, e.stat(follow_symlinks=False).st_mode))
        finally:
            os.close(fd)
        at = base + "/" if base else ""
        for name, mode in sorted(found):
            if not stat.S_ISREG(mode) and not name.startswith(TMP_PREFIX):
                yield at + name, kind(mode)

    def remove_abandoned(self, prefix: str) -> int:
        """Delete the temp files of writes that never finished (a killed writer) under the
        directory ``prefix``; call only while no writer can be at work there."""
        base = prefix.rstrip("/")
        try:
            fd = (
                self._walk(f"{base}/x", create=False)[0] if base else os.open(self.root, _DIR_FLAGS)
            )
        except StateError:
            return 0
        if fd is None:
            return 0
        return self._sweep(fd)

    def _sweep(self, fd: int) -> int:
        removed = 0
        try:
            with os.scandir(fd) as it:
                entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
            for name, is_dir in entries:
                if name.startswith(TMP_PREFIX) and not is_dir:
                    with suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=fd)
                        removed += 1
                elif is_dir:
                    with suppress(OSError):
                        removed += self._sweep(os.open(name, _DIR_FLAGS, dir_fd=fd))
        finally:
            os.close(fd)
        return removed

    def _scan(self, fd: int, at: str, found: builtins.list[str]) -> None:
        try:
            with os.scandir(fd) as it:
                entries = [
                    (e.name, e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False))
                    for e in it
                ]
            for name, is_dir, is_file in entries:
                if name.startswith(TMP_PREFIX) or "\\" in name:
                    continue
                if is_file:
                    found.append(at + name)
                elif is_dir:
                    with suppress(OSError):
                        sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                        self._scan(sub, at + name + "/", found)
        finally:
            os.close(fd)


def _lexists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True
