"""Conformance suite for backup stores: every store kind must pass the `store` tests.

Tests taking `local` exercise LocalStore-only hardening (symlinks, permissions, temp files).
"""

import errno
import io
import multiprocessing
import os
import stat
import threading
from pathlib import Path

import pytest

from custode.backup.store import LocalStore, Store, check_key
from custode.backup.stores import open_store
from custode.errors import ExitCode, PathNotFoundError, StateError, UsageError

STORE_KINDS = ["local", "s3"]


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    if request.param == "s3":  # a fresh bucket on a local moto server (tests/fixtures/s3server.py)
        from custode.backup.s3store import S3Store

        server = request.getfixturevalue("s3_env")
        bucket = request.getfixturevalue("s3_bucket")
        return S3Store(f"s3://{bucket}/backups", endpoint_url=server.endpoint)
    raise AssertionError(request.param)


@pytest.fixture
def local(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


KEY = "hosts/web1/repos/org/a.git/20261126T101500Z-1a2b/pack.age"


# -- round trips ----------------------------------------------------------------------


def test_put_bytes_get_bytes_round_trip(store: Store) -> None:
    store.put_bytes(KEY, b"hello")
    assert store.get_bytes(KEY) == b"hello"
    assert store.size(KEY) == 5
    store.put_bytes("empty", b"")
    assert store.get_bytes("empty") == b""
    assert store.size("empty") == 0


def test_put_file_get_stream_multi_mib(store: Store, tmp_path: Path) -> None:
    data = os.urandom(5 * (1 << 20) + 123)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    store.put(KEY, src)
    out = io.BytesIO()
    store.get(KEY, out)
    assert out.getvalue() == data
    assert store.get_bytes(KEY) == data
    assert store.size(KEY) == len(data)


def test_put_missing_source_file(store: Store, tmp_path: Path) -> None:
    with pytest.raises(PathNotFoundError, match="nope"):
        store.put(KEY, tmp_path / "nope")
    assert store.size(KEY) is None


def test_put_refuses_to_overwrite(store: Store, tmp_path: Path) -> None:
    store.put_bytes(KEY, b"first")
    with pytest.raises(StateError, match="already exists"):
        store.put_bytes(KEY, b"second")
    src = tmp_path / "src"
    src.write_bytes(b"third")
    with pytest.raises(StateError, match="already exists"):
        store.put(KEY, src)
    assert store.get_bytes(KEY) == b"first"


def test_list_by_prefix_sorted(store: Store) -> None:
    keys = ["b/2", "a/x/1", "a.b", "a/y", "a/x/0", "c"]
    for k in keys:
        store.put_bytes(k, k.encode())
    assert list(store.list("")) == sorted(keys)
    assert list(store.list("a/")) == ["a/x/0", "a/x/1", "a/y"]
    assert list(store.list("a/x/")) == ["a/x/0", "a/x/1"]
    assert list(store.list("a")) == ["a.b", "a/x/0", "a/x/1", "a/y"]
    assert list(store.list("a/x/1")) == ["a/x/1"]
    assert list(store.list("zzz/")) == []
    assert list(store.list("c/")) == []


def test_size_and_delete(store: Store) -> None:
    assert store.size(KEY) is None
    store.put_bytes(KEY, b"12345")
    assert store.size(KEY) == 5
    store.delete(KEY)
    assert store.size(KEY) is None
    assert list(store.list("")) == []
    store.delete(KEY)  # missing is fine
    store.delete("never/was/here")
    store.put_bytes(KEY, b"again")  # a deleted key can be written anew
    assert store.get_bytes(KEY) == b"again"


def test_missing_key_errors_name_key_and_store(store: Store) -> None:
    with pytest.raises(StateError, match="not found") as e:
        store.get_bytes("no/such/key")
    assert "no/such/key" in str(e.value)
    assert store.url in str(e.value)
    with pytest.raises(StateError, match="not found"):
        store.get("no/such/key", io.BytesIO())


BAD_KEYS = [
    "",
    "/abs/key",
    "a/../b",
    "..",
    "a/./b",
    "a//b",
    "a/",
    "a\\b",
    "a\0b",
    ".tmp-x",
    "a/.tmp-x/b",
    "x" * 1025,
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_invalid_keys_rejected(store: Store, key: str) -> None:
    with pytest.raises(UsageError, match="invalid store key"):
        check_key(key)
    with pytest.raises(UsageError, match="invalid store key"):
        store.put_bytes(key, b"x")
    with pytest.raises(UsageError, match="invalid store key"):
        store.get_bytes(key)
    with pytest.raises(UsageError, match="invalid store key"):
        store.size(key)
    with pytest.raises(UsageError, match="invalid store key"):
        store.delete(key)


def test_valid_keys_accepted() -> None:
    for key in [KEY, "a", "a.tmp-x", "x" * 1024, ".hidden/ok"]:
        assert check_key(key) == key


def test_list_rejects_escaping_prefix(store: Store) -> None:
    with pytest.raises(UsageError):
        list(store.list("../"))
    with pytest.raises(UsageError):
        list(store.list("/etc/"))


# -- concurrency ----------------------------------------------------------------------


def _race(store: Store, key: str, size: int) -> dict[int, str]:
    """Two threads put different content under one key at once; returns fill -> outcome."""
    barrier = threading.Barrier(2)
    results: dict[int, str] = {}

    def put(fill: int) -> None:
        barrier.wait()
        try:
            store.put_bytes(key, bytes([fill]) * size)
            results[fill] = "ok"
        except StateError as e:
            results[fill] = str(e)

    threads = [threading.Thread(target=put, args=(fill,)) for fill in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_puts_from_threads_one_wins(store: Store) -> None:
    size = 1 << 20
    for round_ in range(10):
        key = f"race/{round_}"
        results = _race(store, key, size)
        assert list(results.values()).count("ok") == 1, results
        assert "already exists" in next(v for v in results.values() if v != "ok")
        winner = next(f for f, v in results.items() if v == "ok")
        assert store.get_bytes(key) == bytes([winner]) * size
    assert list(store.list("race/")) == [f"race/{i}" for i in range(10)]


def _process_put(url: str, key: str, fill: int, start: object, out: object) -> None:
    start.wait()  # type: ignore[attr-defined]
    try:
        open_store(url).put_bytes(key, bytes([fill]) * (1 << 20))
        out.put((fill, "ok"))  # type: ignore[attr-defined]
    except StateError as e:
        out.put((fill, str(e)))  # type: ignore[attr-defined]


def test_concurrent_puts_from_processes_one_wins(store: Store) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_process_put, args=(store.url, KEY, fill, start, out)) for fill in (7, 9)
    ]
    for p in procs:
        p.start()
    start.set()
    results = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert list(results.values()).count("ok") == 1, results
    winner = next(f for f, v in results.items() if v == "ok")
    assert store.get_bytes(KEY) == bytes([winner]) * (1 << 20)
    assert list(store.list("")) == [KEY]


# -- LocalStore: files on disk --------------------------------------------------------


def test_local_layout_and_modes(local: LocalStore) -> None:
    local.put_bytes("a/b/c", b"x")
    assert (local.root / "a" / "b" / "c").read_bytes() == b"x"
    assert (local.root / "a" / "b" / "c").stat().st_mode & 0o777 == 0o600
    assert (local.root / "a").stat().st_mode & 0o777 == 0o700
    assert (local.root / "a" / "b").stat().st_mode & 0o777 == 0o700
    assert local.root.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in (local.root / "a" / "b").iterdir()] == ["c"]  # no temp left


