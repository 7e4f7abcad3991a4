"""Faults around ``custode backup``/``restore``/``verify``, on real repositories and the real
CLI: ``kill -9`` at random points of a backup, pushes landing while a backup runs, every
flipped bit of a store file, and hostile or mistaken inputs (wrong or unsafe keys, missing
or unwritable stores, damaged and forged records, symlinks and occupied directories at the
destination, a disk that fills up during a restore).

Random choices are seeded; the seed is printed (set ``CUSTODE_FAULT_SEED`` to replay one).
"""

import dataclasses
import hashlib
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from custode.backup.catalog import load
from custode.backup.crypto import generate_identity, load_identity
from custode.backup.engine import read_manifest
from custode.backup.manifest import (
    Entry,
    FileRef,
    RepoManifest,
    Snapshot,
    canonical,
    new_id,
    repo_prefix,
)
from custode.backup.store import LocalStore
from custode.backup.verify import verify
from custode.git.runner import Git
from fixtures.builders import fast_import, history_stream, run_git
from fixtures.cli import CliResult
from fixtures.system import unshare_prefix

pytestmark = pytest.mark.integration
Run = Callable[..., CliResult]
HIDDEN = ".custode-restore-"


# --------------------------------------------------------------------------- helpers


def seeded(name: str) -> random.Random:
    seed = int(os.environ.get("CUSTODE_FAULT_SEED") or time.time_ns() % 2**32)
    print(f"{name}: seed {seed} (CUSTODE_FAULT_SEED={seed} replays it)")
    return random.Random(seed)  # noqa: S311  (reproducible faults, not secrets)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[str, Path]:
    path = tmp_path / "keys" / "identity.txt"
    return generate_identity(path), path


def git_dir(repo: Path) -> Path:
    return repo / ".git" if (repo / ".git").is_dir() else repo


def state_of(repo: Path) -> str:
    """Every ref with its object and symbolic target, and HEAD: what a restore must match."""
    refs = run_git(repo, "for-each-ref", "--format=%(objectname) %(refname) %(symref)")
    return refs + "HEAD " + (git_dir(repo) / "HEAD").read_text()


def bare_repo(path: Path, commits: int, label: str = "") -> Path:
    run_git(None, "init", "-q", "--bare", path)
    fast_import(path, history_stream("refs/heads/main", commits, label=label))
    return path


def advance(repo: Path, commits: int, start: int, label: str, *, pack: bool = True) -> None:
    stream = history_stream(
        "refs/heads/main", commits, start=start, parent="refs/heads/main^0", label=label
    )
    fast_import(repo, stream, pack=pack)


def host_of(store: Path) -> str:
    (host,) = [p.name for p in (store / "hosts").iterdir()]
    return host


def backup(custode: Run, root: Path, store: Path, pub: str, *extra: str) -> dict:
    result = custode("backup", root, "--store", store, "--recipient", pub, "--json", *extra)
    assert result.code == 0, result.stderr
    return result.json()


def restore(custode: Run, store: Path, identity: Path, to: Path, *extra: str) -> CliResult:
    return custode("restore", "--store", store, "--identity", identity, "--to", to, *extra)


def _blob_commit(blob: bytes) -> bytes:
    """A fast-import stream of one commit on main holding ``blob``."""
    head = b"commit refs/heads/main\ncommitter A <a@b> 1700000000 +0000\ndata 4\nbig\n"
    return head + b"M 100644 inline blob\ndata %d\n" % len(blob) + blob + b"\n\n"


def leftovers(where: Path) -> list[Path]:
    """Hidden assembly directories a restore left behind."""
    return list(where.rglob(f"{HIDDEN}*")) if where.exists() else []


def files_under(where: Path) -> list[Path]:
    return sorted(p for p in where.rglob("*") if not p.is_dir()) if where.exists() else []


def tree(where: Path, skip: tuple[Path, ...] = ()) -> set[Path]:
    """Every path below ``where`` except below ``skip`` (the CLI's own state, say)."""
    return {p for p in where.rglob("*") if not any(p.is_relative_to(s) for s in skip)}


