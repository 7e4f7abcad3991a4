"""Zero downtime: clients push, delete, force-push, clone and fetch while custode maintains.

The must-show of the maintenance issue. A neglected bare repository (a copy of the fleet's
many-packs.git, grown with a bulk history so a repack takes a noticeable time) is served to
client threads running plain ``git`` (file:// URLs and plain paths, the fixture git
environment) while ``custode maintain`` runs on it again and again in subprocesses. Every
run must find real work (a full repack with cruft packs, refs to pack, a commit-graph): each
starts with fresh XDG directories (no history, so no full-repack cooldown) and the driver
drops a redundant pack into the repository before it.

Each client owns its branches (client 0 also owns ``main``), so what every ref must point
at afterwards is known exactly. Checked: zero failed client operations, every maintain run
exited 0, every pushed commit still exists (force-pushed-away and deleted ones too: cruft
expiration is two weeks), every surviving branch points where its last push put it,
deleted branches are gone, the other refs are untouched, ``git fsck --strict`` is clean,
a last clone is complete (a lying bitmap would not show in fsck), and several maintain
runs really overlapped the client traffic.

Deterministic by construction: seeded per-client random sequences, disjoint ref
namespaces, clients paced by the maintain runs, every wait and join bounded.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fixtures.builders import Fleet, fast_import, git_env, history_stream, run_git

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 20261126
CLIENTS = 4
OPS_PER_CLIENT = 50  # 200 client operations in all
MIN_OVERLAPPING_RUNS = 8  # clients are paced so that at least this many runs start
BULK_COMMITS = 3000  # grows the repository so a full repack takes a noticeable time
TRAFFIC_DEADLINE = 150.0  # seconds; a hard bound, far above the expected ~30 s
RUN_TIMEOUT = 120.0  # one maintain run
GIT_TIMEOUT = 60.0  # one client git command
CLIENT_CONFIG = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "gc.auto=0",
    "maintenance.auto=false",
    "fetch.writeCommitGraph=false",
    "advice.detachedHead=false",
)
# Client operation kinds and their weights.
KINDS = (
    ("push_new", 25),
    ("push_existing", 22),
    ("delete", 10),
    ("force_push", 10),
    ("clone", 13),
    ("fetch", 20),
)


@dataclass
class Op:
    client: int
    index: int
    kind: str
    command: list[str]
    code: int
    stderr: str
    start: float
    end: float


@dataclass
class MaintainRun:
    index: int
    code: int
    stdout: str
    stderr: str
    start: float
    end: float

    def seconds(self, kind: str) -> float:
        """How long the run's ``kind`` task took (0 when it did not run)."""
        try:
            repos = json.loads(self.stdout)["repositories"]
        except (ValueError, KeyError, TypeError):
            return 0.0
        return sum(
            float(t.get("seconds", 0)) for r in repos for t in r["tasks"] if t["kind"] == kind
        )

    def executed(self) -> dict[str, str]:
        """Task kind -> outcome, as the run's JSON reports them ({} when unreadable)."""
        try:
            repos = json.loads(self.stdout)["repositories"]
        except (ValueError, KeyError, TypeError):
            return {}
        return {t["kind"]: t.get("outcome", "?") for r in repos for t in r["tasks"]}


