"""A backup holds every object git itself considers reachable, and a restore gives it back
without touching anything beside a working copy's ``.git``.

Covered: a detached HEAD; a linked worktree's detached HEAD and per-worktree refs (a live
worktree and one whose directory was deleted but not pruned); a shallow repository, then
deepened (its ``shallow`` file shrinks: the chain must not exclude the new history); a pack
bitmap with one wrong bit (plain git leaves a blob out of the pack; custode's backup holds
it, and a backup that would not is refused); ``verify --level full`` on a bundle that lacks
an object, and ``backup --full`` (the fix it names) giving an unchanged repository a new
whole chain where plain backups store nothing; ``restore --force`` of a working copy in
place (untracked files, a nested repository with a newer commit, and a bare backup aimed
at a work tree).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from custode.backup import bundle
from custode.backup.crypto import generate_identity, parse_recipient
from custode.backup.engine import BackupSettings, RepoBackup, backup_repository, write_snapshot
from custode.backup.roots import read_shallow, worktree_refs
from custode.backup.store import LocalStore
from custode.errors import StateError
from custode.git.runner import Git, GitResult
from fixtures.builders import fast_import, git_env, history_stream, run_git
from fixtures.cli import CliResult
from fixtures.lying import mislead_bitmap
from fixtures.paths import PROJECT

pytestmark = pytest.mark.integration
Run = Callable[..., CliResult]


@pytest.fixture
def keys(tmp_path: Path) -> tuple[str, Path]:
    path = tmp_path / "keys" / "identity.txt"
    return generate_identity(path), path


def _backup(custode: Run, root: Path, store: Path, pub: str) -> dict:
    result = custode("backup", root, "--store", store, "--recipient", pub, "--json")
    assert result.code == 0, result.stderr
    return result.json()


def _restore(custode: Run, store: Path, identity: Path, out: Path, *names: str) -> CliResult:
    return custode("restore", "--store", store, "--identity", identity, "--to", out, *names)


def _fsck(git_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "--git-dir", str(git_dir), "fsck", "--no-dangling"],
                          capture_output=True, text=True, env=git_env(), check=False)  # fmt: skip


def _verify(custode: Run, store: Path, identity: Path, level: str) -> CliResult:
    return custode("verify", "--store", store, "--identity", identity, "--level", level)


def _recover(store: Path, name: str, identity: Path, out: Path) -> None:
    """docs/disaster-recovery.sh: only age and git."""
    script = (PROJECT / "docs" / "disaster-recovery.sh").read_text()
    proc = subprocess.run(
        ["sh", "-c", script, "sh", str(store), name, str(identity), str(out)],
        capture_output=True, text=True, timeout=120, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    fsck = _fsck(out)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def _commit_on(git_dir: Path, parent: str, message: str) -> str:
    """A new commit (with a blob of its own) on top of ``parent``, named by no ref."""
    blob = run_git(git_dir, "hash-object", "-w", "--stdin", input=message.encode()).strip()
    tree = run_git(git_dir, "mktree", input=f"100644 blob {blob}\t{message}.txt\n".encode())
    return run_git(git_dir, "commit-tree", "-p", parent, "-m", message, tree.strip()).strip()


def test_a_detached_head_commit_is_backed_up_and_restored(
    custode: Run, tmp_path: Path, keys: tuple[str, Path]
) -> None:
    pub, identity = keys
    root, store, out = tmp_path / "root", tmp_path / "store", tmp_path / "out"
    repo = root / "detached.git"
    run_git(None, "init", "-q", "--bare", repo)
    fast_import(repo, history_stream("refs/heads/main", 5))
    only = _commit_on(repo, "refs/heads/main", "only-from-head")
    (repo / "HEAD").write_text(f"{only}\n")
    _backup(custode, root, store, pub)
    result = _restore(custode, store, identity, out)
    assert result.code == 0, result.stderr
    restored = out / "detached.git"
    assert (restored / "HEAD").read_text().strip() == only
    fsck = _fsck(restored)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert run_git(restored, "cat-file", "-t", f"{only}:only-from-head.txt").strip() == "blob"
    drill = _verify(custode, store, identity, "drill")
    assert drill.code == 0, drill.stdout + drill.stderr
    _recover(store, "detached.git", identity, tmp_path / "recovered.git")
    assert (tmp_path / "recovered.git" / "HEAD").read_text().strip() == only


def test_linked_worktrees_heads_and_per_worktree_refs_come_back(
    custode: Run, tmp_path: Path, keys: tuple[str, Path]
) -> None:
    pub, identity = keys
    root, store, out = tmp_path / "root", tmp_path / "store", tmp_path / "out"
    main = root / "work"
    main.mkdir(parents=True)
    run_git(main, "init", "-q", "-b", "main")
    (main / "README").write_text("hello\n")
    run_git(main, "add", "README")
    run_git(main, "commit", "-q", "-m", "initial")
    live, dead = tmp_path / "live", tmp_path / "dead"
    run_git(main, "worktree", "add", "-q", "--detach", live)
    run_git(main, "worktree", "add", "-q", "--detach", dead)
    commits = {}
    for wt in (live, dead):
        (wt / f"{wt.name}.txt").write_text(f"only in {wt.name}\n")
        run_git(wt, "add", f"{wt.name}.txt")
        run_git(wt, "commit", "-q", "-m", f"{wt.name} work")
        commits[wt.name] = run_git(wt, "rev-parse", "HEAD").strip()
    bisect = _commit_on(main / ".git", "refs/heads/main", "bisect-only")
    run_git(live, "update-ref", "refs/bisect/bad", bisect)  # a per-worktree ref
    subprocess.run(["rm", "-rf", str(dead)], check=True)  # deleted, never pruned
    assert _fsck(main / ".git").returncode == 0  # git still counts all of them reachable
    ids = {p.name: (p / "gitdir").read_text() for p in (main / ".git" / "worktrees").iterdir()}
    live_id = next(i for i, g in ids.items() if str(live) in g)
    dead_id = next(i for i, g in ids.items() if str(dead) in g)

    _backup(custode, root, store, pub)
    result = _restore(custode, store, identity, out)
    assert result.code == 0, result.stderr
    restored = out / "work" / ".git"
    fsck = _fsck(restored)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    refs = run_git(restored, "for-each-ref", "--format=%(refname) %(objectname)")
    assert f"refs/custode/worktrees/{live_id}/HEAD {commits['live']}" in refs
    assert f"refs/custode/worktrees/{dead_id}/HEAD {commits['dead']}" in refs
    assert f"refs/custode/worktrees/{live_id}/refs/bisect/bad {bisect}" in refs
    for oid in (*commits.values(), bisect):
        run_git(restored, "cat-file", "-e", f"{oid}^{{tree}}")
    drill = _verify(custode, store, identity, "drill")
    assert drill.code == 0, drill.stdout + drill.stderr


def test_a_shallow_repository_restores_sound_before_and_after_deepening(
    custode: Run, tmp_path: Path, keys: tuple[str, Path]
) -> None:
    pub, identity = keys
    root, store = tmp_path / "root", tmp_path / "store"
    origin = tmp_path / "origin.git"
    run_git(None, "init", "-q", "--bare", origin)
    fast_import(origin, history_stream("refs/heads/main", 12))
    repo = root / "shallow.git"
    run_git(None, "clone", "-q", "--bare", "--depth", "2", f"file://{origin}", repo)
    for n, deepen in enumerate((None, "3", None)):
        if deepen:  # the shallow file moves back: history the chain never held
            run_git(repo, "fetch", "-q", f"--deepen={deepen}", "origin")
        if n == 2:  # a later incremental on the deepened repository
            fast_import(repo, history_stream("refs/heads/main", 2, start=50,
                                             parent="refs/heads/main^0"))  # fmt: skip
        _backup(custode, root, store, pub)
        out = tmp_path / f"out{n}"
        result = _restore(custode, store, identity, out)
        assert result.code == 0, result.stderr
        restored = out / "shallow.git"
        fsck = _fsck(restored)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        assert (restored / "shallow").read_text() == (repo / "shallow").read_text()
        assert run_git(restored, "rev-list", "--count", "main") == run_git(
            repo, "rev-list", "--count", "main"
        )
    for level in ("full", "drill"):
        checked = _verify(custode, store, identity, level)
        assert checked.code == 0, checked.stdout + checked.stderr
    _recover(store, "shallow.git", identity, tmp_path / "recovered.git")
    assert (tmp_path / "recovered.git" / "shallow").read_text() == (repo / "shallow").read_text()


def _lying_bitmap(repo: Path) -> str:
    """Flip the first bit of ``repo``'s .bitmap (searching back from its end, where the
    tips' bitmaps are) that makes plain git's ``pack-objects`` leave an object out, as a
    backup's walk would be fed. Returns the tip."""
    tip = run_git(repo, "rev-parse", "refs/heads/main").strip()
    run_git(repo, "repack", "-adq", "--write-bitmap-index")
    mislead_bitmap(repo, next((repo / "objects" / "pack").glob("*.bitmap")), tip)
    return tip