def custode_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("custode: ")]


def two_repos(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    bare_repo(root / "a.git", 6, "a")
    bare_repo(root / "grp" / "b.git", 5, "b")
    return root


# --------------------------------------------------------------------------- kill -9


def _fleet_of_ten(root: Path) -> list[Path]:
    repos = [bare_repo(root / f"r{n}.git", 40 + 10 * n, f"r{n}") for n in range(8)]
    tagged = bare_repo(root / "grp" / "tagged.git", 60, "t")
    fast_import(tagged, history_stream("refs/heads/dev", 10, start=500, label="dev"))
    run_git(tagged, "tag", "-a", "-m", "one", "v1", "refs/heads/main~5")
    work = root / "work"
    run_git(None, "init", "-q", work)
    fast_import(work, history_stream("refs/heads/main", 30, label="w"))
    return [*repos, tagged, work]


def _change_some(rng: random.Random, repos: list[Path], round_no: int) -> None:
    for n, repo in enumerate(repos):
        if rng.random() < 0.5:
            advance(
                repo, rng.randint(1, 4), 1000 * (round_no + 1), f"{n}-", pack=rng.random() < 0.5
            )
    if rng.random() < 0.5:
        run_git(repos[0], "update-ref", f"refs/heads/side{round_no}", "refs/heads/main~1")


def _locked(store: Path) -> bool:
    return any(store.glob("hosts/*/locks/*.json"))


def _start_backup(
    root: Path, store: Path, pub: str, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "custode", "backup", str(root), "--store", str(store),
           "--recipient", pub, "--jobs", "1"]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _timed_backup(root: Path, store: Path, pub: str, env: dict[str, str]) -> tuple[float, float]:
    """Run one backup to its end: (seconds until its store lock appeared, seconds in all)."""
    proc = _start_backup(root, store, pub, env)
    started, locked = time.monotonic(), None
    deadline = started + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if locked is None and _locked(store):
            locked = time.monotonic() - started
        time.sleep(0.002)
    assert proc.wait(timeout=10) == 0
    took = time.monotonic() - started
    return (took / 2 if locked is None else locked), took


def _kill_at(proc: subprocess.Popen[bytes], delay: float) -> bool:
    """SIGKILL ``proc`` ``delay`` seconds from now; False if it had finished already."""
    time.sleep(delay)
    if proc.poll() is not None:  # poll reaps it: only a live process is killed
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return True


def test_kill_9_during_backup_leaves_only_whole_restorable_snapshots(
    custode: Run, keys: tuple[str, Path], tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    """Six backups killed at random points (half at a random time after start, half at a
    random time after the store lock appeared, over the span a timed incremental backup
    took): every listed snapshot restores, each to the states its repositories had at one
    moment, verify full passes, and the next backup is exact."""
    rng = seeded("kill -9")
    pub, identity = keys
    root, store = tmp_path / "root", tmp_path / "store"
    repos = _fleet_of_ten(root)
    rounds = [{r: state_of(r) for r in repos}]
    _timed_backup(root, store, pub, isolated_env)
    _change_some(rng, repos, 0)
    rounds.append({r: state_of(r) for r in repos})
    to_lock, took = _timed_backup(root, store, pub, isolated_env)
    checked: set[str] = set()

    def check_snapshots() -> None:
        listed = custode("snapshots", "--store", store, "--json")
        assert listed.code == 0, listed.stderr
        body = listed.json()
        assert body["damaged"] == {}
        for snap in body["snapshots"]:
            if snap["id"] in checked:
                continue
            checked.add(snap["id"])
            assert snap["failed"] == {}
            assert len(snap["repositories"]) == len(repos)
            out = tmp_path / "restored" / snap["id"]
            result = restore(custode, store, identity, out, "--at", snap["id"])
            assert result.code == 0, (snap["id"], result.stderr)
            got = {r: state_of(out / r.relative_to(root)) for r in repos}
            # one round's states, all of them: a snapshot never mixes two moments
            assert any(got == states for states in rounds), snap["id"]

    landed = []
    for n in range(1, 7):
        _change_some(rng, repos, n)
        rounds.append({r: state_of(r) for r in repos})
        proc = _start_backup(root, store, pub, isolated_env)
        try:
            if n % 2:  # not much before the lock: the interpreter is still starting
                delay = rng.uniform(to_lock / 2, took)
            else:
                deadline = time.monotonic() + 30
                while not _locked(store) and proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.002)
                delay = rng.uniform(0.0, took - to_lock)
            killed = _kill_at(proc, delay)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        landed.append(f"{'+lock ' if n % 2 == 0 else ''}{delay:.3f}s{'' if killed else ' (done)'}")
    print(f"backup: lock after {to_lock:.3f}s of {took:.3f}s; kills: {', '.join(landed)}")
    check_snapshots()
    verified = custode("verify", "--store", store, "--identity", identity, "--level", "full")
    assert verified.code == 0, verified.stderr
    backup(custode, root, store, pub)
    out = tmp_path / "final"
    result = restore(custode, store, identity, out)
    assert result.code == 0, result.stderr
    for repo in repos:
        assert state_of(out / repo.relative_to(root)) == state_of(repo), repo
        run_git(out / repo.relative_to(root), "fsck", "--no-progress", "--strict")
    assert not any(store.glob("hosts/*/locks/*")), "a killed backup's lock was never removed"


def test_a_killed_backup_leaves_nothing_behind_once_the_next_run_is_done(
    custode: Run, keys: tuple[str, Path], tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    pub, _ = keys
    root, store = tmp_path / "root", tmp_path / "store"
    big = root / "big.git"
    run_git(None, "init", "-q", "--bare", big)
    fast_import(big, _blob_commit(os.urandom(4 << 20)))
    scratch = Path(isolated_env["XDG_STATE_HOME"]) / "custode" / "scratch"
    for _ in range(5):  # kill it while a repository's work directory exists
        proc = _start_backup(root, store, pub, isolated_env)
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            if scratch.is_dir() and any(scratch.iterdir()):
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.001)
        proc.wait(timeout=30)
        if scratch.is_dir() and any(scratch.iterdir()):
            break
    else:
        pytest.skip("no kill landed while a work directory existed")
    backup(custode, root, store, pub)
    pruned = custode("forget", "--store", store, "--keep-last", "1", "--prune")
    assert pruned.code == 0, pruned.stderr
    assert list(scratch.iterdir()) == []
    assert list(store.rglob(".tmp-*")) == []


def test_prune_never_deletes_a_backup_that_finished_after_the_catalog_was_read(
    custode: Run, keys: tuple[str, Path], tmp_path: Path
) -> None:
    from custode.backup.prune import forget
    from custode.backup.retention import Policy

    pub, identity = keys
    root, store = two_repos(tmp_path), tmp_path / "store"
    backup(custode, root, store, pub)
    local = LocalStore(store, create=False)
    earlier = load(local, host_of(store))  # what forget would see, were it read too early
    advance(root / "a.git", 2, 100, "late")
    backup(custode, root, store, pub)  # finishes before forget takes its lock
    done = forget(local, host_of(store), Policy(last=1), do_prune=True)
    assert [s.snapshot_id for s in done.decision.remove] == [earlier.snapshots[0].snapshot_id]
    result = restore(custode, store, identity, tmp_path / "out")
    assert result.code == 0, result.stderr
    assert state_of(tmp_path / "out" / "a.git") == state_of(root / "a.git")


# --------------------------------------------------------------------------- pushes


def test_pushes_during_backups_give_states_the_repository_really_had(
    custode: Run, keys: tuple[str, Path], tmp_path: Path
) -> None:
    """A writer advances (new loose or packed objects) and rewinds ``main`` as fast as it
    can while five backups run. One ref moves, one update at a time, so every state a
    reader can see is one the writer recorded; each snapshot must restore to one of them,
    with every object present (git fsck)."""
    rng = seeded("pushes")
    pub, identity = keys
    root, store = tmp_path / "root", tmp_path / "store"
    repo = bare_repo(root / "busy.git", 30, "busy")
    run_git(repo, "tag", "-a", "-m", "fixed", "v1", "refs/heads/main~3")
    bare_repo(root / "quiet.git", 5, "quiet")
    states = {state_of(repo)}
    stop = threading.Event()
    failures: list[BaseException] = []

    def writer() -> None:
        serial = 1000
        try:
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                if rng.random() < 0.15:
                    run_git(repo, "update-ref", "refs/heads/main", "refs/heads/main~2")
                else:
                    count = rng.randint(1, 3)
                    advance(repo, count, serial, "push", pack=rng.random() < 0.5)
                    serial += count
                states.add(state_of(repo))
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=writer, name="pusher", daemon=True)
    thread.start()
    ids = []
    try:
        for _ in range(5):
            ids.append(backup(custode, root, store, pub)["summary"]["snapshot"])
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not failures, failures
    print(f"{len(states)} states written during {len(ids)} backups")
    assert len(states) > 10, "the writer hardly ran: the test proves nothing"
    for sid in ids:
        out = tmp_path / "restored" / sid
        result = restore(custode, store, identity, out, "--at", sid)
        assert result.code == 0, result.stderr
        assert state_of(out / "busy.git") in states, sid
        run_git(out / "busy.git", "fsck", "--no-progress", "--strict")


