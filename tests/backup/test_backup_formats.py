"""Store formats: manifests of format 3 link to their parent; stores written in formats 1
and 2 (every manifest listing its whole chain and every tip) still restore, verify, take
new backups on top and survive forget + prune."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from custode.backup.catalog import load
from custode.backup.chain import Manifests, read_manifest
from custode.backup.crypto import generate_identity, load_identity, parse_recipient
from custode.backup.engine import (
    BackupSettings,
    backup_repository,
    manifests_by_repo,
    write_snapshot,
)
from custode.backup.manifest import (
    FileRef,
    Link,
    RepoManifest,
    backup_prefix,
    canonical,
    repo_key,
    repo_prefix,
)
from custode.backup.prune import forget
from custode.backup.refscache import RefsCache
from custode.backup.restore import restore_repository
from custode.backup.retention import Policy
from custode.backup.store import LocalStore
from custode.backup.verify import verify
from custode.errors import IntegrityError
from custode.git.runner import Git
from fixtures.builders import fast_import, history_stream, run_git

GIT = Git()


def _sealed(body: dict) -> bytes:
    body = dict(body)
    body["checksum"] = hashlib.sha256(canonical(body)).hexdigest()
    return canonical(body) + b"\n"


def as_format_1(m: RepoManifest) -> bytes:
    """``m`` (resolved) written as custode wrote manifests before format 3: the whole
    chain and every tip in each (``/2`` when the chain records shallow commits)."""
    shallow = any(link.shallow for link in m.chain)
    return _sealed({
        "format": "custode-backup/2" if shallow else "custode-backup/1",
        "host": m.host, "repository": m.repository, "backup_id": m.backup_id,
        "created": m.created, "parent": m.parent, "object_format": m.object_format,
        "bare": m.bare, "tips": list(m.tips), "refs_digest": m.refs_digest,
        "refs_count": m.refs_count, "refs": m.refs.to_json(), "files": m.files.to_json(),
        "files_digest": m.files_digest, "chain": [link.to_json() for link in m.chain],
        "lfs": [ref.to_json() for ref in m.lfs],
    })  # fmt: skip


def _state(repo: Path) -> str:
    refs = run_git(repo, "for-each-ref", "--format=%(objectname) %(refname)")
    return refs + (repo / "HEAD").read_text()


class Fleet:
    def __init__(self, tmp_path: Path, *, cache: bool) -> None:
        self.repo, self.store = tmp_path / "repo.git", LocalStore(tmp_path / "store")
        run_git(None, "init", "-q", "--bare", self.repo)
        fast_import(self.repo, history_stream("refs/heads/main", 3))
        fast_import(self.repo, history_stream("refs/heads/topic", 2, start=50,
                                              parent="refs/heads/main^0"))  # fmt: skip
        key = tmp_path / "id.txt"
        pub = generate_identity(key)
        self.identity = load_identity(key)
        refs = RefsCache(tmp_path / "state", "file:///store", "h") if cache else None
        self.settings = BackupSettings("h", [parse_recipient(pub)], tmp_path / "scratch",
                                       refs_cache=refs)  # fmt: skip
        self.settings.scratch.mkdir()
        self.tmp, self.serial, self.states = tmp_path, 100, {}

    def commit(self, branch: str = "main", n: int = 1) -> None:
        fast_import(self.repo, history_stream(f"refs/heads/{branch}", n, start=self.serial,
                                              parent=f"refs/heads/{branch}^0"))  # fmt: skip
        self.serial += n

    def backup(self) -> str:
        manifests = manifests_by_repo(self.store, "h").get(repo_prefix("h", "repo.git"), [])
        result = backup_repository(self.store, GIT, self.settings, repository="repo.git",
                                   root=str(self.tmp), git_dir=self.repo, bare=True,
                                   object_format="sha1", manifests=manifests)  # fmt: skip
        assert result.outcome in ("new", "unchanged"), result.message
        assert write_snapshot(self.store, "h", datetime.now(UTC), [result]) is not None
        self.states[result.manifest_key] = _state(self.repo)
        return result.manifest_key

    def restores_exactly(self, key: str, name: str) -> None:
        dest = self.tmp / "out" / name
        restore_repository(self.store, read_manifest(self.store, key), [self.identity], GIT, dest)
        assert _state(dest) == self.states[key]
        run_git(dest, "fsck", "--strict")


def test_a_format_3_manifest_is_one_link_pinned_to_its_parent(tmp_path: Path) -> None:
    """Each manifest holds its own link only; its parent is pinned by size and SHA-256;
    one commit on a branch stores a refs delta and a one-ref bundle header."""
    f = Fleet(tmp_path, cache=True)
    first = f.backup()
    for _ in range(4):
        f.commit(n=1)
        last = f.backup()
    raw = json.loads(f.store.get_bytes(last))
    assert raw["format"] == "custode-backup/3" and "chain" not in raw and "tips" not in raw
    assert raw["refs_delta"] is True and raw["tips_added"] and raw["tips_removed"]
    assert raw["link"]["full"] is False and len(raw["link"]["prerequisites"]) == 1
    m = read_manifest(f.store, last)
    assert [link.full for link in m.chain] == [True, False, False, False, False]
    assert len(m.ancestors) == 4 and m.ancestors[0].key == first
    sizes = [len(f.store.get_bytes(k)) for k in sorted(f.states)]
    assert max(sizes[1:]) - min(sizes[1:]) < 64  # does not grow with the chain
    f.restores_exactly(last, "last")
    f.restores_exactly(first, "first")


def test_a_swapped_or_damaged_parent_is_named_against_its_children(tmp_path: Path) -> None:
    f = Fleet(tmp_path, cache=True)
    first = f.backup()
    f.commit()
    second = f.backup()
    path = Path(f.store.locate(first))
    path.write_bytes(path.read_bytes().replace(b'"bare":true', b'"bare":true ', 1))
    with pytest.raises(IntegrityError, match=f"manifest {first}"):
        Manifests(f.store).load(second)
    report = verify(f.store, load(f.store, "h"), "quick", git=GIT, scratch=tmp_path)
    named = {p.key: p for p in report.problems}
    assert set(named) == {first}  # swapped: it reads, but is not what the child pinned
    assert len(named[first].snapshots) == 1
    path.write_bytes(path.read_bytes().replace(b'"bare":true', b'"bare":false', 1))
    report = verify(f.store, load(f.store, "h"), "quick", git=GIT, scratch=tmp_path)
    named = {p.key: p for p in report.problems}
    assert set(named) == {first}  # damaged: named once, with both backups that need it
    assert len(named[first].snapshots) == 2 and "checksum" in named[first].message


def test_a_store_of_format_1_still_restores_verifies_and_takes_new_backups(
    tmp_path: Path,
) -> None:
    """Backups written as formats 1/2 (converted here from what custode writes, since
    their bundles and refs files are the same) restore exactly; a format 3 backup on top
    builds on them; forget + prune keeps what the kept snapshot needs."""
    f = Fleet(tmp_path, cache=False)  # whole refs files, as format 1 stored
    keys = [f.backup()]
    f.commit()
    keys.append(f.backup())
    run_git(f.repo, "update-ref", "-d", "refs/heads/topic")
    f.commit()
    keys.append(f.backup())
    known = Manifests(f.store)
    resolved = [known.load(k) for k in keys]
    for m in resolved:
        path = Path(f.store.locate(m.manifest_key))
        path.unlink()
        path.write_bytes(as_format_1(m))
    for n, key in enumerate(keys):
        m = read_manifest(f.store, key)
        assert m.version == 1 and len(m.chain) == n + 1
        f.restores_exactly(key, f"old-{n}")
    report = verify(f.store, load(f.store, "h"), "full", git=GIT, identities=[f.identity],
                    scratch=tmp_path)  # fmt: skip
    assert report.ok, [p.message for p in report.problems]
    f.settings = replace(f.settings, refs_cache=RefsCache(tmp_path / "st", "s", "h"))
    f.commit("main", 2)
    new = f.backup()
    m = read_manifest(f.store, new)
    assert m.version == 3 and m.base is not None and m.base.key == keys[-1]
    assert len(m.chain) == 4 and not m.refs_delta  # no cached refs yet: stored whole
    f.restores_exactly(new, "on-top")
    forget(f.store, "h", Policy(last=1), do_prune=True)
    f.restores_exactly(new, "after-prune")
    report = verify(f.store, load(f.store, "h"), "full", git=GIT, identities=[f.identity],
                    scratch=tmp_path)  # fmt: skip
    assert report.ok, [p.message for p in report.problems]


def test_format_3_round_trips_and_a_newer_format_is_refused() -> None:
    bid = "20260101T000000000000Z-00000000"
    own = backup_prefix("h", "r.git", bid)
    bundle = FileRef(own + "bundle.age", 20, "0" * 64)
    link = Link(bid, bundle, None, "", 20, 0, (), ("b" * 40,), True, "copy")
    m = RepoManifest("h", "r.git", bid, "2026-01-01T00:00:00+00:00", None, "sha1", True, (),
                     "0" * 64, 1, FileRef(own + "refs.age", 1, "0" * 64), bundle, "0" * 64,
                     (), link=link, tips_added=("a" * 40,))  # fmt: skip
    back = RepoManifest.from_bytes(m.to_bytes(), m.manifest_key)
    assert back.link == link and back.tips_added == ("a" * 40,) and back.base is None
    body = json.loads(m.to_bytes())
    body.pop("checksum")
    body["format"] = "custode-backup/5"
    with pytest.raises(IntegrityError, match="upgrade custode"):
        RepoManifest.from_bytes(_sealed(body), m.manifest_key)
    # a parent claimed with a full link, or a delta without a parent, is refused
    body["format"] = "custode-backup/3"
    body["refs_delta"] = True
    with pytest.raises(IntegrityError, match="base"):
        RepoManifest.from_bytes(_sealed(body), m.manifest_key)
    assert repo_key("r.git") in own
