"""Keep git from removing loose-object directories while a push may be landing in them.

``git prune-packed`` — run inside every ``repack -d`` and every ``prune`` — calls
``rmdir()`` on each ``objects/XX`` it has visited, to remove the empty ones. receive-pack
moves a push's quarantined objects into the object store with ``mkdir(objects/XX)``
(an existing directory is fine) followed by ``link()`` of each object; if the directory
vanished in between, the ``link()`` fails with ENOENT, no git release retries it, and the
push is rejected ("unable to migrate objects to permanent storage"). The window is tiny
but real: the real-server soak hit it about once in four runs (see
``docs/maintenance-heuristics.md``).

So while such a command runs, every one of the 256 ``objects/XX`` directories holds one
empty file (one file hard-linked into all of them, where the file system allows) named
like git's own temporary object files (``tmp_obj_*``: ``git fsck``
ignores them, ``git prune`` expires them, ``git count-objects`` calls them garbage), and
``rmdir()`` fails with ENOTEMPTY. Missing directories are created first, the way git
creates them (mode, owner and group of ``objects/``): a push may create one at any time,
and git's prune would remove it just as well. Afterwards the holders are removed and the
directories stay: removing an empty directory is exactly the race this module avoids.
git keeps such directories too between two ``gc`` runs (one directory block each).

Every path is reached without following symlinks (``O_NOFOLLOW`` relative to an open
``objects/``): a hostile repository's symlinked ``objects/XX`` gets no file, and git
cannot ``rmdir()`` a symlink anyway.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

#: The holder's name: git's temporary-object prefix (so every git tool already knows to
#: leave it alone or expire it), then a name no ``mkstemp`` of git can produce (git's
#: suffixes are six characters).
HOLDER = "tmp_obj_custode_keepdir"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class HoldError(OSError):
    """An ``objects/XX`` could not be held: the command that may remove it must not run."""


def _hold_error(exc: OSError, path: Path | str) -> HoldError:
    why = f"cannot hold against git's rmdir ({exc.strerror}); the repack did not run"
    return HoldError(exc.errno, why, str(path))


#: git's 256 loose-object fan-out directories (the same for SHA-1 and SHA-256).
LOOSE_DIRS = tuple(f"{i:02x}" for i in range(256))


@contextlib.contextmanager
def hold_object_dirs(objects: Path) -> Iterator[int]:
    """Hold every ``objects/XX`` for the duration of the block; yields how many were made.

    Raises ``HoldError`` (after removing what it made) when a directory cannot be held:
    running a ``prune-packed`` then could fail a push, so the caller must not.
    """
    top = os.open(objects, _DIR_FLAGS)
    held: list[int] = []  # fds of the directories that hold our file
    created = 0
    source: int | None = None  # a directory whose holder we made: linked into the others
    try:
        want = os.fstat(top)
        for name in LOOSE_DIRS:
            fd, made = _open_or_make(top, objects / name, want)
            if fd is None:
                continue  # a symlink or a non-directory: nothing git's rmdir can remove
            created += made
            try:
                linked = source is not None and _link(source, fd)
                if not linked and _place(fd, objects / name, want):
                    source = fd
            except BaseException:
                os.close(fd)
                raise
            held.append(fd)
        yield created
    finally:
        for fd in held:
            _remove(fd)
            os.close(fd)
        os.close(top)


def release_leftovers(objects: Path) -> int:
    """Remove holders a killed custode left behind (under the repository lock); a count."""
    try:
        top = os.open(objects, _DIR_FLAGS)
    except OSError:
        return 0
    removed = 0
    try:
        for name in LOOSE_DIRS:
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=top)
            except OSError:
                continue
            try:
                removed += _remove(fd)
            finally:
                os.close(fd)
    finally:
        os.close(top)
    return removed


def _open_or_make(top: int, path: Path, like: os.stat_result) -> tuple[int | None, int]:
    """An open fd of ``objects/XX`` (made like ``objects/`` when missing), and 1 if made."""
    name, made = path.name, 0
    try:  # mostly there: an open is far cheaper than a mkdir() failing with EEXIST
        return _open_dir(top, path), 0
    except FileNotFoundError:
        pass
    try:
        os.mkdir(name, 0o700, dir_fd=top)  # tightened below to objects/'s own mode
        made = 1
    except FileExistsError:
        pass  # a push made it meanwhile
    except OSError as exc:
        raise _hold_error(exc, str(path)) from exc
    try:
        fd = _open_dir(top, path)
    except FileNotFoundError as exc:  # removed again meanwhile
        raise _hold_error(exc, str(path)) from exc
    if fd is None:
        return None, 0
    if made:
        try:
            _like(fd, like)
        except OSError as exc:
            os.close(fd)
            raise _hold_error(exc, str(path)) from exc
    return fd, made


def _open_dir(top: int, path: Path) -> int | None:
    """An open fd of ``objects/XX``; None for a symlink or a non-directory (nothing git's
    rmdir can remove). FileNotFoundError propagates; any other failure is a HoldError."""
    try:
        return os.open(path.name, _DIR_FLAGS, dir_fd=top)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return None
        raise _hold_error(exc, str(path)) from exc


def _like(fd: int, like: os.stat_result) -> None:
    """Give a new ``objects/XX`` the owner, group and mode git would (those of ``objects/``)."""
    st = os.fstat(fd)
    if (st.st_uid, st.st_gid) != (like.st_uid, like.st_gid) and os.geteuid() == 0:
        os.fchown(fd, like.st_uid, like.st_gid)  # custode as root on the git user's repository
    os.fchmod(fd, stat.S_IMODE(like.st_mode))


def _place(fd: int, where: Path, like: os.stat_result) -> bool:
    """Create our holder in the directory ``fd``; True when it is an empty regular file
    (ours to link into the other directories)."""
    try:
        f = os.open(HOLDER, _FILE_FLAGS, 0o444, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            return False  # something else under that name keeps the directory non-empty
        holder = str(where / HOLDER)
        raise _hold_error(exc, holder) from exc
    try:
        st = os.fstat(f)
        if os.geteuid() == 0 and st.st_uid != like.st_uid:
            os.fchown(f, like.st_uid, like.st_gid)  # so git's own prune may remove a leftover
    finally:
        os.close(f)
    return stat.S_ISREG(st.st_mode) and st.st_size == 0


def _link(source: int, fd: int) -> bool:
    """Hold the directory ``fd`` with a hard link to the holder in ``source`` (one syscall
    and no new inode, where creating a file takes three and an inode: on ext4 a third of
    the time, and the hold comes before every repack); False when it cannot (another file
    system mounted there, a link limit): the caller creates one instead."""
    try:
        os.link(HOLDER, HOLDER, src_dir_fd=source, dst_dir_fd=fd, follow_symlinks=False)
    except FileExistsError:
        return True  # something under that name already keeps the directory non-empty
    except OSError:
        return False
    return True


def _remove(fd: int) -> int:
    """Unlink our holder in the directory ``fd`` if it is one (a regular file); 1 if removed."""
    try:
        st = os.stat(HOLDER, dir_fd=fd, follow_symlinks=False)
    except OSError:
        return 0
    if not stat.S_ISREG(st.st_mode) or st.st_size:
        return 0  # not what we create: someone else's, leave it
    with contextlib.suppress(FileNotFoundError):
        os.unlink(HOLDER, dir_fd=fd)
        return 1
    return 0