@dataclass
class Shared:
    """What the driver and the clients share (guarded by ``cond``)."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    runs_started: int = 0
    deadline: float = 0.0

    def wait_for_runs(self, count: int) -> None:
        with self.cond:
            self.cond.wait_for(
                lambda: self.runs_started >= count or time.monotonic() > self.deadline,
                timeout=max(0.0, self.deadline - time.monotonic()),
            )


def _git(args: Iterable[str | os.PathLike[str]], cwd: Path | None = None) -> list[str]:
    cmd = ["git"]
    for item in CLIENT_CONFIG:
        cmd += ["-c", item]
    if cwd is not None:
        cmd += ["-C", str(cwd)]
    return cmd + [os.fspath(a) for a in args]


class Client:
    """One client: its own non-bare clone, its own branches, a seeded sequence of operations."""

    def __init__(self, cid: int, bare: Path, work_root: Path, shared: Shared) -> None:
        self.cid = cid
        self.bare = bare
        self.url = bare.as_uri()  # file://
        self.work = work_root / f"client-{cid}"
        self.clones = work_root / f"clones-{cid}"
        self.shared = shared
        self.rng = random.Random(SEED * 100 + cid)  # noqa: S311  (reproducible, not secret)
        self.env = git_env()
        self.ops: list[Op] = []
        #: refs/heads/<name> -> object id the last push put there; None: deleted
        self.expected: dict[str, str | None] = {}
        self.pushed: set[str] = set()  # every commit pushed (also those rewritten away)
        self.branches: list[str] = []  # own branches that exist on the server
        self.serial = 1_000_000 * (cid + 1)
        self.error: BaseException | None = None

    # -- plumbing -----------------------------------------------------------------------

    def op(
        self, index: int, kind: str, args: list[str | os.PathLike[str]], cwd: Path | None
    ) -> bool:
        cmd = _git(args, cwd)
        start = time.monotonic()
        try:
            proc = subprocess.run(
                cmd, capture_output=True, env=self.env, timeout=GIT_TIMEOUT, check=False
            )
            code, stderr = proc.returncode, proc.stderr.decode(errors="replace")
        except subprocess.TimeoutExpired as exc:
            code = -9
            stderr = (
                f"timed out after {GIT_TIMEOUT}s: {(exc.stderr or b'').decode(errors='replace')}"
            )
        self.ops.append(Op(self.cid, index, kind, cmd, code, stderr, start, time.monotonic()))
        return code == 0

    def local(self, *args: str) -> str:
        """A local (not client-traffic) git command in the client's clone; raises on error."""
        return run_git(self.work, *args).strip()

    def commits(self, ref: str, parent: str, index: int) -> tuple[str, list[str]]:
        """1-4 new commits on local ``ref`` on top of ``parent``: (new tip, new commits)."""
        count = self.rng.randint(1, 4)
        label = f"client {self.cid} op {index} "
        stream = history_stream(ref, count, start=self.serial, parent=parent, label=label)
        self.serial += count
        fast_import(self.work, stream, pack=self.rng.random() < 0.5)
        tip = self.local("rev-parse", ref)
        new = self.local("rev-list", tip, "--not", parent).split()
        assert len(new) == count, (ref, parent, new)
        return tip, new

    def base(self) -> str:
        return self.local("rev-parse", "refs/remotes/origin/main")

    # -- operations ---------------------------------------------------------------------

    def push(
        self, index: int, kind: str, branch: str, *, tip: str, new: list[str], force: bool
    ) -> None:
        ref = f"refs/heads/{branch}"
        args: list[str | os.PathLike[str]] = ["push", "-q"]
        if force:
            args.append("--force")
        # Alternate the transports: file:// URL and plain path.
        args += [self.url if index % 2 else self.bare, f"{ref}:{ref}"]
        if self.op(index, kind, args, self.work):
            self.expected[branch] = tip
            self.pushed.update(new)
            if branch not in self.branches and branch != "main":
                self.branches.append(branch)

    def push_new(self, index: int) -> None:
        branch = f"client-{self.cid}/b{index:03d}"
        tip, new = self.commits(f"refs/heads/{branch}", self.base(), index)
        self.push(index, "push_new", branch, tip=tip, new=new, force=False)

    def push_existing(self, index: int) -> None:
        choices = self.branches + (["main"] if self.cid == 0 else [])
        if not choices:
            return self.push_new(index)
        branch = self.rng.choice(choices)
        parent = self.local("rev-parse", f"refs/heads/{branch}")
        tip, new = self.commits(f"refs/heads/{branch}", parent, index)
        self.push(index, "push_existing", branch, tip=tip, new=new, force=False)
        return None

    def force_push(self, index: int) -> None:
        if not self.branches:
            return self.push_new(index)
        branch = self.rng.choice(self.branches)
        # Rewrite: new commits on the branch tip's parent, the old tip is pushed away.
        parent = self.local("rev-parse", f"refs/heads/{branch}~1")
        self.local("update-ref", "-d", f"refs/heads/{branch}")  # fast-import only fast-forwards
        tip, new = self.commits(f"refs/heads/{branch}", parent, index)
        self.push(index, "force_push", branch, tip=tip, new=new, force=True)
        return None

    def delete(self, index: int) -> None:
        if len(self.branches) < 2:
            return self.push_new(index)
        branch = self.branches[self.rng.randrange(len(self.branches))]
        target = self.url if index % 2 else self.bare
        if self.op(index, "delete", ["push", "-q", target, f":refs/heads/{branch}"], self.work):
            self.branches.remove(branch)
            self.expected[branch] = None
            run_git(self.work, "update-ref", "-d", f"refs/heads/{branch}")
        return None

    def clone(self, index: int) -> None:
        dest = self.clones / f"clone-{index:03d}"
        if index % 2:
            args: list[str | os.PathLike[str]] = ["clone", "-q", "--bare", self.url, dest]
        else:  # a plain path, through the git transport rather than copying files
            args = ["clone", "-q", "--bare", "--no-local", self.bare, dest]
        if self.op(index, "clone", args, None):
            shutil.rmtree(dest, ignore_errors=True)

    def fetch(self, index: int) -> None:
        if index % 2:
            args: list[str | os.PathLike[str]] = ["fetch", "-q", "--prune", "origin"]
        else:
            args = ["fetch", "-q", "--prune", self.bare, "+refs/heads/*:refs/remotes/origin/*"]
        self.op(index, "fetch", args, self.work)

    # -- the loop -----------------------------------------------------------------------

    def setup(self) -> None:
        run_git(None, "clone", "-q", "--no-checkout", self.url, self.work)
        self.clones.mkdir(parents=True)

    def run(self) -> None:
        try:
            kinds, weights = zip(*KINDS, strict=True)
            actions = {name: getattr(self, name) for name in kinds}
            for index in range(OPS_PER_CLIENT):
                # Pace the traffic by the maintain runs so that it spans several of them.
                self.shared.wait_for_runs(1 + index * MIN_OVERLAPPING_RUNS // OPS_PER_CLIENT)
                if time.monotonic() > self.shared.deadline:
                    raise TimeoutError(f"client {self.cid}: deadline passed at operation {index}")
                actions[self.rng.choices(kinds, weights)[0]](index)
        except BaseException as exc:  # reported by the test
            self.error = exc


def _neglect(bare: Path, salt: int) -> None:
    """Add a redundant pack (objects of a few recent commits): a full repack is due again."""
    count = 2 + salt % 3
    objects = run_git(bare, "rev-list", "--objects", f"--max-count={count}", "refs/heads/main")
    run_git(bare, "pack-objects", "-q", bare / "objects" / "pack" / "pack", input=objects.encode())


def _maintain(
    root: Path, env: dict[str, str], index: int, base: Path, args: tuple[str, ...] = ()
) -> MaintainRun:
    run_env = dict(env)
    for name in ("CONFIG", "STATE", "DATA", "CACHE"):  # fresh: no history
        run_env[f"XDG_{name}_HOME"] = str(base / f"run-{index:03d}" / name.lower())
    config = base / f"run-{index:03d}" / "config" / "custode" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    # a full repack each run: a second pack calls for a repack, a full one below 1 GiB
    config.write_text("[maintenance]\nfull_repack_cooldown = 0\nuntracked_packs_min = 1\n"
                      "small_repository = 1073741824\n")  # fmt: skip
    start = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "custode", "maintain", *args, "--json", str(root)],
            capture_output=True,
            text=True,
            env=run_env,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, out, err = -9, str(exc.stdout or ""), f"timed out after {RUN_TIMEOUT}s"
    return MaintainRun(index, code, out, err, start, time.monotonic())


