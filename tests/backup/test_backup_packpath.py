"""Full backups by copy where git allows it, by a new pack otherwise, and minimal headers.

The copy path streams the repository's one pack only when a walk that sees nothing but
that pack finds every object the refs reach, and exactly as many: anything else is
generated. Both refuse a damaged source pack. An incremental's minimal header (only the
refs that moved, only the boundary commits as prerequisites) is still a bundle plain git
verifies and fetches, link after link.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from custode.backup import bundle
from custode.backup.bundle import PackFiles, Refs, capture, write_bundle
from custode.backup.crypto import generate_identity, parse_recipient
from custode.backup.engine import BackupSettings, backup_repository
from custode.backup.restore import write_refs
from custode.backup.store import LocalStore
from custode.errors import CustodeError, IntegrityError
from custode.git.runner import Git, GitResult
from fixtures.builders import fast_import, history_stream, run_git

pytestmark = pytest.mark.integration
GIT = Git()


def _repo(tmp_path: Path, fmt: str = "sha1", name: str = "src.git") -> Path:
    path = tmp_path / name
    run_git(None, "init", "-q", "--bare", f"--object-format={fmt}", path)
    fast_import(path, history_stream("refs/heads/main", 12, annotated_tags=[("v1", 6)]))
    run_git(path, "update-ref", "refs/heads/side", "refs/heads/main~4")
    run_git(path, "symbolic-ref", "refs/remotes/origin/HEAD", "refs/heads/main")
    run_git(path, "repack", "-adq")
    return path


def _loose_unreachable(repo: Path) -> None:
    """One unreachable loose object: the repository is no longer a single pack."""
    run_git(repo, "hash-object", "-w", "--stdin", input=b"unreachable\n")


def _write(repo: Path, out: Path, fmt: str = "sha1", exclude: set[str] | None = None,
           **kw: object) -> tuple[Refs, PackFiles | None]:  # fmt: skip
    out.mkdir(parents=True)
    refs = capture(GIT, repo)
    return refs, write_bundle(GIT, repo, refs, exclude or set(), out, object_format=fmt, **kw)  # type: ignore[arg-type]


def _restore(files: PackFiles, refs: Refs, dest: Path, fmt: str) -> None:
    """As custode.backup.restore installs a link: the pack cut out of the bundle, beside
    the stored index, then the refs."""
    run_git(None, "init", "-q", "--bare", f"--object-format={fmt}", dest)
    assert files.index is not None
    pack_dir = dest / "objects" / "pack"
    with files.bundle.open("rb") as src, (pack_dir / f"{files.pack_name}.pack").open("wb") as out:
        src.seek(files.header_bytes)
        shutil.copyfileobj(src, out)
    shutil.copyfile(files.index, pack_dir / f"{files.pack_name}.idx")
    write_refs(dest, refs)


def _state(repo: Path) -> str:
    refs = run_git(repo, "for-each-ref", "--format=%(objectname) %(refname) %(symref)")
    objects = run_git(repo, "cat-file", "--batch-all-objects", "--batch-check")
    return refs + run_git(repo, "symbolic-ref", "HEAD") + objects


@pytest.mark.parametrize("fmt", ["sha1", "sha256"])
def test_the_copy_path_and_the_generate_path_restore_identically(tmp_path: Path, fmt: str) -> None:
    repo = _repo(tmp_path, fmt)
    refs, copied = _write(repo, tmp_path / "copy", fmt)
    assert copied is not None and copied.method == "copy", copied
    assert copied.reason == "one pack of 49 objects, exactly the refs' closure"
    _loose_unreachable(repo)
    refs2, generated = _write(repo, tmp_path / "generate", fmt)
    assert generated is not None and generated.method == "generate"
    assert generated.reason.startswith("1 pack and 1 loose object;"), generated.reason
    assert refs2 == refs and copied.prerequisites == generated.prerequisites == ()
    states = []
    for files in (copied, generated):
        dest = tmp_path / f"{files.method}.git"
        _restore(files, refs, dest, fmt)
        run_git(dest, "fsck", "--strict", "--no-dangling")
        states.append(_state(dest))
        plain = tmp_path / f"plain-{files.method}.git"  # and by git alone
        run_git(None, "init", "-q", "--bare", f"--object-format={fmt}", plain)
        run_git(plain, "bundle", "verify", "-q", files.bundle)
        run_git(plain, "fetch", "-q", files.bundle, "refs/*:refs/*")
        run_git(plain, "fsck", "--strict", "--no-dangling")
    assert states[0] == states[1]
    assert "unreachable" not in states[1]
    source = run_git(repo, "for-each-ref", "--format=%(objectname) %(refname) %(symref)")
    assert states[0].startswith(source)


def _flip_blob_type(repo: Path) -> None:
    """Make one blob of the repository's pack a "tree" in its object header: zlib and an
    ``index-pack`` of a copy see nothing wrong (the object merely gets another name), the
    pack's checksum and its .idx's CRC do."""
    (idx,) = (repo / "objects" / "pack").glob("*.idx")
    listing = run_git(None, "verify-pack", "-v", idx)
    offset = next(int(f[4]) for f in map(str.split, listing.splitlines())
                  if len(f) >= 5 and f[1] == "blob")  # fmt: skip
    pack = idx.with_suffix(".pack")
    pack.chmod(0o644)
    data = bytearray(pack.read_bytes())
    data[offset] ^= 0x10  # type bits 011 (blob) -> 010 (tree)
    pack.write_bytes(bytes(data))


@pytest.mark.parametrize("path", ["copy", "generate"])
def test_a_damaged_source_pack_is_refused_at_backup_time(tmp_path: Path, path: str) -> None:
    repo = _repo(tmp_path)
    _flip_blob_type(repo)
    if path == "generate":
        _loose_unreachable(repo)
    with pytest.raises(CustodeError) as caught:
        _write(repo, tmp_path / "out")
    message = caught.value.message
    assert "\n" not in message
    if path == "copy":
        assert isinstance(caught.value, IntegrityError)
        assert ".pack is damaged" in message and str(repo) in message
    else:  # pack-objects, writing by name, checks each reused object's CRC
        assert "pack-objects failed" in message and "corrupt" in message


def _split_closure(repo: Path) -> str:
    """One pack holding an unreachable blob and every reachable object but one blob, which
    stays loose: the pack's object count equals the refs' closure."""
    outside = run_git(repo, "rev-parse", "refs/heads/main:src/file0.txt").strip()
    content = run_git(repo, "cat-file", "blob", outside)
    unreachable = run_git(repo, "hash-object", "-w", "--stdin", input=b"nobody's\n").strip()
    listed = run_git(repo, "rev-list", "--objects", "--all").splitlines()
    wanted = [line.split(" ")[0] for line in listed if not line.startswith(outside)]
    pack_dir = repo / "objects" / "pack"
    old = list(pack_dir.iterdir())
    run_git(repo, "pack-objects", "-q", pack_dir / "pack",
            input="".join(f"{oid}\n" for oid in [*wanted, unreachable]).encode())  # fmt: skip
    for f in old:
        f.unlink()
    run_git(repo, "hash-object", "-w", "--stdin", input=content.encode())  # back, loose only
    run_git(repo, "prune-packed")
    assert len(list(pack_dir.glob("*.pack"))) == 1
    return outside


def test_the_copy_path_refuses_a_pack_short_of_a_reachable_object_whatever_its_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _repo(tmp_path)
    outside = _split_closure(repo)
    refs, files = _write(repo, tmp_path / "natural")
    assert files is not None and files.method == "generate"
    assert files.reason.startswith("1 pack and 1 loose object;"), files.reason
    # Were the listing to miss the loose object (it appeared meanwhile), the walk of the
    # pinned pack alone still proves the pack short: generated, never copied.
    (pack,) = (repo / "objects" / "pack").glob("*.pack")
    monkeypatch.setattr(bundle, "_single_pack", lambda _: pack.with_suffix(""))
    _, files = _write(repo, tmp_path / "listing-misled")
    assert files is not None and files.method == "generate", files
    assert "lacks an object the refs reach" in files.reason, files.reason
    dest = tmp_path / "restored.git"
    _restore(files, refs, dest, "sha1")
    run_git(dest, "fsck", "--strict", "--no-dangling")
    assert run_git(dest, "cat-file", "-t", outside) == "blob\n"


def test_a_repack_while_the_pack_is_walked_and_copied_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pack is pinned by open descriptors before the walk: a push and a repack that
    replace (and delete) it meanwhile leave the backup exactly the captured state."""
    repo = _repo(tmp_path)
    refs = capture(GIT, repo)
    walk = bundle._walk_pinned

    def repack_first(*args: object) -> int | str:
        tip = refs.refs["refs/heads/main"]
        fast_import(repo, history_stream("refs/heads/main", 2, start=40, parent=tip))
        run_git(repo, "repack", "-adq")
        return walk(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(bundle, "_walk_pinned", repack_first)
    (tmp_path / "out").mkdir()
    old = {p.name for p in (repo / "objects" / "pack").iterdir()}
    files = write_bundle(GIT, repo, refs, set(), tmp_path / "out", object_format="sha1")
    assert files is not None and files.method == "copy", files
    assert f"{files.pack_name}.pack" in old
    assert not old & {p.name for p in (repo / "objects" / "pack").iterdir()}  # replaced
    dest = tmp_path / "restored.git"
    _restore(files, refs, dest, "sha1")
    run_git(dest, "fsck", "--strict", "--no-dangling")
    assert run_git(dest, "rev-parse", "refs/heads/main").strip() == refs.refs["refs/heads/main"]


def test_a_shallow_repository_is_copied_within_its_shallow_file(tmp_path: Path) -> None:
    origin = _repo(tmp_path, name="origin.git")
    repo = tmp_path / "shallow.git"
    run_git(None, "clone", "-q", "--bare", "--depth", "2", f"file://{origin}", repo)
    run_git(repo, "repack", "-adq")
    refs, files = _write(repo, tmp_path / "out")
    assert files is not None and files.method == "copy", files
    dest = tmp_path / "restored.git"
    _restore(files, refs, dest, "sha1")
    shutil.copyfile(repo / "shallow", dest / "shallow")
    run_git(dest, "fsck", "--strict", "--no-dangling")
    assert run_git(dest, "rev-list", "--objects", "--all") == run_git(
        repo, "rev-list", "--objects", "--all"
    )


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("second-pack", "2 packs"),
        ("cruft", "2 packs and 1 cruft"),
        ("alternates", "objects/info/alternates borrows"),
        ("unreachable-in-pack", "one pack of 50 objects, but the refs reach 49"),
    ],
)
def test_anything_but_one_pack_of_exactly_the_closure_is_generated(
    tmp_path: Path, change: str, reason: str
) -> None:
    repo = _repo(tmp_path)
    if change == "second-pack":
        fast_import(repo, history_stream("refs/heads/more", 1, label="more"))
    elif change == "cruft":
        _loose_unreachable(repo)
        run_git(repo, "repack", "-d", "-q", "--cruft")
    elif change == "alternates":  # a borrower: most of its objects are the lender's
        lender = repo.rename(tmp_path / "lender.git")
        run_git(None, "clone", "-q", "--bare", "--shared", lender, repo)
        fast_import(repo, history_stream("refs/heads/main", 1, start=20, parent="main^0"))
        run_git(repo, "repack", "-adlq")
    else:
        _loose_unreachable(repo)
        run_git(repo, "repack", "-adq", "--keep-unreachable")
    refs, files = _write(repo, tmp_path / "out")
    assert files is not None and files.method == "generate"
    assert files.reason.startswith(reason), files.reason
    dest = tmp_path / "restored.git"  # the lender's objects too, through its alternates
    _restore(files, refs, dest, "sha1")
    run_git(dest, "fsck", "--strict", "--no-dangling")


