"""``custode check`` at the cost of what changed: a second check reads only what is new,
and every kind of damage is still found on the checks after the first.

Which git commands ran is read from a wrapper named as ``git.binary`` that logs each
command line before it runs git: evidence that does not depend on timing.
"""

import json
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fixtures.builders import fast_import, history_stream, run_git
from fixtures.cli import CliResult

pytestmark = pytest.mark.integration
Run = Callable[..., CliResult]


class Checker:
    """A repository, a config whose git logs each command, and ``check`` runs on it."""

    def __init__(self, tmp_path: Path, custode: Run) -> None:
        self.custode = custode
        self.root = tmp_path / "root"
        self.repo = self.root / "repo.git"
        self.log = tmp_path / "git.log"
        wrapper = tmp_path / "git-logged"
        real = run_git(None, "--exec-path").strip()
        wrapper.write_text(f'#!/bin/sh\necho "$*" >> "{self.log}"\nexec "{real}/git" "$@"\n')
        wrapper.chmod(0o755)
        self.config = tmp_path / "custode.toml"
        self.config.write_text(
            f'[state]\ndirectory = "{tmp_path / "state"}"\n'
            f'[git]\nbinary = "{wrapper}"\nnice = 0\nionice = "none"\n'
        )
        self.state = tmp_path / "state"
        run_git(None, "init", "-q", "--bare", self.repo)
        fast_import(self.repo, history_stream("refs/heads/main", 30, annotated_tags=[("v1", 9)]))
        run_git(self.repo, "gc", "--quiet", config=["gc.writeCommitGraph=true"])
        run_git(self.repo, "commit-graph", "write", "--reachable")
        self.commits = 30

    def check(self, *args: str, code: int = 0) -> tuple[dict[str, Any], list[str]]:
        """One ``check --json``: the repository's JSON and the git commands it ran."""
        time.sleep(0.2)  # what was just written is settled (integrity.verified.SETTLE_NS)
        self.log.write_text("")
        result = self.custode("--config", self.config, "check", "--json", *args, self.root)
        assert result.code == code, result.stderr
        (repo,) = [r for r in result.json()["repositories"] if r["relative"] == self.repo.name]
        return repo, self.log.read_text().splitlines()

    def push(self, commits: int = 3, *, pack: bool = True, ref: str = "refs/heads/main") -> None:
        """A day's push: new objects (a pack, or loose ones) and a tip moved or made."""
        parent = "refs/heads/main^0"
        stream = history_stream(ref, commits, start=self.commits, parent=parent, label="p")
        fast_import(self.repo, stream, pack=pack)
        self.commits += commits

    def packs(self) -> list[Path]:
        return sorted((self.repo / "objects" / "pack").glob("pack-*.pack"))

    def loose(self) -> list[Path]:
        return sorted(p for p in (self.repo / "objects").glob("[0-9a-f][0-9a-f]/*"))


@pytest.fixture
def repo(tmp_path: Path, custode: Run) -> Checker:
    return Checker(tmp_path, custode)


def _ran(commands: list[str], sub: str) -> list[str]:
    """The logged git commands whose subcommand is ``sub`` (after the ``-c`` options)."""
    found = []
    for command in commands:
        words = command.split()
        i = 0
        while i < len(words) and words[i].startswith("-"):
            i += 2 if words[i] == "-c" else 1
        if i < len(words) and words[i] == sub:
            found.append(command)
    return found


def _flip(path: Path, offset: int) -> None:
    """Flip one bit at ``offset`` and put the mtime back: only ctime tells."""
    before = path.stat()
    path.chmod(0o644)
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))
    path.chmod(stat.S_IMODE(before.st_mode))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def _incremental(repo: Checker, *args: str) -> None:
    """The first check is whole, the second incremental (the record is in the history)."""
    first, _ = repo.check(*args)
    assert first["read"]["mode"] == "whole", first
    second, _ = repo.check(*args)
    assert second["read"]["mode"] == "incremental", second