# --------------------------------------------------------------------------- bit flips


def test_every_flipped_bit_in_the_store_is_found_by_verify_full(
    custode: Run, keys: tuple[str, Path], tmp_path: Path
) -> None:
    """Each stored file (snapshots, manifests, every .age file) with one bit flipped at its
    first byte, its last byte and ten random places: verify full fails naming that file
    (the library for every flip, the CLI, exit 6, for one flip of each kind of file)."""
    rng = seeded("bit flips")
    pub, identity = keys
    root, store = tmp_path / "root", tmp_path / "store"
    repo = bare_repo(root / "tiny.git", 3, "tiny")
    backup(custode, root, store, pub)
    advance(repo, 2, 100, "more")
    backup(custode, root, store, pub)
    host = host_of(store)
    local = LocalStore(store, create=False)
    git, ids = Git(), [load_identity(identity)]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    files = sorted(p for p in store.rglob("*") if p.is_file())
    kinds = {"snapshot" if p.parent.name == "snapshots" else p.name for p in files}
    assert kinds == {
        "snapshot",
        "manifest.json",
        "bundle.age",
        "index.age",
        "refs.age",
        "files.age",
    }
    assert sum(p.name == "manifest.json" for p in files) == 2
    assert not verify(local, load(local, host), "full", git=git, identities=ids,
                      scratch=scratch).problems  # fmt: skip
    deadline = time.monotonic() + 12
    flips, by_cli = 0, set()
    for path in files:
        key = path.relative_to(store).as_posix()
        original = path.read_bytes()
        places = [0, len(original) - 1]
        places += [rng.randrange(len(original)) for _ in range(10)]
        for n, at in enumerate(places):
            if n >= 2 and time.monotonic() > deadline:
                break
            damaged = bytearray(original)
            damaged[at] ^= 1 << rng.randrange(8)
            path.write_bytes(damaged)
            try:
                kind = "snapshot" if path.parent.name == "snapshots" else path.name
                if kind not in by_cli:
                    by_cli.add(kind)
                    result = custode("verify", "--store", store, "--identity", identity,
                                     "--level", "full")  # fmt: skip
                    assert result.code == 6, (key, at, result.stderr)
                    assert f"custode: {key}: " in result.stderr, (key, at)
                report = verify(local, load(local, host), "full", git=git, identities=ids,
                                scratch=scratch)  # fmt: skip
                named = {p.key for p in report.problems}
                # named, and nothing else blamed (a later bundle, an intact index...)
                assert named == {key}, (key, at, [p.message for p in report.problems])
                flips += 1
            finally:
                path.write_bytes(original)
    print(f"{flips} flips over {len(files)} files, {len(by_cli)} through the CLI")
    assert flips >= 2 * len(files)


