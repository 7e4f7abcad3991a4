"""Large stored files as parts (``backup/parts.py``, manifest format 4): a parted bundle
restores exactly, decrypted by a pool of processes; verify, forget + prune and the
disaster-recovery script see every part; a missing or damaged part, the wrong identity
and a killed worker give one clear error and leave nothing; a format 3 store still
restores. The threshold and part size are lowered so the fixtures stay small."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from custode.backup import parts
from custode.backup.catalog import load
from custode.backup.chain import read_manifest
from custode.backup.crypto import generate_identity, load_identity, parse_recipient
from custode.backup.engine import (
    BackupSettings,
    backup_repository,
    manifests_by_repo,
    write_snapshot,
)
from custode.backup.manifest import (
    FileRef,
    RepoManifest,
    canonical,
    part_key,
    parts_digest,
    repo_prefix,
)
from custode.backup.prune import forget
from custode.backup.restore import restore_repository
from custode.backup.retention import Policy
from custode.backup.store import LocalStore, Store
from custode.backup.verify import verify
from custode.errors import IntegrityError, StateError
from custode.git.runner import Git
from fixtures.builders import fast_import, git_env, history_stream, run_git
from fixtures.paths import PROJECT
from fixtures.s3server import S3Server

GIT = Git()
PART = 3001  # plaintext bytes a part: odd, so parts and the bundle header fall anywhere


@pytest.fixture
def small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parts, "THRESHOLD", 2 * PART)
    monkeypatch.setattr(parts, "PART_BYTES", PART)


def _state(repo: Path) -> str:
    refs = run_git(repo, "for-each-ref", "--format=%(objectname) %(refname)")
    return refs + (repo / "HEAD").read_text()


class Repo:
    """One bare repository backed up with the engine, as ``custode backup`` does."""

    def __init__(self, tmp_path: Path, store: Store | None = None) -> None:
        self.tmp = tmp_path
        self.repo = tmp_path / "repo.git"
        self.store = store or LocalStore(tmp_path / "store")
        run_git(None, "init", "-q", "--bare", self.repo)
        fast_import(self.repo, history_stream("refs/heads/main", 12))
        fast_import(self.repo, history_stream("refs/heads/topic", 6, start=50,
                                              parent="refs/heads/main^0"))  # fmt: skip
        self.key = tmp_path / "id.txt"
        pub = generate_identity(self.key)
        self.identity = load_identity(self.key)
        self.settings = BackupSettings("h", [parse_recipient(pub)], tmp_path / "scratch")
        self.settings.scratch.mkdir()
        self.serial, self.states = 100, {}

    def commit(self, n: int = 3) -> None:
        fast_import(self.repo, history_stream("refs/heads/main", n, start=self.serial,
                                              parent="refs/heads/main^0"))  # fmt: skip
        self.serial += n

    def backup(self, *, full: bool = False) -> RepoManifest:
        manifests = manifests_by_repo(self.store, "h").get(repo_prefix("h", "repo.git"), [])
        result = backup_repository(self.store, GIT, replace(self.settings, full=full),
                                   repository="repo.git", root=str(self.tmp),
                                   git_dir=self.repo, bare=True, object_format="sha1",
                                   manifests=manifests)  # fmt: skip
        assert result.outcome == "new", result.message
        assert write_snapshot(self.store, "h", datetime.now(UTC), [result]) is not None
        self.states[result.manifest_key] = _state(self.repo)
        return read_manifest(self.store, result.manifest_key)

    def restore(self, m: RepoManifest, name: str, identity: object = None) -> Path:
        dest = self.tmp / "out" / name
        restore_repository(self.store, m, [identity or self.identity], GIT, dest)
        return dest

    def restores_exactly(self, m: RepoManifest, name: str) -> Path:
        dest = self.restore(m, name)
        assert _state(dest) == self.states[m.manifest_key]
        run_git(dest, "fsck", "--strict")
        return dest

    def left(self) -> list[str]:
        out = self.tmp / "out"
        return sorted(p.name for p in out.iterdir()) if out.exists() else []

    def check(self, level: str) -> dict[str, str]:
        report = verify(self.store, load(self.store, "h"), level, git=GIT,
                        identities=[self.identity], scratch=self.tmp)  # fmt: skip
        return {p.key: p.message for p in report.problems} | {
            d.repository: d.message for d in report.drills if not d.ok
        }


def _pack(git_dir: Path) -> bytes:
    (pack,) = (git_dir / "objects" / "pack").glob("*.pack")
    return pack.read_bytes()


def test_a_large_bundle_is_stored_as_parts_and_restores_exactly(
    tmp_path: Path, small_parts: None
) -> None:
    r = Repo(tmp_path)
    m = r.backup()
    raw = json.loads(r.store.get_bytes(m.manifest_key))
    assert raw["format"] == "custode-backup/4"
    bundle = m.chain[0].bundle
    assert len(bundle.parts) >= 3 and bundle.part_bytes == PART
    assert bundle.size == sum(p.size for p in bundle.parts)
    assert r.store.size(bundle.key) is None  # nothing at the whole's key
    assert all(r.store.size(p.key) == p.size for p in bundle.parts)
    assert m.chain[0].header_bytes > 0
    dest = r.restores_exactly(m, "first")
    if m.chain[0].method == "copy":  # the pack as it was, byte for byte
        assert _pack(dest) == _pack(r.repo)
    assert r.check("quick") == {} and r.check("full") == {} and r.check("drill") == {}


def test_a_missing_or_damaged_part_is_named_and_restore_leaves_nothing(
    tmp_path: Path, small_parts: None
) -> None:
    r = Repo(tmp_path)
    m = r.backup()
    second = m.chain[0].bundle.parts[1]
    path = Path(r.store.locate(second.key))
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size: only reading finds it
    assert r.check("quick") == {}
    found = r.check("full")
    assert second.key in found and "damaged" in found[second.key]
    with pytest.raises(IntegrityError, match=f"stored file {second.key} is damaged"):
        r.restore(m, "damaged")
    assert r.left() == []
    path.unlink()
    found = r.check("quick")
    assert set(found) == {second.key} and "missing" in found[second.key]
    with pytest.raises(StateError, match=second.key):
        r.restore(m, "missing")
    assert r.left() == []


def test_the_wrong_identity_is_told_and_restore_leaves_nothing(
    tmp_path: Path, small_parts: None
) -> None:
    r = Repo(tmp_path)
    m = r.backup()
    generate_identity(tmp_path / "other.txt")
    other = load_identity(tmp_path / "other.txt")
    with pytest.raises(IntegrityError, match="intact but not encrypted to this identity"):
        r.restore(m, "wrong", other)
    assert r.left() == []


def test_a_killed_worker_is_a_clear_error_and_the_next_file_gets_a_new_pool(
    tmp_path: Path, small_parts: None
) -> None:
    with pytest.raises(StateError, match=r"stopped \(killed, or out of memory\)"):
        list(parts._run(os._exit, [3], "hosts/h/x/bundle.age"))
    r = Repo(tmp_path)
    r.restores_exactly(r.backup(), "after")


def test_an_s3_store_takes_and_gives_back_parts_through_the_calling_process(
    tmp_path: Path, small_parts: None, s3_env: S3Server, s3_bucket: str
) -> None:
    from custode.backup.s3store import S3Store

    r = Repo(tmp_path, S3Store(f"s3://{s3_bucket}/pre", endpoint_url=s3_env.endpoint))
    m = r.backup()
    bundle = m.chain[0].bundle
    assert len(bundle.parts) >= 3 and r.store.size(bundle.key) is None
    r.restores_exactly(m, "s3")
    assert r.check("full") == {}
    r.store.delete(bundle.parts[-1].key)
    with pytest.raises(StateError, match=bundle.parts[-1].key):
        r.restore(m, "missing")
    assert r.left() == ["s3"]


def test_a_full_disk_in_a_worker_reaches_the_restore_as_one(
    tmp_path: Path, small_parts: None
) -> None:
    """A worker's ENOSPC comes back with its errno (``restore_repository`` turns it into
    "disk full ..., nothing was left there")."""
    r = Repo(tmp_path)
    bundle = r.backup().chain[0].bundle
    with pytest.raises(OSError) as caught:
        parts.decrypt_parts(r.store, bundle, Path("/dev/full"), [r.identity])
    assert caught.value.errno == errno.ENOSPC


def test_forget_and_prune_keep_every_part_a_kept_snapshot_needs(
    tmp_path: Path, small_parts: None
) -> None:
    r = Repo(tmp_path)
    old = r.backup()
    r.commit()
    new = r.backup(full=True)
    r.commit()
    last = r.backup()  # an incremental on the parted full one
    old_parts = {p.key for p in old.chain[0].bundle.parts}
    new_parts = {p.key for p in new.chain[0].bundle.parts}
    assert old_parts and new_parts and not old_parts & new_parts
    forget(r.store, "h", Policy(last=2), do_prune=True)
    stored = set(r.store.list("hosts/h/"))
    assert not old_parts & stored
    assert new_parts <= stored
    r.restores_exactly(new, "new")
    r.restores_exactly(last, "last")
    assert r.check("full") == {}


def test_a_format_3_store_still_restores_and_takes_parted_backups_on_top(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = Repo(tmp_path)
    first = r.backup()  # the threshold as shipped: far above this bundle
    raw = json.loads(r.store.get_bytes(first.manifest_key))
    assert raw["format"] == "custode-backup/3" and first.version == 3
    assert not first.chain[0].bundle.parts
    monkeypatch.setattr(parts, "THRESHOLD", 2 * PART)
    monkeypatch.setattr(parts, "PART_BYTES", PART)
    r.commit(40)
    second = r.backup()  # an incremental on the format 3 chain, parted
    assert second.version == 4 and second.chain[1].bundle.parts
    r.restores_exactly(first, "first")
    r.restores_exactly(second, "second")
    assert r.check("full") == {}


def test_the_disaster_recovery_script_restores_a_parted_backup_with_age(
    tmp_path: Path, small_parts: None
) -> None:
    r = Repo(tmp_path)
    r.backup()
    r.commit(1)
    m = r.backup()  # a parted bundle, then a whole one
    assert [bool(link.bundle.parts) for link in m.chain] == [True, False]
    out = tmp_path / "recovered.git"
    script = (PROJECT / "docs" / "disaster-recovery.sh").read_text()
    proc = subprocess.run(
        ["sh", "-c", script, "sh", str(r.store.root), "repo.git", str(r.key), str(out)],
        capture_output=True, text=True, timeout=120, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    fsck = subprocess.run(["git", "--git-dir", str(out), "fsck", "--strict"],
                          capture_output=True, text=True, env=git_env(), check=False)  # fmt: skip
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert _state(out) == r.states[m.manifest_key]


def test_a_manifest_naming_parts_is_checked_field_by_field(tmp_path: Path) -> None:
    """Parts must be named as their file's, add up to its size and checksum, and appear
    only in format 4; a format 4 manifest is refused by a reader of format 3 only."""
    r = Repo(tmp_path)
    m = r.backup()
    whole = m.refs
    pieces = tuple(FileRef(part_key(whole.key, "0a1b2c3d", n), 10, f"{n:064x}")
                   for n in (1, 2))  # fmt: skip
    parted = replace(whole, size=20, sha256=parts_digest(pieces), parts=pieces, part_bytes=5)
    good = replace(m, refs=parted)
    back = RepoManifest.from_bytes(good.to_bytes(), m.manifest_key)
    assert back.version == 4 and back.refs == parted
    assert [f.key for f in back.refs.stored()] == [p.key for p in pieces]
    body = json.loads(good.to_bytes())
    body.pop("checksum")

    def refused(change: dict, match: str) -> None:
        changed = body | change
        changed["checksum"] = hashlib.sha256(canonical(changed)).hexdigest()
        with pytest.raises(IntegrityError, match=match):
            RepoManifest.from_bytes(canonical(changed) + b"\n", m.manifest_key)

    swapped = dict(body["refs"], parts=list(reversed(body["refs"]["parts"])))
    refused({"refs": swapped}, "as part 1")
    short = dict(body["refs"], size=19)
    refused({"refs": short}, "do not add up")
    refused({"format": "custode-backup/3"}, "format without parts")
    one = dict(body["refs"], parts=body["refs"]["parts"][:1])
    refused({"refs": one}, "2 to")
