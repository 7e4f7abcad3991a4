"""Shared history stored once: forks and a pool's borrowers build on another repository's
backup (``backup/plan.py``, ``backup/engine.py``), and restore, verify, forget and prune
follow those dependencies as they follow a chain."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custode.backup.catalog import load
from custode.backup.chain import Manifests
from custode.backup.crypto import generate_identity, load_identity, parse_recipient
from custode.backup.manifest import repo_prefix
from custode.backup.plan import Known, share
from custode.backup.prune import forget
from custode.backup.restore import restore_repository
from custode.backup.retention import Policy
from custode.backup.stores import open_store
from custode.backup.verify import verify
from custode.config.model import Config
from custode.git.runner import Git
from custode.jobs import backup as backup_job
from custode.scan.fleet import scan
from fixtures.builders import fast_import, history_stream, run_git

HOST = "forkhost"
GIT = Git()


def _state(repo: Path) -> str:
    refs = run_git(repo, "for-each-ref", "--format=%(objectname) %(refname)")
    return refs + (repo / "HEAD").read_text()


class Fleet:
    def __init__(self, tmp: Path) -> None:
        self.tmp, self.root = tmp, tmp / "root"
        base = self.root / "base.git"
        run_git(None, "init", "-q", "--bare", base)
        fast_import(base, history_stream("refs/heads/main", 30, label="base "))
        for n, branch in enumerate(("dev", "release")):
            fast_import(base, history_stream(f"refs/heads/{branch}", 3, start=100 + 10 * n,
                                             parent="refs/heads/main~5", label=branch))  # fmt: skip
        run_git(base, "tag", "v1", "refs/heads/main~10")
        self.identity = tmp / "keys" / "identity.txt"
        self.public = generate_identity(self.identity)
        self.store = open_store(str(tmp / "store"))
        self.state, self.serial = tmp / "state", 1000
        self.snapshots: dict[str, dict[str, str]] = {}  # snapshot id -> repository -> state

    def fork(self, name: str, source: str = "base.git") -> Path:
        path = self.root / name
        run_git(None, "clone", "-q", "--bare", "--no-local", self.root / source, path)
        run_git(path, "config", "--remove-section", "remote.origin")
        return path

    def push(self, name: str, branch: str = "main", n: int = 1) -> None:
        repo = self.root / name
        exists = run_git(repo, "for-each-ref", f"refs/heads/{branch}").strip()
        parent = f"refs/heads/{branch}^0" if exists else "refs/heads/main^0"
        fast_import(repo, history_stream(f"refs/heads/{branch}", n, start=self.serial,
                                         parent=parent, label=f"{name} "))  # fmt: skip
        self.serial += n

    def backup(self) -> backup_job.BackupResult:
        job = backup_job.BackupJob(store=self.store, host=HOST,
                                   recipients=[parse_recipient(self.public)],
                                   state_dir=self.state, git=GIT, scratch=self.tmp / "scratch",
                                   jobs=2)  # fmt: skip
        result = backup_job.backup(job, scan([self.root], Config().discovery).states)
        assert not result.failed, [r.message for r in result.failed]
        assert result.snapshot is not None
        self.snapshots[result.snapshot.snapshot_id] = {
            r.repository: _state(self.root / r.repository) for r in result.repositories
        }
        return result

    def restores_exactly(self, label: str) -> None:
        """Every remaining snapshot, each repository alone, exactly as it was then."""
        known = Manifests(self.store)
        for snap in load(self.store, HOST).snapshots:
            for entry in snap.entries:
                m = known.load(entry.manifest)
                dest = self.tmp / "out" / label / snap.snapshot_id / entry.repository
                restore_repository(self.store, m, [load_identity(self.identity)], GIT, dest)
                assert _state(dest) == self.snapshots[snap.snapshot_id][entry.repository]
                assert not (dest / "objects" / "info" / "alternates").exists()
                run_git(dest, "fsck", "--strict", "--no-dangling")
                shutil.rmtree(dest)

    def base_of(self, result: backup_job.BackupResult, name: str) -> str:
        """The repository directory the backup of ``name`` builds on ("" for its own)."""
        (r,) = [r for r in result.repositories if r.repository == name]
        m = Manifests(self.store).load(r.manifest_key)
        own = repo_prefix(HOST, name)
        outside = [a.key for a in m.ancestors if not a.key.startswith(own)]
        return outside[0].rsplit("/", 2)[0] + "/" if outside else ""


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(tmp_path)


def test_forks_are_stored_once_and_restore_exactly_across_forget_and_prune(
    fleet: Fleet,
) -> None:
    for n in range(3):
        fleet.fork(f"fork{n}.git")
        fleet.push(f"fork{n}.git", f"feature{n}", n + 1)
    first = fleet.backup()
    sizes = {r.repository: r.bytes_added for r in first.repositories}
    base_dir = repo_prefix(HOST, "base.git")
    for n in range(3):
        assert fleet.base_of(first, f"fork{n}.git") == base_dir
        assert sizes[f"fork{n}.git"] < sizes["base.git"] / 3  # its own objects only
    reasons = {r.repository: r.reason for r in first.repositories}
    assert "on base.git's backup (shares" in reasons["fork0.git"]
    # a day's pushes to base and forks, a force-push, a deleted branch
    fleet.push("base.git", "main", 2)
    fleet.push("fork1.git", "feature1", 1)
    run_git(fleet.root / "fork2.git", "update-ref", "refs/heads/feature2", "refs/heads/main~3")
    run_git(fleet.root / "fork0.git", "update-ref", "-d", "refs/heads/dev")
    second = fleet.backup()
    assert fleet.base_of(second, "fork1.git") == base_dir  # its chain goes on
    fleet.restores_exactly("two")
    # the base's older snapshot goes: the forks' chains still need its files
    forget(fleet.store, HOST, Policy(last=1), do_prune=True)
    fleet.restores_exactly("pruned")
    report = verify(fleet.store, load(fleet.store, HOST), "full", git=GIT,
                    identities=[load_identity(fleet.identity)], scratch=fleet.tmp)  # fmt: skip
    assert report.ok, [p.message for p in report.problems]


def test_a_fork_whose_base_is_deleted_still_restores_and_backs_up(fleet: Fleet) -> None:
    fleet.fork("fork.git")
    fleet.push("fork.git", "mine", 2)
    fleet.backup()
    shutil.rmtree(fleet.root / "base.git")
    fleet.push("fork.git", "mine", 1)
    again = fleet.backup()
    assert [r.repository for r in again.repositories] == ["fork.git"]
    forget(fleet.store, HOST, Policy(last=1), do_prune=True)
    fleet.restores_exactly("orphan")


def test_a_pools_borrowers_build_on_the_pool_and_restore_complete(fleet: Fleet) -> None:
    pool = fleet.root / "@pools" / "pool.git"
    pool.parent.mkdir(parents=True)
    shutil.move(fleet.root / "base.git", pool)
    for n in range(2):  # GitLab-like: a thin borrower whose objects are mostly the pool's
        member = fleet.root / f"member{n}.git"
        run_git(None, "clone", "-q", "--bare", "--shared", pool, member)
        run_git(member, "config", "--remove-section", "remote.origin")
        fleet.push(f"member{n}.git", "main", 1)
        run_git(member, "update-ref", "-d", "refs/heads/dev")
        run_git(member, "update-ref", "-d", "refs/heads/release")
        run_git(member, "update-ref", "-d", "refs/tags/v1")
    result = fleet.backup()
    reasons = {r.repository: r.reason for r in result.repositories}
    assert "borrows its objects" in reasons["member0.git"], reasons
    assert fleet.base_of(result, "member1.git") == repo_prefix(HOST, "@pools/pool.git")
    fleet.restores_exactly("pool")


def test_a_damaged_base_bundle_is_reported_against_every_repository_needing_it(
    fleet: Fleet,
) -> None:
    for n in range(2):
        fleet.fork(f"fork{n}.git")
        fleet.push(f"fork{n}.git", "x", 1)
    result = fleet.backup()
    (base,) = [r for r in result.repositories if r.repository == "base.git"]
    bundle = Manifests(fleet.store).load(base.manifest_key).chain[0].bundle.key
    path = Path(fleet.store.locate(bundle))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    report = verify(fleet.store, load(fleet.store, HOST), "full", git=GIT,
                    identities=[load_identity(fleet.identity)], scratch=fleet.tmp)  # fmt: skip
    (problem,) = [p for p in report.problems if p.key == bundle]
    assert problem.repositories == {"base.git", "fork0.git", "fork1.git"}


def test_the_plan_picks_one_base_per_family_depth_one() -> None:
    t = [f"{n:040x}" for n in range(20)]
    fleet = {
        "up.git": Known("up.git", frozenset(t[:10]), starts_chain=True),  # the upstream
        "a.git": Known("a.git", frozenset(t[:11]), starts_chain=True),  # one branch more
        "b.git": Known("b.git", frozenset(t[:8] + t[12:13]), starts_chain=True),
        "lone.git": Known("lone.git", frozenset(t[15:17]), starts_chain=True),
        "old.git": Known("old.git", frozenset(t[17:20])),  # has a chain: a base already
        "new.git": Known("new.git", frozenset(t[17:19]), starts_chain=True),
        "member.git": Known("member.git", frozenset(t[13:14]), "lone.git", starts_chain=True),
    }
    plan = share(fleet)
    assert {r: s.base for r, s in plan.items()} == {
        "a.git": "up.git", "b.git": "up.git", "new.git": "old.git", "member.git": "lone.git",
    }  # fmt: skip
    assert plan["a.git"].why == "shares 10 of its 11 tips"
    assert not set(plan) & {s.base for s in plan.values()}  # no base builds on another


def test_an_upstream_mirror_with_many_refs_of_its_own_is_the_forks_base() -> None:
    """A forge's upstream mirror holds hundreds of refs its forks lack (refs/pull/...):
    it still is the base every fork builds on, not one fork the others resemble."""
    branches = [f"{n:040x}" for n in range(58)]
    pulls = [f"{n + 1000:040x}" for n in range(600)]
    fleet = {"upstream.git": Known("upstream.git", frozenset(branches + pulls), starts_chain=True)}
    for n in range(5):
        own = f"{n + 5000:040x}"
        fleet[f"fork{n}.git"] = Known(f"fork{n}.git", frozenset([*branches, own]),
                                      starts_chain=True)  # fmt: skip
    plan = share(fleet)
    assert {r: s.base for r, s in plan.items()} == {f"fork{n}.git": "upstream.git"
                                                     for n in range(5)}  # fmt: skip


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("fork"), st.integers(0, 2)),
        st.tuples(st.just("push"), st.integers(0, 3)),
        st.tuples(st.just("force"), st.integers(0, 3)),
        st.tuples(st.just("delete"), st.integers(1, 3)),
        st.tuples(st.just("backup"), st.just(0)),
        st.tuples(st.just("forget"), st.integers(1, 2)),
    ),
    min_size=3,
    max_size=9,
)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
@given(ops=OPS)
def test_random_fork_histories_restore_exactly(tmp_path_factory: pytest.TempPathFactory,
                                               ops: list[tuple[str, int]]) -> None:  # fmt: skip
    fleet = Fleet(tmp_path_factory.mktemp("forks"))
    repos = ["base.git"]
    for kind, n in [*ops, ("backup", 0)]:
        if kind == "fork" and f"fork{n}.git" not in repos:
            fleet.fork(f"fork{n}.git", repos[-1] if n else "base.git")
            repos.append(f"fork{n}.git")
        elif kind == "push":
            fleet.push(repos[n % len(repos)], f"b{n}", 1 + n % 2)
        elif kind == "force":
            repo = fleet.root / repos[n % len(repos)]
            run_git(repo, "update-ref", "refs/heads/main", "refs/heads/main~2")
        elif kind == "delete" and n < len(repos):
            shutil.rmtree(fleet.root / repos.pop(n))
        elif kind == "backup":
            fleet.backup()
        elif kind == "forget" and fleet.snapshots:
            forget(fleet.store, HOST, Policy(last=n), do_prune=True)
    fleet.restores_exactly("random")