def test_second_full_check_reads_no_verified_pack(repo: Checker) -> None:
    first, ran = repo.check("--full")
    assert first["verdict"] == "ok"
    assert first["read"] == {"mode": "whole", "why": "no record of an earlier sound check"}
    assert _ran(ran, "fsck")
    second, ran = repo.check("--full")
    assert second["verdict"] == "ok"
    assert second["read"]["mode"] == "incremental"
    assert second["read"]["packs"] == {"verified": 0, "unchanged_skipped": 1, "gone": 0}
    assert second["read"]["verified"] == "nothing changed since the last sound check"
    # nothing changed: no git at all ran on the repository
    assert not [c for c in ran if str(repo.repo) in c], ran
    run_git(repo.repo, "update-ref", "refs/heads/other", "refs/heads/main")  # a new ref
    third, ran = repo.check("--full")
    assert third["verdict"] == "ok" and third["read"]["mode"] == "incremental"
    assert third["read"]["verified"] == "nothing changed"
    # nothing read the old pack in full, no fsck walked the history
    for sub in ("fsck", "index-pack", "verify-pack", "commit-graph", "multi-pack-index"):
        assert not _ran(ran, sub), (sub, ran)
    (walk,) = _ran(ran, "rev-list")
    assert "core.commitGraph=false" in walk  # the walk trusts no derived file
    with sqlite3.connect(repo.state / "state.db") as db:
        (record,) = db.execute("SELECT record FROM check_records").fetchone()
        (details,) = db.execute(
            "SELECT details FROM repository_results ORDER BY id DESC LIMIT 1"
        ).fetchone()
    assert len(json.loads(record)["tips"]) == 2  # main and the tag, deduplicated with HEAD
    assert json.loads(details)["read"]["mode"] == "incremental"


def test_no_incremental_reads_everything(repo: Checker) -> None:
    _incremental(repo, "--full")
    again, ran = repo.check("--full", "--no-incremental")
    assert again["read"] == {"mode": "whole", "why": "asked for a whole check"}
    assert any("--full" in c for c in _ran(ran, "fsck")), ran


def test_default_check_second_run_walks_only_new_tips(repo: Checker) -> None:
    _incremental(repo)
    repo.push(2, ref="refs/heads/topic")
    third, ran = repo.check()
    assert third["verdict"] == "ok"
    assert third["read"]["reachability"] == "1 new tips walked, 2 unchanged"
    assert not _ran(ran, "fsck") and not _ran(ran, "index-pack")


def test_a_days_pushes_are_read_and_nothing_else(repo: Checker) -> None:
    _incremental(repo, "--full")
    (old,) = repo.packs()
    repo.push(3)  # a new pack, main moved
    (new,) = set(repo.packs()) - {old}
    repo.push(2, pack=False, ref="refs/heads/topic")  # loose objects, a new branch
    loose = len(repo.loose())
    assert loose >= 8
    after, ran = repo.check("--full")
    assert after["verdict"] == "ok", after
    read = after["read"]
    assert read["mode"] == "incremental", read
    assert read["packs"] == {"verified": 1, "unchanged_skipped": 1, "gone": 0}
    assert read["loose"] == loose
    assert read["reachability"] == "2 new tips walked, 1 unchanged"
    (pack,) = _ran(ran, "index-pack")  # the new pack alone, in full
    assert new.name in pack and "--verify" in pack and "--strict=" in pack
    (fsck,) = _ran(ran, "fsck")
    assert "--no-full" in fsck and "core.commitGraph=false" in fsck


