"""Every file of a backup store is hostile input (issue 12, "Backup stores").

A FIFO, a symlink to /dev/zero, a directory, a huge (sparse) file, JSON nested 200,000
deep, a number of 5,000 digits, a value of the wrong type or out of its range, invalid
JSON or UTF-8 — in place of a snapshot, a manifest, the refs or a bundle (and a lock):
each command that reads the file says so in one line naming it, exits non-zero, within
a bound (every command runs under ``timeout 60`` and a 1 GiB address-space limit, so a
hang or a read into memory fails the test instead of freezing or swamping the machine),
and the other snapshots stay usable (listed, restored).

The store is made by the real ``custode backup`` of two repositories, twice: the second
backup of ``a.git`` (new commits: its own bundle, index, refs and manifest) is the one
damaged, so the first snapshot needs none of it; a damaged snapshot file is the first.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyrage  # type: ignore[import-untyped]
import pytest

from custode.backup.catalog import load
from custode.backup.chain import read_manifest
from custode.backup.crypto import generate_identity, parse_recipient
from custode.backup.manifest import (
    RepoManifest,
    Snapshot,
    canonical,
    new_id,
    repo_prefix,
)
from custode.backup.records import MAX_DEPTH, load_json
from custode.backup.store import LocalStore, StoreFileError
from custode.errors import IntegrityError
from fixtures.builders import fast_import, history_stream, run_git
from fixtures.cli import CliResult
from fixtures.s3server import S3Server
from fixtures.system import need

pytestmark = pytest.mark.integration
Run = Callable[..., CliResult]
BOUND = 60  # seconds a command may take on a busy machine before it counts as a hang
MEMORY = 1 << 30  # address space each command may use: a read into memory fails
SPARSE_RECORD = 4 << 30  # a huge snapshot or manifest: larger than MEMORY
SPARSE_DATA = 1 << 40  # a huge .age file: streaming it would take far longer than BOUND
# what a line says beside the name: the diagnosis, or the fix of the store file itself
FIX = ("damaged", "replace it with a good copy, or delete it")


# --------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class Template:
    root: Path
    store: Path
    identity: Path
    recipient: str
    host: str
    first: str  # snapshot ids, oldest first
    second: str
    a_first: str  # a.git's refs at each backup
    a_second: str
    b_state: str


def refs_of(repo: Path) -> str:
    return run_git(repo, "for-each-ref", "--format=%(objectname) %(refname)")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    base = tmp_path_factory.mktemp("hostile-store")
    identity = base / "keys" / "identity.txt"
    pub = generate_identity(identity)
    root, store = base / "root", base / "store"
    for name, commits in (("a.git", 6), ("grp/b.git", 5)):
        run_git(None, "init", "-q", "--bare", root / name)
        fast_import(root / name, history_stream("refs/heads/main", commits, label=name))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "CUSTODE_"))}
    env |= {f"XDG_{n}_HOME": str(base / "xdg" / n.lower()) for n in ("CONFIG", "STATE", "DATA")}
    backup = [sys.executable, "-m", "custode", "backup", str(root), "--store", str(store),
              "--recipient", pub]  # fmt: skip
    subprocess.run(backup, env=env, check=True, capture_output=True, timeout=120)
    a_first = refs_of(root / "a.git")
    stream = history_stream("refs/heads/main", 3, start=100, parent="refs/heads/main^0",
                            label="more")  # fmt: skip
    fast_import(root / "a.git", stream)
    subprocess.run(backup, env=env, check=True, capture_output=True, timeout=120)
    (host,) = [p.name for p in (store / "hosts").iterdir()]
    first, second = sorted(p.stem for p in (store / "hosts" / host / "snapshots").iterdir())
    return Template(root, store, identity, pub, host, first, second, a_first,
                    refs_of(root / "a.git"), refs_of(root / "grp" / "b.git"))  # fmt: skip


@dataclass(frozen=True)
class Copy:
    t: Template
    store: Path
    identity: Path

    def path(self, key: str) -> Path:
        return self.store / key

    def snapshot_key(self, sid: str) -> str:
        return f"hosts/{self.t.host}/snapshots/{sid}.json"

    def newest_manifest(self) -> RepoManifest:
        """a.git's second backup: needed by the second snapshot only."""
        local = LocalStore(self.store, create=False)
        keys = [k for k in local.list(repo_prefix(self.t.host, "a.git"))
                if k.endswith("/manifest.json")]  # fmt: skip
        return read_manifest(local, sorted(keys)[-1])

    def replace(self, key: str, data: bytes) -> None:
        path = self.path(key)
        path.unlink()
        path.write_bytes(data)