@pytest.fixture
def other_filesystem(tmp_path: Path) -> Iterator[Path]:
    for base in ("/dev/shm", "/run", "/var/tmp"):
        usable = os.path.isdir(base) and os.access(base, os.W_OK)
        if usable and os.stat(base).st_dev != tmp_path.stat().st_dev:
            scratch = Path(tempfile.mkdtemp(prefix="custode-test-", dir=base))
            yield scratch
            shutil.rmtree(scratch, ignore_errors=True)
            return
    pytest.skip("no writable directory on another filesystem")


@pytest.mark.parametrize("path", ["copy", "generate"])
def test_a_scratch_directory_on_another_filesystem_leaves_the_repository_alone(
    tmp_path: Path, other_filesystem: Path, path: str
) -> None:
    repo = _repo(tmp_path)
    if path == "generate":
        _loose_unreachable(repo)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (repo / "objects").rglob("*"))
    refs, files = _write(repo, other_filesystem / "out")
    assert files is not None and files.method == path
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (repo / "objects").rglob("*")) == before
    assert sorted(p.name for p in (other_filesystem / "out").iterdir()) == ["bundle", "index"]
    _restore(files, refs, tmp_path / "restored.git", "sha1")
    run_git(tmp_path / "restored.git", "fsck", "--strict", "--no-dangling")


