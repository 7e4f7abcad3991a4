"""``custode backup``/``snapshots``/``restore``/``verify``/``forget`` end to end, on real
repositories: exact round trips (refs, HEAD, hooks, config, LFS, sha256, working copies),
point-in-time restores after force-pushes and deleted branches, retention that never
deletes what a kept snapshot needs, and a disaster recovery with only ``age`` and ``git``."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from custode.backup.crypto import generate_identity
from fixtures.builders import Fleet, fast_import, history_stream, run_git
from fixtures.cli import CliResult
from fixtures.paths import PROJECT

pytestmark = pytest.mark.integration
Run = Callable[..., CliResult]


def state_of(repo: Path) -> str:
    """Every ref with its object and symbolic target, and HEAD: what a restore must match."""
    refs = run_git(repo, "for-each-ref", "--format=%(objectname) %(refname) %(symref)")
    head = (repo / "HEAD").read_text() if (repo / "HEAD").is_file() else ""
    return refs + "HEAD " + head


@pytest.fixture
def keys(tmp_path: Path) -> tuple[str, Path]:
    path = tmp_path / "keys" / "identity.txt"
    return generate_identity(path), path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Bare repositories of every kind a server holds, plus a working copy."""
    root = tmp_path / "root"
    main = root / "org" / "main.git"
    run_git(None, "init", "-q", "--bare", main)
    fast_import(main, history_stream("refs/heads/main", 20, annotated_tags=[("v1", 10)]))
    run_git(main, "update-ref", "refs/heads/topic", "refs/heads/main~3")
    run_git(main, "symbolic-ref", "refs/remotes/origin/HEAD", "refs/heads/main")
    run_git(main, "notes", "add", "-m", "reviewed", "refs/heads/main")
    hook = main / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    (main / "description").write_text("the main repository\n")
    run_git(main, "config", "custom.key", "kept")
    blob = b"large file content\n" * 1000
    oid = hashlib.sha256(blob).hexdigest()
    lfs = main / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
    lfs.parent.mkdir(parents=True)
    lfs.write_bytes(blob)
    sha = root / "sha256.git"
    run_git(None, "init", "-q", "--bare", "--object-format=sha256", sha)
    fast_import(sha, history_stream("refs/heads/main", 8))
    run_git(None, "init", "-q", "--bare", root / "empty.git")
    work = root / "clone"
    run_git(None, "clone", "-q", main, work)
    return root


def backup(custode: Run, root: Path, store: Path, pub: str) -> dict:
    result = custode("backup", root, "--store", store, "--recipient", pub, "--json")
    assert result.code == 0, result.stderr
    return result.json()


def test_round_trip_is_exact_for_every_kind_of_repository(
    custode: Run, root: Path, tmp_path: Path, keys: tuple[str, Path]
) -> None:
    pub, identity = keys
    store = tmp_path / "store"
    summary = backup(custode, root, store, pub)["summary"]
    assert summary["new"] == 4 and summary["failed"] == 0
    out = tmp_path / "out"
    result = custode("restore", "--store", store, "--identity", identity, "--to", out, "--json")
    assert result.code == 0, result.stderr
    assert result.json()["summary"]["restored"] == 4
    for name in ("org/main.git", "sha256.git", "empty.git"):
        assert state_of(out / name) == state_of(root / name), name
        run_git(out / name, "fsck", "--strict")
    main = out / "org" / "main.git"
    assert os.access(main / "hooks" / "pre-receive", os.X_OK)
    assert (main / "description").read_text() == "the main repository\n"
    assert run_git(main, "config", "custom.key").strip() == "kept"
    assert run_git(main, "notes", "show", "refs/heads/main").strip() == "reviewed"
    assert run_git(out / "sha256.git", "rev-parse", "--show-object-format").strip() == "sha256"
    lfs = list((root / "org/main.git/lfs/objects").rglob("*"))
    restored = list((main / "lfs" / "objects").rglob("*"))
    assert [p.relative_to(root / "org/main.git") for p in lfs if p.is_file()] == [
        p.relative_to(main) for p in restored if p.is_file()
    ]
    clone = out / "clone"
    assert state_of(clone / ".git") == state_of(root / "clone" / ".git")
    assert "1 working copy was restored without checking files out" in result.stderr
    run_git(clone, "reset", "-q", "--hard")
    assert run_git(clone, "status", "--porcelain") == ""
    verify = custode("verify", "--store", store, "--identity", identity, "--level", "drill")
    assert verify.code == 0, verify.stderr


