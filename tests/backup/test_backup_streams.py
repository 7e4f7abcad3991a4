"""Reading a stored file back (streams.decrypt_to): checked on the way, written in large
pieces from a thread of its own, flushed to disk as it comes, memory flat."""

import errno
import hashlib
import io
import os
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from custode.backup import streams
from custode.backup.crypto import Identity, generate_identity, load_identity, parse_recipient
from custode.backup.manifest import FileRef
from custode.backup.store import LocalStore
from custode.backup.streams import decrypt_to, put_file
from custode.errors import IntegrityError

MIB = 1 << 20


@pytest.fixture
def identity(tmp_path: Path) -> Identity:
    path = tmp_path / "keys" / "key.txt"
    generate_identity(path)
    return load_identity(path)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def _stored(store: LocalStore, identity: Identity, tmp_path: Path, data: bytes) -> FileRef:
    src, scratch = tmp_path / "plain.bin", tmp_path / "scratch"
    src.write_bytes(data)
    scratch.mkdir(exist_ok=True)
    recipient = parse_recipient(str(identity.to_public()))
    return put_file(store, "k/plain.age", src, [recipient], scratch)


class _Recording(io.BytesIO):
    """Keeps what it is given and the size of each write."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def write(self, data: object) -> int:
        self.sizes.append(len(data))  # type: ignore[arg-type]
        return super().write(data)  # type: ignore[call-overload, no-any-return]


def test_a_multi_mib_file_comes_back_whole_in_a_few_large_writes(
    store: LocalStore, identity: Identity, tmp_path: Path
) -> None:
    """age hands out 8 KiB at a time; the sink gets 1 MiB pieces (one system call each
    instead of 128), in order."""
    data = os.urandom(5 * MIB + 12345)
    ref = _stored(store, identity, tmp_path, data)
    sink = _Recording()
    decrypt_to(store, ref, sink, [identity])  # type: ignore[arg-type]
    assert hashlib.sha256(sink.getvalue()).digest() == hashlib.sha256(data).digest()
    assert len(sink.sizes) <= 7, sink.sizes[:10]


def test_the_sink_is_written_from_another_thread_and_done_on_return(
    store: LocalStore, identity: Identity, tmp_path: Path
) -> None:
    """Writing overlaps decrypting (which holds the GIL); every write is over on return."""
    data = os.urandom(3 * MIB)
    ref = _stored(store, identity, tmp_path, data)
    threads: set[str] = set()

    class Sink(io.BytesIO):
        def write(self, piece: object) -> int:
            threads.add(threading.current_thread().name)
            return super().write(piece)  # type: ignore[call-overload, no-any-return]

    sink = Sink()
    decrypt_to(store, ref, sink, [identity])  # type: ignore[arg-type]
    assert sink.getvalue() == data
    assert threading.current_thread().name not in threads
    assert not [t for t in threading.enumerate() if t.name.startswith("custode-")]


def test_an_error_of_the_sink_is_raised_as_it_is_not_blamed_on_the_key(
    store: LocalStore, identity: Identity, tmp_path: Path
) -> None:
    ref = _stored(store, identity, tmp_path, os.urandom(4 * MIB))

    class Picky:
        def write(self, data: bytes) -> int:
            raise IntegrityError("the decrypted file is not a git bundle")

    with pytest.raises(IntegrityError, match="not a git bundle"):
        decrypt_to(store, ref, Picky(), [identity])  # type: ignore[arg-type]


def test_a_full_disk_stops_the_stream_with_its_own_error(
    store: LocalStore, identity: Identity, tmp_path: Path
) -> None:
    ref = _stored(store, identity, tmp_path, os.urandom(6 * MIB))
    writes = []

    class Full:
        def write(self, data: bytes) -> int:
            writes.append(len(data))
            if len(writes) > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return len(data)

    with pytest.raises(OSError, match="No space") as caught:
        decrypt_to(store, ref, Full(), [identity])  # type: ignore[arg-type]
    assert caught.value.errno == errno.ENOSPC
    assert len(writes) == 2  # nothing more is written after the error


def test_a_sink_that_takes_part_of_a_piece_gets_the_rest(
    store: LocalStore, identity: Identity, tmp_path: Path
) -> None:
    data = os.urandom(2 * MIB + 5)
    ref = _stored(store, identity, tmp_path, data)
    got = bytearray()

    class Short:  # a raw file may write less than it is given
        def write(self, piece: bytes) -> int:
            take = max(1, len(piece) // 3)
            got.extend(piece[:take])
            return take

    decrypt_to(store, ref, Short(), [identity])  # type: ignore[arg-type]
    assert bytes(got) == data


def test_a_stored_file_bigger_than_recorded_is_stopped_early(
    store: LocalStore, identity: Identity, tmp_path: Path
) -> None:
    """An endless file in a stored file's place: refused after the recorded size, the
    rest never read."""
    ref = _stored(store, identity, tmp_path, os.urandom(2 * MIB))
    sent = [0]

    class Endless:
        url = "endless://"

        def get(self, key: str, dst: BinaryIO) -> None:
            with store.root.joinpath(*key.split("/")).open("rb") as f:
                real = f.read()
            while True:  # the real file, then junk for ever
                dst.write(real)
                sent[0] += len(real)
                real = b"\0" * MIB

    with pytest.raises(IntegrityError, match=f"{ref.key} is damaged: it holds more than"):
        decrypt_to(Endless(), ref, io.BytesIO(), [identity])  # type: ignore[arg-type]
    assert sent[0] <= ref.size + MIB


def test_a_damaged_stored_file_is_named(
    store: LocalStore, identity: Identity, tmp_path: Path
) -> None:
    ref = _stored(store, identity, tmp_path, os.urandom(3 * MIB))
    path = store.root / "k" / "plain.age"
    raw = bytearray(path.read_bytes())
    raw[2 * MIB] ^= 1
    path.chmod(0o600)
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match=f"stored file {ref.key} is damaged"):
        decrypt_to(store, ref, io.BytesIO(), [identity])  # type: ignore[arg-type]


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    calls: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(streams.os, "fdatasync", fdatasync)
    monkeypatch.setattr(streams, "_FLUSH_EVERY", 2 * MIB)
    yield calls


def test_the_destination_file_is_flushed_to_disk_as_it_comes(
    store: LocalStore, identity: Identity, tmp_path: Path, syncs: list[int]
) -> None:
    """So the fsync before the rename has only the last MiB left to wait for."""
    data = os.urandom(9 * MIB)
    ref = _stored(store, identity, tmp_path, data)
    out_path = tmp_path / "out.bin"
    with out_path.open("wb") as out:
        decrypt_to(store, ref, out, [identity], flush=out.fileno())
        fd = out.fileno()
    assert out_path.read_bytes() == data
    assert syncs and set(syncs) == {fd}


def test_a_failed_write_back_is_raised_never_lost(
    store: LocalStore, identity: Identity, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel reports a failed write-back once per open file: were the flushing
    thread to swallow it, the fsync before the rename would say all is well."""

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(streams.os, "fdatasync", failing)
    monkeypatch.setattr(streams, "_FLUSH_EVERY", MIB)
    ref = _stored(store, identity, tmp_path, os.urandom(4 * MIB))
    with (tmp_path / "out.bin").open("wb") as out, pytest.raises(OSError) as caught:
        decrypt_to(store, ref, out, [identity], flush=out.fileno())
    assert caught.value.errno == errno.EIO


