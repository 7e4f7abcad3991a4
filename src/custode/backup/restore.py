"""Restore one repository from its manifest, at copy speed, never half-way.

The repository is assembled in a hidden sibling of its destination
(``.custode-restore-…``): ``git init`` without templates, each bundle's pack streamed out
of its decrypted bundle straight into ``objects/pack`` beside its stored index (no
``index-pack``), the LFS objects (each checked against its id), then the refs (written as
git stores them: ``packed-refs``, symbolic refs, HEAD; one ``for-each-ref`` then fails on
a ref whose object is missing), the kept files last. Only then is it renamed into place,
so an error, a full disk or a kill leaves no directory that looks like a valid
repository. Destinations are checked to stay inside the target directory.

A working copy comes back as its ``.git`` with an empty work tree: checking files out runs
the filters its (restored, untrusted) config names, which custode never does. Its owner
runs ``git reset --hard`` there after a look at the config. Restored with ``--force`` over
an existing working copy, only its ``.git`` is replaced (renamed aside, the new one renamed
in, the old one deleted last): untracked files, changes, nested repositories stay as they
are. A bare backup is never restored over a directory that holds a ``.git``.

A shallow repository gets its ``shallow`` file back (recorded in the manifest's chain)
before anything reads its history.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from custode.backup import refsfile
from custode.backup.bundle import Refs
from custode.backup.crypto import Identity
from custode.backup.extras import extract, lfs_path
from custode.backup.manifest import FileRef, Link, RepoManifest, lfs_oid
from custode.backup.parts import decrypt_parts
from custode.backup.refsfile import RefsDelta
from custode.backup.store import Store
from custode.backup.streams import decrypt_to
from custode.backup.target import unusable
from custode.errors import GitError, IntegrityError, PathNotFoundError, StateError, UsageError
from custode.git.refsnapshot import SYMREF_PREFIX
from custode.git.runner import Git

HIDDEN = ".custode-restore-"
_OID = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_NO_SPACE = (28, 122)  # ENOSPC, EDQUOT


@dataclass
class Restored:
    repository: str
    path: Path
    seconds: float
    bytes: int
    bare: bool = True
    in_place: bool = False  # a working copy's .git replaced, its files left as they were


def destination(target: Path, repository: str) -> Path:
    """``target/repository``, refusing anything that would leave ``target``."""
    parts = repository.split("/")
    if (
        repository.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
        or ("\0" in repository or "\\" in repository)
    ):
        raise IntegrityError(
            f"backup names repository {repository!r}, which is not a plain relative path; "
            "refusing to restore it"
        )
    dest = target.joinpath(*parts)
    real_target = os.path.realpath(target)
    real_parent = os.path.realpath(dest.parent) if dest.parent.exists() else None
    at = target
    for n, part in enumerate(parts, start=1):
        at = at / part
        if at.is_symlink():
            raise UsageError(
                f"{at} is a symlink; refusing to restore {repository} through it (remove it)"
            )
        if n < len(parts) and at.exists() and not at.is_dir():  # ("not empty" would mislead)
            raise PathNotFoundError(
                f"cannot restore {repository} into {dest}: {at} is "
                f"{'a file, ' if at.is_file() else ''}not a directory; move it aside, or give "
                "another --to"
            )
    if real_parent is not None and os.path.commonpath([real_target, real_parent]) != real_target:
        raise UsageError(f"{dest} lies outside {target}; refusing to restore there")
    return dest


def occupied(dest: Path) -> bool:
    """True when ``dest`` exists and is not an empty directory."""
    try:
        return any(os.scandir(dest))
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        return True


def restore_repository(
    store: Store, manifest: RepoManifest, identities: Sequence[Identity], git: Git,
    dest: Path, *, force: bool = False, check: Callable[[Path], None] | None = None,
    alternates: str = "", borrowed: frozenset[str] = frozenset(),
) -> Restored:  # fmt: skip
    """Restore ``manifest`` at ``dest``; an occupied ``dest`` needs ``force`` (replaced).

    ``check`` gets the assembled git dir once objects and refs are in, before the kept
    files (config, hooks) are: a drill's fsck and ref comparison run there, under git's
    defaults rather than the backed-up config (whose ``core.worktree``, say, may name a
    directory that does not exist yet).

    ``alternates`` (a path relative to the restored ``objects`` directory, written to
    ``objects/info/alternates``) and ``borrowed`` (bundle keys of links of its chain)
    restore it as a borrower: those links' packs are not installed, the object directory
    named holds them (checked by name before anything is written)."""
    started = time.monotonic()
    busy = occupied(dest)
    if busy and not force:
        raise UsageError(
            f"{dest} is not empty; restore elsewhere with --to, or pass --force to replace it"
        )
    in_place = busy and not manifest.bare and dest.is_dir() and not dest.is_symlink()
    if busy and manifest.bare and os.path.lexists(dest / ".git"):
        raise UsageError(
            f"{dest} holds a work tree (.git) and the backup of {manifest.repository} is a "
            "bare repository: replacing it would delete the files there; restore it "
            "elsewhere with --to"
        )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # the target was checked; this is what changed since
        why = unusable(dest.parent) or exc.strerror or str(exc)
        raise PathNotFoundError(
            f"cannot restore {manifest.repository} into {dest}: {why}"
        ) from None
    tmp = dest.parent / f"{HIDDEN}{secrets.token_hex(4)}-{dest.name}"
    try:
        size = _assemble(store, manifest, identities, git, tmp, check, (alternates, borrowed))
        if in_place:
            _swap_git_dir(tmp / ".git", dest)
            shutil.rmtree(tmp)  # the empty work tree it was assembled in
        else:
            _swap(tmp, dest)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno in _NO_SPACE:
            raise StateError(
                f"disk full restoring {manifest.repository} into {dest.parent}; nothing was "
                "left there; free space and restore again"
            ) from None
        raise StateError(
            f"cannot restore {manifest.repository} into {dest}: {exc.strerror or exc}"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    took = time.monotonic() - started
    return Restored(manifest.repository, dest, took, size, manifest.bare, in_place)


def _swap(tmp: Path, dest: Path) -> None:
    if not dest.exists() and not dest.is_symlink():
        os.rename(tmp, dest)
        return
    if dest.is_dir() and not dest.is_symlink() and not any(os.scandir(dest)):
        dest.rmdir()
        os.rename(tmp, dest)
        return
    old = dest.parent / f"{HIDDEN}old-{secrets.token_hex(4)}-{dest.name}"
    os.rename(dest, old)
    os.rename(tmp, dest)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()


def _swap_git_dir(new: Path, work_tree: Path) -> None:
    """Put ``new`` in place of ``work_tree/.git`` and touch nothing else there: the old
    ``.git`` (a directory, or a gitfile pointing elsewhere) is renamed aside first, put
    back if the new one cannot go in, and deleted only once it is in."""
    target = work_tree / ".git"
    if not os.path.lexists(target):
        os.rename(new, target)
        return
    old = work_tree / f"{HIDDEN}old-{secrets.token_hex(4)}.git"
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()


def _assemble(  # noqa: PLR0917
    store: Store, m: RepoManifest, identities: Sequence[Identity], git: Git, tmp: Path,
    check: Callable[[Path], None] | None, borrow: tuple[str, frozenset[str]] = ("", frozenset()),
) -> int:  # fmt: skip
    args = ["init", "-q", "--template=", f"--object-format={m.object_format}"]
    git.run([*args, *(["--bare"] if m.bare else []), str(tmp)], repo=None, cwd=tmp.parent)
    git_dir = tmp if m.bare else tmp / ".git"
    size = 0
    alternates, borrowed = borrow
    if alternates or borrowed:  # before the packs: a base lacking them fails first
        _borrow(m, git_dir, alternates, borrowed)
    for link in m.chain:
        if link.bundle.key not in borrowed:
            size += _install(store, link, identities, git_dir)
    for ref in m.lfs:
        size += _lfs(store, ref, identities, git_dir)
    if m.shallow:  # before any git reads the history it bounds
        _create(git_dir / "shallow", "".join(f"{oid}\n" for oid in m.shallow))
    write_refs(git_dir, stored_refs(store, m, identities))
    try:  # one git: every ref's object must be there (for-each-ref fails on a missing one)
        git.run(["for-each-ref", "--format=%(objecttype)"], repo=git_dir)
    except GitError as exc:
        raise IntegrityError(
            f"{m.repository}: the refs of backup {m.backup_id} name objects it lacks "
            f"({exc.message}); the backup is incomplete or damaged"
        ) from None
    if check is not None:
        check(git_dir)
    # last: the backed-up config (and hooks) take effect only in the finished repository
    files = io.BytesIO()
    decrypt_to(store, m.files, files, identities)
    extract(files.getvalue(), git_dir)
    return size


def _borrow(m: RepoManifest, git_dir: Path, alternates: str, borrowed: frozenset[str]) -> None:
    """Write ``objects/info/alternates`` naming ``alternates`` (relative to ``objects``),
    once the object directory there holds the pack of every borrowed link: a borrower
    never points at a directory that lacks what it leaves out."""
    objects = git_dir / "objects"
    base = objects / alternates
    links = [link for link in m.chain if link.bundle.key in borrowed]
    bad = not alternates or os.path.isabs(alternates) or "\n" in alternates
    if bad or len(links) != len(borrowed):  # a caller's mistake, never a store's
        raise StateError(f"{m.repository}: bad borrowed links or alternates {alternates!r}")
    for link in links:
        names = [f"{link.pack_name}.pack", f"{link.pack_name}.idx"] if link.index else []
        if not all((base / "pack" / name).is_file() for name in names):
            raise IntegrityError(
                f"{m.repository}: {base} lacks {link.pack_name or 'a pack'} of the backup it "
                "builds on; restore it complete (without --borrow)"
            )
    (objects / "info").mkdir(parents=True, exist_ok=True)
    _create(objects / "info" / "alternates", f"{alternates}\n")


class _SkipHeader:
    """Writes a decrypted bundle's pack to a file, dropping (and checking) its header."""

    def __init__(self, out: io.BufferedWriter, header_bytes: int) -> None:
        self.out, self.skip, self.head = out, header_bytes, b""

    def write(self, data: bytes) -> int:
        n = len(data)
        if self.skip:
            take = min(self.skip, n)
            self.head += data[:take]
            data, self.skip = data[take:], self.skip - take
            if not self.skip and not self.head.startswith((b"# v2 git bundle\n",
                                                           b"# v3 git bundle\n")):  # fmt: skip
                raise IntegrityError("the decrypted file is not a git bundle")
        if data:
            self.out.write(data)
        return n