def test_point_in_time_restore_after_force_push_and_deleted_branch(
    custode: Run, root: Path, tmp_path: Path, keys: tuple[str, Path]
) -> None:
    pub, identity = keys
    store, main = tmp_path / "store", root / "org" / "main.git"
    states = [state_of(main)]
    first = backup(custode, root, store, pub)["summary"]["snapshot"]
    # force-push: main rewound and rebuilt; a branch deleted; a new tag
    run_git(main, "update-ref", "refs/heads/main", "refs/heads/main~5")
    fast_import(main, history_stream("refs/heads/main", 3, start=100, label="rewrite ",
                                     parent="refs/heads/main^0"))  # fmt: skip
    run_git(main, "update-ref", "-d", "refs/heads/topic")
    run_git(main, "tag", "v2", "refs/heads/main")
    states.append(state_of(main))
    second = backup(custode, root, store, pub)
    changed = {r["repository"]: r for r in second["repositories"]}
    assert changed["org/main.git"]["outcome"] == "new" and not changed["org/main.git"]["full"]
    assert changed["sha256.git"]["outcome"] == "unchanged"
    assert changed["sha256.git"]["bytes_added"] == 0
    # only a branch deleted: a new backup of refs alone
    run_git(main, "update-ref", "-d", "refs/tags/v2")
    states.append(state_of(main))
    third = backup(custode, root, store, pub)["summary"]["snapshot"]
    listed = custode("snapshots", "--store", store, "--json").json()["snapshots"]
    assert listed[0]["id"] == first and len(listed) == 3
    for at, want in ((first, states[0]), (second["summary"]["snapshot"], states[1]),
                     (third, states[2])):  # fmt: skip
        out = tmp_path / f"at-{at}"
        result = custode("restore", "--store", store, "--identity", identity, "--to", out,
                         "--at", at, "org/main.git")  # fmt: skip
        assert result.code == 0, result.stderr
        assert state_of(out / "org" / "main.git") == want
        run_git(out / "org" / "main.git", "fsck", "--strict")
        assert not (out / "sha256.git").exists()  # only the repository named
    verify = custode("verify", "--store", store, "--identity", identity, "--level", "full")
    assert verify.code == 0, verify.stderr


def test_restore_by_time_picks_the_latest_snapshot_not_after_it(
    custode: Run, root: Path, tmp_path: Path, keys: tuple[str, Path]
) -> None:
    pub, identity = keys
    store = tmp_path / "store"
    backup(custode, root, store, pub)
    too_early = custode("restore", "--store", store, "--identity", identity,
                        "--to", tmp_path / "x", "--at", "2001-01-01")  # fmt: skip
    assert too_early.code == 2 and "no snapshot at or before 2001-01-01" in too_early.stderr
    later = custode("restore", "--store", store, "--identity", identity,
                    "--to", tmp_path / "y", "--at", "2999-01-01", "sha256.git")  # fmt: skip
    assert later.code == 0, later.stderr
    assert state_of(tmp_path / "y" / "sha256.git") == state_of(root / "sha256.git")