@pytest.fixture
def copy(template: Template, tmp_path: Path) -> Copy:
    store = tmp_path / "store"
    shutil.copytree(template.store, store, symlinks=True)
    identity = tmp_path / "keys" / "identity.txt"
    identity.parent.mkdir(mode=0o700)
    shutil.copyfile(template.identity, identity)
    identity.chmod(0o600)
    return Copy(template, store, identity)


def run(custode: Run, *args: str | Path) -> CliResult:
    """The CLI, bounded in time and address space (see the module docstring)."""
    need("prlimit", package="util-linux")
    prefix = ("timeout", "-s", "KILL", str(BOUND), "prlimit", f"--as={MEMORY}")
    return custode(*args, prefix=prefix)


def lines(result: CliResult) -> list[str]:
    """What custode said on stderr: its error lines and its log warnings (JSON lines when
    stderr is not a terminal), one string each."""
    out = []
    for line in result.stderr.splitlines():
        if line.startswith("{"):
            out.append("custode: " + json.loads(line)["message"])
        elif line.strip():
            out.append(line)
    return out


def says_once(result: CliResult, code: int, name: str) -> None:
    """Exit status ``code``, no traceback, and a line naming ``name`` with its fix."""
    said = lines(result)
    assert result.code == code, (result.code, said)
    assert all(line.startswith("custode: ") for line in said), said
    assert not any("internal error" in line for line in said), said
    naming = [line for line in said if name in line]
    assert naming, (name, said)
    assert any(fix in naming[0] for fix in FIX), naming[0]
    assert len(said) <= 3, said  # the line, a summary, at most a warning repeating it


# --------------------------------------------------------------------------- hostile forms


def fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def dev_zero(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


def directory(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "x.json").write_bytes(b"{}")


def huge(size: int) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        with path.open("r+b") as f:
            f.truncate(size)  # sparse: costs no disk

    return make


RAW = {"fifo": fifo, "dev-zero": dev_zero, "directory": directory}
DEEP = b"[" * 200_000 + b"]" * 200_000


def resealed(data: bytes, change: Callable[[dict], None]) -> bytes:
    """A record changed and given a valid checksum again (a forger's work)."""
    body = json.loads(data)
    del body["checksum"]
    change(body)
    body["checksum"] = hashlib.sha256(canonical(body)).hexdigest()
    return canonical(body) + b"\n"


def with_digits(data: bytes) -> bytes:
    return data.replace(b'"format":', b'"n":' + b"9" * 5000 + b',"format":', 1)


def bad_utf8(data: bytes) -> bytes:
    at = data.index(b'"host":"') + len(b'"host":"')
    return data[:at] + b"\xff\xfe" + data[at:]


# --------------------------------------------------------------------------- snapshots


SNAPSHOT_FORMS = [*RAW, "huge", "deep", "digits", "types", "invalid", "utf8"]


def damage_record(copy: Copy, key: str, form: str, types: Callable[[dict], None]) -> None:
    path = copy.path(key)
    data = path.read_bytes()
    if form in RAW:
        RAW[form](path)
    elif form == "huge":
        huge(SPARSE_RECORD)(path)
    else:
        copy.replace(key, {
            "deep": lambda: DEEP,
            "digits": lambda: with_digits(data),
            "types": lambda: resealed(data, types),
            "invalid": lambda: data[: len(data) // 2],
            "utf8": lambda: bad_utf8(data),
        }[form]())  # fmt: skip


@pytest.mark.parametrize("form", SNAPSHOT_FORMS)
def test_a_hostile_snapshot_is_named_and_the_other_snapshot_restores(
    custode: Run, copy: Copy, tmp_path: Path, form: str
) -> None:
    t = copy.t
    key = copy.snapshot_key(t.first)

    def wrong_type(body: dict) -> None:
        body["failed"] = {"a.git": {"nested": [1, 2]}}  # messages are strings

    damage_record(copy, key, form, wrong_type)
    store = ("--store", copy.store)
    listed = run(custode, "snapshots", *store)
    says_once(listed, 6, key.rsplit("/", 1)[1])
    assert t.second in listed.stdout and t.first not in listed.stdout.replace(key, "")
    for level in ("quick", "full"):
        result = run(custode, "verify", *store, "--identity", copy.identity, "--level", level)
        says_once(result, 6, key)
    out = tmp_path / "out"
    result = run(custode, "restore", *store, "--identity", copy.identity, "--to", out,
                 "--at", t.first)  # fmt: skip
    says_once(result, 6, key.rsplit("/", 1)[1])
    assert not out.exists() or not any(out.iterdir())
    # the other snapshot: the latest, restored whole
    result = run(custode, "restore", *store, "--identity", copy.identity, "--to", out)
    assert result.code == 0, lines(result)
    assert refs_of(out / "a.git") == t.a_second
    assert refs_of(out / "grp" / "b.git") == t.b_state


def test_a_newer_snapshot_that_cannot_be_read_is_never_passed_over_for_the_latest(
    custode: Run, copy: Copy, tmp_path: Path
) -> None:
    """Restoring "the latest" while the newest snapshot is a FIFO would silently give the
    data of the one before: refused, naming it; the older one restores when named."""
    t = copy.t
    fifo(copy.path(copy.snapshot_key(t.second)))
    out = tmp_path / "out"
    store = ("--store", copy.store, "--identity", copy.identity, "--to", out)
    result = run(custode, "restore", *store)
    said = lines(result)
    assert result.code == 6, said
    assert f"custode: the latest snapshot {t.second} cannot be read" in said[-1]
    assert "restore an older one by naming it with --at" in said[-1]
    assert not out.exists() or not any(out.iterdir())
    result = run(custode, "restore", *store, "--at", t.first)
    assert result.code == 0, lines(result)
    assert refs_of(out / "a.git") == t.a_first


# --------------------------------------------------------------------------- manifests, refs, bundles


MANIFEST_FORMS = [*RAW, "huge", "deep", "digits", "range"]
REFS_FORMS = [*RAW, "huge", "deep", "digits", "types", "invalid", "utf8"]
BUNDLE_FORMS = [*RAW, "huge"]
CASES = (
    [("manifest", f) for f in MANIFEST_FORMS]
    + [("refs", f) for f in REFS_FORMS]
    + [("bundle", f) for f in BUNDLE_FORMS]
)


def forge_refs(copy: Copy, m: RepoManifest, plaintext: bytes) -> None:
    """refs.age replaced by a valid age file of ``plaintext`` (anyone with the public key
    can make one) and the manifest re-sealed to match: only reading the refs finds it."""
    sealed = pyrage.encrypt(plaintext, [parse_recipient(copy.t.recipient)])
    copy.replace(m.refs.key, sealed)
    ref = dataclasses.replace(m.refs, size=len(sealed), sha256=hashlib.sha256(sealed).hexdigest())
    copy.replace(m.manifest_key, dataclasses.replace(m, refs=ref).to_bytes())


def damage_file(copy: Copy, kind: str, form: str) -> tuple[str, bool]:
    """Damage a.git's second backup; (the key named, whether verify quick can tell)."""
    m = copy.newest_manifest()
    assert m.chain[-1].index is not None  # its own pack: a restore reads its bundle
    key = {"manifest": m.manifest_key, "refs": m.refs.key, "bundle": m.chain[-1].bundle.key}[kind]
    path = copy.path(key)
    data = path.read_bytes()
    if form in RAW:
        RAW[form](path)
    elif form == "huge":
        huge(SPARSE_RECORD if kind == "manifest" else SPARSE_DATA)(path)
    elif kind == "manifest":
        # 20 digits, beyond any file
        last = dict(m.chain[-1].to_json_linked(), header_bytes=10**19)

        def out_of_range(body: dict) -> None:
            body["link"] = last

        copy.replace(key, {
            "deep": lambda: DEEP,
            "digits": lambda: with_digits(data),
            "range": lambda: resealed(data, out_of_range),
        }[form]())  # fmt: skip
    else:  # the refs' plaintext; the file itself is a valid age file of the right size
        good = json.dumps({"head": "ref:refs/heads/main", "refs": {}}).encode()
        forge_refs(copy, m, {
            "deep": DEEP,
            "digits": b'{"head": "", "refs": {}, "n": ' + b"9" * 5000 + b"}",
            "types": b"[]",
            "invalid": good[:-3],
            "utf8": good.replace(b"main", b"ma\xffin"),
        }[form])  # fmt: skip
        return key, False
    return key, True


@pytest.mark.parametrize(("kind", "form"), CASES)
def test_a_hostile_store_file_is_named_and_the_other_snapshot_restores(
    custode: Run, copy: Copy, tmp_path: Path, kind: str, form: str
) -> None:
    t = copy.t
    key, quick_sees_it = damage_file(copy, kind, form)
    store = ("--store", copy.store)
    listed = run(custode, "snapshots", *store)  # reads snapshots only: both listed
    assert listed.code == 0, lines(listed)
    assert t.first in listed.stdout and t.second in listed.stdout
    quick = run(custode, "verify", *store, "--level", "quick")
    if quick_sees_it:
        says_once(quick, 6, key)
    else:  # quick needs no key, so it cannot read what is encrypted
        assert quick.code == 0, lines(quick)
    full = run(custode, "verify", *store, "--identity", copy.identity, "--level", "full")
    says_once(full, 6, key)
    out = tmp_path / "out"
    restore = ("restore", *store, "--identity", copy.identity)
    result = run(custode, *restore, "--to", out)
    says_once(result, 3, key)
    assert next(line for line in lines(result) if key in line).startswith("custode: a.git: ")
    assert not (out / "a.git").exists()
    assert refs_of(out / "grp" / "b.git") == t.b_state
    # the other snapshot, which needs none of the damaged backup
    older = tmp_path / "older"
    result = run(custode, *restore, "--to", older, "--at", t.first)
    assert result.code == 0, lines(result)
    assert refs_of(older / "a.git") == t.a_first
    assert refs_of(older / "grp" / "b.git") == t.b_state


# --------------------------------------------------------------------------- locks


@pytest.mark.parametrize("form", ["deep", "types"])
def test_a_hostile_lock_is_ignored_as_stale_and_the_backup_runs(
    custode: Run, copy: Copy, form: str
) -> None:
    """A lock that cannot be read is no lock (as a stale one): removed, and the backup
    (which reads every lock) runs to its end. (A FIFO or symlink there is not listed as a
    lock at all: ``list`` shows regular files only.)"""
    t = copy.t
    locks = copy.store / "hosts" / t.host / "locks"
    locks.mkdir(mode=0o700, exist_ok=True)
    lock = locks / f"{new_id()}.json"  # a fresh one: not stale by its age
    lock.write_bytes(DEEP if form == "deep" else b"[]")
    result = run(custode, "backup", t.root, "--store", copy.store, "--recipient", t.recipient)
    assert result.code == 0, lines(result)
    assert not lock.exists()
    assert len(list((copy.store / "hosts" / t.host / "snapshots").iterdir())) == 3


# --------------------------------------------------------------------------- the readers


def test_a_fifo_in_the_store_is_refused_at_once_never_waited_on(tmp_path: Path) -> None:
    """Opening a FIFO for reading blocks until a writer comes: the old reader hung here."""
    local = LocalStore(tmp_path / "store")
    local.put_bytes("hosts/h/snapshots/a.json", b"{}")
    os.mkfifo(local.root / "hosts" / "h" / "snapshots" / "b.json")
    failures: list[BaseException] = []

    def read() -> None:
        for call in (lambda: local.get_bytes("hosts/h/snapshots/b.json"),
                     lambda: local.size("hosts/h/snapshots/b.json")):  # fmt: skip
            try:
                call()
            except BaseException as exc:  # collected for the asserts below
                failures.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(BOUND)
    assert not reader.is_alive(), "a read of a FIFO in the store blocked"
    assert [type(e) for e in failures] == [StoreFileError, StoreFileError]
    where = str(local.root / "hosts" / "h" / "snapshots" / "b.json")
    assert str(failures[0]) == (
        f"store file {where} is a FIFO, not a regular file; replace it with a good copy, "
        "or delete it"
    )
    assert failures[0].exit_code == 6
    assert list(local.strays("hosts/h/snapshots/")) == [("hosts/h/snapshots/b.json", "a FIFO")]
    catalog = load(local, "h")
    assert list(catalog.damaged) == ["hosts/h/snapshots/a.json", "hosts/h/snapshots/b.json"]
    assert catalog.damaged["hosts/h/snapshots/b.json"] == str(failures[0])


def test_a_file_larger_than_its_kind_is_refused_by_its_size_before_reading(
    tmp_path: Path,
) -> None:
    local = LocalStore(tmp_path / "store")
    local.put_bytes("k", b"x" * 100)
    assert local.get_bytes("k", 100) == b"x" * 100
    with pytest.raises(StoreFileError) as e:
        local.get_bytes("k", 99)
    assert str(e.value) == (
        f"store file {local.root / 'k'} holds 100 bytes, more than a file of its kind may "
        "(99): it is damaged or forged; replace it with a good copy, or delete it"
    )


@pytest.mark.parametrize(
    "text",
    [
        b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1),
        b'{"a": [' * 100_000 + b"1" + b"]}" * 100_000,
        b"[" * 200_000 + b"}",  # unbalanced: the decoder's own recursion limit
    ],
    ids=["just-too-deep", "200000-deep", "unbalanced"],
)
def test_deep_json_is_refused_before_it_is_parsed(text: bytes) -> None:
    with pytest.raises(IntegrityError) as e:
        load_json(text, "snapshot k")
    assert str(e.value) == (
        f"snapshot k nests deeper than {MAX_DEPTH} levels, which no record does; the file "
        "is damaged or forged"
    )
    inside = b'["' + b"[" * 40 + b'\\\\", "\\"{"]'  # brackets in a string do not count
    assert load_json(inside, "k") == ["[" * 40 + "\\", '"{']
    nested = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert load_json(nested, "k") == json.loads(nested)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (b'{"n": ' + b"9" * 5000 + b"}", "holds a number of 5000 digits"),
        (b'{"n": -' + b"1" * 21 + b"}", "holds a number of 21 digits"),
        (b'{"n": NaN}', "holds NaN, which is not JSON"),
        (b'{"n": -Infinity}', "holds -Infinity, which is not JSON"),
    ],
)
def test_absurd_numbers_are_refused(text: bytes, why: str) -> None:
    with pytest.raises(IntegrityError) as e:
        load_json(text, "manifest k")
    assert str(e.value) == f"manifest k {why}; the file is damaged or forged"