def test_a_damaged_first_bundle_is_not_blamed_on_the_bundles_after_it(
    custode: Run, keys: tuple[str, Path], tmp_path: Path
) -> None:
    """A chain of two bundles with the first damaged: verify names the first; the second,
    intact, cannot be checked against its prerequisites but must not be reported damaged."""
    pub, identity = keys
    root, store = tmp_path / "root", tmp_path / "store"
    repo = bare_repo(root / "tiny.git", 3, "tiny")
    backup(custode, root, store, pub)
    advance(repo, 2, 100, "more")
    backup(custode, root, store, pub)
    first, second = sorted(store.rglob("bundle.age"))
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0x10
    first.write_bytes(data)
    result = custode("verify", "--store", store, "--identity", identity, "--level", "full")
    assert result.code == 6
    assert f"custode: {first.relative_to(store).as_posix()}: " in result.stderr
    assert f"custode: {second.relative_to(store).as_posix()}: " not in result.stderr


# --------------------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def _small_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """One backup of a.git and grp/b.git per worker: (root, store, identity)."""
    base = tmp_path_factory.mktemp("small-store")
    identity = base / "keys" / "identity.txt"
    pub = generate_identity(identity)
    root, store = two_repos(base), base / "store"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "CUSTODE_"))}
    env |= {f"XDG_{n}_HOME": str(base / "xdg" / n.lower()) for n in ("CONFIG", "STATE", "DATA")}
    subprocess.run([sys.executable, "-m", "custode", "backup", str(root), "--store", str(store),
                    "--recipient", pub], env=env, check=True, capture_output=True, timeout=120)  # fmt: skip
    return root, store, identity


