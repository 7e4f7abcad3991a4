"""bench/backup's ``forks``, ``real`` and ``large`` scenarios (issue 14's targets).

Owns the three data sets (built deterministically from the public repositories in
``../shared/corpus/`` or from a seeded PRNG, cached under ``--work``) and each scenario's
steps and targets; bench/backup's docstring says what each one measures and why.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

from backup_common import (
    BenchError,
    Results,
    Tools,
    check_restore,
    dataset,
    du,
    fmt_bytes,
    fresh_dir,
    link_copy,
    maint,
    ratio,
    ref_state,
    repositories,
)
from make_fleet import EPOCH, GIT_CONFIG, IDENTITY, Git, history

TARGET_FORK_BYTES = 0.5  # forks: custode store <= this x restic's
TARGET_FULL_TIME = 1.0  # every full backup: custode time <= this x restic's
TARGET_DAY_TIME = 0.2  # real: incremental after a day's pushes <= this x restic's time
TARGET_ONE_COMMIT = 16_000  # real: one commit adds <= this many bytes beyond its objects
TARGET_RESTORE = 0.5  # restore time <= this x restic's
TARGET_PEAK = 1.0  # large: custode full backup peak memory <= this x restic's
MANY_REFS = 5000  # the "one commit" step needs a repository with more refs than this
BIG_THRESHOLD = "core.bigFileThreshold=512k"  # no delta search on the large binary blobs


def default_corpus() -> Path:
    """``../shared/corpus`` beside the checkout this script lives in."""
    return Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"


def bundle(corpus: Path, name: str) -> Path:
    path = corpus / f"{name}.bundle"
    if not path.is_file():
        raise BenchError(f"{path}: no such bundle; pass --corpus DIR (see shared/corpus/README)")
    return path


def mirror(git: Git, source: Path, repo: Path, *, bare: bool = False) -> None:
    """``git clone --mirror`` (or ``--bare``) with no remote left behind, as a forge has."""
    mode = "--bare" if bare else "--mirror"
    git(None, "clone", "-q", mode, "--no-local", str(source), str(repo))
    git(repo, "config", "--remove-section", "remote.origin")


def head_commit(git: Git, repo: Path) -> tuple[str, str]:
    """(HEAD's branch ref, its commit)."""
    ref = git(repo, "symbolic-ref", "HEAD").strip()
    return ref, git(repo, "rev-parse", ref).strip()


def push_commits(git: Git, repo: Path, ref: str, parent: str, count: int, *, serial: int) -> None:
    """What a small push leaves on a server: ``count`` commits on ``ref`` as loose objects."""
    git.fast_import(repo, history(ref, count, start=serial, parent=parent), pack=False)


def ref_count(git: Git, repo: Path) -> int:
    return len(git(repo, "for-each-ref", "--format=%(refname)").splitlines())


# --------------------------------------------------------------------------- forks


def build_forks(out: Path, corpus: Path, base: str, forks: int, seed: int) -> None:
    """``upstream.git`` (a mirror of the bundle ``base``) and ``forks/fork-NN.git``: each a
    bare clone of it, then a few commits apart (by ``i % 4``: a new branch with 1-5
    commits, 1-5 commits on the default branch, a branch deleted, an annotated tag; every
    fifth one also a second new branch), then ``git repack -a -d`` as a forge's gc would."""
    rng = random.Random(seed)  # noqa: S311  (reproducible data, not secrets)
    git = Git(fresh_dir(out.parent / f".home-{out.name}"))
    upstream = out / "upstream.git"
    mirror(git, bundle(corpus, base), upstream)
    for i in range(forks):
        fork = out / "forks" / f"fork-{i:02d}.git"
        mirror(git, upstream, fork, bare=True)
        head, tip = head_commit(git, fork)
        serial = 500_000 + i * 1000
        kind = i % 4
        if kind == 0 or i % 5 == 0:
            branch = f"refs/heads/fork-{i}/feature"
            push_commits(git, fork, branch, tip, rng.randint(1, 5), serial=serial)
        if kind == 1:
            push_commits(git, fork, head, tip, rng.randint(1, 5), serial=serial + 100)
        if kind == 2:
            refs = git(fork, "for-each-ref", "--format=%(refname)", "refs/heads/").split()
            others = [r for r in refs if r != head]
            if others:
                git(fork, "update-ref", "-d", rng.choice(others))
        if kind == 3:
            commits = git(fork, "rev-list", "--max-count=200", tip).split()
            git(fork, "tag", "-a", "-m", f"fork {i} release", f"fork-{i}-v1", rng.choice(commits))
        git(fork, "repack", "-a", "-d", "-q")
    shutil.rmtree(out.parent / f".home-{out.name}")


def _full_then_restore(
    args: argparse.Namespace, work: Path, name: str, pristine: Path
) -> tuple[Results, Path, list[str], list[str], dict[str, bool]]:
    """A full backup by each tool of a hard-linked copy of ``pristine``, then a restore
    by each, checked: (results, run dir, repositories, custode's wrong ones, whether each
    peer's restore had the same refs)."""
    runs = fresh_dir(work / f"run-{name}")
    data = runs / "data"
    link_copy(pristine, data)  # no tool ever writes into the cached set
    res = Results(name, Tools(args, runs, data))
    rels = repositories(data)
    res.backup_step("full")
    env = res.tools.env
    expected = {rel: ref_state(data / rel, env) for rel in rels}
    restored = res.restore_step()
    wrong = check_restore(restored["custode"], expected, rels, env)
    peers = {t: not check_restore(restored[t], expected, [], env) for t in ("restic", "borg")}
    for t in restored:
        shutil.rmtree(runs / f"restore-{t}")
    return res, runs, rels, wrong, peers


def run_forks(args: argparse.Namespace, work: Path) -> Results:
    corpus = args.corpus
    pristine = dataset(
        work,
        "forks",
        f"{args.fork_base}-n{args.forks}-s{args.seed}",
        lambda out: build_forks(out, corpus, args.fork_base, args.forks, args.seed),
    )
    res, _, rels, wrong, peers = _full_then_restore(args, work, "forks", pristine)
    res.notes += [
        f"{args.fork_base}: upstream mirror + {args.forks} forks (bare clones, a few commits "
        f"apart, git repack -a -d), {fmt_bytes(du(pristine))} on disk, seed {args.seed}",
        "peers' restores, refs of every repository: "
        + ", ".join(f"{t} {'same' if ok else 'DIFFERENT'}" for t, ok in peers.items()),
    ]
    stored = {t: float(v) for t, v in res.stored["full"].items()}
    res.target(f"stored bytes <= {TARGET_FORK_BYTES:g}x", ratio(stored), TARGET_FORK_BYTES)
    res.target(
        f"full backup time <= {TARGET_FULL_TIME:g}x", ratio(res.seconds["full"]), TARGET_FULL_TIME
    )
    res.check(f"restore correct ({len(rels)} repos: refs, HEAD, fsck)", wrong)
    res.rows = [
        ("full backup, s", "s", "full"),
        ("full backup, peak RSS", "MB", "full"),
        ("full backup, store size", "stored", "full"),
        ("full restore, s", "s", "restore"),
        ("full restore, peak RSS", "MB", "restore"),
    ]
    return res


# --------------------------------------------------------------------------- real


#: A day's pushes: (repository, what, commits). "branch": a new branch off HEAD's commit;
#: "head": commits on the default branch; "tag": an annotated tag on HEAD's commit.
DAY = (
    ("cli", "branch", 2),
    ("client_python", "head", 1),
    ("requests", "head", 4),
    ("requests", "tag", 0),
    ("borg", "branch", 3),
)


def build_real(out: Path, corpus: Path) -> None:
    """Every ``*.bundle`` of the corpus as a bare mirror ``NAME.git``."""
    git = Git(fresh_dir(out.parent / f".home-{out.name}"))
    bundles = sorted(corpus.glob("*.bundle"))
    if not bundles:
        raise BenchError(f"{corpus}: no *.bundle; pass --corpus DIR (see shared/corpus/README)")
    for path in bundles:
        mirror(git, path, out / f"{path.stem}.git")
    shutil.rmtree(out.parent / f".home-{out.name}")


def run_real(args: argparse.Namespace, work: Path) -> Results:
    corpus = args.corpus
    names = ",".join(sorted(p.stem for p in corpus.glob("*.bundle")))
    pristine = dataset(work, "real", names.replace(",", "+"), lambda o: build_real(o, corpus))
    runs = fresh_dir(work / "run-real")
    data = runs / "data"
    link_copy(pristine, data)  # the pushes below change it
    res = Results("real", Tools(args, runs, data))
    git = Git(fresh_dir(runs / "git-home"))
    rels = repositories(data)
    res.backup_step("full")

    pushed: list[str] = []
    for n, (name, what, count) in enumerate(DAY):
        repo = data / f"{name}.git"
        if not repo.is_dir():
            continue
        head, tip = head_commit(git, repo)
        if what == "branch":
            push_commits(git, repo, f"refs/heads/day-{n}", tip, count, serial=700_000 + n * 100)
        elif what == "head":
            push_commits(git, repo, head, tip, count, serial=700_000 + n * 100)
        else:
            git(repo, "tag", "-a", "-m", f"release {n}", f"day-release-{n}", tip)
        pushed.append(f"{name}: {what} {count}" if count else f"{name}: {what}")
    res.backup_step("day")

    counts = {rel: ref_count(git, data / rel) for rel in rels}
    busiest = max(rels, key=lambda r: counts[r])
    if counts[busiest] <= MANY_REFS:
        raise BenchError(f"no repository with more than {MANY_REFS} refs in {corpus}")
    repo = data / busiest
    head, tip = head_commit(git, repo)
    push_commits(git, repo, head, tip, 1, serial=790_000)
    new = git(repo, "rev-parse", head).strip()
    objects = subprocess.run(
        ["git", "-C", str(repo), "pack-objects", "--revs", "--stdout", "-q"],
        input=f"{new}\n^{tip}\n".encode(),
        capture_output=True,
        env=git.env,
        check=True,
    ).stdout
    res.backup_step("one")
    beyond = {t: res.added["one"][t] - len(objects) for t in res.added["one"]}

    env = res.tools.env
    expected = {rel: ref_state(data / rel, env) for rel in rels}
    restored = res.restore_step()
    wrong = check_restore(restored["custode"], expected, rels, env)
    peers = {t: not check_restore(restored[t], expected, [], env) for t in ("restic", "borg")}
    for t in restored:
        shutil.rmtree(runs / f"restore-{t}")

    res.notes += [
        f"{len(rels)} bare mirrors of the corpus ({', '.join(rels)}), "
        f"{fmt_bytes(du(pristine))}, refs: "
        + ", ".join(f"{r.removesuffix('.git')} {c}" for r, c in counts.items()),
        f"a day's pushes: {'; '.join(pushed)}",
        f"one commit on {head} of {busiest} ({counts[busiest]} refs): its objects "
        f"{len(objects):,} B (pack-objects --stdout of the commit ^parent); store growth "
        "beyond them: " + ", ".join(f"{t} {beyond[t]:,} B" for t in beyond),
        "peers' restores, refs of every repository: "
        + ", ".join(f"{t} {'same' if ok else 'DIFFERENT'}" for t, ok in peers.items()),
    ]
    res.extra.update(day=pushed, one_commit_objects=len(objects), one_commit_beyond=beyond)
    res.target(
        f"full backup time <= {TARGET_FULL_TIME:g}x", ratio(res.seconds["full"]), TARGET_FULL_TIME
    )
    res.target(
        f"day's pushes: incremental time <= {TARGET_DAY_TIME:g}x",
        ratio(res.seconds["day"]),
        TARGET_DAY_TIME,
    )
    res.target(
        f"one commit ({counts[busiest]} refs): bytes beyond its objects <= {TARGET_ONE_COMMIT:,}",
        beyond["custode"],
        TARGET_ONE_COMMIT,
        unit="B",
    )
    res.target(
        f"restore time <= {TARGET_RESTORE:g}x", ratio(res.seconds["restore"]), TARGET_RESTORE
    )
    res.check(f"restore correct ({len(rels)} repos: refs, HEAD, fsck)", wrong)
    res.rows = [
        ("full backup, s", "s", "full"),
        ("full backup, peak RSS", "MB", "full"),
        ("full backup, store size", "stored", "full"),
        ("day's pushes: incremental, s", "s", "day"),
        ("day's pushes: bytes added", "added", "day"),
        ("one commit: incremental, s", "s", "one"),
        ("one commit: bytes added", "added", "one"),
        ("full restore, s", "s", "restore"),
        ("full restore, peak RSS", "MB", "restore"),
    ]
    return res


# --------------------------------------------------------------------------- large


def _commit(ref: str, serial: int, message: str, path: str, blob: bytes) -> bytes:
    who = f"{IDENTITY[0]} <{IDENTITY[1]}> {EPOCH + serial * 60} +0000"
    msg = message.encode()
    return b"".join(
        (
            f"commit {ref}\nauthor {who}\ncommitter {who}\n".encode(),
            b"data %d\n%s\n" % (len(msg), msg),
            f"M 100644 inline {path}\n".encode(),
            b"data %d\n%s\n\n" % (len(blob), blob),
        )
    )


def build_large_repo(out: Path, mb: float, seed: int) -> None:
    """``large.git``: alternately a text commit and one adding or replacing one of 64
    binary assets with 1-4 MiB of seeded random (incompressible) bytes, until the assets
    reach ``mb`` MB; a tag every 25 commits and a branch every 100; then one pack (with
    its bitmap) by ``git repack -a -d``, as after a forge's gc."""
    rng = random.Random(seed)  # noqa: S311  (reproducible data, not secrets)
    home = fresh_dir(out.parent / f".home-{out.name}")
    git = Git(home)
    repo = out / "large.git"
    git.init(repo)
    argv = ["git"]
    for item in (*GIT_CONFIG, BIG_THRESHOLD):
        argv += ["-c", item]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [*argv, "-C", str(repo), "fast-import", "--quiet"],
            stdin=subprocess.PIPE,
            stderr=err,
            env=git.env,
        )
        assert proc.stdin is not None
        total, serial = 0, 0
        try:
            while total < mb * 1e6:
                proc.stdin.write(history("refs/heads/main", 1, start=serial))
                size = rng.randrange(1 << 20, 4 << 20)
                path = f"assets/a{rng.randrange(64):02d}.bin"
                blob = rng.randbytes(size)
                proc.stdin.write(
                    _commit("refs/heads/main", serial + 1, f"asset {serial}\n", path, blob)
                )
                total += size
                serial += 2
            proc.stdin.close()
        except BrokenPipeError:
            pass  # fast-import stopped: its error is below
        if proc.wait():
            err.seek(0)
            raise BenchError(f"git fast-import (large repository) failed: {maint.tail(err.read())}")
    commits = git(repo, "rev-list", "--reverse", "main").split()
    lines = [f"create refs/tags/r{i:04d} {c}\n" for i, c in enumerate(commits) if i % 25 == 24]
    lines += [
        f"create refs/heads/stable-{i // 100} {c}\n" for i, c in enumerate(commits) if i % 100 == 99
    ]
    git(repo, "update-ref", "--stdin", input="".join(lines).encode())
    git(repo, "repack", "-a", "-d", "-q", config=(BIG_THRESHOLD,))
    git(repo, "pack-refs", "--all")
    shutil.rmtree(home)