def _changed(old: Refs, new: Refs) -> dict[str, str]:
    return {name: oid for name, oid in new.refs.items() if old.refs.get(name) != oid}


def _heads(files: PackFiles) -> list[str]:
    return subprocess.run(["git", "bundle", "list-heads", str(files.bundle)], check=True,
                          capture_output=True, text=True).stdout.splitlines()  # fmt: skip


@pytest.mark.parametrize("fmt", ["sha1", "sha256"])
def test_a_chain_of_minimal_headers_is_fetched_by_plain_git_in_order(
    tmp_path: Path, fmt: str
) -> None:
    repo = _repo(tmp_path, fmt)
    refs1, full = _write(repo, tmp_path / "b1", fmt, header_refs=None)
    assert full is not None and full.prerequisites == ()
    # one commit on main, a new orphan branch, a deleted branch
    main1 = refs1.refs["refs/heads/main"]
    fast_import(repo, history_stream("refs/heads/main", 1, start=12, parent=main1))
    fast_import(repo, history_stream("refs/heads/orphan", 2, label="orphan"))
    run_git(repo, "update-ref", "-d", "refs/heads/side")
    refs2, inc = _write(repo, tmp_path / "b2", fmt, set(refs1.tips()),
                        header_refs=_changed(refs1, capture(GIT, repo)))  # fmt: skip
    assert inc is not None and inc.method == "generate"
    assert inc.prerequisites == (main1,)  # not the tag, not side: only what the pack needs
    assert {line.split()[1] for line in _heads(inc)} == {"refs/heads/main", "refs/heads/orphan"}
    # nothing new, no ref to list: nothing to store
    refs3, nothing = _write(repo, tmp_path / "b3", fmt, set(refs2.tips()), header_refs={})
    assert nothing is None and refs3 == refs2
    # a detached HEAD on a new commit: listed as HEAD even when the caller lists no ref
    tip = refs2.refs["refs/heads/main"]
    fast_import(repo, history_stream("refs/custode-test/tmp", 1, start=13, parent=tip))
    detached = run_git(repo, "rev-parse", "refs/custode-test/tmp").strip()
    run_git(repo, "update-ref", "-d", "refs/custode-test/tmp")
    run_git(repo, "update-ref", "--no-deref", "HEAD", detached)
    refs4, head = _write(repo, tmp_path / "b4", fmt, set(refs2.tips()), header_refs={})
    assert head is not None and head.prerequisites == (tip,)
    assert _heads(head) == [f"{detached} HEAD"]

    plain = tmp_path / "plain.git"
    run_git(None, "init", "-q", "--bare", f"--object-format={fmt}", plain)
    for files in (full, inc, head):
        run_git(plain, "bundle", "verify", "-q", files.bundle)
        specs = ["refs/*:refs/*"] + (["HEAD:refs/recovered/HEAD"] if head is files else [])
        run_git(plain, "fetch", "-q", files.bundle, *specs)
    run_git(plain, "fsck", "--strict", "--no-dangling")
    fetched = run_git(plain, "for-each-ref", "--format=%(objectname) %(refname)").splitlines()
    expected = {f"{oid} {name}" for name, oid in refs4.refs.items()}
    expected |= {f"{refs1.refs['refs/heads/side']} refs/heads/side"}  # deletions: not in a header
    assert set(fetched) == expected | {f"{detached} refs/recovered/HEAD"}


