"""Format warnings in historical objects are information; only damage is "corrupt".

git's fsck names a message id for each way an object is oddly written (``badTimezone``,
``zeroPaddedFilemode``...). Such objects were written by old tools and live on in public
histories: ``custode check``, ``check --full``, the restore drill and the integrity metric
call them warnings. Missing, unreadable or unparseable objects and broken links stay
damage, whatever the repository's own ``fsck.*`` config says. Objects are crafted with
``git hash-object --literally`` from raw bytes, one per message id of git 2.39.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from custode.git.runner import Git
from custode.integrity.check import check_git_dir
from fixtures.builders import git_env, run_git
from fixtures.cli import CliResult
from fixtures.paths import CORPUS
from fixtures.system import missing

pytestmark = pytest.mark.integration
Run = Callable[..., CliResult]
GIT = Git()
WHO = b"A U Thor <author@example.com> 1700000000 +0000"
# requests (psf/requests) holds one commit whose author line has the time zone "+051800".
REQUESTS_COMMIT = "5e6ecdad9f69b1ff789a17733b8edc6fd7091bd8"


# --------------------------------------------------------------------------- crafting


class Crafted:
    """A bare repository into which raw objects are written exactly as given."""

    def __init__(self, path: Path) -> None:
        self.path = path
        run_git(None, "init", "-q", "--bare", "--initial-branch=main", path)
        self.blob = self.obj("blob", b"hello\n")
        self.tree = self.make_tree([(b"100644", b"f", self.blob)])
        self.commit = self.make_commit(self.tree)
        self.point("refs/heads/main", self.commit)

    def obj(self, kind: str, data: bytes) -> str:
        out = subprocess.run(
            ["git", "--git-dir", str(self.path), "hash-object", "--literally", "-w", "-t", kind,
             "--stdin"],
            input=data, capture_output=True, env=git_env(), check=True,
        )  # fmt: skip
        return out.stdout.decode().strip()

    def make_tree(self, entries: list[tuple[bytes, bytes, str]]) -> str:
        """A tree of ``(mode, name, oid)`` entries, in the order given."""
        raw = b"".join(m + b" " + n + b"\0" + bytes.fromhex(o) for m, n, o in entries)
        return self.obj("tree", raw)

    def make_commit(self, tree: str, *, author: bytes = WHO, body: bytes = b"m\n") -> str:
        header = b"tree " + tree.encode() + b"\nauthor " + author + b"\ncommitter " + WHO
        return self.obj("commit", header + b"\n\n" + body)

    def point(self, ref: str, oid: str) -> None:
        """Written as a file: ``update-ref`` refuses objects it cannot parse."""
        path = self.path / ref
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(oid + "\n")

    def head(self, oid: str) -> None:
        self.point("refs/heads/main", oid)

    def tagged(self, raw: bytes) -> None:
        self.point("refs/tags/t", self.obj("tag", raw))

    def on_top(self, tree: str) -> None:
        """A commit with ``tree``, child of the current tip: history stays connected."""
        raw = (b"tree " + tree.encode() + b"\nparent " + self.commit.encode() + b"\nauthor "
               + WHO + b"\ncommitter " + WHO + b"\n\nm\n")  # fmt: skip
        self.head(self.obj("commit", raw))


def _ident(author: bytes) -> Callable[[Crafted], None]:
    return lambda r: r.head(r.make_commit(r.tree, author=author))


def _raw_commit(header: bytes) -> Callable[[Crafted], None]:
    return lambda r: r.head(r.obj("commit", header.replace(b"TREE", r.tree.encode())))


def _tag(raw: bytes) -> Callable[[Crafted], None]:
    return lambda r: r.tagged(raw.replace(b"OBJ", r.commit.encode()))


def _entries(*entries: tuple[bytes, bytes, str]) -> Callable[[Crafted], None]:
    """A tree whose oids are "blob", "tree" (this repository's) or literal hex."""

    def build(r: Crafted) -> None:
        named = {"blob": r.blob, "tree": r.tree}
        r.on_top(r.make_tree([(m, n, named.get(o, o)) for m, n, o in entries]))

    return build


def _file(name: bytes, text: bytes) -> Callable[[Crafted], None]:
    return lambda r: r.on_top(r.make_tree([(b"100644", name, r.obj("blob", text))]))


def _large_gitmodules(r: Crafted) -> None:
    # fsck parses .gitmodules only when it is loaded whole: above core.bigFileThreshold
    # (a setting of the repository; compared with the compressed size) it says
    # gitmodulesLarge instead.
    text = b"".join(b'[submodule "s%d"]\n\tpath = s%d\n\turl = https://e/s%d\n' % (i, i, i)
                    for i in range(30))  # fmt: skip
    _file(b".gitmodules", text)(r)
    run_git(r.path, "config", "core.bigFileThreshold", "100")


def _extra_header(r: Crafted) -> None:
    # ignored by default: reported only because the repository asks (fsck.<id> honoured)
    _tag(b"object OBJ\ntype commit\ntag v1\ntagger " + WHO + b"\nfoo bar\n\nm\n")(r)
    run_git(r.path, "config", "fsck.extraHeaderEntry", "warn")


H = b"author " + WHO + b"\ncommitter " + WHO + b"\n"
TAGGER = b"tagger " + WHO + b"\n"

#: Every message id of git 2.39's fsck.h that describes how an object is written while
#: git can still follow all its links: each is a warning, never damage.
FORMAT_CASES: dict[str, Callable[[Crafted], None]] = {
    # author/committer lines (ERROR level in git, yet common in old public histories)
    "badDate": _ident(b"A <a@e.org> x +0000"),
    "badDateOverflow": _ident(b"A <a@e.org> 99999999999999999999999 +0000"),
    "badEmail": _ident(b"A <a@e.org<x> 1 +0000"),
    "badName": _ident(b"A > <a@e.org> 1 +0000"),
    "badTimezone": _ident(b"A <a@e.org> 1313584730 +051800"),
    "missingEmail": _ident(b"A 1 +0000"),
    "missingNameBeforeEmail": _ident(b"<a@e.org> 1 +0000"),
    "missingSpaceBeforeEmail": _ident(b"A<a@e.org> 1 +0000"),
    "missingSpaceBeforeDate": _ident(b"A <a@e.org>1 +0000"),
    "zeroPaddedDate": _ident(b"A <a@e.org> 01 +0000"),
    "missingAuthor": _raw_commit(b"tree TREE\ncommitter " + WHO + b"\n\nm\n"),
    "missingCommitter": _raw_commit(b"tree TREE\nauthor " + WHO + b"\n\nm\n"),
    "multipleAuthors": _raw_commit(b"tree TREE\nauthor " + WHO + b"\n" + H + b"\nm\n"),
    # headers (nulInHeader and unterminatedHeader are FATAL: git lets no config demote them)
    "nulInHeader": _raw_commit(b"tree TREE\n" + H + b"x a\0b\n\nm\n"),
    "unterminatedHeader": _raw_commit(b"tree TREE\n" + H[:-1]),
    "nulInCommit": _raw_commit(b"tree TREE\n" + H + b"\na\0b\n"),
    # tags
    "badTagName": _tag(b"object OBJ\ntype commit\ntag a..b\n" + TAGGER + b"\nm\n"),
    "missingTaggerEntry": _tag(b"object OBJ\ntype commit\ntag v1\n\nm\n"),
    "extraHeaderEntry": _extra_header,
    # tree entries
    "zeroPaddedFilemode": _entries((b"0100644", b"f", "blob")),
    "badFilemode": _entries((b"100600", b"f", "blob")),
    "fullPathname": _entries((b"100644", b"a/b", "blob")),
    "hasDot": _entries((b"40000", b".", "tree")),
    "hasDotdot": _entries((b"40000", b"..", "tree")),
    "hasDotgit": _entries((b"40000", b".git", "tree")),
    "duplicateEntries": _entries((b"100644", b"f", "blob"), (b"100644", b"f", "blob")),
    "treeNotSorted": _entries((b"100644", b"b", "blob"), (b"100644", b"a", "blob")),
    "gitmodulesBlob": _entries((b"40000", b".gitmodules", "tree")),
    "gitmodulesSymlink": _entries((b"120000", b".gitmodules", "blob")),
    "gitattributesBlob": _entries((b"40000", b".gitattributes", "tree")),
    "gitattributesSymlink": _entries((b"120000", b".gitattributes", "blob")),
    "gitignoreSymlink": _entries((b"120000", b".gitignore", "blob")),
    "mailmapSymlink": _entries((b"120000", b".mailmap", "blob")),
    # blob content
    "gitmodulesParse": _file(b".gitmodules", b'[submodule "x"\n'),
    "gitmodulesName": _file(b".gitmodules", b'[submodule "../x"]\npath = x\nurl = https://e/x\n'),
    "gitmodulesUrl": _file(b".gitmodules", b'[submodule "x"]\npath = x\nurl = -u\n'),
    "gitmodulesPath": _file(b".gitmodules", b'[submodule "x"]\npath = -x\nurl = https://e/x\n'),
    "gitmodulesUpdate": _file(
        b".gitmodules", b'[submodule "x"]\npath = x\nurl = https://e/x\nupdate = !rm\n'
    ),
    "gitmodulesLarge": _large_gitmodules,
    "gitattributesLineLength": _file(b".gitattributes", b"a" * 3000 + b" text\n"),
}

#: Objects git cannot follow, and links to objects that are not there: damage.
DAMAGE_CASES: dict[str, Callable[[Crafted], None]] = {
    "missingTree": _raw_commit(H + b"\nm\n"),
    "badTreeSha1": _raw_commit(b"tree zz\n" + H + b"\nm\n"),
    "badParentSha1": _raw_commit(b"tree TREE\nparent xyz\n" + H + b"\nm\n"),
    "missingObject": _tag(b"type commit\ntag v1\n" + TAGGER + b"\nm\n"),
    "badObjectSha1": _tag(b"object xyz\ntype commit\ntag v1\n" + TAGGER + b"\nm\n"),
    "missingTypeEntry": _tag(b"object OBJ\ntag v1\n" + TAGGER + b"\nm\n"),
    "badType": _tag(b"object OBJ\ntype bogus\ntag v1\n" + TAGGER + b"\nm\n"),
    "missingTagEntry": _tag(b"object OBJ\ntype commit\n" + TAGGER + b"\nm\n"),
    "missingType": _tag(b"object OBJ\n"),
    "missingTag": _tag(b"object OBJ\ntype commit\n"),
    "emptyName": _entries((b"100644", b"", "blob")),
    "badTree": lambda r: r.on_top(r.obj("tree", b"100644 f")),
    "nullSha1": _entries((b"100644", b"f", "00" * 20)),
    "gitmodulesMissing": _entries((b"100644", b".gitmodules", "ab" * 20)),
    "gitattributesMissing": _entries((b"100644", b".gitattributes", "ab" * 20)),
}


def _with_old_timezone(r: Crafted) -> None:
    """A second branch whose commit has requests' bad time zone: a format warning that
    must stay a warning beside real damage."""
    old = r.make_commit(r.tree, author=b"A <a@e.org> 1313584730 +051800")
    r.point("refs/heads/old", old)


# --------------------------------------------------------------------------- the judge


@pytest.mark.parametrize("msg_id", sorted(FORMAT_CASES))
def test_each_format_warning_id_is_a_warning_not_damage(tmp_path: Path, msg_id: str) -> None:
    repo = Crafted(tmp_path / "r.git")
    FORMAT_CASES[msg_id](repo)
    result = check_git_dir(repo.path, GIT, full=True)
    assert result.ok and result.verdict == "ok" and result.findings == (), result
    assert dict(result.warnings.counts) == {msg_id: 1}, result.warnings
    assert all(f": {msg_id}: " in line for line in result.warnings.examples)
    assert result.warnings.summary() == (
        f"1 format warning in historical objects ({msg_id}: 1); not damage"
    )
    quick = check_git_dir(repo.path, GIT, full=False)
    assert quick.verdict == "ok" and quick.findings == (), quick
    assert quick.warnings.total == 0  # connectivity alone does not read objects' format


@pytest.mark.parametrize("msg_id", sorted(DAMAGE_CASES))
def test_unfollowable_or_missing_objects_are_damage_beside_a_warning(
    tmp_path: Path, msg_id: str
) -> None:
    repo = Crafted(tmp_path / "r.git")
    _with_old_timezone(repo)
    DAMAGE_CASES[msg_id](repo)
    result = check_git_dir(repo.path, GIT, full=True)
    assert result.verdict == "corrupt" and not result.ok, result
    assert result.findings and not any("badTimezone" in f for f in result.findings), result
    assert dict(result.warnings.counts) == {"badTimezone": 1}


def test_missing_blob_and_corrupt_loose_object_stay_corrupt_beside_a_warning(
    tmp_path: Path,
) -> None:
    missing_blob = Crafted(tmp_path / "missing.git")
    _with_old_timezone(missing_blob)
    gone = missing_blob.obj("blob", b"soon gone\n")
    missing_blob.on_top(missing_blob.make_tree([(b"100644", b"g", gone)]))
    (missing_blob.path / "objects" / gone[:2] / gone[2:]).unlink()
    flipped = Crafted(tmp_path / "flipped.git")
    _with_old_timezone(flipped)
    loose = flipped.path / "objects" / flipped.blob[:2] / flipped.blob[2:]
    data = bytearray(loose.read_bytes())
    data[-3] ^= 0xFF  # inside the zlib stream: the object no longer inflates or hashes
    loose.chmod(0o644)
    loose.write_bytes(bytes(data))
    # connectivity alone only sees that a blob is there; reading it is the full check's job
    for repo, needle, depths in ((missing_blob, gone, (True, False)),
                                 (flipped, flipped.blob, (True,))):  # fmt: skip
        for full in depths:
            result = check_git_dir(repo.path, GIT, full=full)
            assert result.verdict == "corrupt", (repo.path.name, full, result)
            assert any(needle in line for line in result.findings), result.findings
            assert dict(result.warnings.counts) == ({"badTimezone": 1} if full else {})


def _silence_everything(repo: Crafted, objects: list[str]) -> None:
    """What a hostile repository's config can try: every id it may lower, ignored, and
    every object on the skip list."""
    skip = repo.path / "skip-these"
    skip.write_text("".join(o + "\n" for o in objects))
    run_git(repo.path, "config", "fsck.skipList", str(skip))
    fatal = ("nulInHeader", "unterminatedHeader")  # git refuses to demote these at all
    for msg_id in [i for i in (*DAMAGE_CASES, *FORMAT_CASES) if i not in fatal]:
        run_git(repo.path, "config", f"fsck.{msg_id}", "ignore")


@pytest.mark.parametrize("msg_id", ["missingTree", "badTree", "emptyName", "nullSha1",
                                    "gitmodulesMissing", "badType"])  # fmt: skip
def test_the_repositorys_config_cannot_hide_damage(tmp_path: Path, msg_id: str) -> None:
    repo = Crafted(tmp_path / "r.git")
    _with_old_timezone(repo)
    DAMAGE_CASES[msg_id](repo)
    objects = run_git(repo.path, "cat-file", "--batch-all-objects", "--batch-check=%(objectname)")
    _silence_everything(repo, [*objects.split(), "ab" * 20, "00" * 20])
    result = check_git_dir(repo.path, GIT, full=True)
    assert result.verdict == "corrupt", result
    assert result.warnings.total == 0  # what it may silence, it did: the old time zone


def test_the_repositorys_config_and_skip_list_silence_warnings(tmp_path: Path) -> None:
    ignored = Crafted(tmp_path / "ignored.git")
    _with_old_timezone(ignored)
    run_git(ignored.path, "config", "fsck.badTimezone", "ignore")
    skipped = Crafted(tmp_path / "skipped.git")
    _with_old_timezone(skipped)
    FORMAT_CASES["zeroPaddedFilemode"](skipped)
    old = run_git(skipped.path, "rev-parse", "refs/heads/old").strip()
    (skipped.path / "known-old-objects").write_text(old + "\n")
    run_git(skipped.path, "config", "fsck.skipList", str(skipped.path / "known-old-objects"))
    result = check_git_dir(ignored.path, GIT, full=True)
    assert result.ok and result.warnings.total == 0, result
    result = check_git_dir(skipped.path, GIT, full=True)
    assert result.ok and dict(result.warnings.counts) == {"zeroPaddedFilemode": 1}, result


def test_an_fsck_setting_git_rejects_is_an_error_not_corruption(tmp_path: Path) -> None:
    repo = Crafted(tmp_path / "r.git")
    FORMAT_CASES["nulInHeader"](repo)
    run_git(repo.path, "config", "fsck.nulInHeader", "ignore")  # git: "Cannot demote"
    result = check_git_dir(repo.path, GIT, full=True)
    assert result.verdict == "error", result
    assert any("Cannot demote" in f for f in result.findings), result.findings


# --------------------------------------------------------------------------- end to end


def _corpus_bundle(name: str) -> Path:
    corpus = os.environ.get("CUSTODE_CORPUS")
    where = Path(corpus) if corpus else CORPUS
    bundle = where / f"{name}.bundle"
    if not bundle.is_file():
        missing(f"{bundle} is not there (the shared corpus; set CUSTODE_CORPUS)")
    return bundle


@pytest.fixture(scope="module")
def requests_mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("requests") / "requests.git"
    run_git(None, "clone", "-q", "--mirror", "--no-local", _corpus_bundle("requests"), repo)
    run_git(repo, "config", "--remove-section", "remote.origin")
    return repo


def _copy(repo: Path, root: Path) -> Path:
    shutil.copytree(repo, root / repo.name, symlinks=True)
    return root / repo.name


def test_requests_is_ok_with_its_format_warning_recorded_and_not_alerted(
    custode: Run, requests_mirror: Path, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    root = tmp_path / "root"
    _copy(requests_mirror, root)
    plain = subprocess.run(["git", "--git-dir", str(root / "requests.git"), "fsck"],
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert plain.returncode != 0 and f"{REQUESTS_COMMIT}: badTimezone" in plain.stderr
    result = custode("check", "--full", "--json", root)
    assert result.code == 0, result.stderr
    (repo,) = result.json()["repositories"]
    assert repo["verdict"] == "ok" and repo["findings"] == []
    assert repo["warnings"]["ids"] == {"badTimezone": 1} and repo["warnings"]["total"] == 1
    assert REQUESTS_COMMIT in repo["warnings"]["examples"][0]
    assert result.json()["summary"]["with_format_warnings"] == 1
    table = custode("check", "--full", root)
    assert table.code == 0, table.stderr
    assert "1 ok, 0 corrupt, 0 could not be checked" in table.stdout
    assert "note: 1 format warning in historical objects (badTimezone: 1); not damage" in " ".join(
        table.stdout.split()
    )
    assert custode("check", root).code == 0
    db = Path(isolated_env["XDG_STATE_HOME"]) / "custode" / "state.db"
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT task, outcome, details FROM repository_results").fetchall()
    assert {(t, o) for t, o, _ in rows} == {("check-full", "ok"), ("check", "ok")}
    full = [json.loads(d) for t, _, d in rows if t == "check-full"]
    assert all(d["verdict"] == "ok" and d["warnings"]["ids"] == {"badTimezone": 1} for d in full)
    metrics = custode("metrics", "--no-probes", root)
    assert metrics.code == 0, metrics.stderr
    found = {
        (s.name, s.labels.get("repository")): s.value
        for family in text_string_to_metric_families(metrics.stdout)
        for s in family.samples
    }
    assert found["custode_repository_integrity_ok", "requests.git"] == 1


def test_a_night_over_requests_maintains_it_and_its_restore_drill_passes(
    custode: Run, requests_mirror: Path, tmp_path: Path
) -> None:
    """The issue's night: a full check recorded, then ``custode run`` whose drill samples
    requests. A false "corrupt" would leave it in doubt (never maintained) and the exact
    restore would fail the drill (exit 6)."""
    root = tmp_path / "root"
    _copy(requests_mirror, root)
    assert custode("check", "--full", root).code == 0
    night = custode("run", "--json", "--drill", "1", root)
    assert night.code == 0, night.stderr
    stages = {s["name"]: s for s in night.json()["stages"]}
    assert all(s["outcome"] == "ok" for s in stages.values()), stages
    assert stages["maintain"]["summary"].get("in_doubt", []) == []
    assert stages["backup"]["summary"]["new"] == 1
    drill = stages["drill"]["summary"]
    assert (drill["drills"], drill["drills_failed"]) == (1, 0)


def test_check_cli_old_tools_histories_ok_damage_exit_3(custode: Run, tmp_path: Path) -> None:
    """The two shapes of the issue (a bad time zone, zero-padded tree modes) through the
    CLI, beside a repository whose blob is gone and whose config tries to hide it."""
    root = tmp_path / "root"
    old = Crafted(root / "old.git")
    _with_old_timezone(old)
    FORMAT_CASES["zeroPaddedFilemode"](old)
    result = custode("check", "--full", "--json", root)
    assert result.code == 0, result.stderr
    (repo,) = result.json()["repositories"]
    assert repo["verdict"] == "ok"
    assert repo["warnings"]["ids"] == {"badTimezone": 1, "zeroPaddedFilemode": 1}
    broken = Crafted(root / "broken.git")
    _with_old_timezone(broken)
    gone = broken.obj("blob", b"soon gone\n")
    broken.on_top(broken.make_tree([(b"100644", b"g", gone)]))
    (broken.path / "objects" / gone[:2] / gone[2:]).unlink()
    _silence_everything(broken, [gone])
    for args in (("check", "--full", "--json"), ("check", "--json")):
        result = custode(*args, root)
        assert result.code == 3, (args, result.stderr)
        repos = {r["relative"]: r for r in result.json()["repositories"]}
        assert repos["old.git"]["verdict"] == "ok", args
        assert repos["broken.git"]["verdict"] == "corrupt", args
        assert any(gone in line for line in repos["broken.git"]["findings"]), args
