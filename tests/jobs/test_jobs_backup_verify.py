"""The backup and verify jobs called as the core (``custode.jobs``), without click, on
real repositories (a clone of a corpus bundle beside generated ones): their typed results
say, per repository, what a backup did and why (new, unchanged since its last backup and
not read, failed), and what verify found (the damaged file by name, each drill timed);
an interrupt comes back in the result, not as an exception."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from custode import interrupts
from custode.backup.crypto import generate_identity, load_identity, parse_recipient
from custode.backup.stores import open_store
from custode.config.model import Config
from custode.git.runner import Git
from custode.jobs import backup as backup_job
from custode.jobs import verify as verify_job
from custode.records.state import TaskHistory
from custode.scan.fleet import scan
from custode.scan.repostate import RepoState
from fixtures.builders import fast_import, history_stream, run_git
from fixtures.paths import CORPUS

pytestmark = pytest.mark.integration
BUNDLE = CORPUS / "sqlite-utils.bundle"
HOST = "jobhost"
NAMES = ["a.git", "org/b.git", "sqlite-utils.git"]


class Fleet:
    """A root of repositories, a store, keys and a state directory."""

    def __init__(self, tmp: Path) -> None:
        self.root, self.state = tmp / "root", tmp / "state"
        for n, name in enumerate(NAMES[:2]):
            run_git(None, "init", "-q", "--bare", self.root / name)
            fast_import(self.root / name, history_stream("refs/heads/main", 3 + n))
        real = self.root / NAMES[2]
        run_git(None, "clone", "-q", "--mirror", "--no-local", BUNDLE, real)
        run_git(real, "config", "--remove-section", "remote.origin")
        self.identity = tmp / "keys" / "identity.txt"
        self.public = generate_identity(self.identity)
        self.store_dir = tmp / "store"
        self.store = open_store(str(self.store_dir))
        self.git = Git.from_config(Config().git)
        self.scratch = tmp / "scratch"

    def states(self) -> list[RepoState]:
        return scan([self.root], Config().discovery).states

    def backup(
        self, states: list[RepoState] | None = None, **given: object
    ) -> backup_job.BackupResult:
        job = backup_job.BackupJob(
            store=self.store,
            host=HOST,
            recipients=[parse_recipient(self.public)],
            state_dir=self.state,
            git=self.git,
            scratch=self.scratch,
            jobs=2,
            **given,  # type: ignore[arg-type]
        )
        return backup_job.backup(job, self.states() if states is None else states)

    def verify(self, level: str, **given: object) -> verify_job.VerifyResult:
        job = verify_job.VerifyJob(
            store=self.store,
            host=HOST,
            state_dir=self.state,
            git=self.git,
            scratch=self.scratch,
            level=level,
            identities=[load_identity(self.identity)] if level != "quick" else [],
            identity_file=self.identity,
            **given,  # type: ignore[arg-type]
        )
        return verify_job.verify(job)

    def history(self, command: str) -> list[tuple[str, str, str]]:
        """Each repository row of the last ``command`` run: (repository, task, outcome)."""
        with sqlite3.connect(self.state / "state.db") as db:
            return db.execute(
                "SELECT repository, task, outcome FROM repository_results WHERE run_id = "
                "(SELECT max(id) FROM runs WHERE command = ?) ORDER BY repository",
                (command,),
            ).fetchall()


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    if not BUNDLE.is_file():
        pytest.skip(f"{BUNDLE} is missing (the shared corpus)")
    return Fleet(tmp_path)


def by_name(result: backup_job.BackupResult) -> dict[str, backup_job.RepositoryBackup]:
    return {r.repository: r for r in result.repositories}


def test_a_second_backup_reports_each_repository_unchanged_and_why(fleet: Fleet) -> None:
    first = fleet.backup()
    assert first.snapshot is not None and not first.interrupted and not first.failed
    assert first.store == fleet.store.url and first.host == HOST
    for r in first.repositories:
        assert r.outcome == "new" and r.full and r.bytes_added > 0 and r.seconds > 0
        assert r.reason.startswith(
            "no earlier backup in the history; a full bundle (a new chain) stored, copied: "
            "one pack of "
        ) or r.reason.startswith(  # not one pack, or more than the refs reach
            "no earlier backup in the history; a full bundle (a new chain) stored, packed: "
        ), r.reason
    assert first.bytes_added == sum(r.bytes_added for r in first.repositories)
    assert first.summary()["new"] == 3 and first.summary()["snapshot"] == (
        first.snapshot.snapshot_id
    )
    assert fleet.history("backup") == [(n, "backup", "ok") for n in NAMES]

    second = fleet.backup()
    assert second.snapshot is not None
    assert second.snapshot.snapshot_id != first.snapshot.snapshot_id
    earlier = by_name(first)
    for r in second.repositories:
        assert r.outcome == "unchanged" and r.bytes_added == 0
        assert r.backup_id == earlier[r.repository].backup_id
        assert r.reason == f"not read: nothing changed since backup {r.backup_id}"

    # one new commit: that repository alone is read, and says what changed
    fast_import(fleet.root / "a.git",
                history_stream("refs/heads/main", 1, start=50, parent="refs/heads/main^0"))  # fmt: skip
    third = by_name(fleet.backup())
    assert third["a.git"].outcome == "new" and not third["a.git"].full
    assert third["a.git"].reason == (
        "its refs or object files changed since its last backup; what is new stored, "
        "packed: an incremental: only the objects new since the parent; 4 objects packed"
    )
    assert [third[n].outcome for n in NAMES[1:]] == ["unchanged", "unchanged"]

    # --full reads everything again, each as a new chain
    full = fleet.backup(full=True)
    assert {r.outcome for r in full.repositories} == {"new"} and all(
        r.full and r.reason.startswith("a new chain was asked for (--full)")
        for r in full.repositories
    )


def test_why_a_repository_is_read_again() -> None:
    known = {"store": "s", "host": "h", "fingerprint": "f", "stamp": "t", "recipients": "k"}
    last = TaskHistory(1.0, 2.0, "ok", {**known, "manifest": "hosts/h/x/manifest.json"})
    assert backup_job.why_read(last, known, full=False) == ""
    assert backup_job.why_read(None, known, full=False) == "no earlier backup in the history"
    assert backup_job.why_read(last, {**known, "recipients": "k2", "stamp": "t2"},
                               full=False) == (
        "its kept files (config, hooks, info), the keys backups are encrypted to changed "
        "since its last backup"
    )  # fmt: skip
    failed = TaskHistory(1.0, 2.0, "failed", last.details)
    assert backup_job.why_read(failed, known, full=False) == "its last backup failed"


def test_an_interrupted_backup_says_what_it_did_not_start(fleet: Fleet) -> None:
    states = fleet.states()
    interrupts.request()
    try:
        result = fleet.backup(states)
    finally:
        interrupts.reset()
    assert result.interrupted and result.snapshot is None
    assert result.cancelled == len(NAMES) and len(result.failed) == len(NAMES)
    assert all(r.cancelled and r.reason == backup_job.CANCELLED for r in result.repositories)
    assert fleet.history("backup") == [(n, "backup", "failed") for n in NAMES]


def test_verify_names_the_damaged_file_and_times_each_drill(fleet: Fleet) -> None:
    done = fleet.backup()
    assert done.snapshot is not None
    quick = fleet.verify("quick")
    assert quick.ok and quick.problems == [] and quick.report.manifests == len(NAMES)
    assert quick.rollback == "" and quick.clash == ""

    drill = fleet.verify("drill")
    assert drill.ok and sorted(d.repository for d in drill.drills) == NAMES
    assert all(d.ok and d.seconds > 0 for d in drill.drills)
    assert drill.summary()["drill_seconds_max"] == round(max(d.seconds for d in drill.drills), 3)
    assert fleet.history("verify") == [(n, "restore_drill", "ok") for n in NAMES]

    # the same size, other bytes: quick cannot tell, full names the file and its repository
    bundle = next(
        m.with_name("bundle.age")
        for m in fleet.store_dir.rglob("manifest.json")
        if json.loads(m.read_text())["repository"] == "sqlite-utils.git"
    )
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bundle.write_bytes(bytes(data))
    assert fleet.verify("quick").ok
    full = fleet.verify("full")
    assert not full.ok
    key = str(bundle.relative_to(fleet.store_dir))
    [problem] = [p for p in full.problems if p.key == key]
    assert problem.repositories == {"sqlite-utils.git"}
    assert problem.snapshots == {done.snapshot.snapshot_id}
    assert full.summary()["problems"] == len(full.problems) and not full.summary()["ok"]


def test_an_interrupted_verify_is_a_result_and_is_not_recorded(fleet: Fleet) -> None:
    fleet.backup()
    interrupts.request()
    try:
        result = fleet.verify("full")
    finally:
        interrupts.reset()
    assert result.interrupted.startswith("interrupted: verify (full): ")
    assert fleet.history("verify") == []