@pytest.fixture
def small_store(
    _small_template: tuple[Path, Path, Path], keys: tuple[str, Path], tmp_path: Path
) -> tuple[Path, Path]:
    """(root, store): this test's own copy of a backup of a.git and grp/b.git, readable
    with ``keys``."""
    root, store, identity = _small_template
    shutil.copytree(store, tmp_path / "store", symlinks=True)
    keys[1].write_bytes(identity.read_bytes())
    return root, tmp_path / "store"


def test_a_wrong_identity_is_refused_and_nothing_is_restored(
    custode: Run, small_store: tuple[Path, Path], tmp_path: Path
) -> None:
    _, store = small_store
    other = tmp_path / "other" / "identity.txt"
    generate_identity(other)
    out = tmp_path / "out"
    result = restore(custode, store, other, out)
    once = (f"custode: identity {other} cannot decrypt these backups (they were encrypted to "
            "another key); give the matching identity with --identity")  # fmt: skip
    assert (result.code, custode_lines(result.stderr)) == (2, [once])
    assert files_under(out) == [] and leftovers(tmp_path) == []
    result = custode("verify", "--store", store, "--identity", other, "--level", "full")
    assert (result.code, custode_lines(result.stderr)) == (2, [once])


@pytest.mark.parametrize("command", ["restore", "verify"])
def test_an_identity_readable_by_others_is_refused(
    custode: Run, small_store: tuple[Path, Path], keys: tuple[str, Path], tmp_path: Path,
    command: str,
) -> None:  # fmt: skip
    _, store = small_store
    loose = tmp_path / "loose.txt"
    shutil.copyfile(keys[1], loose)
    loose.chmod(0o644)
    out = tmp_path / "out"
    args = ["--to", out] if command == "restore" else ["--level", "full"]
    result = custode(command, "--store", store, "--identity", loose, *args)
    assert result.code == 2
    assert custode_lines(result.stderr) == [
        f"custode: identity file {loose} is accessible by group or others (mode 0644): "
        f"run 'chmod 600 {loose}'"
    ]
    assert not out.exists()


