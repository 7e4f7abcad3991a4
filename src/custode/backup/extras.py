"""The non-object files of a repository that a backup keeps, and its LFS objects.

Kept: ``config``, ``description``, ``hooks/``, ``info/`` (exclude, attributes, grafts…),
as one deterministic tar (sorted names, zero times and owners), so an unchanged set gives
the same bytes and no new file is stored. Not kept: ``objects/info/alternates`` (a
backup's bundles hold every object, so a restored fork stands alone), logs, the index.

The tar is read back only by ``extract``, which accepts nothing but regular files and
directories under those names, with plain modes, and never follows or writes a symlink:
a damaged or forged tar cannot write outside the restored repository.

LFS objects live in ``lfs/objects/<aa>/<bb>/<sha256>``; each is stored once per host,
named by its id, and checked against it on restore.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import tarfile
from pathlib import Path

from custode.errors import IntegrityError

KEPT = ("config", "description", "hooks", "info")
MAX_FILE = 16 << 20  # a hook or config larger than this is not what it claims to be
_LFS_OID = re.compile(r"^[0-9a-f]{64}$")


def build_tar(git_dir: Path) -> bytes:
    """The kept files of ``git_dir`` as a deterministic tar (symlinks are skipped)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in KEPT:
            _add(tar, git_dir, name)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, git_dir: Path, name: str) -> None:
    path = git_dir / name
    try:
        info = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return
    entry = tarfile.TarInfo(name)
    entry.mtime = 0
    if stat.S_ISDIR(info.st_mode):
        entry.type, entry.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(entry)
        for child in sorted(os.listdir(path)):
            _add(tar, git_dir, f"{name}/{child}")
    elif stat.S_ISREG(info.st_mode) and info.st_size <= MAX_FILE:
        entry.mode = 0o755 if info.st_mode & 0o100 else 0o644
        with path.open("rb") as f:
            data = f.read(MAX_FILE + 1)
        entry.size = len(data)
        tar.addfile(entry, io.BytesIO(data))


def extract(data: bytes, git_dir: Path) -> None:
    """Write the files of a tar made by ``build_tar`` into ``git_dir``, strictly."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = tar.getmembers()
            for m in members:
                parts = m.name.split("/")
                if (
                    parts[0] not in KEPT
                    or any(p in ("", ".", "..") for p in parts)
                    or ("\\" in m.name or "\0" in m.name)
                ):
                    raise IntegrityError(f"backup files list an unexpected path {m.name!r}")
                if not (m.isdir() or m.isfile()) or m.size > MAX_FILE:
                    raise IntegrityError(f"backup files hold {m.name!r}, not a plain file")
            for m in sorted(members, key=lambda m: m.name):
                target = git_dir / m.name
                _no_symlink_on_the_way(git_dir, m.name)
                if m.isdir():
                    target.mkdir(mode=0o755, exist_ok=True)
                    continue
                src = tar.extractfile(m)
                if src is None:
                    raise IntegrityError(f"backup files: {m.name!r} is unreadable")
                tmp = target.with_name(f".tmp-{target.name}")
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
                with os.fdopen(os.open(tmp, flags, 0o755 if m.mode & 0o100 else 0o644),
                               "wb") as out:  # fmt: skip
                    out.write(src.read())
                os.replace(tmp, target)
    except tarfile.TarError as exc:
        raise IntegrityError(f"backup files are not a valid tar ({exc})") from None


def _no_symlink_on_the_way(git_dir: Path, name: str) -> None:
    at = git_dir
    for part in name.split("/"):
        at = at / part
        if at.is_symlink():
            raise IntegrityError(f"restoring {name!r} would cross the symlink {at}")


def lfs_objects(git_dir: Path) -> dict[str, Path]:
    """Every well-named LFS object in ``lfs/objects`` (oid -> path)."""
    base = git_dir / "lfs" / "objects"
    found: dict[str, Path] = {}
    try:
        first = sorted(os.listdir(base))
    except (FileNotFoundError, NotADirectoryError):
        return found
    for a in first:
        try:
            second = sorted(os.listdir(base / a))
        except (NotADirectoryError, FileNotFoundError):
            continue
        for b in second:
            try:
                names = os.listdir(base / a / b)
            except (NotADirectoryError, FileNotFoundError):
                continue
            for oid in names:
                path = base / a / b / oid
                if _LFS_OID.match(oid) and oid[:2] == a and oid[2:4] == b and path.is_file():
                    found[oid] = path
    return found


def lfs_path(git_dir: Path, oid: str) -> Path:
    return git_dir / "lfs" / "objects" / oid[:2] / oid[2:4] / oid


def stamp(git_dir: Path) -> str:
    """A digest of the kept files' and LFS objects' metadata (names, sizes, mtimes, inodes):
    equal stamps mean nothing a backup keeps besides refs and objects has changed. Costs a
    few ``stat`` calls (plus one per LFS directory)."""
    digest = hashlib.blake2b(digest_size=16)
    for name in KEPT:
        _stamp(digest, git_dir / name, name, depth=2)
    _stamp(digest, git_dir / "lfs" / "objects", "lfs", depth=3)
    return digest.hexdigest()


def _stamp(digest: hashlib.blake2b, path: Path, label: str, depth: int) -> None:
    try:
        st = path.lstat()
    except OSError:
        digest.update(f"{label} -\n".encode())
        return
    digest.update(f"{label} {st.st_mode} {st.st_ino} {st.st_size} {st.st_mtime_ns}\n".encode())
    if stat.S_ISDIR(st.st_mode) and depth > 0:
        try:
            names = sorted(os.listdir(path))
        except OSError:
            return
        for child in names:
            _stamp(digest, path / child, f"{label}/{child}", depth - 1)
