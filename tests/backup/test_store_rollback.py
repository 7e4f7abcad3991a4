"""A store that goes back in time, a clock that skews, two machines under one host name
(issue 12, "Backup stores"): each is noticed, reported in one line that names the fix, and
never makes restore, the drill or ``forget --prune`` pick or delete the wrong snapshot."""

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from custode.backup.catalog import choose, load
from custode.backup.crypto import generate_identity
from custode.backup.manifest import Snapshot, canonical, new_id
from custode.backup.retention import Policy, apply
from custode.backup.store import LocalStore
from custode.errors import IntegrityError
from fixtures.builders import fast_import, history_stream, run_git
from fixtures.cli import CliResult
from fixtures.system import need

pytestmark = pytest.mark.integration
Run = Callable[..., CliResult]
OTHER_MACHINE = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def keys(tmp_path: Path) -> tuple[str, Path]:
    path = tmp_path / "keys" / "identity.txt"
    return generate_identity(path), path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    repo = root / "main.git"
    run_git(None, "init", "-q", "--bare", repo)
    fast_import(repo, history_stream("refs/heads/main", 5))
    return root


def commit(root: Path, n: int, serial: int) -> None:
    """``n`` new commits on main: the next backup holds something the last did not."""
    repo = root / "main.git"
    fast_import(
        repo, history_stream("refs/heads/main", n, start=serial, parent="refs/heads/main^0")
    )


def tip(repo: Path) -> str:
    return run_git(repo, "rev-parse", "refs/heads/main").strip()


def backup(custode: Run, root: Path, store: Path, pub: str, **kw: object) -> str:
    result = custode("backup", root, "--store", store, "--recipient", pub, "--json", **kw)
    assert result.code == 0, result.stderr
    return str(result.json()["summary"]["snapshot"])


def snapshot_files(store: Path) -> list[Path]:
    return sorted(store.glob("hosts/*/snapshots/*.json"))


def reseal(body: dict[str, object]) -> bytes:
    """A snapshot record as custode writes one (the checksum over its canonical form)."""
    body = {k: v for k, v in body.items() if k != "checksum"}
    body["checksum"] = hashlib.sha256(canonical(body)).hexdigest()
    return canonical(body) + b"\n"


def all_files(store: Path) -> list[str]:
    return sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())


# --- rollback ---------------------------------------------------------------------------


def test_deleting_the_newest_snapshot_fails_verify_and_restore_refuses(
    custode: Run, root: Path, tmp_path: Path, keys: tuple[str, Path]
) -> None:
    pub, identity = keys
    store = tmp_path / "store"
    first = backup(custode, root, store, pub)
    commit(root, 3, 100)
    second = backup(custode, root, store, pub)
    (newest,) = [p for p in snapshot_files(store) if p.stem == second]
    newest.unlink()

    verify = custode("verify", "--store", store, "--identity", identity, "--level", "full")
    assert verify.code == 6, verify.stdout + verify.stderr
    assert "store went back in time: newest snapshot of host " in verify.stderr
    assert f"is seq 1 ({first}), this host last wrote seq 2 (snapshot {second})" in verify.stderr
    assert "custode verify --accept-rollback" in verify.stderr

    # the freshness metric tells what the store holds, not what was sent to it
    listed = custode("snapshots", "--store", store, "--json").json()
    (held,) = listed["snapshots"]
    exposition = custode("metrics", "--no-probes", root).stdout
    check = subprocess.run([need("promtool", package="prometheus"), "check", "metrics"],
                           input=exposition, capture_output=True, text=True, check=False)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    found = {(s.name, frozenset(s.labels.items())): s.value
             for family in text_string_to_metric_families(exposition) for s in family.samples}  # fmt: skip
    last = found["custode_backup_last_success_timestamp_seconds", frozenset()]
    assert last <= datetime.fromisoformat(held["created"]).timestamp()
    labels = frozenset({"store": listed["store"], "host": listed["host"]}.items())
    assert found["custode_backup_store_rolled_back", labels] == 1

    dest = tmp_path / "out"
    restore = custode("restore", "--store", store, "--identity", identity, "--to", dest)
    assert restore.code == 6, restore.stdout + restore.stderr
    assert "restore refused: name the snapshot to restore with --at" in restore.stderr
    assert not dest.exists()
    # named explicitly, the older snapshot is restored
    chosen = custode("restore", "--store", store, "--identity", identity, "--to", dest,
                     "--at", first)  # fmt: skip
    assert chosen.code == 0, chosen.stderr