@pytest.mark.parametrize("command", ["restore", "verify", "snapshots"])
def test_a_missing_store_is_named_and_not_created(
    custode: Run, keys: tuple[str, Path], tmp_path: Path, command: str
) -> None:
    missing = tmp_path / "no-store"
    out = tmp_path / "out"
    args = {
        "restore": ["--identity", keys[1], "--to", out],
        "verify": ["--identity", keys[1], "--level", "full"],
        "snapshots": [],
    }[command]
    result = custode(command, "--store", missing, *args)
    assert result.code == 4
    (line,) = custode_lines(result.stderr)
    assert str(missing) in line and "does not exist" in line
    assert not missing.exists() and not out.exists()


def test_a_store_that_cannot_be_created_is_named_and_nothing_written(
    custode: Run, keys: tuple[str, Path], tmp_path: Path
) -> None:
    root = two_repos(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    store = blocker / "store"
    result = custode("backup", root, "--store", store, "--recipient", keys[0])
    assert result.code == 4
    (line,) = custode_lines(result.stderr)
    assert str(store) in line and "Not a directory" in line
    assert blocker.read_text() == "not a directory\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod 500")
def test_an_unwritable_store_is_named_and_nothing_written(
    custode: Run, keys: tuple[str, Path], tmp_path: Path
) -> None:
    root = two_repos(tmp_path)
    store = tmp_path / "store"
    store.mkdir(mode=0o500)
    try:
        result = custode("backup", root, "--store", store, "--recipient", keys[0])
        assert result.code == 4
        (line,) = custode_lines(result.stderr)
        assert str(store) in line and "not writable" in line
        assert list(store.iterdir()) == []
    finally:
        store.chmod(0o700)


def test_a_damaged_manifest_is_named_and_only_its_repository_fails(
    custode: Run, small_store: tuple[Path, Path], keys: tuple[str, Path], tmp_path: Path
) -> None:
    root, store = small_store
    host = host_of(store)
    (manifest,) = store.glob(f"{repo_prefix(host, 'a.git')}*/manifest.json")
    key = manifest.relative_to(store).as_posix()
    data = manifest.read_bytes()
    at = data.index(b'"created":"') + len(b'"created":"')
    manifest.write_bytes(data[:at] + (b"1" if data[at : at + 1] != b"1" else b"2") + data[at + 1 :])
    result = custode("verify", "--store", store, "--identity", keys[1], "--level", "full")
    assert result.code == 6
    problem, summary = custode_lines(result.stderr)
    assert summary == "custode: verify (full) found 1 problem in the store; see the messages above"
    assert problem.startswith(f"custode: {key}: manifest {key} fails its checksum")
    assert "repositories: a.git" in problem
    out = tmp_path / "out"
    result = restore(custode, store, keys[1], out)
    assert result.code == 3
    assert f"custode: a.git: manifest {key} fails its checksum" in result.stderr
    assert not (out / "a.git").exists() and leftovers(out) == []
    assert state_of(out / "grp" / "b.git") == state_of(root / "grp" / "b.git")


def _forge(store: Path, m: RepoManifest, repository: str, root: str) -> Snapshot:
    """A copy of backup ``m`` under the name ``repository``: every file copied to the key
    that name implies, the manifest and a new latest snapshot sealed with valid checksums,
    so only the checks of the name itself can refuse it."""
    local = LocalStore(store, create=False)
    old, new = repo_prefix(m.host, m.repository), repo_prefix(m.host, repository)

    def move(ref: FileRef) -> FileRef:
        key = new + ref.key.removeprefix(old)
        local.put(key, store / ref.key)
        return dataclasses.replace(ref, key=key)

    chain = tuple(
        dataclasses.replace(
            link, bundle=move(link.bundle), index=move(link.index) if link.index else None
        )
        for link in m.chain
    )
    forged = dataclasses.replace(m, repository=repository, refs=move(m.refs),
                                 files=move(m.files), chain=chain, key="")  # fmt: skip
    local.put_bytes(forged.manifest_key, forged.to_bytes())
    now = datetime.now(UTC).isoformat(timespec="seconds")
    snap = Snapshot(m.host, new_id(), now, now, (Entry(repository, root, forged.manifest_key),))
    local.put_bytes(snap.key, snap.to_bytes())
    return snap