def test_forget_keeps_every_file_a_kept_snapshot_needs(
    custode: Run, root: Path, tmp_path: Path, keys: tuple[str, Path]
) -> None:
    pub, identity = keys
    store, main = tmp_path / "store", root / "org" / "main.git"
    states = []
    for n in range(4):
        fast_import(main, history_stream("refs/heads/main", 2, start=200 + 2 * n,
                                         parent="refs/heads/main^0"))  # fmt: skip
        states.append(state_of(main))
        if n == 1:  # a new chain: the first backup's files are needed by no later one
            made = custode("backup", root, "--store", store, "--recipient", pub, "--full")
            assert made.code == 0, made.stderr
        else:
            backup(custode, root, store, pub)
    # each repository's first backup (all are in the first snapshot, none changed since)
    first = [
        p for p in store.glob("hosts/*/repos/*/*/*") if p.parent == min(p.parent.parent.iterdir())
    ]
    before = sorted(p for p in store.rglob("*") if p.is_file())
    dry = custode("forget", "--store", store, "--keep-last", "1", "--prune", "--dry-run", "--json")
    assert dry.code == 0, dry.stderr
    # the first chain's files go; the kept incremental needs its chain's earlier
    # manifests and refs files (format 3 links each to its parent)
    assert len(dry.json()["removed"]) == 3 and dry.json()["pruned_files"] == len(first)
    assert sorted(p for p in store.rglob("*") if p.is_file()) == before
    done = custode("forget", "--store", store, "--keep-last", "1", "--prune", "--json")
    assert done.code == 0, done.stderr
    # the kept (latest) snapshot is an incremental: its whole chain must still be there
    out = tmp_path / "out"
    result = custode("restore", "--store", store, "--identity", identity, "--to", out)
    assert result.code == 0, result.stderr
    assert state_of(out / "org" / "main.git") == states[-1]
    full = custode("verify", "--store", store, "--identity", identity, "--level", "full")
    assert full.code == 0, full.stderr
    again = custode("forget", "--store", store, "--keep-last", "1", "--prune", "--json")
    assert again.json()["pruned_files"] == 0  # nothing left to prune
    none = custode("forget", "--store", store)
    assert none.code == 0  # the config's default policy applies
    nothing = custode("forget", "--store", store, "--keep-last", "0")
    assert nothing.code == 2 and "no retention policy" in nothing.stderr


def test_a_chain_is_cut_by_a_full_backup_after_full_every(
    custode: Run, root: Path, tmp_path: Path, keys: tuple[str, Path]
) -> None:
    pub, _ = keys
    config = tmp_path / "custode.toml"
    config.write_text("[backup]\nfull_every = 2\n")
    store, main = tmp_path / "store", root / "org" / "main.git"
    actions = []
    for n in range(4):
        fast_import(main, history_stream("refs/heads/main", 1, start=300 + n,
                                         parent="refs/heads/main^0"))  # fmt: skip
        result = custode("--config", config, "backup", root, "--store", store,
                         "--recipient", pub, "--json")  # fmt: skip
        assert result.code == 0, result.stderr
        repos = {r["repository"]: r for r in result.json()["repositories"]}
        actions.append(repos["org/main.git"]["action"])
    # a new chain: a full bundle, or one on the repository it shares history with (the
    # root's working-copy clone of it)
    assert actions == ["new-chain", "incremental", "new-chain", "incremental"]
    assert "full_every 2" in repos["org/main.git"]["decided"] or n < 3
    config.write_text('[backup]\nfull_after = "0s"\n')  # every chain already too old
    fast_import(main, history_stream("refs/heads/main", 1, start=310, parent="refs/heads/main^0"))
    result = custode("--config", config, "backup", root, "--store", store, "--recipient", pub,
                     "--json")  # fmt: skip
    repos = {r["repository"]: r for r in result.json()["repositories"]}
    assert repos["org/main.git"]["action"] == "new-chain"
    assert "full_after" in repos["org/main.git"]["decided"]


def test_no_config_generates_a_key_and_uses_the_default_store(
    custode: Run, root: Path, isolated_env: dict[str, str]
) -> None:
    result = custode("backup", root)
    assert result.code == 0, result.stderr
    key = Path(isolated_env["XDG_CONFIG_HOME"]) / "custode" / "identity.txt"
    assert "created the backup key" in result.stderr and str(key) in result.stderr
    assert key.stat().st_mode & 0o777 == 0o600
    assert str(Path(isolated_env["XDG_DATA_HOME"]) / "custode" / "backups") in result.stdout
    again = custode("backup", root, "--json")
    assert again.code == 0 and again.json()["summary"]["unchanged"] == 4
    assert "created the backup key" not in again.stderr
    assert custode("verify", "--level", "drill").code == 0


@pytest.mark.skipif(shutil.which("age") is None and os.environ.get("CI") != "true",
                    reason="age is not installed (apt install age)")  # fmt: skip
