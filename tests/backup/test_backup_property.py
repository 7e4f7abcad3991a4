"""Property: whatever the history of pushes, backups and forget policies, every snapshot
still listed restores exactly to the state it captured, and prune never deletes a file a
remaining snapshot needs."""

import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from custode.backup.catalog import load
from custode.backup.crypto import generate_identity, load_identity, parse_recipient, public_key
from custode.backup.engine import (
    BackupSettings,
    backup_repository,
    manifests_by_repo,
    write_snapshot,
)
from custode.backup.manifest import repo_prefix
from custode.backup.prune import forget
from custode.backup.restore import restore_repository
from custode.backup.retention import Policy
from custode.backup.store import LocalStore
from custode.git.runner import Git
from fixtures.builders import fast_import, history_stream, run_git

pytestmark = pytest.mark.integration
GIT = Git()
BRANCHES = ("main", "dev", "feature")

commit = st.tuples(st.just("commit"), st.sampled_from(BRANCHES), st.integers(1, 3))
delete = st.tuples(st.just("delete"), st.sampled_from(BRANCHES[1:]), st.just(0))
rewind = st.tuples(st.just("rewind"), st.sampled_from(BRANCHES), st.integers(1, 3))
tag = st.tuples(st.just("tag"), st.sampled_from(BRANCHES), st.integers(0, 1000))
backup = st.tuples(st.just("backup"), st.just(""), st.integers(0, 72))  # hours since previous
policy = st.builds(
    Policy,
    last=st.integers(0, 3),
    hourly=st.integers(0, 2),
    daily=st.integers(0, 2),
    within=st.sampled_from([0.0, 3600.0 * 30]),
).filter(lambda p: not p.empty())
forget_op = st.tuples(st.just("forget"), policy, st.just(0))
operations = st.lists(st.one_of(commit, commit, delete, rewind, tag, backup, backup, forget_op),
                      min_size=3, max_size=12)  # fmt: skip


def _state(repo: Path) -> str:
    refs = run_git(repo, "for-each-ref", "--format=%(objectname) %(refname) %(symref)")
    return refs + (repo / "HEAD").read_text()


def _exists(repo: Path, branch: str) -> bool:
    return bool(run_git(repo, "for-each-ref", f"refs/heads/{branch}").strip())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])  # fmt: skip
@given(ops=operations)
def test_every_remaining_snapshot_restores_exactly(tmp_path: Path, ops: list[tuple]) -> None:
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    try:
        _run(work, ops)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(work: Path, ops: list[tuple]) -> None:
    repo, store = work / "repo.git", LocalStore(work / "store")
    run_git(None, "init", "-q", "--bare", repo)
    fast_import(repo, history_stream("refs/heads/main", 3))
    key = work / "id.txt"
    pub = generate_identity(key)
    identity = load_identity(key)
    assert public_key(identity) == pub
    backup_settings = BackupSettings("h", [parse_recipient(pub)], work / "scratch", full_every=3)
    backup_settings.scratch.mkdir()
    captured: dict[str, str] = {}
    clock = datetime(2026, 1, 1, tzinfo=UTC)
    serial = 100
    for kind, arg, n in ops:
        if kind == "commit":
            parent = f"refs/heads/{arg}^0" if _exists(repo, arg) else "refs/heads/main^0"
            fast_import(repo, history_stream(f"refs/heads/{arg}", n, start=serial, parent=parent,
                                             label=f"{arg} "))  # fmt: skip
            serial += n
        elif kind == "delete" and _exists(repo, arg):
            run_git(repo, "update-ref", "-d", f"refs/heads/{arg}")
        elif kind == "rewind" and _exists(repo, arg):
            count = int(run_git(repo, "rev-list", "--count", f"refs/heads/{arg}"))
            if count > n:
                run_git(repo, "update-ref", f"refs/heads/{arg}", f"refs/heads/{arg}~{n}")
        elif kind == "tag" and _exists(repo, arg):
            run_git(repo, "update-ref", f"refs/tags/t{n}", f"refs/heads/{arg}")
        elif kind == "backup":
            clock += timedelta(hours=n)
            manifests = manifests_by_repo(store, "h").get(repo_prefix("h", "repo.git"), [])
            result = backup_repository(store, GIT, backup_settings, repository="repo.git",
                                       root=str(work), git_dir=repo, bare=True,
                                       object_format="sha1", manifests=manifests)  # fmt: skip
            assert result.outcome in ("new", "unchanged"), result.message
            snap = write_snapshot(store, "h", clock, [result])
            assert snap is not None
            captured[snap.snapshot_id] = _state(repo)
        elif kind == "forget":
            forget(store, "h", arg, do_prune=True)
    catalog = load(store, "h")
    assert not catalog.damaged
    event(f"{len(catalog.snapshots)} snapshots remain")
    for snap in catalog.snapshots:
        (entry,) = snap.entries
        from custode.backup.engine import read_manifest

        manifest = read_manifest(store, entry.manifest)
        for ref in manifest.file_refs():
            assert store.size(ref.key) == ref.size, f"{ref.key} needed by {snap.snapshot_id}"
        dest = work / "out" / snap.snapshot_id
        restore_repository(store, manifest, [identity], GIT, dest)
        assert _state(dest) == captured[snap.snapshot_id]
        run_git(dest, "fsck", "--strict")