def test_forged_repository_names_never_leave_the_target(
    custode: Run, small_store: tuple[Path, Path], keys: tuple[str, Path], tmp_path: Path
) -> None:
    """Manifests and snapshots sealed with valid checksums naming ``../evil``, an absolute
    path or ``a/../../evil``: the restore is refused by name and writes nothing at all."""
    root, store = small_store
    host = host_of(store)
    (key,) = [k for k in LocalStore(store).list(f"hosts/{host}/repos/")
              if k.endswith("/manifest.json") and k.startswith(repo_prefix(host, "a.git"))]  # fmt: skip
    m = read_manifest(LocalStore(store), key)
    out = tmp_path / "sandbox" / "out"
    out.parent.mkdir()
    for name in ("../evil", str(tmp_path / "sandbox" / "abs"), "a/../../evil"):
        snap = _forge(store, m, name, str(root))
        before = tree(tmp_path, skip=(tmp_path / "xdg", store))
        result = restore(custode, store, keys[1], out, "--at", snap.snapshot_id)
        assert result.code == 6, (name, result.stderr)
        assert custode_lines(result.stderr) == [
            f"custode: backup names repository {name!r}, which is not a plain relative path; "
            "refusing to restore it"
        ]
        assert tree(tmp_path, skip=(tmp_path / "xdg", store)) == before, name


def test_forged_store_keys_with_dot_dot_are_refused(
    custode: Run, small_store: tuple[Path, Path], keys: tuple[str, Path], tmp_path: Path
) -> None:
    """A manifest whose file key climbs out with ``..`` (re-sealed), and a snapshot whose
    manifest key does: both are refused as damaged, and nothing is written."""
    root, store = small_store
    host = host_of(store)
    local = LocalStore(store)
    (key,) = [k for k in local.list(f"hosts/{host}/repos/")
              if k.endswith("/manifest.json") and k.startswith(repo_prefix(host, "a.git"))]  # fmt: skip
    m = read_manifest(local, key)
    other = repo_prefix(host, "grp/b.git")
    climbing = dataclasses.replace(
        m.refs, key=f"{repo_prefix(host, 'a.git')}{m.backup_id}/../../{other[-25:]}x/refs.age"
    )
    forged = dataclasses.replace(m, refs=climbing, backup_id=new_id(), key="")
    path = store / forged.manifest_key
    path.parent.mkdir(parents=True)
    path.write_bytes(forged.to_bytes())
    now = datetime.now(UTC).isoformat(timespec="seconds")
    snap = Snapshot(host, new_id(), now, now, (Entry("a.git", str(root), forged.manifest_key),))
    local.put_bytes(snap.key, snap.to_bytes())
    out = tmp_path / "out"
    result = restore(custode, store, keys[1], out, "--at", snap.snapshot_id)
    assert result.code == 3
    assert (
        f"custode: a.git: manifest {forged.manifest_key}: field 'key' names an invalid store key"
        in result.stderr
    )
    assert files_under(out) == [] and leftovers(out) == []

    # a snapshot names each backup by id, from which the key follows: an id that climbs
    # out (re-sealed with a valid checksum) makes the snapshot damaged, never a path
    snap2 = Snapshot(host, new_id(), now, now, (Entry("a.git", str(root), m.manifest_key),))
    body = json.loads(snap2.to_bytes())
    del body["checksum"]
    body["repositories"][0][2] = f"../{other[len('hosts/' + host + '/repos/') :]}{m.backup_id}"
    body["checksum"] = hashlib.sha256(canonical(body)).hexdigest()
    local.put_bytes(snap2.key, canonical(body))
    listed = custode("snapshots", "--store", store, "--json").json()
    assert snap2.key in listed["damaged"] and "malformed entry" in listed["damaged"][snap2.key]
    result = restore(custode, store, keys[1], out, "--at", snap2.snapshot_id)
    assert result.code == 6  # named, and refused as damaged (not "no such snapshot")
    assert f"custode: snapshot {snap2.snapshot_id} cannot be read: " in result.stderr
    assert files_under(out) == []