def test_disaster_recovery_with_only_age_and_git(
    custode: Run, root: Path, tmp_path: Path, keys: tuple[str, Path]
) -> None:
    """The README's recovery, step by step: find the repository in the latest snapshot,
    follow its manifests' parents, decrypt the chain's bundles in order with age and
    unbundle each into a new bare repository, apply the refs records (whole, then
    deltas), set HEAD. No custode code is used after the backups."""
    pub, identity = keys
    store, main = tmp_path / "store", root / "org" / "main.git"
    backup(custode, root, store, pub)
    run_git(main, "update-ref", "-d", "refs/heads/topic")
    fast_import(main, history_stream("refs/heads/main", 2, start=400, parent="refs/heads/main^0"))
    backup(custode, root, store, pub)
    repo_dir = next(p.parent.parent for p in store.rglob("manifest.json")
                    if b'"repository":"org/main.git"' in p.read_bytes())  # fmt: skip
    second = max(repo_dir.iterdir()) / "manifest.json"
    assert b'"refs_delta":true' in second.read_bytes()  # only the change was stored
    script = (PROJECT / "docs" / "disaster-recovery.sh").read_text()
    out = tmp_path / "recovered.git"
    proc = subprocess.run(
        ["sh", "-c", script, "sh", str(store), "org/main.git", str(identity), str(out)],
        capture_output=True, text=True, timeout=120, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    want = run_git(main, "for-each-ref", "--format=%(objectname) %(refname)")
    got = run_git(out, "for-each-ref", "--format=%(objectname) %(refname)")
    # the bundle carries direct refs; the symbolic one is set from refs.json by hand
    assert got == "".join(line + "\n" for line in want.splitlines()
                          if "refs/remotes/origin/HEAD" not in line)  # fmt: skip
    assert (out / "HEAD").read_text() == (main / "HEAD").read_text()
    assert (out / "hooks" / "pre-receive").read_bytes() == (main / "hooks/pre-receive").read_bytes()
    assert run_git(out, "config", "custom.key").strip() == "kept"
    run_git(out, "fsck", "--strict")
    # the refs it applied: a whole record, then the second backup's delta (topic deleted)
    applied = set((tmp_path / "recovered.git.refs").read_text().splitlines())
    assert applied == set(got.splitlines()) and not any("topic" in r for r in applied)


def test_round_trip_through_an_s3_store(
    custode: Run, root: Path, tmp_path: Path, keys: tuple[str, Path], s3_bucket: str
) -> None:
    pub, identity = keys
    aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    store = f"s3://{s3_bucket}/backups"
    first = custode("backup", root, "--store", store, "--recipient", pub, "--json", env=aws)
    assert first.code == 0, first.stderr
    assert first.json()["summary"]["new"] == 4
    again = custode("backup", root, "--store", store, "--recipient", pub, "--json", env=aws)
    assert again.code == 0 and again.json()["summary"]["unchanged"] == 4
    out = tmp_path / "out"
    restored = custode("restore", "--store", store, "--identity", identity, "--to", out, env=aws)
    assert restored.code == 0, restored.stderr
    assert state_of(out / "org" / "main.git") == state_of(root / "org" / "main.git")
    for level in ("quick", "full", "drill"):
        checked = custode("verify", "--store", store, "--identity", identity, "--level", level,
                          env=aws)  # fmt: skip
        assert checked.code == 0, (level, checked.stderr)
    missing = custode("snapshots", "--store", f"s3://{s3_bucket}-missing", env=aws)
    assert missing.code == 4 and f"{s3_bucket}-missing" in missing.stderr


def test_two_backups_at_once_into_one_store_are_both_whole(
    root: Path, tmp_path: Path, keys: tuple[str, Path], isolated_env: dict[str, str]
) -> None:
    """Two custode processes back up the same repositories into one store at the same
    time: both snapshots appear and both restore exactly."""
    pub, identity = keys
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "custode", "backup", str(root), "--store", str(store),
           "--recipient", pub, "--json"]  # fmt: skip
    procs = [subprocess.Popen(cmd, env=isolated_env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    snapshots = [json.loads(out)["summary"]["snapshot"] for out, _ in outputs]
    for snap in snapshots:
        dest = tmp_path / f"out-{snap}"
        proc = subprocess.run(
            [sys.executable, "-m", "custode", "restore", "--store", str(store), "--identity",
             str(identity), "--to", str(dest), "--at", snap],
            env=isolated_env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert state_of(dest / "org" / "main.git") == state_of(root / "org" / "main.git")


def test_every_repository_of_the_fixture_fleet_round_trips(
    custode: Run, fleet: Fleet, tmp_path: Path, keys: tuple[str, Path]
) -> None:
    """Forks borrowing from a pool, submodule git dirs, working copies with worktrees,
    GitLab hashed storage, stale lock files, thousands of loose objects: each restores with
    the same refs and HEAD, passes fsck, and needs no alternate (bundles are whole)."""
    pub, identity = keys
    store, out = tmp_path / "store", tmp_path / "out"
    listed = custode("status", "--json", fleet.root).json()["repositories"]
    done = backup(custode, fleet.root, store, pub)["summary"]
    assert done["failed"] == 0 and done["new"] == len(listed)
    result = custode("restore", "--store", store, "--identity", identity, "--to", out)
    assert result.code == 0, result.stderr
    for repo in listed:
        source = Path(repo["git_dir"])
        dest = out / repo["relative"]
        dest_git = dest if repo["bare"] else dest / ".git"
        if repo["relative"].endswith(".git/modules/lib"):  # its work tree: super's, unchecked out
            (dest_git / "../../../lib").resolve().mkdir()
        assert state_of(dest_git) == state_of(source), repo["relative"]
        assert not (dest_git / "objects" / "info" / "alternates").exists()
        run_git(dest_git, "fsck", "--no-dangling")


def test_unchanged_repositories_are_skipped_unread_and_any_change_is_seen(
    custode: Run, root: Path, tmp_path: Path, keys: tuple[str, Path]
) -> None:
    """The second backup trusts the history database for repositories whose fingerprint
    and kept files are unchanged; a hook edit, a new LFS object or a ref update is seen."""
    pub, identity = keys
    store, main = tmp_path / "store", root / "org" / "main.git"
    backup(custode, root, store, pub)

    def outcomes() -> dict[str, str]:
        done = backup(custode, root, store, pub)["repositories"]
        return {r["repository"]: r["outcome"] for r in done}

    assert set(outcomes().values()) == {"unchanged"}
    (main / "hooks" / "pre-receive").write_text("#!/bin/sh\nexit 1\n")
    assert outcomes()["org/main.git"] == "new"
    blob = b"another large file\n"
    oid = hashlib.sha256(blob).hexdigest()
    (main / "lfs" / "objects" / oid[:2] / oid[2:4]).mkdir(parents=True)
    (main / "lfs" / "objects" / oid[:2] / oid[2:4] / oid).write_bytes(blob)
    assert outcomes()["org/main.git"] == "new"
    run_git(root / "sha256.git", "update-ref", "refs/heads/copy", "refs/heads/main")
    changed = outcomes()
    assert changed["sha256.git"] == "new" and changed["org/main.git"] == "unchanged"
    elsewhere = custode("backup", root, "--store", tmp_path / "other", "--recipient", pub,
                        "--json")  # fmt: skip
    assert elsewhere.json()["summary"]["new"] == 4  # another store: nothing is assumed
    out = tmp_path / "out"
    result = custode("restore", "--store", store, "--identity", identity, "--to", out)
    assert result.code == 0, result.stderr
    assert (out / "org/main.git/hooks/pre-receive").read_text() == "#!/bin/sh\nexit 1\n"
    assert (out / "org/main.git/lfs/objects" / oid[:2] / oid[2:4] / oid).read_bytes() == blob
    assert state_of(out / "sha256.git") == state_of(root / "sha256.git")


def test_backup_writes_nothing_into_repositories_and_scratch_may_be_another_filesystem(
    custode: Run, root: Path, tmp_path: Path, keys: tuple[str, Path]
) -> None:
    """Bundles are built in the scratch directory, never staged in a repository (so a
    scratch directory on another filesystem works, and the scan cache stays valid)."""
    pub, identity = keys
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem at /dev/shm")
    scratch = Path(tempfile.mkdtemp(dir=shm))
    try:
        config = tmp_path / "custode.toml"
        config.write_text(f'[backup]\nscratch = "{scratch}"\n')
        packs = root / "org" / "main.git" / "objects" / "pack"
        before = sorted(packs.iterdir()), packs.stat().st_mtime_ns
        result = custode("--config", config, "backup", root, "--store", tmp_path / "store",
                         "--recipient", pub)  # fmt: skip
        assert result.code == 0, result.stderr
        assert (sorted(packs.iterdir()), packs.stat().st_mtime_ns) == before
        assert list(scratch.iterdir()) == []
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    out = tmp_path / "out"
    restored = custode("restore", "--store", tmp_path / "store", "--identity", identity,
                       "--to", out)  # fmt: skip
    assert restored.code == 0, restored.stderr
    assert state_of(out / "org" / "main.git") == state_of(root / "org" / "main.git")