def test_bit_flipped_in_a_verified_pack_is_found(repo: Checker) -> None:
    _incremental(repo, "--full")
    (pack,) = repo.packs()
    _flip(pack, pack.stat().st_size // 2)
    found, _ = repo.check("--full", code=3)
    assert found["verdict"] == "corrupt", found
    assert found["read"]["mode"] == "whole" and "pack" in found["read"]["why"], found


def test_bit_flipped_in_a_verified_index_is_found(repo: Checker) -> None:
    _incremental(repo, "--full")
    (pack,) = repo.packs()
    idx = pack.with_suffix(".idx")
    _flip(idx, idx.stat().st_size - 30)  # inside the index's object offsets or checksum
    found, _ = repo.check("--full", code=3)
    assert found["verdict"] == "corrupt", found


def test_removed_pack_is_found(repo: Checker) -> None:
    _incremental(repo, "--full")
    repo.push(3)
    _incremental_again, _ = repo.check("--full")
    newest = max(repo.packs(), key=lambda p: p.stat().st_mtime_ns)
    for sibling in newest.parent.glob(newest.stem + ".*"):
        sibling.unlink()
    for args in (("--full",), ()):
        found, _ = repo.check(*args, code=3)
        assert found["verdict"] == "corrupt", (args, found)


def test_corrupt_loose_object_is_found(repo: Checker) -> None:
    _incremental(repo, "--full")
    repo.push(2, pack=False)
    pushed, _ = repo.check("--full")
    assert pushed["verdict"] == "ok" and pushed["read"]["mode"] == "incremental", pushed
    blob = next(p for p in repo.loose() if _type(repo, p) == "blob")
    _flip(blob, blob.stat().st_size - 3)
    found, _ = repo.check("--full", code=3)
    assert found["verdict"] == "corrupt", found
    assert any(blob.parent.name + blob.name in line for line in found["findings"]), found


def test_corrupt_new_pack_is_found(repo: Checker) -> None:
    _incremental(repo, "--full")
    old = set(repo.packs())
    repo.push(4)
    (new,) = set(repo.packs()) - old
    _flip(new, new.stat().st_size // 2)
    found, _ = repo.check("--full", code=3)
    assert found["verdict"] == "corrupt", found


def test_ref_to_a_missing_object_is_found(repo: Checker) -> None:
    _incremental(repo)
    (repo.repo / "refs" / "heads" / "lost").write_text("1234567890" * 4 + "\n")
    for args in ((), ("--full",)):
        found, _ = repo.check(*args, code=3)
        assert found["verdict"] == "corrupt", (args, found)
        assert any("refs/heads/lost" in line for line in found["findings"]), found


def test_missing_object_of_a_new_tip_is_found_by_the_default_check(repo: Checker) -> None:
    _incremental(repo)
    repo.push(2, pack=False, ref="refs/heads/topic")
    tree = run_git(repo.repo, "rev-parse", "refs/heads/topic^{tree}").strip()
    (repo.repo / "objects" / tree[:2] / tree[2:]).unlink()
    found, _ = repo.check(code=3)
    assert found["verdict"] == "corrupt", found
    assert found["read"]["mode"] == "whole" and tree in found["read"]["why"], found


def test_commit_graph_corrupted_after_it_was_verified_is_found(repo: Checker) -> None:
    _incremental(repo, "--full")
    graph = repo.repo / "objects" / "info" / "commit-graph"
    _flip(graph, 200)
    found, _ = repo.check("--full", code=3)
    assert found["verdict"] == "corrupt", found
    assert any(line.startswith("commit-graph verify: ") for line in found["findings"]), found


def test_format_warnings_in_a_new_pack_are_not_damage(repo: Checker) -> None:
    _incremental(repo, "--full")
    tree = run_git(repo.repo, "rev-parse", "refs/heads/main^{tree}").strip()
    odd = (
        f"tree {tree}\nauthor A <a@example.com> 1234567890 +99999\n"
        "committer A <a@example.com> 1234567890 +0000\n\nold tool\n"
    ).encode()
    oid = run_git(repo.repo, "hash-object", "-t", "commit", "-w", "--stdin", "--literally",
                  input=odd).strip()  # fmt: skip
    run_git(repo.repo, "update-ref", "refs/heads/odd", oid)
    run_git(repo.repo, "repack", "-d", "-q")  # the odd commit into a new pack
    found, _ = repo.check("--full")
    assert found["verdict"] == "ok", found
    assert found["read"]["mode"] == "incremental", found["read"]
    assert found["warnings"]["ids"] == {"badTimezone": 1}, (found["read"], found["warnings"])
    again, _ = repo.check("--full")  # not read again, still reported
    assert again["read"]["packs"]["verified"] == 0, again
    assert again["warnings"]["ids"] == {"badTimezone": 1}, again


def test_restore_drill_judge_always_reads_everything(repo: Checker) -> None:
    """``check_git_dir`` (the restore drill's judge) knows no record: always whole."""
    from custode.git.runner import Git
    from custode.integrity.check import check_git_dir

    _incremental(repo, "--full")
    (pack,) = repo.packs()
    pack.chmod(0o644)
    with pack.open("r+b") as f:
        f.truncate(pack.stat().st_size - 100)
    assert check_git_dir(repo.repo, Git(), full=True).verdict == "corrupt"


def _type(repo: Checker, path: Path) -> str:
    return run_git(repo.repo, "cat-file", "-t", path.parent.name + path.name).strip()


def test_loose_objects_packed_by_a_repack_keep_the_walk_incremental(repo: Checker) -> None:
    _incremental(repo, "--full")
    repo.push(2, pack=False, ref="refs/heads/topic")
    loose, _ = repo.check("--full")
    assert loose["read"]["mode"] == "incremental", loose["read"]
    run_git(repo.repo, "repack", "-d", "-q")  # the loose objects into a new pack
    run_git(repo.repo, "prune-packed")
    assert not repo.loose()
    packed, _ = repo.check("--full")
    assert packed["verdict"] == "ok", packed
    assert packed["read"]["packs"]["verified"] == 1, packed["read"]
    assert packed["read"]["reachability"] == "0 new tips walked, 3 unchanged", packed["read"]


def test_after_a_full_repack_the_history_is_walked_whole(repo: Checker) -> None:
    _incremental(repo, "--full")
    run_git(repo.repo, "repack", "-a", "-d", "-f", "-q")  # every old pack gone
    after, _ = repo.check("--full")
    assert after["verdict"] == "ok", after
    assert after["read"]["mode"] == "incremental", after["read"]
    assert after["read"]["packs"]["gone"] == 1, after["read"]
    assert after["read"]["reachability"].startswith("whole walk from 2 tips"), after["read"]


def test_when_most_pack_bytes_are_new_the_whole_check_runs(
    repo: Checker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from custode.git.runner import Git
    from custode.integrity import incremental, verified

    _incremental(repo, "--full")
    with sqlite3.connect(repo.state / "state.db") as db:
        (raw,) = db.execute("SELECT record FROM check_records").fetchone()
    record = verified.from_json(json.loads(raw))
    assert record is not None
    run_git(repo.repo, "repack", "-a", "-d", "-f", "-q")
    time.sleep(0.2)
    monkeypatch.setattr(incremental, "WHOLE_MIN_BYTES", 0)
    out = incremental.check(repo.repo, Git(), full=True, record=record)
    assert out.result.verdict == "ok"
    assert out.result.read["mode"] == "whole", out.result.read
    assert "100% of the pack bytes are new" in str(out.result.read["why"])
    assert out.record is not None and len(out.record.packs) == 1


@pytest.mark.parametrize("head", ["ref: refs/tags/v1", "ref: refs/heads/../../x", "TREE"])
def test_a_bad_head_is_found_on_an_incremental_run(repo: Checker, head: str) -> None:
    _incremental(repo)
    tree = run_git(repo.repo, "rev-parse", "refs/heads/main^{tree}").strip()
    (repo.repo / "HEAD").write_text(head.replace("TREE", tree) + "\n")
    found, _ = repo.check(code=3)
    assert found["verdict"] == "corrupt", found
    assert found["read"]["mode"] == "whole", found["read"]
    assert any("HEAD" in line for line in found["findings"]), found


def test_an_unborn_head_stays_incremental(repo: Checker) -> None:
    (repo.repo / "HEAD").write_text("ref: refs/heads/master\n")  # pushes went to main
    _incremental(repo, "--full")


def test_a_reflog_entry_of_a_missing_object_is_found_on_an_incremental_run(
    repo: Checker,
) -> None:
    main = run_git(repo.repo, "rev-parse", "refs/heads/main").strip()
    log = repo.repo / "logs" / "refs" / "heads" / "main"
    log.parent.mkdir(parents=True)
    log.write_text(f"{'0' * 40} {main} A <a@example.com> 1 +0000\tpush\n")
    _incremental(repo)
    with log.open("a") as f:
        f.write(f"{main} {'1234567890' * 4} A <a@example.com> 2 +0000\tlost\n")
    found, _ = repo.check(code=3)
    assert found["verdict"] == "corrupt", found
    assert any("reflog" in line for line in found["findings"]), found


@pytest.mark.parametrize("path", ["packed-refs", "HEAD", "config"])
def test_a_ref_file_written_with_nothing_seen_changed_is_looked_at_again(
    repo: Checker, path: str
) -> None:
    """The check that runs no git stands on the keys of the files the refs stand on: the
    same bytes written back, with the mtime put back, still move the ctime."""
    _incremental(repo, "--full")
    _, ran = repo.check("--full")
    assert not [c for c in ran if str(repo.repo) in c], ran  # nothing changed: no git
    target = repo.repo / path
    before = target.stat()
    target.write_bytes(target.read_bytes())
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    again, ran = repo.check("--full")
    assert again["verdict"] == "ok"
    assert again["read"]["verified"] == "nothing changed"  # not the no-git path
    assert _ran(ran, "rev-list"), ran


def _check_in_process(repo: Checker, listed: list[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """``check --full`` of the repository's root, run here so the loose-object listing can
    be watched: each objects directory listed is appended to ``listed``."""
    from custode.config.model import load_config
    from custode.git.runner import Git
    from custode.integrity import verified
    from custode.jobs.check import CheckJob
    from custode.jobs.check import check as check_job

    real = verified._loose

    def watched(objects: Path) -> tuple[dict[str, str], list[str]]:
        listed.append(str(objects))
        return real(objects)

    monkeypatch.setattr(verified, "_loose", watched)
    config = load_config(repo.config, required=True)
    time.sleep(0.2)  # settled, as in Checker.check
    job = CheckJob((repo.root,), config, repo.state, Git.from_config(config.git), full=True)
    (done,) = check_job(job).repositories
    return done


def test_nothing_changed_and_no_loose_object_lists_no_loose_directory(
    repo: Checker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan, just before, saw the loose-object directories empty: the check in which
    nothing changed does not list them again (the listing was most of its cost), and a
    loose object the scan sees brings the listing and the object's reading back."""
    _incremental(repo, "--full")
    listed: list[str] = []
    same = _check_in_process(repo, listed, monkeypatch)
    assert same.read["verified"] == "nothing changed since the last sound check", same.read
    assert listed == []
    oid = run_git(repo.repo, "hash-object", "-w", "--stdin", input=b"new and unreachable\n")
    new = _check_in_process(repo, listed, monkeypatch)
    assert listed, "a loose object is there: the objects are listed"
    assert new.result.verdict == "ok" and new.record is not None
    assert oid.strip() in new.record.loose


def test_a_loose_object_the_scan_did_not_see_is_read_by_the_next_check(repo: Checker) -> None:
    """``no_loose`` (the scan's word, which may be seconds old) skips the listing only when
    nothing else changed, and the record then stays as it was: a corrupt loose object
    written after the scan is not in it, so the next check reads and finds it."""
    from custode.git.runner import Git
    from custode.integrity import incremental

    _incremental(repo, "--full")
    record = incremental.check(repo.repo, Git(), full=True, record=None).record
    assert record is not None
    time.sleep(0.2)
    oid = run_git(
        repo.repo, "hash-object", "-w", "--stdin", input=b"written after the scan\n"
    ).strip()
    path = repo.repo / "objects" / oid[:2] / oid[2:]
    _flip(path, path.stat().st_size - 3)
    time.sleep(0.2)
    stale = incremental.check(repo.repo, Git(), full=True, record=record, no_loose=True)
    assert stale.result.read["verified"] == "nothing changed since the last sound check"
    assert stale.record == record  # the object is not vouched for
    found = incremental.check(repo.repo, Git(), full=True, record=stale.record)
    assert found.result.verdict == "corrupt", found.result


def test_a_whole_check_in_which_no_ref_moved_lists_the_refs_once(repo: Checker) -> None:
    """The refs are listed before the whole check; not one file they stand on written
    since (``refs_state`` equal): they are not listed again, and HEAD is read by two git
    processes (its target, then its object and type in one)."""
    first, ran = repo.check("--full")
    assert first["verdict"] == "ok" and first["read"]["mode"] == "whole", first
    assert _ran(ran, "fsck"), ran
    assert len(_ran(ran, "for-each-ref")) == 1, ran
    assert len(_ran(ran, "symbolic-ref")) == 1, ran
    assert len(_ran(ran, "cat-file")) == 1, ran
    assert not _ran(ran, "rev-parse"), ran
    with sqlite3.connect(repo.state / "state.db") as db:
        (record,) = db.execute("SELECT record FROM check_records").fetchone()
    assert len(json.loads(record)["tips"]) == 2  # main and the tag: proven all the same


def test_a_ref_moved_during_the_whole_check_is_not_recorded_as_proven(
    repo: Checker, tmp_path: Path
) -> None:
    """A push while fsck runs: the moved ref's old tip may not have been walked where it
    was listed, so it is not recorded as proven; the refs are listed again to see it."""
    main = run_git(repo.repo, "rev-parse", "refs/heads/main").strip()
    parent = run_git(repo.repo, "rev-parse", "refs/heads/main~1").strip()
    tag = run_git(repo.repo, "rev-parse", "refs/tags/v1").strip()
    real = run_git(None, "--exec-path").strip()
    once = tmp_path / "moved"
    (tmp_path / "git-logged").write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{repo.log}"\n'
        f'case " $* " in *" fsck "*) if [ ! -e "{once}" ]; then touch "{once}"; '
        f'"{real}/git" --git-dir="{repo.repo}" update-ref refs/heads/main {parent}; fi;; esac\n'
        f'exec "{real}/git" "$@"\n'
    )
    first, ran = repo.check("--full")
    assert once.exists() and _ran(ran, "fsck"), ran
    assert first["verdict"] == "ok" and first["read"]["mode"] == "whole", first
    with sqlite3.connect(repo.state / "state.db") as db:
        (record,) = db.execute("SELECT record FROM check_records").fetchone()
    tips = json.loads(record)["tips"]
    assert main not in tips and tag in tips, tips
    assert len(_ran(ran, "for-each-ref")) == 2, ran  # moved: listed again
    second, _ = repo.check("--full")  # the new tip is walked: sound, incremental
    assert second["verdict"] == "ok" and second["read"]["mode"] == "incremental", second


@pytest.mark.parametrize("how", ["detached at a tag", "branch at a tag", "branch at a blob"])
def test_a_head_naming_no_commit_is_found_on_an_incremental_run(repo: Checker, how: str) -> None:
    """HEAD's object and type are read in one git process: a tag (which names a commit
    when peeled) or a blob behind HEAD is still not a commit, as fsck says."""
    _incremental(repo)
    tag = run_git(repo.repo, "rev-parse", "refs/tags/v1").strip()
    blob = run_git(repo.repo, "hash-object", "-w", "--stdin", input=b"not a commit\n").strip()
    if how == "detached at a tag":
        (repo.repo / "HEAD").write_text(f"{tag}\n")
    else:
        (repo.repo / "refs" / "heads" / "odd").write_text(f"{tag if 'tag' in how else blob}\n")
        (repo.repo / "HEAD").write_text("ref: refs/heads/odd\n")
    found, _ = repo.check(code=3)
    assert found["verdict"] == "corrupt", found
    assert found["read"]["mode"] == "whole", found["read"]


def test_loose_object_types_are_read_only_to_pick_the_loose_fsck_head(
    repo: Checker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loose object's type (one open and read of its header) is needed only to pick the
    head of the full check's loose fsck: a whole check, a connectivity check and the
    listing read none, and the full check reads them in id order up to the first blob."""
    from custode.git.runner import Git
    from custode.integrity import incremental, verified

    repo.push(6, pack=False, ref="refs/heads/topic")
    oids = sorted(p.parent.name + p.name for p in repo.loose())
    assert len(oids) >= 12
    types = [run_git(repo.repo, "cat-file", "-t", oid).strip() for oid in oids]
    first_blob = types.index("blob")
    assert first_blob < len(oids) - 1  # a full check reads fewer headers than there are
    real = verified.loose_type
    read: list[str] = []

    def counted(path: str) -> str:
        read.append(path)
        return real(path)

    monkeypatch.setattr(verified, "loose_type", counted)
    time.sleep(0.2)  # settled
    whole = incremental.check(repo.repo, Git(), full=False, record=None)
    assert whole.result.read["mode"] == "whole" and whole.record is not None
    assert read == []
    time.sleep(0.2)
    walked = incremental.check(repo.repo, Git(), full=False, record=whole.record)
    assert walked.result.verdict == "ok" and walked.result.read["mode"] == "incremental"
    assert read == []
    full = incremental.check(repo.repo, Git(), full=True, record=whole.record)
    assert full.result.verdict == "ok" and full.result.read["mode"] == "incremental"
    assert full.result.read["loose"] == len(oids)
    expected = [verified.loose_path(repo.repo, oid) for oid in oids[: first_blob + 1]]
    assert read == expected


@pytest.mark.parametrize("kind", ["alternates", "worktree", "shallow"])
def test_a_repository_always_checked_whole_lists_nothing_before_the_check(
    repo: Checker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Alternates, linked worktrees, a shallow file: the check is whole and keeps no
    record whatever changed, so the refs are not listed (no git before fsck) and neither
    the refs' files nor the object store are looked at; verdict, reason and record as
    before."""
    from custode.git.runner import Git
    from custode.integrity import incremental, verified

    _incremental(repo)
    mine = "SELECT record FROM check_records WHERE repository = 'repo.git'"
    with sqlite3.connect(repo.state / "state.db") as db:
        (raw,) = db.execute(mine).fetchone()
    record = verified.from_json(json.loads(raw))
    assert record is not None
    main = run_git(repo.repo, "rev-parse", "refs/heads/main").strip()
    if kind == "alternates":
        other = repo.root / "other.git"  # inside the root: custode looks after it too
        run_git(None, "init", "-q", "--bare", other)
        (repo.repo / "objects" / "info" / "alternates").write_text(f"{other / 'objects'}\n")
        why = "it borrows objects from another repository (alternates)"
    elif kind == "worktree":
        run_git(repo.repo, "worktree", "add", "-q", tmp_path / "wt", "main")
        why = "it has linked worktrees"
    else:
        (repo.repo / "shallow").write_text(f"{main}\n")
        why = "it is shallow"
    found, ran = repo.check()
    ran = [c for c in ran if str(repo.repo) in c]  # not other.git's
    assert found["verdict"] == "ok", found
    assert found["read"] == {"mode": "whole", "why": why}, found["read"]
    assert _ran(ran, "fsck"), ran
    for sub in ("for-each-ref", "symbolic-ref", "cat-file", "rev-parse", "rev-list"):
        assert not _ran(ran, sub), (sub, ran)
    with sqlite3.connect(repo.state / "state.db") as db:
        assert db.execute(mine).fetchall() == []  # dropped
    again, _ = repo.check("--full")
    assert again["verdict"] == "ok", again
    assert again["read"] == {"mode": "whole", "why": "no record of an earlier sound check"}

    def unread(*args: object, **kwargs: object) -> None:
        raise AssertionError("read for nothing")

    for name in ("refs_state", "snapshot"):
        monkeypatch.setattr(verified, name, unread)
    out = incremental.check(repo.repo, Git(), full=True, record=record)
    assert out.result.verdict == "ok" and out.record is None
    assert out.result.read == {"mode": "whole", "why": why}