def test_an_older_copy_of_the_store_is_detected_by_verify_and_run(
    custode: Run, root: Path, tmp_path: Path, keys: tuple[str, Path]
) -> None:
    pub, identity = keys
    store = tmp_path / "store"
    backup(custode, root, store, pub)
    old = tmp_path / "old-copy"
    shutil.copytree(store, old)
    commit(root, 2, 200)
    backup(custode, root, store, pub)
    shutil.rmtree(store)
    old.rename(store)  # consistent in itself: every file its snapshots name is there

    quick = custode("verify", "--store", store)
    assert quick.code == 6 and "store went back in time" in quick.stderr, quick.stderr

    config = tmp_path / "config.toml"
    config.write_text(
        f'[backup]\nstore = "{store}"\nrecipients = ["{pub}"]\nidentity = "{identity}"\n'
        "keep_last = 5\n"
    )
    run = custode("run", root, "--json", env={"CUSTODE_CONFIG": str(config)})
    stages = {s["name"]: s for s in run.json()["stages"]}
    # the backup still protects tonight's data, but the finding survives it
    assert stages["backup"]["outcome"] == "ok"
    assert stages["verify"]["outcome"] == "failed" and stages["verify"]["code"] == 6
    assert "store went back in time" in run.stderr
    assert run.code == 6

    accepted = custode("verify", "--store", store, "--accept-rollback")
    assert accepted.code == 0, accepted.stderr
    again = custode("verify", "--store", store)
    assert again.code == 0, again.stderr


# --- clock skew -------------------------------------------------------------------------


def test_a_backup_taken_with_the_clock_a_year_ahead_is_not_the_latest(
    custode: Run, root: Path, tmp_path: Path, keys: tuple[str, Path]
) -> None:
    """One night with the clock a year ahead, then normal nights: restore, the drill and
    ``forget --keep-last 1`` take the current snapshot, and the skewed one is flagged."""
    pub, identity = keys
    store = tmp_path / "store"
    first = backup(custode, root, store, pub)
    # the skewed night: what custode wrote then is this host's next snapshot, dated a year
    # ahead (custode numbers it one past the first, as the backup under that clock did)
    (path,) = snapshot_files(store)
    body = json.loads(path.read_bytes())
    ahead = datetime.now(UTC) + timedelta(days=365)
    skewed = new_id(ahead)
    body.update(snapshot_id=skewed, created=ahead.isoformat(timespec="seconds"),
                finished=ahead.isoformat(timespec="seconds"))  # fmt: skip
    if "seq" in body:
        body["seq"] += 1
    (path.parent / f"{skewed}.json").write_bytes(reseal(body))
    commit(root, 4, 300)
    want = tip(root / "main.git")
    current = backup(custode, root, store, pub)

    listed = custode("snapshots", "--store", store, "--json")
    assert listed.code == 0, listed.stderr
    order = [s["id"] for s in listed.json()["snapshots"]]
    assert order == [first, skewed, current]
    assert [s["future"] for s in listed.json()["snapshots"]] == [False, True, False]
    assert f"snapshot {skewed} of host " in listed.stderr and "in the future" in listed.stderr

    dest = tmp_path / "out"
    restore = custode("restore", "--store", store, "--identity", identity, "--to", dest, "--json")
    assert restore.code == 0, restore.stderr
    assert restore.json()["summary"]["snapshot"] == current
    assert tip(dest / "main.git") == want

    drill = custode("verify", "--store", store, "--identity", identity, "--level", "drill",
                    "--json")  # fmt: skip
    assert drill.code == 0, drill.stderr
    assert {d["snapshot"] for d in drill.json()["drills"]} == {current}

    forget = custode("forget", "--store", store, "--keep-last", "1", "--prune", "--json")
    assert forget.code == 0, forget.stderr
    assert forget.json()["kept"] == [current]
    assert sorted(forget.json()["removed"]) == sorted([first, skewed])


def test_a_legacy_snapshot_dated_in_the_future_is_never_latest_by_its_date(
    tmp_path: Path,
) -> None:
    """Snapshots written before sequence numbers: a date in the future does not win."""
    store = LocalStore(tmp_path / "store")
    now = datetime.now(UTC)
    made = []
    for when in (now - timedelta(days=2), now + timedelta(days=365), now - timedelta(days=1)):
        snap = Snapshot("h", new_id(when), when.isoformat(timespec="seconds"),
                        when.isoformat(timespec="seconds"), ())  # fmt: skip
        store.put_bytes(snap.key, snap.to_bytes())
        made.append(snap.snapshot_id)
    catalog = load(store, "h")
    assert catalog.snapshots[-1].snapshot_id == made[2]
    kept = apply(Policy(last=1), catalog.snapshots).keep
    assert [s.snapshot_id for s in kept] == [made[2]]


