"""The record of a sound check (``integrity.verified``): what identifies a pack, when a key
is trusted, and a record from the history that is not what custode wrote."""

import os
from pathlib import Path

import pytest

from custode.integrity import verified
from custode.integrity.verified import PackRecord, Record

OID = "a" * 40


def test_any_write_changes_the_key_even_with_mtime_restored(tmp_path: Path) -> None:
    path = tmp_path / "pack-x.pack"
    path.write_bytes(b"PACK" + bytes(100))
    before = path.stat()
    key = verified.file_key(before)
    with path.open("r+b") as f:
        f.seek(50)
        f.write(b"\x01")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert after.st_mtime_ns == before.st_mtime_ns
    assert verified.file_key(after) != key


def test_a_file_changed_just_now_is_not_settled() -> None:
    now = 10_000_000_000_123
    fresh = (1, now - 1_000, now - 1_000, 1, 1)
    old = (1, now - 10**9 - 7, now - 10**9 - 7, 1, 1)
    coarse = (1, 9 * 10**12, 9 * 10**12 + 10**9 * 9999, 1, 1)  # whole seconds, 1 s ago
    assert not verified.settled(fresh, now)
    assert verified.settled(old, now)
    assert not verified.settled(coarse, (coarse[2] + 10**9))  # within 2 s: not yet
    assert verified.settled(coarse, coarse[2] + 3 * 10**9)


def test_every_pack_comes_due_again_spread_over_two_weeks() -> None:
    day = 86400
    names = [f"pack-{i:040x}" for i in range(200)]
    assert not any(verified.due(n, 0, 20 * day) for n in names)
    assert all(verified.due(n, 0, 36 * day) for n in names)
    assert 20 < sum(verified.due(n, 0, 28 * day) for n in names) < 180


def test_a_record_round_trips() -> None:
    key = ((1, 2, 3, 4, 5), (6, 7, 8, 9, 10))
    record = Record(
        {"pack-" + "b" * 40: PackRecord(key, 12.5, True)},
        frozenset({OID}),
        (OID,),
        {"commit-graph": "d"},
        {f"badTimezone {OID}": "line"},
        {"badTimezone": 1},
    )
    assert verified.from_json(record.to_json()) == record


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {"version": 99},
        {"version": 1, "packs": {"../../etc": {"key": [], "verified_at": None}}},
        {"version": 1, "packs": {}, "loose": ["not-an-oid"], "tips": [], "graphs": {}},
        {"version": 1, "packs": {}, "loose": [], "tips": [OID + "; rm"], "graphs": {}},
        {
            "version": 1,
            "packs": {"pack-" + "c" * 40: {"key": [[1, 2], [3]], "verified_at": 1.0}},
            "loose": [],
            "tips": [],
            "graphs": {},
        },
        {
            "version": 1,
            "packs": {
                "pack-" + "c" * 40: {
                    "key": [[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]],
                    "verified_at": "yesterday",
                    "settled": True,
                }
            },
            "loose": [],
            "tips": [],
            "graphs": {},
        },
    ],
)
def test_a_record_that_is_not_ours_is_no_record(data: object) -> None:
    assert verified.from_json(data) is None


def test_snapshot_doubts_what_it_cannot_vouch_for(tmp_path: Path) -> None:
    git_dir = tmp_path / "r.git"
    (git_dir / "objects" / "info").mkdir(parents=True)
    (git_dir / "objects" / "pack").mkdir()
    (git_dir / "objects" / "info" / "alternates").write_text("/elsewhere\n")
    (git_dir / "objects" / "pack" / ("pack-" + "d" * 40 + ".pack")).write_bytes(b"PACK")
    snap = verified.snapshot(git_dir)
    assert any("alternates" in d for d in snap.doubts)
    assert any("no index" in d for d in snap.doubts)
    assert snap.packs == {}


def test_the_history_keeps_one_record_per_repository_and_drops_garbage(tmp_path: Path) -> None:
    from custode.records.state import StateDB

    with StateDB.open(tmp_path / "state" / "state.db") as db:
        db.save_check_records([("/r", "a.git", {"n": 1}), ("/r", "b.git", {"n": 2})])
        db.save_check_records([("/r", "a.git", {"n": 3}), ("/r", "b.git", None)])
        assert db.check_records([("/r", "a.git"), ("/r", "b.git")]) == {("/r", "a.git"): {"n": 3}}
        db._conn.execute("UPDATE check_records SET record = 'not json'")
        assert db.check_records([("/r", "a.git")]) == {}
