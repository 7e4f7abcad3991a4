"""Checking a store, at three depths.

* ``quick`` — every snapshot and manifest parses and passes its checksum; every file they
  name is present with its recorded size. Needs no secret.
* ``full`` — also reads every file: SHA-256 of the stored bytes, age decryption (which
  authenticates every chunk), and ``git bundle verify`` of each bundle once, against
  the packs of its own chain before it (a fork's: its base's and its own). ``git bundle
  verify`` checks only the prerequisites, so each bundle's pack is added too and a walk
  from its refs (``rev-list --objects``, down to its prerequisites or the shallow commits the
  chain records) must find every object: a bundle that lacks one (written by a walk that
  trusted a lying bitmap, say) is reported, as the restore of it would fail.
* ``drill`` — restores repositories into a scratch directory, runs ``git fsck`` and
  compares every ref and HEAD with the backup's record; each restore is timed.

A problem names the file and the snapshots and repositories it affects; everything else
is still checked (and still restores). A problem in a repository's backups (and a failed
drill) ends with the fix for the backups to come: ``custode backup --full ROOT`` starts a
new chain, also for an unchanged repository, whose next backups would otherwise keep
pointing at the damaged one. (Its root, not the repository's own path: given as a root, a
repository is known by its name alone, another identity in the store and the history.)
"""

from __future__ import annotations

import hashlib
import io
import random
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from custode.backup import refsfile
from custode.backup.catalog import Catalog
from custode.backup.chain import DamagedManifest, Manifests
from custode.backup.crypto import Identity
from custode.backup.freshness import ROLLBACK_FIX
from custode.backup.guard import Standing
from custode.backup.manifest import FileRef, Link, RepoManifest
from custode.backup.parts import decrypt_parts
from custode.backup.restore import _SkipHeader, restore_repository, stored_refs
from custode.backup.store import Store
from custode.backup.streams import check, decrypt_to, require
from custode.errors import CustodeError, GitError, IntegrityError
from custode.git.refsnapshot import snapshot
from custode.git.runner import DISTRUST_DERIVED, Git, ObjectDirs
from custode.integrity import check as integrity

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass
class Problem:
    key: str
    message: str
    snapshots: set[str] = field(default_factory=set)
    repositories: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, object]:
        return {"key": self.key, "message": self.message, "snapshots": sorted(self.snapshots),
                "repositories": sorted(self.repositories)}  # fmt: skip


@dataclass
class Drill:
    repository: str
    snapshot: str
    ok: bool
    seconds: float
    message: str = ""


@dataclass
class Report:
    level: str
    snapshots: int = 0
    manifests: int = 0
    files: int = 0
    bytes_read: int = 0  # from the store: files checked, bundles verified, drills restored
    problems: list[Problem] = field(default_factory=list)
    drills: list[Drill] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(d.ok for d in self.drills)

    @property
    def restored(self) -> int:
        """Repositories a drill restored and found whole."""
        return sum(1 for d in self.drills if d.ok)


@dataclass
class _Users:
    snapshots: set[str] = field(default_factory=set)
    repositories: set[str] = field(default_factory=set)
    roots: set[str] = field(default_factory=set)


def new_chain(roots: set[str]) -> str:
    """The command that gives repositories under ``roots`` a new, whole chain."""
    return "custode backup --full " + " ".join(shlex.quote(r) for r in sorted(roots))


def verify(
    store: Store, catalog: Catalog, level: str, *, git: Git, identities: Sequence[Identity] = (),
    scratch: Path, sample: int | None = None, progress: Progress | None = None,
) -> Report:  # fmt: skip
    v = _Verifier(store, git, identities, scratch, Report(level, len(catalog.snapshots)), progress)
    for key, why in catalog.damaged.items():
        v.report.problems.append(Problem(key, why, {key}))
    v.read_manifests(catalog)
    v.check_files(read=level == "full")
    if level == "full":
        v.bundles()
    if level == "drill":
        v.drill(catalog, sample)
    return v.report


