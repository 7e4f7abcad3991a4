"""Whether a restore can put repositories where it is told to (``--to``), and if not, the
one component of that path at fault and what to do about it.

A directory that does not exist yet is fine as long as the nearest one above it that does
exist can take a new directory. That is tried (a directory made and removed at once, never
guessed from mode bits: root, ACLs, read-only mounts and the kernel's own filesystems
all answer differently), so nothing is left behind whether the answer is yes or no.
"""

from __future__ import annotations

import errno
import os
import pwd
import secrets
import stat
from pathlib import Path

from custode.errors import PathNotFoundError

PROBE = ".custode-restore-probe-"
# filesystems the kernel makes up (no new directory ever holds data there)
_PSEUDO = frozenset({
    "proc", "sysfs", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs", "pstore",
    "bpf", "configfs", "efivarfs", "fusectl", "mqueue", "binfmt_misc", "nsfs", "devpts",
    "autofs", "rpc_pipefs", "hugetlbfs",
})  # fmt: skip


def check_target(target: Path) -> None:
    """Refuse ``target`` (absolute) with ``PathNotFoundError`` (exit 4) naming the component
    at fault and the fix when no repository can be restored below it."""
    why = unusable(target)
    if why is not None:
        raise PathNotFoundError(f"cannot restore into {target}: {why}")


def unusable(path: Path) -> str | None:
    """Why no directory can be made at or below ``path`` (absolute), naming the component
    at fault, with the fix; None when one can."""
    at = Path(path.anchor)
    for part in path.parts[1:]:
        at = at / part
        try:
            info = at.stat()  # a symlink to a directory is followed: that is fine
        except FileNotFoundError:
            if at.is_symlink():
                return (
                    f"{at} is a symbolic link to {os.readlink(at)}, which does not exist; "
                    "create the directory it names, or give another --to"
                )
            return _cannot_create_in(at.parent)
        except PermissionError:
            return _not_writable(at.parent, "cannot be searched")
        except OSError as exc:  # a symlink loop, a name too long
            return f"{at}: {exc.strerror or exc}; give another --to"
        if not stat.S_ISDIR(info.st_mode):
            kind = "a file, " if stat.S_ISREG(info.st_mode) else ""
            fix = "move it aside, or give another --to" if at != path else "give another --to"
            return f"{at} is {kind}not a directory; {fix}"
    return _cannot_create_in(path)


def _cannot_create_in(directory: Path) -> str | None:
    """Why no directory can be made in ``directory`` (which exists), tried; None if one can."""
    probe = directory / f"{PROBE}{secrets.token_hex(4)}"
    try:
        probe.mkdir(mode=0o700)
    except OSError as exc:
        return _explain(directory, exc)
    probe.rmdir()
    return None


def _explain(directory: Path, exc: OSError) -> str:
    kind = filesystem_type(directory)
    if kind in _PSEUDO:
        return (
            f"{directory} is on the kernel's {kind} filesystem, which holds no files of "
            "its own; give a --to on a disk"
        )
    if exc.errno == errno.EROFS:
        return f"{directory} is on a read-only filesystem; give a --to on a writable one"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return _not_writable(directory, "is not writable")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{directory} is on a full filesystem; free space, or give another --to"
    return f"cannot create a directory in {directory} ({exc.strerror or exc}); give another --to"


def _not_writable(directory: Path, what: str) -> str:
    user = _name(os.geteuid())
    try:
        info = directory.stat()
        whose = f" (owned by {_name(info.st_uid)}, mode {stat.S_IMODE(info.st_mode):04o})"
    except OSError:
        whose = ""
    return (
        f"{directory}{whose} {what} by this user ({user}); give a --to {user} can write, "
        "or change that directory's owner or mode"
    )


def filesystem_type(path: Path) -> str:
    """The type of the filesystem ``path`` is on, from ``/proc/self/mounts`` ("" when that
    cannot be read)."""
    try:
        mounts = Path("/proc/self/mounts").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    real = os.path.realpath(path)
    best, kind = "", ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _unescape(fields[1])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):  # the last mount of the longest point wins
            best, kind = point, fields[2]
    return kind


def _unescape(field: str) -> str:
    """A mount point as ``/proc/self/mounts`` writes it (space, tab, newline and backslash
    as octal escapes)."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a passwd entry, common in containers
        return f"uid {uid}"