def test_an_s3_object_larger_than_its_kind_is_refused_unread(
    s3_env: S3Server, s3_bucket: str
) -> None:
    """The same caps on an S3 store, by the object's Content-Length; a deep or absurd
    snapshot there is damaged, and the others are listed."""
    from custode.backup.s3store import S3Store

    s3 = S3Store(f"s3://{s3_bucket}/pre", endpoint_url=s3_env.endpoint)
    s3.put_bytes("k", b"x" * (3 << 20))
    with pytest.raises(StoreFileError) as e:
        s3.get_bytes("k", 1 << 20)
    assert str(e.value).startswith(
        f"store file s3://{s3_bucket}/pre/k holds {3 << 20} bytes, more than a file of its "
        f"kind may ({1 << 20})"
    )
    assert s3.get_bytes("k", 3 << 20) == b"x" * (3 << 20)
    s3.put_bytes("hosts/h/snapshots/20261201T000000000000Z-00000001.json", DEEP)
    s3.put_bytes(
        "hosts/h/snapshots/20261202T000000000000Z-00000002.json", with_digits(b'{"format":1}')
    )
    now = "2026-12-03T00:00:00+00:00"
    good = Snapshot("h", "20261203T000000000000Z-00000003", now, now, ())
    s3.put_bytes(good.key, good.to_bytes())
    catalog = load(s3, "h")
    assert catalog.snapshots == [good]
    assert [why.split(" ", 2)[2][:30] for why in catalog.damaged.values()] == [
        "nests deeper than 16 levels, w",
        "holds a number of 5000 digits;",
    ]


def test_a_lock_whose_pid_another_process_now_has_is_removed_and_prune_runs(
    custode: Run, copy: Copy
) -> None:
    """A killed backup's lock names its pid; on a busy host (pid_max 32,768) that pid soon
    belongs to another process. The lock also says when its process started, so a live
    process under that pid that started at another time does not keep it: the old code
    kept it (refusing every prune) until it was a day old (a CI run under load did)."""
    t = copy.t
    locks = copy.store / "hosts" / t.host / "locks"
    locks.mkdir(mode=0o700, exist_ok=True)
    lock = locks / f"{new_id()}.json"  # a fresh one: not stale by its age
    body = {"format": "custode-lock/1", "exclusive": False, "purpose": "backup",
            "machine": socket.gethostname(), "pid": os.getpid(),  # alive: this test's
            "started": 1_000_000.0, "created": "2026-01-01T00:00:00+00:00"}  # fmt: skip
    lock.write_text(json.dumps(body))
    pruned = run(custode, "forget", "--store", copy.store, "--keep-last", "5", "--prune")
    assert pruned.code == 0, lines(pruned)  # the old code: "store ... is busy: backup on ..."
    assert not lock.exists()