@dataclass
class _Verifier:
    store: Store
    git: Git
    identities: Sequence[Identity]
    scratch: Path
    report: Report
    progress: Progress | None
    manifests: dict[str, RepoManifest] = field(default_factory=dict)
    users: dict[str, _Users] = field(default_factory=dict)  # manifest key -> its users
    broken: set[str] = field(default_factory=set)
    current: set[str] = field(default_factory=set)  # what each repository's latest backup needs
    raised: dict[str, tuple[str, _Users]] = field(default_factory=dict)  # key -> first words

    def tick(self, phase: str, done: int, total: int) -> None:
        if self.progress:
            self.progress(phase, done, total)

    def problem(self, key: str, message: str, u: _Users) -> None:
        """Report ``key``; one file met again (a base's bundle, checked in the chain of
        each fork built on it) stays one problem naming every backup that needs it."""
        if key in self.raised:
            message, before = self.raised[key]
            u = _Users(before.snapshots | u.snapshots, before.repositories | u.repositories,
                       before.roots | u.roots)  # fmt: skip
        self.raised[key] = (message, u)
        if u.roots and key in self.current:  # the backups to come build on it, or reuse it
            message += f"; start a new chain for the next backups: {new_chain(u.roots)}"
        elif u.roots:  # a new chain was made since: what is left is old snapshots
            message += ("; no latest backup needs it, only the older snapshots named "
                        "(custode forget can drop them)")  # fmt: skip
        found = Problem(key, message, set(u.snapshots), set(u.repositories))
        at = next((n for n, p in enumerate(self.report.problems) if p.key == key), None)
        if at is None:
            self.report.problems.append(found)
        else:
            self.report.problems[at] = found

    def read_manifests(self, catalog: Catalog) -> None:
        latest: dict[tuple[str, str], str] = {}
        for snap in catalog.snapshots:  # oldest first: the last entry seen is the latest
            for entry in snap.entries:
                u = self.users.setdefault(entry.manifest, _Users())
                u.snapshots.add(snap.snapshot_id)
                u.repositories.add(entry.repository)
                u.roots.add(entry.root)
                latest[entry.root, entry.repository] = entry.manifest
        self.current = set(latest.values())
        known = Manifests(self.store)  # a manifest many backups build on is read once
        damaged: dict[str, tuple[str, _Users]] = {}
        for n, (key, u) in enumerate(sorted(self.users.items())):
            self.tick("manifests", n, len(self.users))
            try:
                self.manifests[key] = known.load(key)
            except CustodeError as exc:
                # an ancestor at fault is named once, with every backup that builds on it
                at = exc.key if isinstance(exc, DamagedManifest) else key
                _, users = damaged.setdefault(at, (exc.message, _Users()))
                users.snapshots.update(u.snapshots)
                users.repositories.update(u.repositories)
                users.roots.update(u.roots)
                if key in self.current:  # the next backups would build on it too
                    self.current.add(at)
        for at, (message, users) in sorted(damaged.items()):
            self.problem(at, message, users)
        self.report.manifests = len(self.manifests)
        for key in list(self.current):
            if key in self.manifests:
                self.current.update(ref.key for ref in self.manifests[key].file_refs())
                self.current.update(ref.key for ref in self.manifests[key].stored_files())

    def check_files(self, *, read: bool) -> None:
        files: dict[str, tuple[FileRef, _Users]] = {}
        for key, m in self.manifests.items():
            for ref in m.file_refs():
                held = files.setdefault(ref.key, (ref, _Users()))
                if held[0] != ref:
                    why = "two manifests record different sizes or checksums for it"
                    self.problem(ref.key, why, _Users(set(), {m.repository}, self.users[key].roots))
                held[1].snapshots.update(self.users[key].snapshots)
                held[1].repositories.add(m.repository)
                held[1].roots.update(self.users[key].roots)
        self.report.files = len(files)
        refs = {ref.key for m in self.manifests.values() for ref in m.refs_chain}
        for n, (ref, u) in enumerate(files.values()):
            self.tick("files", n, len(files))
            try:
                require(self.store, ref)
                if read and ref.key.endswith("/manifest.json"):  # an ancestor: plain JSON
                    data = self.store.get_bytes(ref.key, ref.size)
                    check(ref, len(data), hashlib.sha256(data).hexdigest())
                elif read and not ref.key.endswith("/bundle.age"):  # bundles: in chain order
                    # refs are parsed too (a restore would, and fail): held in memory, as
                    # a restore holds them, within the manifest's bound on their size
                    sink = io.BytesIO() if ref.key in refs else _Null()
                    decrypt_to(self.store, ref, sink, self.identities)  # type: ignore[arg-type]
                    if isinstance(sink, io.BytesIO):
                        refsfile.decode(sink.getvalue(), ref.key)
                    self.report.bytes_read += ref.size
            except CustodeError as exc:
                self.broken.add(ref.key)
                # a parted file's problem is its part's: named exactly, as a whole file is
                at = next((p.key for p in ref.parts if p.key in exc.message), ref.key)
                self.problem(at, exc.message, u)

    def bundles(self) -> None:
        """Every bundle once, decrypted and ``git bundle verify``-ed, and its refs walked
        against the packs of its own chain only: a fork's link sees its base's packs and
        its own, never another fork's. The packs of a family of chains (those starting
        with the same bundle: a base and its forks) are decrypted once into a scratch
        pool; each check sees them through an object directory of links to its chain's."""
        prefixes: dict[str, tuple[Link, ...]] = {}  # bundle key -> its chain up to it
        formats: dict[str, str] = {}
        for m in self.manifests.values():
            for n, link in enumerate(m.chain):
                prefixes.setdefault(link.bundle.key, m.chain[: n + 1])
                formats.setdefault(link.bundle.key, m.object_format)
        families: dict[str, list[str]] = {}
        for key, prefix in prefixes.items():
            families.setdefault(prefix[0].bundle.key, []).append(key)
        for n, keys in enumerate(families.values()):
            self.tick("bundles", n, len(families))
            work = Path(tempfile.mkdtemp(prefix="verify-", dir=self.scratch))
            try:
                self._family(sorted(keys, key=lambda k: prefixes[k][-1].backup_id),
                             prefixes, formats[keys[0]], work)  # fmt: skip
            finally:
                shutil.rmtree(work, ignore_errors=True)

    def _family(
        self, keys: list[str], prefixes: dict[str, tuple[Link, ...]], fmt: str, work: Path
    ) -> None:
        self.git.run(["init", "-q", "--bare", "--template=", f"--object-format={fmt}",
                      str(work / "r.git")], repo=None, cwd=work)  # fmt: skip
        pool = work / "pool"
        pool.mkdir()
        ready: set[str] = set()  # links whose packs are in the pool (or that have none)
        for key in keys:
            prefix = prefixes[key]
            link = prefix[-1]
            if key in self.broken:
                continue
            # an earlier link is missing or damaged: git cannot check this one; its own
            # bytes still are checked, never blamed on others
            cut = any(earlier.bundle.key not in ready for earlier in prefix[:-1])
            install = not cut and not (link.index and link.index.key in self.broken)
            try:
                if cut:
                    decrypt_to(self.store, link.bundle, _Null(), self.identities)  # type: ignore[arg-type]
                    self.report.bytes_read += link.bundle.size
                else:
                    self.report.bytes_read += self._check_bundle(prefix, work, pool, install)
                    if install:
                        ready.add(key)
            except CustodeError as exc:
                at = next((p.key for p in link.bundle.parts if p.key in exc.message),
                          link.bundle.key)  # fmt: skip
                self.problem(at, exc.message, self._users_of(link))

    def _users_of(self, link: Link) -> _Users:
        u = _Users()
        for key, m in self.manifests.items():
            if link in m.chain:
                u.snapshots.update(self.users[key].snapshots)
                u.repositories.add(m.repository)
                u.roots.update(self.users[key].roots)
        return u

    def _check_bundle(self, prefix: tuple[Link, ...], work: Path, pool: Path, install: bool) -> int:
        link = prefix[-1]
        repo = work / "r.git"
        view = work / f"view-{link.backup_id}"
        (view / "pack").mkdir(parents=True)
        for earlier in prefix[:-1]:  # the packs of its chain before it, and nothing else
            if earlier.index is not None:
                for ext in ("pack", "idx"):
                    name = f"{earlier.pack_name}.{ext}"
                    (view / "pack" / name).symlink_to(pool / name)
        objects = ObjectDirs(view)
        bundle = work / "b.bundle"
        with bundle.open("wb") as out:
            if link.bundle.parts:  # on every core, as a restore does
                decrypt_parts(self.store, link.bundle, bundle, self.identities)
            else:
                decrypt_to(self.store, link.bundle, out, self.identities)
        try:
            self.git.run(["bundle", "verify", "-q", str(bundle)], repo=repo, objects=objects)
        except GitError as exc:
            raise GitError(f"git bundle verify failed: {exc.message}") from None
        if link.index is not None and install:
            with (pool / f"{link.pack_name}.pack").open("wb") as out, bundle.open("rb") as f:
                sink = _SkipHeader(out, link.header_bytes)
                while chunk := f.read(1 << 20):
                    sink.write(chunk)
            with (pool / f"{link.pack_name}.idx").open("wb") as out:
                decrypt_to(self.store, link.index, out, self.identities)
            for ext in ("pack", "idx"):
                name = f"{link.pack_name}.{ext}"
                (view / "pack" / name).symlink_to(pool / name)
        if install:
            self._connected(link, bundle, repo, objects)
        bundle.unlink()
        shutil.rmtree(view)
        return link.bundle.size

    def _connected(self, link: Link, bundle: Path, repo: Path, objects: ObjectDirs) -> None:
        """Every object the bundle's refs need beyond its prerequisites is in its chain's
        packs so far (the object directory holds nothing else)."""
        with bundle.open("rb") as f:
            header = f.read(link.header_bytes).decode("utf-8", "replace")
        revs = []
        for line in header.splitlines()[1:]:
            if line.startswith("-"):
                revs.append(f"^{line[1:].split(' ', 1)[0]}")
            elif line and not line.startswith("@"):
                revs.append(line.split(" ", 1)[0])
        shallow = repo / "shallow"
        shallow.unlink(missing_ok=True)
        if link.shallow:
            shallow.write_text("".join(f"{oid}\n" for oid in link.shallow))
        walk = self.git.run(["rev-list", "--objects", "--quiet", "--stdin"], repo=repo,
                            input="".join(f"{r}\n" for r in revs).encode(), check=False,
                            config=DISTRUST_DERIVED, objects=objects)  # fmt: skip
        if walk.returncode != 0:
            said = walk.stderr.decode("utf-8", "replace").strip().splitlines()[:1]
            raise IntegrityError(
                "the bundle lacks objects its refs need "
                f"({' '.join(said) or f'exit {walk.returncode}'}); restores through it fail"
            )

    def drill(self, catalog: Catalog, sample: int | None) -> None:
        if not catalog.snapshots:
            return
        latest = catalog.snapshots[-1]
        entries = [e for e in latest.entries if e.manifest in self.manifests]
        if sample is not None and sample < len(entries):
            entries = random.sample(entries, sample)
        for n, entry in enumerate(entries):
            self.tick("drill", n, len(entries))
            m = self.manifests[entry.manifest]
            work = Path(tempfile.mkdtemp(prefix="drill-", dir=self.scratch))
            started = time.monotonic()
            try:
                dest = work / "repo"
                checked = partial(_compare, self.store, m, self.identities, self.git)
                done = restore_repository(self.store, m, self.identities, self.git, dest,
                                          check=checked)  # fmt: skip
                # its packs and LFS objects, and the refs and kept files read beside them
                read = (*(m.refs_chain or (m.refs,)), m.files)
                self.report.bytes_read += done.bytes + sum(ref.size for ref in read)
                seconds = time.monotonic() - started
                self.report.drills.append(Drill(m.repository, latest.snapshot_id, True, seconds))
            except CustodeError as exc:
                took = time.monotonic() - started
                # the repository itself may be what is damaged: then a new chain is not
                # the fix, and its check says so
                why = (f"{exc.message}; if custode check finds the repository sound, start "
                       f"a new chain: {new_chain({entry.root})}")  # fmt: skip
                failed = Drill(m.repository, latest.snapshot_id, False, took, why)
                self.report.drills.append(failed)
            finally:
                shutil.rmtree(work, ignore_errors=True)