def run_large(args: argparse.Namespace, work: Path) -> Results:
    pristine = dataset(
        work,
        "large",
        f"m{args.large_repo_mb:g}-s{args.seed}",
        lambda out: build_large_repo(out, args.large_repo_mb, args.seed),
    )
    res, runs, rels, wrong, peers = _full_then_restore(args, work, "large", pristine)
    repo = pristine / rels[0]
    packs = sorted((repo / "objects" / "pack").glob("*.pack"))
    git = Git(fresh_dir(runs / "git-home"))
    res.notes += [
        f"{rels[0]}: {fmt_bytes(du(repo))} on disk, {len(packs)} pack(s), "
        f"{git(repo, 'rev-list', '--count', '--all').strip()} commits, "
        f"{ref_count(git, repo)} refs, seed {args.seed}",
        "peers' restores, refs: "
        + ", ".join(f"{t} {'same' if ok else 'DIFFERENT'}" for t, ok in peers.items()),
    ]
    res.target(
        f"full backup time <= {TARGET_FULL_TIME:g}x", ratio(res.seconds["full"]), TARGET_FULL_TIME
    )
    res.target(
        f"restore time <= {TARGET_RESTORE:g}x", ratio(res.seconds["restore"]), TARGET_RESTORE
    )
    res.target(
        f"full backup peak memory <= {TARGET_PEAK:g}x", ratio(res.peak_mb["full"]), TARGET_PEAK
    )
    res.check("restore correct (refs, HEAD, fsck)", wrong)
    res.rows = [
        ("full backup, s", "s", "full"),
        ("full backup, peak RSS", "MB", "full"),
        ("full backup, store size", "stored", "full"),
        ("full restore, s", "s", "restore"),
        ("full restore, peak RSS", "MB", "restore"),
    ]
    return res