def test_leftover_temp_file_invisible(local: LocalStore) -> None:
    local.put_bytes("a/k", b"x")
    (local.root / "a" / ".tmp-deadbeef").write_bytes(b"partial")
    (local.root / ".tmp-0123").write_bytes(b"partial")
    assert list(local.list("")) == ["a/k"]
    assert list(local.list("a/")) == ["a/k"]


def test_symlinked_directory_refused(local: LocalStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (local.root / "hosts").mkdir()
    (local.root / "hosts" / "evil").symlink_to(outside)
    with pytest.raises(StateError, match="symlink"):
        local.get_bytes("hosts/evil/secret")
    with pytest.raises(StateError, match="symlink"):
        local.size("hosts/evil/secret")
    with pytest.raises(StateError, match="symlink"):
        local.put_bytes("hosts/evil/new", b"x")
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert list(local.list("")) == []
    assert list(local.list("hosts/")) == []
    assert list(local.list("hosts/evil/")) == []


def test_symlinked_file_refused(local: LocalStore, tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"secret")
    (local.root / "link").symlink_to(target)
    with pytest.raises(StateError, match="symlink"):
        local.get_bytes("link")
    with pytest.raises(StateError, match="already exists"):
        local.put_bytes("link", b"x")
    assert target.read_bytes() == b"secret"
    assert list(local.list("")) == []
    local.delete("link")  # removes the link, never its target
    assert target.read_bytes() == b"secret"
    assert not (local.root / "link").is_symlink()


def test_disk_full_leaves_nothing(local: LocalStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(StateError, match="free space") as e:
        local.put_bytes("a/k", b"x" * 1000)
    assert local.url in str(e.value)
    monkeypatch.undo()
    assert list((local.root / "a").iterdir()) == []
    assert local.size("a/k") is None


def test_root_missing_without_create(tmp_path: Path) -> None:
    with pytest.raises(PathNotFoundError, match="does not exist"):
        LocalStore(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()


def test_root_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(PathNotFoundError, match="not a directory"):
        LocalStore(tmp_path / "file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_root_unwritable(tmp_path: Path) -> None:
    root = tmp_path / "ro"
    root.mkdir()
    os.chmod(root, 0o500)
    try:
        with pytest.raises(PathNotFoundError, match="not writable") as e:
            LocalStore(root)
        assert str(root) in str(e.value)
    finally:
        os.chmod(root, 0o700)


# -- open_store -----------------------------------------------------------------------


def test_open_store_plain_path_and_file_url(tmp_path: Path) -> None:
    s = open_store(str(tmp_path / "plain"))
    assert isinstance(s, LocalStore)
    assert s.root == tmp_path / "plain"
    assert (tmp_path / "plain").is_dir()
    u = open_store((tmp_path / "with space").as_uri())
    assert isinstance(u, LocalStore)
    assert u.root == tmp_path / "with space"
    assert open_store(u.url).url == u.url


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("ftp://h/x", "unsupported"),
        ("s3://", "invalid S3 URL"),
        ("s3://bucket/a/../b", "invalid store key"),
        ("s3://bucket/p?x=1", "invalid S3 URL"),
    ],
)
def test_open_store_rejects_other_schemes(url: str, match: str) -> None:
    with pytest.raises(UsageError, match=match) as e:
        open_store(url)
    assert e.value.exit_code == ExitCode.USAGE