def add_standing(report: Report, found: Standing, host: str) -> None:
    """A store that went back in time, or that two machines write under one host name,
    fails verify: its snapshots cannot be trusted to be this host's latest."""
    where = f"hosts/{host}/snapshots/"
    if found.rollback:
        report.problems.append(Problem(where, f"{found.rollback}; {ROLLBACK_FIX}"))
    if found.clash:
        report.problems.append(Problem(where, found.clash))


class _Null:
    def write(self, data: bytes) -> int:
        return len(data)


def _compare(
    store: Store, m: RepoManifest, identities: Sequence[Identity], git: Git, git_dir: Path
) -> None:
    # The same judge as ``custode check --full``: format warnings in historical objects
    # are not damage, so an exact restore of such a history passes.
    checked = integrity.check_git_dir(git_dir, git, full=True)
    if not checked.ok:
        first = checked.findings[0] if checked.findings else checked.verdict
        raise GitError(f"the restored copy failed the integrity check ({checked.verdict}): {first}")
    want = stored_refs(store, m, identities)  # as a restore reads them
    got = snapshot(git, git_dir)
    if got.direct() != want.refs or got.symrefs != want.symrefs or got.head != want.head:
        missing = set(want.refs) ^ set(got.direct())
        raise GitError(
            "restored refs differ from the backup's record"
            + (f" (e.g. {sorted(missing)[0]})" if missing else "")
        )