def _install(store: Store, link: Link, identities: Sequence[Identity], git_dir: Path) -> int:
    if link.index is None:
        return 0  # only refs changed: the bundle's pack is empty
    pack_dir = git_dir / "objects" / "pack"
    pack_dir.mkdir(parents=True, exist_ok=True)
    tmp_pack, tmp_idx = (
        pack_dir / f"tmp_{link.pack_name}.pack",
        pack_dir / f"tmp_{link.pack_name}.idx",
    )
    with tmp_pack.open("wb") as out:
        if link.bundle.parts:  # decrypted on every core, each part written at its place
            heads = (b"# v2 git bundle\n", b"# v3 git bundle\n")
            decrypt_parts(store, link.bundle, tmp_pack, identities, skip=link.header_bytes,
                          heads=heads, what="the decrypted file is not a git bundle",
                          flush=out.fileno())  # fmt: skip
        else:
            sink = _SkipHeader(out, link.header_bytes)
            decrypt_to(store, link.bundle, sink, identities, flush=out.fileno())  # type: ignore[arg-type]
        out.flush()
        os.fsync(out.fileno())
    with tmp_pack.open("rb") as f:
        if f.read(4) != b"PACK":
            raise IntegrityError(f"{link.bundle.key}: no pack after the bundle header")
    with tmp_idx.open("wb") as out:
        if link.index.parts:
            decrypt_parts(store, link.index, tmp_idx, identities, flush=out.fileno())
        else:
            decrypt_to(store, link.index, out, identities)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp_pack, pack_dir / f"{link.pack_name}.pack")
    os.replace(tmp_idx, pack_dir / f"{link.pack_name}.idx")
    return link.bundle.size + link.index.size