def test_a_damaged_newest_snapshot_is_not_hidden_by_one_dated_in_the_future(
    tmp_path: Path,
) -> None:
    """'The latest' refuses while a newer snapshot is damaged; a readable snapshot dated a
    year ahead must not make every damaged one look older than it (its id is its date)."""
    store = LocalStore(tmp_path / "store")
    now = datetime.now(UTC)
    for when in (now - timedelta(days=2), now + timedelta(days=365)):
        snap = Snapshot("h", new_id(when), when.isoformat(timespec="seconds"),
                        when.isoformat(timespec="seconds"), ())  # fmt: skip
        store.put_bytes(snap.key, snap.to_bytes())
    newest = new_id(now - timedelta(days=1))
    store.put_bytes(f"hosts/h/snapshots/{newest}.json", b"{ cut short")
    with pytest.raises(IntegrityError, match=f"the latest snapshot {newest} cannot be read"):
        choose(load(store, "h"), None, "store", "h")


def test_a_backup_dated_in_the_future_is_not_the_parent_of_the_next_ones() -> None:
    """A repository's next backup builds on its newest backup by date, except one dated in
    the future: that one would be every backup's parent for a year."""
    from custode.backup.engine import by_age  # here: the other tests run without it

    now = datetime.now(UTC)
    prefix = "hosts/h/repos/0123456789abcdef01234567/"
    old, ahead, recent = (f"{prefix}{new_id(now + delta)}/manifest.json"
                          for delta in (timedelta(days=-2), timedelta(days=365), timedelta(days=-1)))  # fmt: skip
    assert by_age([old, ahead, recent], now)[-1] == recent


# --- two machines, one host name --------------------------------------------------------


def machine_b(tmp_path: Path) -> dict[str, str]:
    """Another machine: its own state directory, with another machine id."""
    state = tmp_path / "machine-b" / "state"
    (state / "custode").mkdir(parents=True)
    fd = os.open(state / "custode" / "machine-id", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, f"{OTHER_MACHINE}\n".encode())
    os.close(fd)
    return {"XDG_STATE_HOME": str(state)}


def test_a_second_machine_under_the_same_host_name_is_refused(
    custode: Run, root: Path, tmp_path: Path, keys: tuple[str, Path]
) -> None:
    pub, _ = keys
    store = tmp_path / "store"
    backup(custode, root, store, pub)
    before = all_files(store)
    other = custode("backup", root, "--store", store, "--recipient", pub, env=machine_b(tmp_path))
    assert other.code == 2, other.stdout + other.stderr
    assert "backup refused: snapshots of host " in other.stderr
    assert "set a distinct backup.host on each machine" in other.stderr
    assert len(snapshot_files(store)) == 1
    assert [f for f in all_files(store) if "/locks/" not in f] == [
        f for f in before if "/locks/" not in f
    ]


def test_forget_never_deletes_another_machines_snapshots(
    custode: Run, root: Path, tmp_path: Path, keys: tuple[str, Path]
) -> None:
    """Machine B's only snapshot got into the shared store (written before A's, or by a
    custode that did not check): A's ``forget --keep-last 1 --prune`` refuses, deleting
    nothing, and verify and snapshots report the clash."""
    pub, _ = keys
    store, elsewhere = tmp_path / "store", tmp_path / "b-store"
    backup(custode, root, elsewhere, pub, env=machine_b(tmp_path))
    backup(custode, root, store, pub)
    commit(root, 1, 400)
    backup(custode, root, store, pub)
    shutil.copytree(elsewhere / "hosts", store / "hosts", dirs_exist_ok=True)
    before = all_files(store)
    assert len(snapshot_files(store)) == 3

    forget = custode("forget", "--store", store, "--keep-last", "1", "--prune")
    assert forget.code == 2, forget.stdout + forget.stderr
    assert "forget refused: snapshots of host " in forget.stderr
    assert "backup.host" in forget.stderr
    assert all_files(store) == before

    verify = custode("verify", "--store", store)
    assert verify.code == 6 and "two machines share the host name" in verify.stderr
    listed = custode("snapshots", "--store", store, "--json")
    assert "two machines share the host name" in listed.json()["clash"]


# --- the host's memory is untrusted input -----------------------------------------------


@pytest.mark.parametrize("kind", ["garbage", "deep", "fifo", "huge"])
def test_a_damaged_memory_file_is_reported_and_rewritten_never_fatal(
    custode: Run, root: Path, tmp_path: Path, keys: tuple[str, Path], kind: str
) -> None:
    pub, _ = keys
    store = tmp_path / "store"
    memory = tmp_path / "xdg" / "state" / "custode" / "backup-lineage.json"  # isolated_env's
    memory.parent.mkdir(parents=True)
    if kind == "fifo":
        os.mkfifo(memory, 0o600)
    else:
        data = {"garbage": b"{not json", "deep": b"[" * 200_000, "huge": b" " * (2 << 20)}[kind]
        memory.write_bytes(data)
        memory.chmod(0o600)
    result = custode("backup", root, "--store", store, "--recipient", pub)
    assert result.code == 0, result.stderr
    assert str(memory) in result.stderr
    assert json.loads(memory.read_text())["format"] == "custode-lineage/1"
    assert (memory.stat().st_mode & 0o777) == 0o600
