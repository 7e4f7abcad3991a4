"""bench/backup's ``fleet`` scenario: a generated fleet of many small repositories.

Owns the fleet (``--count`` small-to-medium bare repositories from bench/maintenance's
neglected templates, plus two large ones of ``--large-mb`` and 2/3 of it, mostly binary
blobs in several packs) and its steps: full backup, an incremental after pushes to
``--changed`` of the small repositories, one after a ``git gc`` in the first large
repository, a full restore. See bench/backup's docstring for the targets.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path

from backup_common import (
    Results,
    Tools,
    check_restore,
    count_files,
    dataset,
    du,
    fmt_bytes,
    fresh_dir,
    link_copy,
    maint,
    ratio,
    ref_state,
)
from make_fleet import EPOCH, IDENTITY, Git, _ref_lines, history

TARGET_INCR_TIME = 0.2  # custode incremental time <= this x restic's
TARGET_INCR_BYTES = 1.0  # custode incremental bytes added <= this x restic's
TARGET_RESTORE = 0.5  # custode restore time <= this x restic's
TARGET_RESTORE_S = 300.0  # custode fleet restore < 5 minutes
VARIANTS = 8  # distinct small-to-medium templates


def binary_history(ref: str, count: int, *, start: int, parent: str, rng: random.Random) -> bytes:
    """fast-import stream: ``count`` commits, each replacing one of 40 binary assets with
    16-128 KiB of fresh incompressible bytes (a new blob every commit)."""
    out: list[bytes] = []
    for i in range(count):
        serial = start + i
        who = f"{IDENTITY[0]} <{IDENTITY[1]}> {EPOCH + serial * 60} +0000"
        blob = rng.randbytes(rng.randrange(16, 129) * 1024)
        out.append(f"commit {ref}\nauthor {who}\ncommitter {who}\n".encode())
        msg = f"asset {serial}\n".encode()
        out.append(b"data %d\n%s\n" % (len(msg), msg))
        if i == 0:
            out.append(f"from {parent}\n".encode())
        out.append(f"M 100644 inline assets/a{serial % 40:02d}.bin\n".encode())
        out.append(b"data %d\n%s\n\n" % (len(blob), blob))
    return b"".join(out)


def build_large(git: Git, repo: Path, rng: random.Random, mb: float, commits: int) -> None:
    """A large repository: a text history, then ~``mb`` MB of binary assets pushed in six
    packs, a loose push on top, a few hundred branches and tags."""
    git.init(repo)
    git.fast_import(repo, history("refs/heads/main", commits), pack=True)
    serial = commits
    per_push = max(1, round(mb * 1e6 / (72 * 1024) / 6))  # assets average 72 KiB
    for _ in range(6):
        stream = binary_history("refs/heads/main", per_push, start=serial, parent="main^0", rng=rng)
        git.fast_import(repo, stream, pack=True)
        serial += per_push
    git.fast_import(repo, history("refs/heads/main", 40, start=serial, parent="main^0"), pack=False)
    git(repo, "update-ref", "--stdin", input=_ref_lines(git, repo, "refs/heads/topic-", 300))
    git(repo, "update-ref", "--stdin", input=_ref_lines(git, repo, "refs/tags/v1.", 150))


def build_fleet(out: Path, count: int, large_mb: float, commits: int, seed: int) -> None:
    """Write the fleet into ``out``: ``org-XX/repo-NNNNN.git`` and ``big/large-{1,2}.git``."""
    rng = random.Random(seed)  # noqa: S311  (reproducible fleet, not secrets)
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as scratch:
        home = Path(scratch, "home")
        home.mkdir()
        git = Git(home)
        templates: list[Path] = []
        for i in range(VARIANTS):
            path = Path(scratch, f"t{i}.git")
            maint._neglect(git, path, rng, rng.randrange(20, 300), big=False)
            templates.append(path)
        for i in range(count):
            rel = f"org-{i % 16:02d}/repo-{i:05d}.git"
            shutil.copytree(rng.choice(templates), out / rel, symlinks=True)
        for i, mb in enumerate((large_mb, large_mb * 2 / 3)):
            build_large(git, out / f"big/large-{i + 1}.git", rng, mb, commits)


def run(args: argparse.Namespace, work: Path) -> Results:
    key = f"c{args.count}-m{args.large_mb:g}-k{args.large_commits}-s{args.seed}"
    pristine = dataset(
        work,
        "fleet",
        key,
        lambda out: build_fleet(out, args.count, args.large_mb, args.large_commits, args.seed),
    )
    runs = fresh_dir(work / "run-fleet")
    fleet = runs / "data"
    copy_s = link_copy(pristine, fleet)  # the steps below change it
    rels = [f"org-{i % 16:02d}/repo-{i:05d}.git" for i in range(args.count)]
    rels += ["big/large-1.git", "big/large-2.git"]
    small, large = rels[:-2], rels[-2:]
    res = Results("fleet", Tools(args, runs, fleet))
    git = Git(fresh_dir(runs / "git-home"))
    rng = random.Random(args.seed)  # noqa: S311

    res.backup_step("full")
    pushed = sorted(rng.sample(small, max(1, round(len(rels) * args.changed))))
    for n, rel in enumerate(pushed):
        stream = history("refs/heads/today", 3 + n % 5, start=900_000, parent="main^0")
        git.fast_import(fleet / rel, stream, pack=False)
    res.backup_step("pushed")
    packs_before = len(list((fleet / large[0] / "objects" / "pack").glob("*.pack")))
    gc_started = time.perf_counter()
    git(fleet / large[0], "gc", "--quiet")
    gc_seconds = time.perf_counter() - gc_started
    res.backup_step("gc")
    env = res.tools.env
    expected = {rel: ref_state(fleet / rel, env) for rel in rels}
    restored = res.restore_step()
    sample = large + rng.sample(small, min(args.sample, len(small)))
    wrong = check_restore(restored["custode"], expected, sample, env)
    peers = {
        t: not check_restore(restored[t], {r: expected[r] for r in sample}, [], env)
        for t in ("restic", "borg")
    }
    for t in restored:
        shutil.rmtree(runs / f"restore-{t}")  # only the stores are kept

    res.notes += [
        f"{len(rels)} repositories ({args.count} + 2 large: {fmt_bytes(du(fleet / large[0]))}, "
        f"{fmt_bytes(du(fleet / large[1]))}), {fmt_bytes(du(pristine))} in "
        f"{count_files(pristine)} files, seed {args.seed} (linked for this run in {copy_s:.1f}s)",
        f"pushed to {len(pushed)} repositories ({args.changed:.0%}); git gc in {large[0]} "
        f"({packs_before} packs -> 1, {gc_seconds:.1f}s)",
        f"peers' restores, refs of {len(sample)} repositories: "
        + ", ".join(f"{t} {'same' if ok else 'DIFFERENT'}" for t, ok in peers.items()),
    ]
    for step, label in (("pushed", f"{len(pushed)} pushed"), ("gc", "after gc")):
        res.target(
            f"incremental time ({label}) <= {TARGET_INCR_TIME:g}x",
            ratio(res.seconds[step]),
            TARGET_INCR_TIME,
        )
    for step, label in (("pushed", f"{len(pushed)} pushed"), ("gc", "after gc")):
        res.target(
            f"incremental bytes ({label}) <= {TARGET_INCR_BYTES:g}x",
            ratio({t: float(v) for t, v in res.added[step].items()}),
            TARGET_INCR_BYTES,
        )
    res.target(
        f"restore time <= {TARGET_RESTORE:g}x", ratio(res.seconds["restore"]), TARGET_RESTORE
    )
    res.target(
        f"fleet restore < {TARGET_RESTORE_S:g} s",
        res.seconds["restore"]["custode"],
        TARGET_RESTORE_S,
        unit="s",
    )
    res.check(f"restore correct ({len(rels)} repos' refs, {len(sample)} fsck)", wrong)
    res.extra["pushed"] = pushed
    res.rows = [
        ("full backup, s", "s", "full"),
        ("full backup, peak RSS", "MB", "full"),
        ("full backup, store size", "stored", "full"),
        (f"{len(pushed)} repos pushed: incremental, s", "s", "pushed"),
        (f"{len(pushed)} repos pushed: bytes added", "added", "pushed"),
        ("git gc in 1 large: incremental, s", "s", "gc"),
        ("git gc in 1 large: bytes added", "added", "gc"),
        ("full restore, s", "s", "restore"),
        ("full restore, peak RSS", "MB", "restore"),
    ]
    return res