def _lfs(store: Store, ref: FileRef, identities: Sequence[Identity], git_dir: Path) -> int:
    oid = lfs_oid(ref.key)
    path = lfs_path(git_dir, oid)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"tmp-{oid}")
    digest = hashlib.sha256()

    class _Hash:
        def __init__(self, out: io.BufferedWriter) -> None:
            self.out = out

        def write(self, data: bytes) -> int:
            digest.update(data)
            return self.out.write(data)

    with tmp.open("wb") as out:
        decrypt_to(store, ref, _Hash(out), identities, flush=out.fileno())  # type: ignore[arg-type]
        out.flush()
        os.fsync(out.fileno())  # on disk before the rename, as the pack
    if digest.hexdigest() != oid:
        raise IntegrityError(f"LFS object {ref.key} does not match its id; it is damaged")
    os.replace(tmp, path)
    return ref.size


def write_refs(git_dir: Path, refs: Refs) -> None:
    """Write the refs as git stores them (gitrepository-layout): one sorted packed-refs
    file, a file per symbolic ref, HEAD. Names were checked by ``parse_refs``; files are
    created, never followed through a symlink."""
    lines = ["# pack-refs with: sorted \n"]
    ordered = sorted(refs.refs.items(), key=lambda kv: kv[0].encode())  # git's byte order
    lines += [f"{oid} {name}\n" for name, oid in ordered]
    _create(git_dir / "packed-refs", "".join(lines))
    for name, target in sorted(refs.symrefs.items()):
        path = git_dir.joinpath(*name.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        _create(path, f"ref: {target}\n")
    if refs.head.startswith(SYMREF_PREFIX):
        _create(git_dir / "HEAD", f"ref: {refs.head[len(SYMREF_PREFIX) :]}\n", replace=True)
    elif refs.head:
        _create(git_dir / "HEAD", f"{refs.head}\n", replace=True)


def _create(path: Path, text: str, *, replace: bool = False) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with os.fdopen(os.open(tmp, flags, 0o644), "w", encoding="utf-8") as out:
        out.write(text)
    if replace:
        os.replace(tmp, path)
    else:
        os.link(tmp, path)  # refuses an existing name
        tmp.unlink()


def stored_refs(store: Store, m: RepoManifest, identities: Sequence[Identity]) -> Refs:
    """The refs backup ``m`` recorded: its chain's last whole refs file with the deltas
    after it applied in order (``refsfile``); each file decrypted and checked."""
    refs: Refs | None = None
    for ref in m.refs_chain or (m.refs,):
        plain = io.BytesIO()
        decrypt_to(store, ref, plain, identities)
        content = refsfile.decode(plain.getvalue(), ref.key)
        if isinstance(content, RefsDelta):
            if refs is None:
                raise IntegrityError(f"{ref.key}: a refs delta with no whole refs before it")
            refs = refsfile.apply(refs, content)
        else:
            refs = content
    if refs is None:
        raise IntegrityError(f"manifest {m.key} names no refs file; it is damaged")
    return refs
