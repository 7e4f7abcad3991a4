"""The restore and forget jobs called as the core (``custode.jobs``), without click: on
real repositories backed up by the CLI, their typed results say what was restored (where,
how long, how many bytes), what an unfinished restore had already put in place, what
failed and why, and which snapshots a policy keeps and for which rule. ``custode run``
and ``custode forget`` apply the one policy built from the config."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from custode.backup import restorejournal
from custode.backup.crypto import generate_identity, load_identity
from custode.backup.retention import Policy
from custode.backup.stores import open_store
from custode.config.model import load_config
from custode.errors import UsageError
from custode.git.runner import Git
from custode.jobs import forget as forget_job
from custode.jobs import restore as restore_job
from fixtures.builders import fast_import, history_stream, run_git
from fixtures.cli import CliResult

pytestmark = pytest.mark.integration
Run = Callable[..., CliResult]
HOST = "jobhost"
NAMES = ["a.git", "org/b.git", "org/b.git/modules/c.git"]  # c nested in b: a later wave


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    """A root of real repositories and a config naming the store, host, keys and state."""
    root = tmp_path / "root"
    for n, name in enumerate(NAMES):
        run_git(None, "init", "-q", "--bare", root / name)
        fast_import(root / name, history_stream("refs/heads/main", 3 + n))
    identity = tmp_path / "keys" / "identity.txt"
    public = generate_identity(identity)
    config = tmp_path / "custode.toml"
    config.write_text(
        f'[state]\ndirectory = "{tmp_path / "state"}"\n'
        f'[backup]\nstore = "{tmp_path / "store"}"\nhost = "{HOST}"\n'
        f'identity = "{identity}"\nrecipients = ["{public}"]\n'
    )
    return root, config


def job(config: Path, target: Path, **given: object) -> restore_job.RestoreJob:
    cfg = load_config(config, required=True)
    assert cfg.backup.store and cfg.backup.identity and cfg.state.directory
    return restore_job.RestoreJob(
        store=open_store(cfg.backup.store),
        host=HOST,
        identities=[load_identity(cfg.backup.identity)],
        identity_file=cfg.backup.identity,
        target=target,
        state_dir=cfg.state.directory,
        git=Git.from_config(cfg.git),
        **given,
    )


def history(config: Path, command: str) -> list[tuple[str, str, str]]:
    """Each repository row of the last ``command`` run: (repository, outcome, details)."""
    state = load_config(config, required=True).state.directory
    assert state is not None
    with sqlite3.connect(state / "state.db") as db:
        return db.execute(
            "SELECT repository, outcome, details FROM repository_results WHERE run_id = "
            "(SELECT max(id) FROM runs WHERE command = ?) ORDER BY repository",
            (command,),
        ).fetchall()


def heads(repo: Path) -> str:
    return run_git(repo, "for-each-ref", "--format=%(objectname) %(refname)")


def test_restore_returns_what_it_restored_per_repository(
    custode: Run, setup: tuple[Path, Path], tmp_path: Path
) -> None:
    root, config = setup
    backed = custode("--config", config, "backup", root, "--json")
    assert backed.code == 0, backed.stderr
    ticks: list[tuple[int, int]] = []
    out = tmp_path / "out"
    result = restore_job.restore(
        job(config, out, jobs=2), progress=lambda d, t: ticks.append((d, t))
    )
    assert result.snapshot == backed.json()["summary"]["snapshot"]
    assert sorted(r.repository for r in result.restored) == sorted(NAMES)
    for r in result.restored:
        assert r.path == out / r.repository and r.bare and not r.in_place
        assert r.bytes > 0 and r.seconds >= 0
        assert heads(r.path) == heads(root / r.repository)
    assert result.failed == {} and result.already_restored == [] and not result.interrupted
    assert result.to_do == result.selected == 3 and result.bytes == sum(
        r.bytes for r in result.restored
    )
    assert ticks[-1] == (3, 3)
    assert not (out / restorejournal.NAME).exists()
    assert result.summary()["restored"] == 3 and result.summary()["to"] == str(out)
    assert [(name, outcome) for name, outcome, _ in history(config, "restore")] == [
        (name, "ok") for name in sorted(NAMES)
    ]
    # named repositories only; a name the snapshot lacks is refused before anything
    one = restore_job.restore(job(config, tmp_path / "one", repositories=("a.git",)))
    assert [r.repository for r in one.restored] == ["a.git"] and one.selected == 1
    with pytest.raises(UsageError, match=r"holds no repository 'nope\.git'"):
        restore_job.restore(job(config, tmp_path / "none", repositories=("nope.git",)))


def test_a_partly_failed_restore_is_finished_by_the_same_call(
    custode: Run, setup: tuple[Path, Path], tmp_path: Path
) -> None:
    root, config = setup
    assert custode("--config", config, "backup", root).code == 0
    refs = next(
        m.with_name("refs.age")
        for m in (tmp_path / "store").rglob("manifest.json")
        if json.loads(m.read_text())["repository"] == "a.git"
    )
    good = refs.read_bytes()
    refs.write_bytes(b"not an age file\n")
    said: list[str] = []
    out = tmp_path / "out"
    first = restore_job.restore(job(config, out, jobs=1), notice=said.append)
    assert list(first.failed) == ["a.git"] and first.resumable
    assert any(line.startswith("a.git: ") for line in said)
    assert sorted(r.repository for r in first.restored) == sorted(NAMES[1:])
    assert (out / restorejournal.NAME).is_file()
    assert [(n, o) for n, o, _ in history(config, "restore")] == [
        ("a.git", "failed"),
        *((name, "ok") for name in sorted(NAMES[1:])),
    ]
    refs.write_bytes(good)
    said.clear()
    second = restore_job.restore(job(config, out))
    assert [r.repository for r in second.restored] == ["a.git"]
    assert sorted(second.already_restored) == sorted(NAMES[1:])
    assert second.failed == {} and second.to_do == 1 and second.selected == 3
    assert not (out / restorejournal.NAME).exists()


def test_forget_says_which_snapshots_it_keeps_and_why(
    custode: Run, setup: tuple[Path, Path], tmp_path: Path
) -> None:
    root, config = setup
    snapshots = []
    for n in range(3):
        fast_import(root / "a.git", history_stream("refs/heads/main", 1, start=100 + n,
                                                   parent="refs/heads/main^0"))  # fmt: skip
        done = custode("--config", config, "backup", root, "--json")
        assert done.code == 0, done.stderr
        snapshots.append(done.json()["summary"]["snapshot"])
    cfg = load_config(config, required=True)
    assert cfg.backup.store and cfg.state.directory
    store = open_store(cfg.backup.store)
    keep = forget_job.policy(cfg.backup, {"last": 2})
    assert keep == Policy(last=2)
    dry = forget_job.forget(store, HOST, keep, state_dir=cfg.state.directory, own_host=True,
                            prune=True, dry_run=True)  # fmt: skip
    assert [s.snapshot_id for s in dry.kept] == snapshots[:0:-1]
    assert dry.reasons == {snapshots[2]: ["last"], snapshots[1]: ["last"]}
    assert [s.snapshot_id for s in dry.removed] == [snapshots[0]] and dry.dry_run
    assert history(config, "forget") == []  # a dry run is not recorded
    done_ = forget_job.forget(store, HOST, keep, state_dir=cfg.state.directory, own_host=True,
                              prune=True)  # fmt: skip
    assert [s.snapshot_id for s in done_.removed] == [snapshots[0]]
    assert done_.pruned_files >= 0 and done_.summary()["kept"] == snapshots[:0:-1]
    listed = custode("--config", config, "snapshots", "--json")
    assert snapshots[0] not in listed.stdout and snapshots[2] in listed.stdout
    with pytest.raises(UsageError, match="no retention policy"):
        forget_job.forget(store, HOST, Policy(), state_dir=cfg.state.directory, own_host=True)


def test_forget_policy_is_the_config_unless_overridden(tmp_path: Path) -> None:
    config = tmp_path / "custode.toml"
    config.write_text('[backup]\nkeep_last = 3\nkeep_daily = 0\nkeep_within = "2d"\n')
    cfg = load_config(config, required=True).backup
    assert forget_job.policy(cfg) == Policy(last=3, weekly=8, monthly=12, within=172800.0)
    assert forget_job.policy(cfg, {"last": None, "daily": None}) == forget_job.policy(cfg)
    assert forget_job.policy(cfg, {"daily": 5}) == Policy(daily=5)  # only what is given
    assert forget_job.policy(cfg, within=60.0) == Policy(within=60.0)


def test_run_and_forget_apply_the_same_policy_from_one_config(
    custode: Run, setup: tuple[Path, Path]
) -> None:
    root, config = setup
    config.write_text(config.read_text() + "keep_last = 2\nkeep_daily = 0\nkeep_weekly = 0\n"
                      "keep_monthly = 0\n")  # fmt: skip
    for _ in range(2):
        assert custode("--config", config, "backup", root).code == 0
    run = custode("--config", config, "run", root, "--drill", "0", "--json")
    assert run.code == 0, run.stderr
    forgot = next(s for s in run.json()["stages"] if s["name"] == "forget")
    assert forgot["outcome"] == "ok" and len(forgot["summary"]["removed"]) == 1
    # what run's forget kept, and why, is what the core's policy from that config keeps
    cfg = load_config(config, required=True)
    assert cfg.backup.store and cfg.state.directory
    again = forget_job.forget(open_store(cfg.backup.store), HOST, forget_job.policy(cfg.backup),
                              state_dir=cfg.state.directory, own_host=True, dry_run=True)  # fmt: skip
    assert [s.snapshot_id for s in again.kept] == forgot["summary"]["kept"]
    assert again.reasons == forgot["summary"]["reasons"] and again.removed == []
    cli = custode("--config", config, "forget", "--dry-run", "--json")
    assert cli.json()["kept"] == forgot["summary"]["kept"]
    assert cli.json()["reasons"] == forgot["summary"]["reasons"]