@pytest.mark.parametrize("link", ["grp", "grp/b.git"])
def test_a_symlink_on_the_way_to_a_destination_is_refused(
    custode: Run, small_store: tuple[Path, Path], keys: tuple[str, Path], tmp_path: Path,
    link: str,
) -> None:  # fmt: skip
    _, store = small_store
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / link).parent.mkdir(parents=True, exist_ok=True)
    (out / link).symlink_to(elsewhere)
    result = restore(custode, store, keys[1], out)
    assert result.code == 2
    assert custode_lines(result.stderr) == [
        f"custode: {out / link} is a symlink; refusing to restore grp/b.git through it (remove it)"
    ]
    assert list(elsewhere.iterdir()) == []
    assert not (out / "a.git").exists()


def test_an_occupied_destination_needs_force(
    custode: Run, small_store: tuple[Path, Path], keys: tuple[str, Path], tmp_path: Path
) -> None:
    root, store = small_store
    out = tmp_path / "out"
    (out / "a.git").mkdir(parents=True)
    (out / "a.git" / "keep.txt").write_text("mine\n")
    result = restore(custode, store, keys[1], out)
    assert result.code == 2
    assert custode_lines(result.stderr) == [
        f"custode: {out / 'a.git'} is not empty; restore into an empty --to, or pass --force "
        "to replace"
    ]
    assert (out / "a.git" / "keep.txt").read_text() == "mine\n"
    assert not (out / "grp").exists()
    result = restore(custode, store, keys[1], out, "--force")
    assert result.code == 0, result.stderr
    assert not (out / "a.git" / "keep.txt").exists()
    for name in ("a.git", "grp/b.git"):
        assert state_of(out / name) == state_of(root / name)
    assert leftovers(out) == []


def test_disk_full_during_restore_leaves_nothing_that_looks_like_a_repository(
    custode: Run, keys: tuple[str, Path], tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    """A 1 MiB tmpfs as --to; big.git holds 3 MiB of random data, small.git a few KiB. The
    big one fails with a disk-full message and leaves nothing behind, the small one is
    restored."""
    prefix = unshare_prefix()
    if prefix is None:
        pytest.skip("cannot create a mount namespace here (unshare refused)")
    rng = seeded("disk full")
    pub, identity = keys
    root, store = tmp_path / "root", tmp_path / "store"
    big = root / "big.git"
    run_git(None, "init", "-q", "--bare", big)
    fast_import(big, _blob_commit(rng.randbytes(3 << 20)))
    bare_repo(root / "small.git", 4, "small")
    backup(custode, root, store, pub)
    mnt, report = tmp_path / "small-disk", tmp_path / "report"
    mnt.mkdir()
    report.mkdir()
    cmd = shlex.join([sys.executable, "-m", "custode", "restore", "--store", str(store),
                      "--identity", str(identity), "--to", str(mnt / "out"), "--jobs", "1"])  # fmt: skip
    q = {k: shlex.quote(str(v)) for k, v in {"mnt": mnt, "report": report}.items()}
    script = f"""
        set -u
        mount -t tmpfs -o size=1m tmpfs {q["mnt"]}
        {cmd} > {q["report"]}/out 2> {q["report"]}/err
        echo $? > {q["report"]}/rc
        cd {q["mnt"]} && find . | sort > {q["report"]}/find
        git --git-dir out/small.git fsck --no-progress > {q["report"]}/fsck 2>&1
        echo $? >> {q["report"]}/rc
    """
    proc = subprocess.run([*prefix, "sh", "-c", script], env=isolated_env,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rc, err = (report / "rc").read_text().split(), (report / "err").read_text()
    found = (report / "find").read_text().splitlines()
    assert rc[0] == "3", err
    assert custode_lines(err)[0] == (
        f"custode: big.git: disk full restoring big.git into {mnt / 'out'}; nothing was left "
        "there; free space and restore again"
    ), err
    assert not any(line.startswith("./out/big.git") for line in found), found
    assert not any(HIDDEN in line for line in found), found
    assert "./out/small.git/HEAD" in found
    assert rc[1] == "0", (report / "fsck").read_text()