def test_memory_stays_flat_whatever_the_size_of_the_file(
    store: LocalStore, identity: Identity, tmp_path: Path
) -> None:
    """No whole-file buffer: a 48 MiB file is read back with a few MiB of Python memory
    (pipe, read buffer and a bounded queue of 1 MiB pieces)."""
    ref = _stored(store, identity, tmp_path, os.urandom(48 * MIB))

    class Null:
        def write(self, data: bytes) -> int:
            return len(data)

    tracemalloc.start()
    try:
        decrypt_to(store, ref, Null(), [identity])  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MIB, peak


class _NoStream:
    """A store that takes files only (as S3 does): put_file stages through scratch."""

    def __init__(self, inner: LocalStore) -> None:
        self.inner = inner

    def put(self, key: str, src: Path) -> None:
        self.inner.put(key, src)


@pytest.mark.parametrize("streamed", [True, False])
def test_an_encrypted_file_is_recorded_as_stored_and_staged_only_when_needed(
    store: LocalStore, identity: Identity, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    streamed: bool,
) -> None:  # fmt: skip
    """Size and SHA-256 are those of the bytes in the store; a store taking a stream gets
    the ciphertext directly (nothing written to scratch), another through scratch."""
    staged: list[Path] = []
    real_open = Path.open

    def watch(path: Path, mode: str = "r", *args: object, **kw: object) -> object:
        if "w" in mode and path.parent.name == "scratch":
            staged.append(path)
        return real_open(path, mode, *args, **kw)  # type: ignore[call-overload]

    monkeypatch.setattr(Path, "open", watch)
    target = store if streamed else _NoStream(store)
    data = os.urandom(3 * MIB)
    src, scratch = tmp_path / "plain.bin", tmp_path / "scratch"
    src.write_bytes(data)
    scratch.mkdir()
    recipient = parse_recipient(str(identity.to_public()))
    ref = put_file(target, "k/plain.age", src, [recipient], scratch)  # type: ignore[arg-type]
    stored = (tmp_path / "store" / "k" / "plain.age").read_bytes()
    assert (ref.size, ref.sha256) == (len(stored), hashlib.sha256(stored).hexdigest())
    assert bool(staged) is not streamed and not list(scratch.iterdir())
    out = io.BytesIO()
    decrypt_to(store, ref, out, [identity])  # type: ignore[arg-type]
    assert out.getvalue() == data


def test_a_write_back_due_when_the_file_is_closed_is_still_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write-back asked for just before ``close`` is done before close returns: the old
    flusher woke to find the stop request too and returned without it, so its error
    (EIO: reported once per open file) could go unseen (a CI run under load did)."""
    synced: list[int] = []
    monkeypatch.setattr(streams.os, "fdatasync", synced.append)
    monkeypatch.setattr(streams, "_FLUSH_EVERY", 10)
    for _ in range(20):
        synced.clear()
        flusher = streams.Flusher(7)
        flusher.wrote(10)
        flusher.close()
        assert synced == [7]
    # one running takes the next as well, and nothing is owed once all was synced
    flusher = streams.Flusher(7)
    flusher.close()
    assert synced == [7]
