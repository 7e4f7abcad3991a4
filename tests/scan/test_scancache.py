"""The scan cache reuses a state only while nothing it was read from has changed."""

import dataclasses
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from custode.config.model import DiscoveryConfig
from custode.scan import cache as scancache
from custode.scan import fleet as fleet_module
from custode.scan.cache import ScanCache
from custode.scan.discovery import Repository
from custode.scan.fleet import scan
from custode.scan.objectstore import TempFile
from custode.scan.repostate import RepoState
from fixtures.builders import Fleet, run_git

pytestmark = pytest.mark.integration


def _age_tree(top: Path, seconds: float = 60) -> None:
    """Make every file and directory look older than the racy window."""
    when = time.time() - seconds
    for dirpath, dirnames, filenames in os.walk(top):
        for name in filenames + dirnames:
            os.utime(Path(dirpath) / name, (when, when), follow_symlinks=False)
    os.utime(top, (when, when))


class Counting:
    """Counts the repositories that were really read (not taken from the cache)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads: list[str] = []
        real = fleet_module.inspect

        def counting(repo, watch=None):  # type: ignore[no-untyped-def]
            self.reads.append(repo.relative)
            return real(repo, watch)

        monkeypatch.setattr(fleet_module, "inspect", counting)


def _scan(root: Path, cache: Path) -> dict[str, RepoState]:
    result = scan([root], DiscoveryConfig(), cache=cache, workers=1)
    return {s.relative: s for s in result.states}


@pytest.fixture
def small(tmp_path: Path, fleet: Fleet) -> Path:
    root = tmp_path / "root"
    for repo in (fleet.packed, fleet.loose, fleet.many_refs):
        shutil.copytree(repo, root / repo.name, symlinks=True)
    _age_tree(root)
    return root


def test_unchanged_repositories_are_not_read_again(
    small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = Counting(monkeypatch)
    cache = tmp_path / "cache.json"
    first = _scan(small, cache)
    assert sorted(count.reads) == ["loose.git", "many-refs.git", "packed.git"]
    count.reads.clear()
    assert _scan(small, cache) == first
    assert count.reads == []


@pytest.mark.parametrize(
    "change",
    ["update-ref", "new-object", "packed-refs-in-place", "repack", "lock-file", "config"],
)
def test_any_change_is_seen(
    small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    count = Counting(monkeypatch)
    cache = tmp_path / "cache.json"
    before = _scan(small, cache)["many-refs.git"]
    repo = small / "many-refs.git"
    if change == "update-ref":
        head = run_git(repo, "rev-parse", "HEAD").strip()
        run_git(repo, "update-ref", "refs/heads/brand-new", head)
    elif change == "new-object":
        run_git(repo, "hash-object", "-w", "--stdin", input=b"brand new object\n")
    elif change == "packed-refs-in-place":
        with (repo / "packed-refs").open("a") as f:  # not the way git writes it: in place
            f.write("not a ref line\n")
    elif change == "repack":
        run_git(repo, "repack", "-adq")
    elif change == "lock-file":
        (repo / "refs" / "heads" / "x.lock").write_text("")
    elif change == "config":
        with (repo / "config").open("a") as f:
            f.write("[extensions]\n\tobjectformat = sha256\n")
    count.reads.clear()
    after = _scan(small, cache)["many-refs.git"]
    assert count.reads == ["many-refs.git"]
    assert after != before


def test_recently_modified_repositories_are_never_trusted(
    tmp_path: Path, fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change in the same clock tick as a read would not move an mtime (racy git)."""
    # "recent" is an hour here: the test must not depend on the scan reading within the
    # real 2 s of the update-ref on a busy host
    monkeypatch.setattr(scancache, "RACY_NS", 3600 * 10**9)
    root = tmp_path / "root"
    shutil.copytree(fleet.packed, root / "packed.git", symlinks=True)
    head = run_git(root / "packed.git", "rev-parse", "HEAD").strip()
    run_git(root / "packed.git", "update-ref", "refs/heads/just-now", head)  # mtime: now
    count = Counting(monkeypatch)
    cache = tmp_path / "cache.json"
    _scan(root, cache)
    _scan(root, cache)
    assert count.reads == ["packed.git", "packed.git"]


