"""Plaintext, versioned, checksummed records of what the store holds, and where.

Store layout (every key under ``hosts/<host>/``, so several hosts share one store)::

    hosts/<host>/repos/<repo-key>/<backup-id>/manifest.json   one repository backup
    hosts/<host>/repos/<repo-key>/<backup-id>/{bundle,index,refs,files}.age
    hosts/<host>/lfs/<oid[:2]>/<oid>.age                        LFS objects, shared
    hosts/<host>/snapshots/<snapshot-id>.json                    one run, written last
    hosts/<host>/locks/<lock-id>.json                            running backup / prune

A repository manifest of format 3 (what custode writes) records one link of a chain: its
own bundle (if it stored new objects), its refs file (whole, or the change since its
parent: ``refsfile``), the tips it added and removed, and its parent manifest pinned by
size and SHA-256 — so each manifest's pin is a checksum of the whole chain before it, and
a manifest's size does not grow with the chain's length. ``backup/chain.py`` follows the
pins back to the chain's start (``RepoManifest.resolved``): the whole chain of bundles a
restore needs, the refs files to apply in order, every tip, and every ancestor manifest,
so that retention still knows every file a kept snapshot depends on. Formats 1 and 2
(written before) list the whole chain and every tip in each manifest; they are read as
they are, and a format 3 manifest may build on one. Format 4 is format 3 naming a large
file stored as several parts, each an ordinary age file of a slice of its plaintext
(``FileRef.parts``: restores decrypt them on every core); only a manifest that names one
says 4, so a store stays readable by the custode before wherever it can be.

Ref names stay encrypted (``refs.age``); the manifest carries only tip object ids (what
the next incremental backup excludes, readable without the secret key) and a digest of
the refs, salted with the backup id, to tell whether anything changed.

Manifests and snapshots are JSON with a ``checksum`` over their canonical form, and are
validated field by field on reading: a store is treated as possibly hostile, so every key
a manifest names must be a plain relative key inside its own host's namespace, and every
number must lie in its field's range. Reading is bounded in size, nesting and number
(``records``): ``read_snapshot`` reads a snapshot from a store, ``backup/chain.py`` a
manifest (resolved along its parents).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from custode.backup.records import (
    FILES_LIMIT,
    MANIFEST_LIMIT,
    REFS_LIMIT,
    SNAPSHOT_LIMIT,
    load_object,
)
from custode.backup.store import Store, check_key
from custode.base.pathtext import json_bytes
from custode.errors import IntegrityError, UsageError

MANIFEST_FORMAT = "custode-backup/1"
# a shallow repository's chain records its ``shallow`` commits, which a restore must write:
# a custode reading only /1 would restore it broken, so such a manifest says /2 (all
# others stay /1, readable by every custode)
MANIFEST_FORMAT_SHALLOW = "custode-backup/2"
# one link per manifest, pinned to its parent; refs and tips as deltas (written since 0.x)
MANIFEST_FORMAT_LINKED = "custode-backup/3"
# format 3 whose large files are stored as parts (``FileRef.parts``): a custode reading only
# /3 would look for a file that is not there, so only such a manifest says /4
MANIFEST_FORMAT_PARTS = "custode-backup/4"
SNAPSHOT_FORMAT = "custode-snapshot/1"
LOCK_FORMAT = "custode-lock/1"
_ID = re.compile(r"^\d{8}T\d{12}Z-[0-9a-f]{8}$")
_HEX = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_LFS_KEY = re.compile(r"^hosts/[^/]+/lfs/([0-9a-f]{2})/\1[0-9a-f]{62}\.age$")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MAX_SIZE = 1 << 50  # bytes in one stored file (a PiB): a larger size is forged
MAX_COUNT = 1 << 40  # objects or refs in one backup
_MACHINE = re.compile(r"^[0-9a-f]{32}$")
_METHOD = re.compile(r"^(copy|generate)$")
# a parted file: at most this many parts, each at most this much plaintext (a worker holds
# one part's plaintext in memory while it decrypts it)
MAX_PARTS = 1 << 16
MAX_PART_BYTES = 256 << 20


def new_id(now: datetime | None = None) -> str:
    """A unique id that sorts by time: UTC to the microsecond plus 32 random bits (two
    backups of one repository in one second must still sort in the order they were made)."""
    when = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{when:%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(4)}"


def id_time(ident: str) -> datetime:
    return datetime.strptime(ident[:22], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=UTC)


def check_host(host: str) -> str:
    if not _HOST.match(host):
        raise UsageError(
            f"host name {host!r} cannot name a store namespace; set backup.host to letters, "
            "digits, '.', '_' or '-'"
        )
    return host


def repo_key(repository: str) -> str:
    """The store directory name of a repository (its relative path may hold anything)."""
    return hashlib.sha256(repository.encode("utf-8", "surrogateescape")).hexdigest()[:24]


def repo_prefix(host: str, repository: str) -> str:
    return f"hosts/{host}/repos/{repo_key(repository)}/"


def backup_prefix(host: str, repository: str, backup_id: str) -> str:
    return f"{repo_prefix(host, repository)}{backup_id}/"


def lfs_key(host: str, oid: str) -> str:
    return f"hosts/{host}/lfs/{oid[:2]}/{oid}.age"


def lfs_oid(key: str) -> str:
    return key.rsplit("/", 1)[1].removesuffix(".age")


def part_key(key: str, token: str, n: int) -> str:
    """The key of part ``n`` (from 1) of the parted file ``key``, written by the put that
    drew ``token`` (8 hex digits: parts left by a put taken back never stand in the way of
    the next one): ``bundle.0a1b2c3d.part0001.age``."""
    return f"{key.removesuffix('.age')}.{token}.part{n:04d}.age"


def part_token(key: str, first: str) -> str | None:
    """The token of ``first``, if it is the key of part 1 of ``key``."""
    stem, _, rest = first.rpartition(".part0001.age")
    head, _, token = stem.rpartition(".")
    ok = not rest and head == key.removesuffix(".age") and re.fullmatch(r"[0-9a-f]{8}", token)
    return token if ok else None


def parts_digest(parts: tuple[FileRef, ...] | list[FileRef]) -> str:
    """A parted file's ``sha256``: the SHA-256 of its parts' SHA-256s, in order (each part
    is checked as it is read: this only ties the list together)."""
    return hashlib.sha256(b"".join(bytes.fromhex(p.sha256) for p in parts)).hexdigest()


def snapshot_key(host: str, snapshot_id: str) -> str:
    return f"hosts/{host}/snapshots/{snapshot_id}.json"


def canonical(obj: Any) -> bytes:
    # a repository whose name is not UTF-8 is written as the \udcNN escape (pathtext)
    return json_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False))


def salted_digest(salt: str, obj: Any) -> str:
    return hashlib.sha256(salt.encode() + b"\n" + canonical(obj)).hexdigest()


def _seal(body: dict[str, Any]) -> bytes:
    body = dict(body)
    body["checksum"] = hashlib.sha256(canonical(body)).hexdigest()
    return canonical(body) + b"\n"  # one line: every run writes one, size counts


def _open(data: bytes, what: str, fmt: str | tuple[str, ...]) -> dict[str, Any]:
    body = load_object(data, what)
    found = body.pop("checksum", None)
    try:
        expected = hashlib.sha256(canonical(body)).hexdigest()
    except UnicodeEncodeError:  # a lone surrogate (\ud800) that JSON allows, UTF-8 does not
        raise IntegrityError(f"{what} holds an invalid string; the file is damaged") from None
    if found != expected:
        raise IntegrityError(f"{what} fails its checksum; the file is damaged or was edited")
    formats = (fmt,) if isinstance(fmt, str) else fmt
    if body.get("format") not in formats:
        raise IntegrityError(
            f"{what} has format {body.get('format')!r}, this custode reads "
            f"{' or '.join(map(repr, formats))}; upgrade custode to read it"
        )
    return body


class _Reader:
    """Typed field access that turns every malformed value into one IntegrityError."""

    def __init__(self, body: dict[str, Any], what: str) -> None:
        self.body, self.what = body, what
        self.parted = body.get("format") == MANIFEST_FORMAT_PARTS  # may name parted files

    def bad(self, name: str, why: str) -> IntegrityError:
        return IntegrityError(f"{self.what}: field {name!r} {why}; the file is damaged")

    def text(self, name: str, pattern: re.Pattern[str] | None = None, src: Any = None) -> str:
        value = (self.body if src is None else src).get(name)
        if not isinstance(value, str) or (pattern is not None and not pattern.match(value)):
            raise self.bad(name, "is missing or malformed")
        return value

    def opt_text(self, name: str, pattern: re.Pattern[str], src: Any = None) -> str | None:
        value = (self.body if src is None else src).get(name)
        return None if value is None else self.text(name, pattern, src)

    def num(self, name: str, src: Any = None, most: int = MAX_COUNT) -> int:
        value = (self.body if src is None else src).get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise self.bad(name, "is not a non-negative integer")
        if value > most:
            raise self.bad(name, f"is {value}, more than it can be ({most})")
        return value

    def items(self, name: str, src: Any = None) -> list[Any]:
        value = (self.body if src is None else src).get(name)
        if not isinstance(value, list):
            raise self.bad(name, "is not a list")
        return value

    def key(self, name: str, prefix: str, src: Any) -> str:
        value = self.text(name, None, src)
        try:
            check_key(value)
        except UsageError:
            raise self.bad(name, f"names an invalid store key {value!r}") from None
        if not value.startswith(prefix):
            raise self.bad(name, f"names {value!r}, outside {prefix}")
        return value


@dataclass(frozen=True)
class FileRef:
    """A stored file: its key, and the size and SHA-256 of its stored (encrypted) bytes.

    A large file is stored as ``parts`` (format 4): each an ordinary age file of
    ``part_bytes`` consecutive bytes of the plaintext (the last one: what is left), at
    ``part_key(key, n)``; nothing is stored at ``key`` itself. Its ``size`` is then the
    sum of the parts' and its ``sha256`` their ``parts_digest``. ``stored()`` is what the
    store holds for it: every place that needs a file present, or keeps it, goes by it."""

    key: str
    size: int
    sha256: str
    parts: tuple[FileRef, ...] = ()
    part_bytes: int = 0  # plaintext bytes in each part but the last

    def stored(self) -> tuple[FileRef, ...]:
        """The files the store holds for this one: its parts, or itself."""
        return self.parts or (self,)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "size": self.size, "sha256": self.sha256}
        if self.parts:
            out |= {"part_bytes": self.part_bytes, "parts": [p.to_json() for p in self.parts]}
        return out

    @classmethod
    def read(cls, r: _Reader, src: Any, prefix: str, most: int = MAX_SIZE) -> FileRef:
        """``most``: the largest size the file can have (refs and kept files are held in
        memory when restored)."""
        whole = cls._plain(r, src, prefix, most)
        if "parts" not in src:
            return whole
        if not r.parted:
            raise r.bad("parts", "appears in a manifest of a format without parts")
        part_bytes = r.num("part_bytes", src, MAX_PART_BYTES)
        items = r.items("parts", src)
        if part_bytes < 1 or not 2 <= len(items) <= MAX_PARTS:
            raise r.bad("parts", f"of {whole.key} are not 2 to {MAX_PARTS} parts of 1 byte or more")
        # a part's stored bytes: its plaintext, an age header and 16 bytes a 64 KiB chunk
        largest = part_bytes + part_bytes // 4096 + (1 << 20)
        parts: list[FileRef] = []
        token = ""
        for n, item in enumerate(items, 1):
            if isinstance(item, dict) and "parts" in item:
                raise r.bad("parts", f"of {whole.key} hold parts of their own")
            part = cls._plain(r, item, prefix, largest)
            token = token or part_token(whole.key, part.key) or "?"
            if part.key != part_key(whole.key, token, n):
                raise r.bad("parts", f"of {whole.key} name {part.key!r} as part {n}")
            parts.append(part)
        if sum(p.size for p in parts) != whole.size or parts_digest(parts) != whole.sha256:
            raise r.bad("parts", f"of {whole.key} do not add up to its size and checksum")
        return replace(whole, parts=tuple(parts), part_bytes=part_bytes)

    @classmethod
    def _plain(cls, r: _Reader, src: Any, prefix: str, most: int) -> FileRef:
        if not isinstance(src, dict):
            raise r.bad("file", "is not an object")
        return cls(r.key("key", prefix, src), r.num("size", src, most),
                   r.text("sha256", _SHA256, src))  # fmt: skip


@dataclass(frozen=True)
class Link:
    """One bundle of a chain: the objects new since its prerequisites, and the refs then."""

    backup_id: str
    bundle: FileRef
    index: FileRef | None  # None: the bundle's pack holds no object
    pack_name: str  # pack-<hash> (empty without index)
    header_bytes: int
    objects: int
    prerequisites: tuple[str, ...]
    shallow: tuple[str, ...] = ()  # the repository's shallow commits (the same along a chain)
    # a chain's first bundle: it needs nothing before it (formats 1 and 2: no prerequisite)
    full: bool = False
    method: str = ""  # format 3: "copy" (an existing pack as it was) or "generate"

    def files(self) -> list[FileRef]:
        return [self.bundle] + ([self.index] if self.index else [])

    def to_json(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id, "bundle": self.bundle.to_json(),
            "index": self.index.to_json() if self.index else None, "pack_name": self.pack_name,
            "header_bytes": self.header_bytes, "objects": self.objects,
            "prerequisites": list(self.prerequisites),
        } | ({"shallow": list(self.shallow)} if self.shallow else {})  # fmt: skip

    def to_json_linked(self) -> dict[str, Any]:
        return self.to_json() | {"full": self.full, "method": self.method}

    @classmethod
    def read(cls, r: _Reader, item: Any, repos: str, *, linked: bool) -> Link:
        if not isinstance(item, dict):
            raise r.bad("chain", "holds a non-object")
        index, bundle = item.get("index"), FileRef.read(r, item.get("bundle"), repos)
        prerequisites = tuple(_oids(r, r.items("prerequisites", item), "prerequisites"))
        full = item.get("full") if linked else not prerequisites
        if not isinstance(full, bool):
            raise r.bad("full", "is not true or false")
        return cls(
            r.text("backup_id", _ID, item), bundle,
            None if index is None else FileRef.read(r, index, repos),
            r.text("pack_name", re.compile(r"^(pack-[0-9a-f]{40,64})?$"), item),
            # the header is inside the bundle (a plaintext is never longer than its
            # age file): a larger one would have a reader allocate it
            r.num("header_bytes", item, bundle.size), r.num("objects", item),
            prerequisites,
            tuple(_oids(r, r.items("shallow", item), "shallow")) if "shallow" in item else (),
            full, r.text("method", _METHOD, item) if linked else "",
        )  # fmt: skip


@dataclass(frozen=True)
class RepoManifest:
    """One repository's backup. Fields after ``lfs`` are format 3's own link and what
    ``backup/chain.py`` resolves by following the parents (formats 1 and 2 hold them)."""

    host: str
    repository: str  # path relative to its root: the repository's identity
    backup_id: str
    created: str
    parent: str | None  # the parent backup's id (format 3: its manifest's, ``base``)
    object_format: str
    bare: bool
    tips: tuple[str, ...]  # every tip (format 3: resolved from the chain's deltas)
    refs_digest: str
    refs_count: int
    refs: FileRef
    files: FileRef
    files_digest: str
    chain: tuple[Link, ...]  # every bundle a restore needs, oldest first (resolved)
    lfs: tuple[FileRef, ...] = ()  # LFS objects, shared by every backup of the host
    key: str = field(default="", compare=False)  # where it was read from
    version: int = 3
    base: FileRef | None = None  # format 3: the parent manifest, pinned by size and SHA-256
    link: Link | None = None  # format 3: this backup's own bundle (None: no new object)
    refs_delta: bool = False  # format 3: ``refs`` holds the change since the parent
    tips_added: tuple[str, ...] = ()  # format 3, against the parent's tips
    tips_removed: tuple[str, ...] = ()
    # resolved (never stored): the refs files to apply in order (whole first), the
    # manifests this one builds on, and this one's own stored bytes
    refs_chain: tuple[FileRef, ...] = ()
    ancestors: tuple[FileRef, ...] = ()
    stored: FileRef | None = field(default=None, compare=False)
    resolved: bool = False

    @property
    def manifest_key(self) -> str:
        return backup_prefix(self.host, self.repository, self.backup_id) + "manifest.json"

    def file_refs(self) -> list[FileRef]:
        """Every stored file this backup needs (once resolved: its ancestors' too)."""
        out = [*(self.refs_chain or (self.refs,)), self.files]
        for link in self.chain:
            out += link.files()
        return out + list(self.lfs) + list(self.ancestors)

    def stored_files(self) -> list[FileRef]:
        """What the store holds for ``file_refs()``: a parted file's parts in its place."""
        return [part for ref in self.file_refs() for part in ref.stored()]

    def lfs_oids(self) -> dict[str, FileRef]:
        return {lfs_oid(ref.key): ref for ref in self.lfs}

    @property
    def base_dir(self) -> str:
        """The store directory (``hosts/H/repos/KEY/``) of the repository this resolved
        backup's chain builds on (a fork's base); "" when the chain is its own."""
        own = repo_prefix(self.host, self.repository)
        other = next((a.key for a in self.ancestors if not a.key.startswith(own)), "")
        return other.rsplit("/", 2)[0] + "/" if other else ""

    @property
    def shallow(self) -> tuple[str, ...]:
        """The shallow commits the chain was made with (a chain holds one set)."""
        return self.chain[-1].shallow if self.chain else ()

    def own_files(self) -> list[FileRef]:
        """The stored files this manifest names itself (not its ancestors')."""
        link = self.link.files() if self.link else []
        return [self.refs, self.files, *link, *self.lfs]

    def to_bytes(self) -> bytes:
        """Format 3: this backup's own link, its parent pinned (``base``); format 4 when
        it names a parted file (which a custode reading only 3 could not restore)."""
        parted = any(ref.parts for ref in self.own_files())
        return _seal({
            "format": MANIFEST_FORMAT_PARTS if parted else MANIFEST_FORMAT_LINKED,
            "host": self.host, "repository": self.repository,
            "backup_id": self.backup_id, "created": self.created,
            "base": self.base.to_json() if self.base else None,
            "object_format": self.object_format, "bare": self.bare,
            "link": self.link.to_json_linked() if self.link else None,
            "refs": self.refs.to_json(), "refs_delta": self.refs_delta,
            "refs_digest": self.refs_digest, "refs_count": self.refs_count,
            "tips_added": list(self.tips_added), "tips_removed": list(self.tips_removed),
            "files": self.files.to_json(), "files_digest": self.files_digest,
            "lfs": [ref.to_json() for ref in self.lfs],
        })  # fmt: skip

    @classmethod
    def from_bytes(cls, data: bytes, key: str) -> RepoManifest:
        """The manifest as stored: format 3's is not yet resolved (``backup/chain.py``)."""
        what = f"manifest {key}"
        formats = (MANIFEST_FORMAT, MANIFEST_FORMAT_SHALLOW, MANIFEST_FORMAT_LINKED,
                   MANIFEST_FORMAT_PARTS)  # fmt: skip
        r = _Reader(_open(data, what, formats), what)
        linked = r.body["format"] in (MANIFEST_FORMAT_LINKED, MANIFEST_FORMAT_PARTS)
        host = r.text("host", _HOST)
        repository = r.text("repository")
        if not repository or "\0" in repository:
            raise r.bad("repository", "is empty")
        backup_id = r.text("backup_id", _ID)
        own = backup_prefix(host, repository, backup_id)
        if key and key != own + "manifest.json":
            raise IntegrityError(f"{what} describes {own}manifest.json; it was moved or forged")
        repos = f"hosts/{host}/repos/{repo_key(repository)}/"
        fmt = r.text("object_format", re.compile(r"^(sha1|sha256)$"))
        bare = r.body.get("bare")
        if not isinstance(bare, bool):
            raise r.bad("bare", "is not true or false")
        lfs = [FileRef.read(r, item, f"hosts/{host}/lfs/") for item in r.items("lfs")]
        if not all(_LFS_KEY.match(ref.key) for ref in lfs):
            raise r.bad("lfs", "names a file that is not an LFS object")
        refs = FileRef.read(r, r.body.get("refs"), repos, REFS_LIMIT)
        m = cls(
            host, repository, backup_id, r.text("created"), None, fmt, bare, (),
            r.text("refs_digest", _SHA256), r.num("refs_count"), refs,
            FileRef.read(r, r.body.get("files"), repos, FILES_LIMIT),
            r.text("files_digest", _SHA256), (), tuple(lfs), key or own + "manifest.json",
        )  # fmt: skip
        if not linked:
            if not refs.key.startswith(own):
                raise r.bad("refs", "names a file outside its own backup")
            chain = tuple(Link.read(r, item, repos, linked=False) for item in r.items("chain"))
            return replace(
                m, parent=r.opt_text("parent", _ID),
                tips=tuple(_oids(r, r.items("tips"), "tips")), chain=chain,
                version=1 if r.body["format"] == MANIFEST_FORMAT else 2,
                refs_chain=(refs,), resolved=True,
            )  # fmt: skip
        raw_base, raw_link = r.body.get("base"), r.body.get("link")
        base = None
        if raw_base is not None:
            base = FileRef.read(r, raw_base, f"hosts/{host}/repos/", MANIFEST_LIMIT)
            if not base.key.endswith("/manifest.json"):
                raise r.bad("base", "names a file that is not a manifest")
        link = None if raw_link is None else Link.read(r, raw_link, repos, linked=True)
        delta = r.body.get("refs_delta")
        if not isinstance(delta, bool):
            raise r.bad("refs_delta", "is not true or false")
        added = tuple(_oids(r, r.items("tips_added"), "tips_added"))
        removed = tuple(_oids(r, r.items("tips_removed"), "tips_removed"))
        if base is None and (delta or removed or (link is not None and not link.full)):
            raise r.bad("base", "is missing where the backup builds on a parent")
        return replace(
            m, parent=base.key.rsplit("/", 2)[1] if base else None,
            version=4 if r.parted else 3, base=base,
            link=link, refs_delta=delta, tips_added=added, tips_removed=removed,
        )  # fmt: skip


def _oids(r: _Reader, values: list[Any], name: str) -> list[str]:
    if not all(isinstance(v, str) and _HEX.match(v) for v in values):
        raise r.bad(name, "holds a malformed object id")
    return values


@dataclass(frozen=True)
class Entry:
    """One repository in a snapshot."""

    repository: str
    root: str
    manifest: str  # the key of its RepoManifest

    @property
    def backup_id(self) -> str:
        return self.manifest.rsplit("/", 2)[1]


@dataclass(frozen=True)
class Snapshot:
    host: str
    snapshot_id: str
    created: str  # ISO-8601 UTC, when the run started
    finished: str
    entries: tuple[Entry, ...]
    failed: dict[str, str] = field(default_factory=dict)  # repository -> error
    # the writing machine's own count of its snapshots, and its id (see backup/lineage.py);
    # 0 and "" in snapshots written before custode recorded them
    seq: int = 0
    machine: str = ""

    @property
    def key(self) -> str:
        return snapshot_key(self.host, self.snapshot_id)

    @property
    def time(self) -> datetime:
        return datetime.fromisoformat(self.created)

    def to_bytes(self) -> bytes:
        roots = sorted({e.root for e in self.entries})
        index = {root: n for n, root in enumerate(roots)}
        return _seal({
            "format": SNAPSHOT_FORMAT, "host": self.host, "snapshot_id": self.snapshot_id,
            "created": self.created, "finished": self.finished, "failed": self.failed,
            "roots": roots,
            # [path relative to its root, index in roots, backup id]: ~60 bytes a repository
            "repositories": [[e.repository, index[e.root], e.backup_id] for e in self.entries],
        } | ({"seq": self.seq, "machine": self.machine} if self.seq else {}))  # fmt: skip

    @classmethod
    def from_bytes(cls, data: bytes, key: str) -> Snapshot:
        what = f"snapshot {key}"
        r = _Reader(_open(data, what, SNAPSHOT_FORMAT), what)
        host, sid = r.text("host", _HOST), r.text("snapshot_id", _ID)
        if key and key != snapshot_key(host, sid):
            raise IntegrityError(f"{what} describes {snapshot_key(host, sid)}; it was moved")
        created = r.text("created")
        try:
            aware = datetime.fromisoformat(created).tzinfo is not None
        except ValueError:
            raise r.bad("created", "is not a time") from None
        if not aware:  # custode writes UTC; a naive time cannot be ordered against others
            raise r.bad("created", "is a time without a UTC offset")
        roots = r.items("roots")
        if not all(isinstance(root, str) for root in roots):
            raise r.bad("roots", "holds a non-string")
        entries = []
        for item in r.items("repositories"):
            ok = isinstance(item, list) and len(item) == 3
            repository, at, backup_id = item if ok else ("", -1, "")
            if not (
                isinstance(repository, str) and repository and "\0" not in repository
                and isinstance(at, int) and not isinstance(at, bool) and 0 <= at < len(roots)
                and isinstance(backup_id, str) and _ID.match(backup_id)
            ):  # fmt: skip
                raise r.bad("repositories", f"holds a malformed entry {str(item)[:80]!r}")
            manifest = backup_prefix(host, repository, backup_id) + "manifest.json"
            entries.append(Entry(repository, roots[at], manifest))
        failed = r.body.get("failed", {})
        if not isinstance(failed, dict) or not all(isinstance(v, str) for v in failed.values()):
            raise r.bad("failed", "is not an object of messages")
        seq = r.num("seq") if "seq" in r.body else 0
        if seq >= 1 << 53:
            raise r.bad("seq", "is out of range")
        machine = r.text("machine", _MACHINE) if seq else ""
        return cls(host, sid, created, r.text("finished"), tuple(entries),
                   {str(k): str(v) for k, v in failed.items()}, seq, machine)  # fmt: skip


def read_snapshot(store: Store, key: str) -> Snapshot:
    """The snapshot at ``key``, read within the bounds of ``records``."""
    return Snapshot.from_bytes(store.get_bytes(key, SNAPSHOT_LIMIT), key)