def _refs(bare: Path) -> dict[str, str]:
    out = run_git(bare, "for-each-ref", "--format=%(objectname) %(refname)")
    return {name: oid for oid, name in (line.split(" ", 1) for line in out.splitlines())}


def _overlaps(a_start: float, a_end: float, b_start: float, b_end: float) -> bool:
    return a_start < b_end and b_start < a_end


def test_clients_see_zero_downtime_during_maintenance(
    tmp_path: Path, fleet: Fleet, isolated_env: dict[str, str]
) -> None:
    root = tmp_path / "root"
    bare = root / "many-packs.git"
    shutil.copytree(fleet.many_packs, bare, symlinks=True)
    # Grow it: a bulk history in its own pack, so a repack has real work to do.
    fast_import(bare, history_stream("refs/heads/bulk", BULK_COMMITS, start=10_000, files=40))
    # A hosting server's settings: no auto gc after a push (custode is the housekeeper);
    # small pushes go loose, bigger ones are kept as packs.
    run_git(bare, "config", "receive.autogc", "false")
    run_git(bare, "config", "gc.auto", "0")
    run_git(bare, "config", "receive.unpackLimit", "10")
    xdg = tmp_path / "xdg-runs"

    dry = _maintain(root, isolated_env, 0, xdg, ("--dry-run",))
    assert dry.code == 0, dry.stderr
    planned = [t["kind"] for r in json.loads(dry.stdout)["repositories"] for t in r["tasks"]]
    assert "full_repack" in planned, planned

    refs_before = _refs(bare)
    shared = Shared()
    clients = [Client(cid, bare, tmp_path / "clients", shared) for cid in range(CLIENTS)]
    for client in clients:
        client.setup()

    runs: list[MaintainRun] = []
    started = time.monotonic()
    shared.deadline = started + TRAFFIC_DEADLINE
    threads = [threading.Thread(target=c.run, name=f"client-{c.cid}", daemon=True) for c in clients]
    for thread in threads:
        thread.start()
    index = 0
    while any(t.is_alive() for t in threads) and time.monotonic() < shared.deadline:
        index += 1
        _neglect(bare, index)
        with shared.cond:
            shared.runs_started += 1
            shared.cond.notify_all()
        runs.append(_maintain(root, isolated_env, index, xdg))
    traffic_end = time.monotonic()
    with shared.cond:  # release any client still waiting for a run
        shared.runs_started += 10_000
        shared.cond.notify_all()
    for thread in threads:
        thread.join(timeout=max(1.0, shared.deadline + 30 - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "client threads did not finish"

    # A last run on the quiet repository must also succeed.
    _neglect(bare, index + 1)
    runs.append(_maintain(root, isolated_env, index + 1, xdg))
    total = time.monotonic() - started

    ops = [op for c in clients for op in c.ops]
    traffic_runs = runs[:-1]
    overlapping = [
        r for r in traffic_runs if any(_overlaps(r.start, r.end, o.start, o.end) for o in ops)
    ]
    full_ok = [r for r in overlapping if r.executed().get("full_repack") == "ok"]
    ops_in_runs = sum(
        any(_overlaps(r.start, r.end, o.start, o.end) for r in traffic_runs) for o in ops
    )
    by_kind: dict[str, int] = {}
    for o in ops:
        by_kind[o.kind] = by_kind.get(o.kind, 0) + 1
    print(
        f"\nzero downtime: {len(ops)} client operations {by_kind}, {ops_in_runs} during a "
        f"maintain run; {len(traffic_runs)} maintain runs during traffic "
        f"({len(overlapping)} overlapping, {len(full_ok)} with a full repack done), "
        f"run times {[round(r.end - r.start, 2) for r in runs]}, of which full repack "
        f"{[round(r.seconds('full_repack'), 2) for r in runs]}; traffic "
        f"{traffic_end - started:.1f}s, total {total:.1f}s"
    )
    for run in runs:
        print(f"  maintain run {run.index}: exit {run.code}, tasks {run.executed()}")

    errors = [f"client {c.cid}: {c.error!r}" for c in clients if c.error is not None]
    assert not errors, errors
    failed_ops = [o for o in ops if o.code != 0]
    assert not failed_ops, "failed client operations:\n" + "\n".join(
        f"client {o.client} op {o.index} {o.kind} exit {o.code}: {' '.join(o.command)}\n{o.stderr}"
        for o in failed_ops
    )
    assert len(ops) == CLIENTS * OPS_PER_CLIENT
    failed_runs = [r for r in runs if r.code != 0]
    assert not failed_runs, "failed maintain runs:\n" + "\n".join(
        f"run {r.index} exit {r.code}:\n{r.stderr}\n{r.stdout}" for r in failed_runs
    )
    for run in runs:
        outcomes = run.executed()
        assert outcomes, f"run {run.index} reported no task: {run.stdout}"
        assert "failed" not in outcomes.values(), (run.index, run.stdout)
    assert len(overlapping) >= MIN_OVERLAPPING_RUNS - 1, [(r.start, r.end) for r in runs]
    assert len(full_ok) >= 3, [r.executed() for r in overlapping]

    # Every pushed commit exists, including those force-pushed away or on deleted branches.
    pushed = set().union(*(c.pushed for c in clients))
    assert len(pushed) > CLIENTS * OPS_PER_CLIENT // 3
    check = run_git(
        bare, "cat-file", "--batch-check=%(objectname) %(objecttype)",
        input="".join(f"{oid}\n" for oid in sorted(pushed)).encode(),
    )  # fmt: skip
    lost = [line for line in check.splitlines() if not line.endswith(" commit")]
    assert not lost, f"{len(lost)} pushed commits are gone: {lost[:10]}"

    # Every ref is where the last push put it; deleted ones are gone; the rest untouched.
    expected = {f"refs/heads/{k}": v for c in clients for k, v in c.expected.items()}
    refs_after = _refs(bare)
    for ref, oid in sorted(refs_before.items()):
        if ref not in expected:
            assert refs_after.get(ref) == oid, (ref, oid, refs_after.get(ref))
    for ref, want in sorted(expected.items()):
        assert refs_after.get(ref) == want, (ref, want, refs_after.get(ref))
    assert set(refs_after) == set(refs_before) | {r for r, v in expected.items() if v}

    fsck = subprocess.run(
        ["git", "--git-dir", str(bare), "fsck", "--strict", "--no-progress"],
        capture_output=True, text=True, env=git_env(), check=False,
    )  # fmt: skip
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr

    # fsck reads no bitmap: a clone is what trusts them. One that lies lost the same object
    # for every clone, run after run (docs/maintenance-heuristics.md).
    clone = subprocess.run(
        ["git", "clone", "-q", "--bare", "--no-local", str(bare), str(tmp_path / "last.git")],
        capture_output=True, text=True, env=git_env(), timeout=GIT_TIMEOUT, check=False,
    )  # fmt: skip
    assert clone.returncode == 0, clone.stderr