def test_deleted_worktree_is_seen(
    tmp_path: Path, fleet_copy: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worktree lives outside its git directory, yet deleting it invalidates the entry."""
    _age_tree(fleet_copy.root)
    cache = tmp_path / "cache.json"
    before = _scan(fleet_copy.root, cache)["worktrees-main"]
    assert before.prunable_worktrees == 1
    count = Counting(monkeypatch)
    _scan(fleet_copy.root, cache)
    assert count.reads == []
    shutil.rmtree(fleet_copy.worktree_live)
    after = _scan(fleet_copy.root, cache)["worktrees-main"]
    assert "worktrees-main" in count.reads
    assert after.prunable_worktrees == 2


def test_damaged_cache_is_ignored(small: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache.json"
    cache.write_bytes(b"this is not a scan cache")
    assert len(_scan(small, cache)) == 3
    assert len(_scan(small, cache)) == 3  # rewritten, now usable


def test_repositories_gone_from_a_scanned_root_are_forgotten(small: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache.json"
    _scan(small, cache)
    shutil.rmtree(small / "loose.git")
    assert sorted(_scan(small, cache)) == ["many-refs.git", "packed.git"]


def test_cli_rescan_and_cached_runs_agree(custode, small: Path) -> None:  # type: ignore[no-untyped-def]
    first = custode("status", "--json", small).json()["repositories"]
    second = custode("status", "--json", small).json()["repositories"]
    fresh = custode("status", "--json", "--rescan", small).json()["repositories"]
    assert first == second == fresh


@pytest.mark.parametrize("damage", ["zeroed", "zeroed-old-mtime", "nul-filled-old-mtime"])
def test_loose_ref_damaged_in_place_is_not_hidden(  # type: ignore[no-untyped-def]
    custode, small: Path, damage: str
) -> None:
    """A power loss can leave a loose ref empty or full of NULs with the directory's mtime
    untouched (and, as here with ``os.utime``, the file's own): the cache must not hide it."""
    repo = small / "packed.git"
    head = run_git(repo, "rev-parse", "HEAD").strip()
    run_git(repo, "update-ref", "refs/heads/loose-one", head)
    _age_tree(small)
    cached = custode("status", "--json", small).json()["repositories"]
    assert {r["relative"]: r["verdict"] for r in cached}["packed.git"] != "broken"
    ref = repo / "refs" / "heads" / "loose-one"
    st = ref.stat()
    with ref.open("r+b") as f:  # in place: the directory's mtime does not move
        if damage == "nul-filled-old-mtime":
            f.write(b"\0" * st.st_size)
        else:
            f.truncate(0)
    if damage != "zeroed":
        os.utime(ref, ns=(st.st_atime_ns, st.st_mtime_ns))
    status = custode("status", "--json", small).json()["repositories"]
    fresh = custode("status", "--json", "--rescan", small).json()["repositories"]
    assert {r["relative"]: r["verdict"] for r in fresh}["packed.git"] == "broken"
    assert status == fresh


# --------------------------------------------------------------------------- the file as input


def _saved(small: Path, tmp_path: Path) -> tuple[Path, dict]:
    cache = tmp_path / "cache.json"
    _scan(small, cache)
    return cache, json.loads(cache.read_bytes())


def test_the_cache_is_json_that_round_trips_every_field(small: Path, tmp_path: Path) -> None:
    assert scancache._STATE_PLAN is not None  # every RepoState field has a checked form
    cache, doc = _saved(small, tmp_path)
    assert doc["format"] == scancache.FORMAT == 7 and len(doc["entries"]) == 3
    loaded = ScanCache.load(cache).entries
    again = ScanCache.load(cache)
    assert loaded == again.entries and len(loaded) == 3
    # a name that is not UTF-8 (carried as a lone surrogate) comes back as it was
    entry = next(iter(loaded.values()))
    odd = Repository(Path("/srv/caf\udce9"), Path("/srv/caf\udce9/r.git"),
                     Path("/srv/caf\udce9/r.git"), "bare", "r\udce9.git")  # fmt: skip
    strange = dataclasses.replace(entry, repo=odd, state=dataclasses.replace(
        entry.state, relative="r\udce9.git", temp_files=(TempFile("x\udcff.lock", 3, 1.5),)))  # fmt: skip
    ScanCache({"odd": strange}).save(cache)
    assert list(ScanCache.load(cache).entries.values()) == [strange]


def _bad_value(doc: dict) -> None:
    doc["entries"][0][1][doc["fields"].index("loose_objects")] = "many"


def _bad_list(doc: dict) -> None:
    doc["entries"][0][1][doc["fields"].index("alternates")] = [1]


def _bad_mtimes(doc: dict) -> None:
    doc["entries"][0][3] = "abc"


def _bad_kind(doc: dict) -> None:
    doc["entries"][0][0][3] = "anything"


def _other_fields(doc: dict) -> None:
    doc["fields"] = [*doc["fields"], "new_field"]


def _old_format(doc: dict) -> None:
    doc["format"] = 4


def _short_entry(doc: dict) -> None:
    doc["entries"][0] = doc["entries"][0][:3]


@pytest.mark.parametrize(
    "damage",
    [_bad_value, _bad_list, _bad_mtimes, _bad_kind, _other_fields, _old_format, _short_entry],
)
def test_a_cache_with_a_wrong_value_is_ignored_and_rebuilt(
    small: Path, tmp_path: Path, damage: Callable[[dict], None], caplog: pytest.LogCaptureFixture
) -> None:
    cache, doc = _saved(small, tmp_path)
    damage(doc)
    cache.write_text(json.dumps(doc))
    with caplog.at_level(logging.INFO, logger="custode.scan.cache"):
        assert ScanCache.load(cache).entries == {}
    assert f"ignoring scan cache {cache}: " in caplog.text
    assert len(_scan(small, cache)) == 3
    assert len(ScanCache.load(cache).entries) == 3  # rebuilt


@pytest.mark.parametrize(
    "content",
    [b"[" * 200_000, b'{"format": 5, "fields": ' + b"9" * 5000 + b"}", b"\xff\xfe garbage"],
    ids=["nested 200,000 deep", "5,000 digits", "not text"],
)
def test_a_hostile_cache_file_is_ignored(small: Path, tmp_path: Path, content: bytes) -> None:
    cache, _ = _saved(small, tmp_path)
    assert len(ScanCache.load(cache).entries) == 3
    cache.write_bytes(content)
    assert ScanCache.load(cache).entries == {}


def test_a_cache_over_the_size_cap_is_not_read(
    small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache, _ = _saved(small, tmp_path)
    monkeypatch.setattr(scancache, "MAX_BYTES", cache.stat().st_size - 1)
    assert ScanCache.load(cache).entries == {}


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "group-writable"])
def test_a_cache_that_is_not_a_private_file_is_not_read(
    small: Path, tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache, _ = _saved(small, tmp_path)
    if kind == "group-writable":
        cache.chmod(0o660)
    else:
        cache.unlink()
        if kind == "fifo":
            os.mkfifo(cache, 0o600)
        else:
            cache.symlink_to("/dev/zero")
    loaded: list[ScanCache] = []
    reader = threading.Thread(target=lambda: loaded.append(ScanCache.load(cache)), daemon=True)
    with caplog.at_level(logging.WARNING, logger="custode.scan.cache"):
        reader.start()
        reader.join(30)
    assert loaded and loaded[0].entries == {}, "the scan cache read blocked or did not return"
    assert f"scan cache not used: scan cache {cache} " in caplog.text
    assert len(_scan(small, cache)) == 3  # replaced by a private file of its own
    assert cache.is_file() and not cache.is_symlink() and cache.stat().st_mode & 0o077 == 0