def test_header_refs_must_name_every_new_tip(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    refs1 = capture(GIT, repo)
    fast_import(repo, history_stream("refs/heads/new", 1, label="new"))
    with pytest.raises(ValueError, match="names no ref for the new tips"):
        _write(repo, tmp_path / "b", "sha1", set(refs1.tips()), header_refs={})


def _early(calls: list[str], fail: bool = False) -> bundle.Early:
    def deliver(files: PackFiles) -> None:
        calls.append(f"deliver {files.method} {files.pack_name}")
        if fail:
            raise OSError(28, "No space left on device")

    return bundle.Early(deliver, lambda: calls.append("undo"))


def test_a_copy_is_handed_over_while_it_is_proved_and_taken_back_when_it_is_not(
    tmp_path: Path,
) -> None:
    """``Early``: the copy is delivered during the proving walk; proved, that is all;
    disproved (an unreachable object in the pack), it is taken back and generated."""
    repo = _repo(tmp_path)
    calls: list[str] = []
    _, files = _write(repo, tmp_path / "a", early=_early(calls))
    assert files is not None and files.method == "copy"
    assert calls == [f"deliver copy {files.pack_name}"]
    _loose_unreachable(repo)
    run_git(repo, "repack", "-adq", "--keep-unreachable")
    calls.clear()
    refs, files = _write(repo, tmp_path / "b", early=_early(calls))
    assert files is not None and files.method == "generate"
    assert calls == [calls[0], "undo"] and calls[0].startswith("deliver copy")
    _restore(files, refs, tmp_path / "restored.git", "sha1")
    run_git(tmp_path / "restored.git", "fsck", "--strict", "--no-dangling")


def test_a_delivery_that_fails_is_undone_after_the_walk_ends(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    calls: list[str] = []
    with pytest.raises(OSError, match="No space"):
        _write(repo, tmp_path / "out", early=_early(calls, fail=True))
    assert len(calls) == 2 and calls[1] == "undo"
    assert not (tmp_path / "out" / "pinned-objects").exists()  # the walk was waited for


def test_a_bare_repositorys_copy_taken_back_leaves_no_file_in_the_store(tmp_path: Path) -> None:
    """The engine stores a bare repository's copy during the proof: disproved, the copy's
    files are deleted and the generated ones stored; the store holds only what the
    manifest names and the byte count is the stored files' sizes."""
    repo = _repo(tmp_path)
    _loose_unreachable(repo)
    run_git(repo, "repack", "-adq", "--keep-unreachable")
    store, scratch = LocalStore(tmp_path / "store"), tmp_path / "scratch"
    scratch.mkdir()
    settings = BackupSettings("h", [parse_recipient(generate_identity(tmp_path / "k"))], scratch)
    result = backup_repository(store, GIT, settings, repository="src.git", root=str(tmp_path),
                               git_dir=repo, bare=True, object_format="sha1", manifests=[])  # fmt: skip
    assert result.outcome == "new" and result.manifest is not None, result.message
    assert result.manifest.link is not None and result.manifest.link.method == "generate"
    named = {ref.key for ref in result.manifest.file_refs()} | {result.manifest_key}
    assert set(store.list("")) == named
    sizes = [store.size(key) for key in named]
    assert result.bytes_added == sum(size or 0 for size in sizes)


class _Recording(Git):
    def __init__(self) -> None:
        super().__init__()
        self.commands: list[list[str]] = []

    def run(self, args: Sequence[str], *a: Any, **kw: Any) -> GitResult:
        self.commands.append(list(args))
        return super().run(args, *a, **kw)


def test_an_incremental_walks_once_and_packs_what_the_walk_listed(tmp_path: Path) -> None:
    """One rev-list (boundary and objects) and a pack-objects fed its list, not a second
    walk; the pack holds exactly the new objects, and a listed object that is missing is
    refused."""
    repo = _repo(tmp_path)
    refs1 = capture(GIT, repo)
    blob = run_git(repo, "hash-object", "-w", "--stdin", input=b"new\n").strip()  # loose
    tree = run_git(repo, "mktree", input=f"100644 blob {blob}\tnew.txt\n".encode()).strip()
    commit = run_git(repo, "commit-tree", "-p", "refs/heads/main", "-m", "new", tree).strip()
    run_git(repo, "update-ref", "refs/heads/main", commit)
    git = _Recording()
    refs2 = capture(git, repo)
    (tmp_path / "b").mkdir()
    files = write_bundle(git, repo, refs2, set(refs1.tips()), tmp_path / "b",
                         object_format="sha1", header_refs=_changed(refs1, refs2))  # fmt: skip
    walks = [c for c in git.commands if c[0] in ("rev-list", "pack-objects")]
    assert [c[0] for c in walks] == ["rev-list", "pack-objects"]
    assert "--revs" not in walks[1]
    assert files is not None and files.index is not None
    listed = run_git(repo, "show-index", input=files.index.read_bytes()).split()[1::3]
    assert sorted(listed) == sorted([blob, tree, commit])
    (repo / "objects" / blob[:2] / blob[2:]).unlink()
    (tmp_path / "c").mkdir()
    with pytest.raises(CustodeError):
        write_bundle(GIT, repo, refs2, set(refs1.tips()), tmp_path / "c",
                     object_format="sha1", header_refs=_changed(refs1, refs2))  # fmt: skip