def _bitmapped_repo(root: Path) -> Path:
    repo = root / "bitmap.git"
    run_git(None, "init", "-q", "--bare", repo)
    fast_import(repo, history_stream("refs/heads/main", 3, files=3))
    _lying_bitmap(repo)
    assert _fsck(repo).returncode == 0  # plain fsck does not read bitmaps: the repo is sound
    return repo


def test_a_lying_bitmap_cannot_leave_an_object_out_of_a_backup(
    custode: Run, tmp_path: Path, keys: tuple[str, Path]
) -> None:
    pub, identity = keys
    root, store, out = tmp_path / "root", tmp_path / "store", tmp_path / "out"
    repo = _bitmapped_repo(root)
    _backup(custode, root, store, pub)
    result = _restore(custode, store, identity, out)
    assert result.code == 0, result.stderr
    fsck = _fsck(out / "bitmap.git")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert run_git(out / "bitmap.git", "rev-list", "--objects", "--count", "main") == run_git(
        repo, "rev-list", "--objects", "--count", "main"
    )


def _trusting_bitmaps(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backup as a custode that trusted the bitmap would make it: on the generate path
    (the copy path walks an object directory holding only the repository's pack, where no
    bitmap is), with ``pack-objects`` told to use it (writing a pack by name it would not
    by itself) and the walks trusting derived data."""
    run = Git.run

    def trusting(self: Git, args: Sequence[str], **kw: Any) -> GitResult:
        if args and args[0] == "pack-objects":
            args = [args[0], "--use-bitmap-index", *args[1:]]
        return run(self, args, **kw)

    monkeypatch.setattr(bundle, "_single_pack", lambda _: "the generate path, for a test")
    monkeypatch.setattr(bundle, "DISTRUST_DERIVED", ())
    monkeypatch.setattr(Git, "run", trusting)


def _api_backup(tmp_path: Path, repo: Path, pub: str) -> tuple[LocalStore, RepoBackup]:
    store = LocalStore(tmp_path / "store")
    settings = BackupSettings("host", [parse_recipient(pub)], tmp_path / "scratch")
    result = backup_repository(store, Git(), settings, repository=repo.name, root=str(repo.parent),
                               git_dir=repo, bare=True, object_format="sha1",
                               manifests=[])  # fmt: skip
    return store, result


def test_a_backup_whose_pack_lacks_objects_is_refused(
    tmp_path: Path, keys: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Were the walk misled anyway (here: told to trust the bitmap), the object count of
    the pack written is checked against an independent walk: no manifest is written."""
    pub, _ = keys
    repo = _bitmapped_repo(tmp_path / "root")
    _trusting_bitmaps(monkeypatch)
    store, result = _api_backup(tmp_path, repo, pub)
    assert result.outcome == "failed"
    assert "incomplete" in result.message
    assert not [k for k in store.list("hosts/") if k.endswith("manifest.json")]


def test_verify_full_notices_a_bundle_that_lacks_an_object(
    custode: Run, tmp_path: Path, keys: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store written by a custode that trusted the bitmap (as before): the bundle lacks
    a blob, ``git bundle verify`` is content with it, a connectivity walk is not."""
    pub, identity = keys
    repo = _bitmapped_repo(tmp_path / "root")
    _trusting_bitmaps(monkeypatch)
    monkeypatch.setattr(bundle, "check_complete", lambda *a, **k: None, raising=False)
    store, result = _api_backup(tmp_path, repo, pub)
    assert result.outcome == "new", result.message
    write_snapshot(store, "host", datetime.now(UTC), [result])
    full = custode("verify", "--store", tmp_path / "store", "--host", "host", "--identity",
                   identity, "--level", "full")  # fmt: skip
    assert full.code != 0, full.stdout + full.stderr
    assert "bundle.age" in full.stdout + full.stderr
    assert "lacks" in full.stdout + full.stderr


def test_backup_full_gives_an_unchanged_repository_a_new_whole_chain(
    custode: Run, tmp_path: Path, keys: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A damaged chain (written by a custode that trusted the bitmap) of a repository that
    never changes again: plain backups store nothing for it, by design, so the damaged
    chain stays its latest backup; verify names the fix, ``backup --full ROOT``, which
    makes a new whole chain although nothing changed. Old snapshots still need the old
    chain (verify says so, without sending the operator round again) until forgotten."""
    pub, identity = keys
    root, out, stored = tmp_path / "root", tmp_path / "out", tmp_path / "store"
    repo = _bitmapped_repo(root)
    with monkeypatch.context() as m:
        _trusting_bitmaps(m)
        m.setattr(bundle, "check_complete", lambda *a, **k: None)
        store, damaged = _api_backup(tmp_path, repo, pub)
    assert damaged.outcome == "new", damaged.message
    write_snapshot(store, "host", datetime.now(UTC), [damaged])
    config = tmp_path / "config.toml"
    config.write_text('[backup]\nhost = "host"\n')
    env = {"CUSTODE_CONFIG": str(config)}

    def run(*args: str | Path) -> CliResult:
        return custode(*args, "--store", stored, env=env)

    def backup(*flags: str) -> dict:
        result = run("backup", *flags, root, "--recipient", pub, "--json")
        assert result.code == 0, result.stderr
        return result.json()["summary"]

    def repo_files() -> list[Path]:
        return sorted(p for p in (stored / "hosts" / "host" / "repos").rglob("*") if p.is_file())

    kept = repo_files()
    for _ in range(2):  # the first run reads the repository, the second trusts the history
        summary = backup()
        assert (summary["new"], summary["unchanged"]) == (0, 1)
        assert repo_files() == kept  # an unchanged repository stores nothing
    fix = f"custode backup --full {root}"
    for level in ("full", "drill"):
        found = run("verify", "--identity", identity, "--level", level)
        assert found.code != 0, found.stdout + found.stderr
        assert fix in found.stderr, found.stderr

    summary = backup("--full")
    assert (summary["new"], summary["full"]) == (1, 1)
    assert len(repo_files()) > len(kept)
    restored = run("restore", "--identity", identity, "--to", out)
    assert restored.code == 0, restored.stderr
    fsck = _fsck(out / "bitmap.git")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert run_git(out / "bitmap.git", "rev-list", "--objects", "--count", "main") == run_git(
        repo, "rev-list", "--objects", "--count", "main"
    )
    drill = run("verify", "--identity", identity, "--level", "drill")
    assert drill.code == 0, drill.stdout + drill.stderr
    old = run("verify", "--identity", identity, "--level", "full")
    assert old.code != 0 and fix not in old.stderr, old.stderr
    assert "no latest backup needs it" in old.stderr, old.stderr
    kept = repo_files()
    summary = backup()  # the new chain is the one the history and the store now know
    assert (summary["new"], summary["unchanged"]) == (0, 1)
    assert repo_files() == kept
    assert run("forget", "--keep-last", "1", "--prune").code == 0
    clean = run("verify", "--identity", identity, "--level", "full")
    assert clean.code == 0, clean.stdout + clean.stderr


def test_restore_force_of_a_working_copy_replaces_only_its_git_dir(
    custode: Run, tmp_path: Path, keys: tuple[str, Path]
) -> None:
    pub, identity = keys
    root, store = tmp_path / "root", tmp_path / "store"
    work = root / "work"
    work.mkdir(parents=True)
    run_git(work, "init", "-q", "-b", "main")
    (work / "tracked.txt").write_text("v1\n")
    run_git(work, "add", "tracked.txt")
    run_git(work, "commit", "-q", "-m", "one")
    nested = work / "vendor" / "lib"
    nested.mkdir(parents=True)
    run_git(nested, "init", "-q", "-b", "main")
    (nested / "lib.txt").write_text("lib\n")
    run_git(nested, "add", "lib.txt")
    run_git(nested, "commit", "-q", "-m", "lib one")
    backed_up = run_git(work, "rev-parse", "HEAD").strip()
    _backup(custode, root, store, pub)
    # after the backup: new work everywhere that only the work tree holds
    (work / "untracked.txt").write_text("precious\n")
    (work / "tracked.txt").write_text("v2, not committed\n")
    run_git(work, "commit", "-q", "--allow-empty", "-m", "two")
    (nested / "lib.txt").write_text("lib two\n")
    run_git(nested, "commit", "-q", "-am", "lib two")
    newer = run_git(nested, "rev-parse", "HEAD").strip()

    refused = _restore(custode, store, identity, root, "work")
    assert refused.code != 0 and "--force" in refused.stderr
    result = _restore(custode, store, identity, root, "--force", "work")
    assert result.code == 0, result.stderr
    assert run_git(work, "rev-parse", "HEAD").strip() == backed_up
    assert (work / "untracked.txt").read_text() == "precious\n"
    assert (work / "tracked.txt").read_text() == "v2, not committed\n"
    assert run_git(nested, "rev-parse", "HEAD").strip() == newer
    assert (nested / "lib.txt").read_text() == "lib two\n"
    assert _fsck(work / ".git").returncode == 0
    assert not list(root.rglob(".custode-restore-*"))

    # a bare backup aimed at a directory holding a work tree is refused, nothing touched
    bare = tmp_path / "bare-root" / "work"
    run_git(None, "init", "-q", "--bare", bare)
    fast_import(bare, history_stream("refs/heads/main", 2))
    store2 = tmp_path / "store2"
    _backup(custode, tmp_path / "bare-root", store2, pub)
    clash = _restore(custode, store2, identity, root, "--force", "work")
    assert clash.code != 0 and "work tree" in clash.stderr, clash.stderr
    assert (work / "untracked.txt").read_text() == "precious\n"
    assert run_git(work, "rev-parse", "HEAD").strip() == backed_up


def test_worktree_files_are_read_defensively(tmp_path: Path) -> None:
    """A hostile ``worktrees/``: odd ids get a hex name, a FIFO or a symbolic link is
    never followed or waited on, a symbolic HEAD adds nothing, names git would refuse are
    left out; a ``shallow`` file that is not a list of ids fails the backup, clearly."""
    git_dir, oid = tmp_path / "repo.git", "ab" * 20
    base = git_dir / "worktrees"
    for wt_id, head in (("ok", oid), ("we ird", oid), ("sym", "ref: refs/heads/x")):
        (base / wt_id).mkdir(parents=True)
        (base / wt_id / "HEAD").write_text(head + "\n")
    (base / "ok" / "refs" / "bisect").mkdir(parents=True)
    (base / "ok" / "refs" / "bisect" / "bad").write_text(oid + "\n")
    (base / "ok" / "refs" / "bisect" / "bad.lock").write_text(oid + "\n")
    (base / "ok" / "refs" / "bisect" / "a..b").write_text(oid + "\n")
    (base / "fifo").mkdir()
    os.mkfifo(base / "fifo" / "HEAD")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "HEAD").write_text(oid + "\n")
    (base / "link").symlink_to(tmp_path / "elsewhere")
    assert worktree_refs(git_dir) == {
        "refs/custode/worktrees/ok/HEAD": oid,
        "refs/custode/worktrees/ok/refs/bisect/bad": oid,
        f"refs/custode/worktrees/x{b'we ird'.hex()}/HEAD": oid,
    }
    assert read_shallow(git_dir) == ()
    (git_dir / "shallow").write_text(f"{oid}\nnot-an-id\n")
    with pytest.raises(StateError, match="not a commit id"):
        read_shallow(git_dir)
    (git_dir / "shallow").unlink()
    os.mkfifo(git_dir / "shallow")
    with pytest.raises(StateError, match="not a plain file"):
        read_shallow(git_dir)
