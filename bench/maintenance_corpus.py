"""Neglected copies of the real corpus for ``bench/maintenance``: each bundle of
``../shared/corpus/`` made into a bare repository shaped like a server nobody maintained.

A mirror clone of a bundle has one tidy pack. A server that received the same history as
pushes over the years has, instead:

- several packs, one per push that was big enough to be kept as a pack: the default
  branch's first-parent history cut at seeded points (each pack = ``cut_i ^cut_<i``, as a
  push of the commits since the last one would write it, reusing what deltas it can), then
  the other branches, tags and pull-request refs in a few groups, each its own pack;
- loose objects from the last few small pushes to the default branch (below
  ``receive.unpackLimit``): written with ``unpack-objects``, dated the last few days;
- unreachable loose objects dated months ago, as force-pushes and deleted branches leave
  them: a short branch of commits that was pushed then deleted, and stray blobs;
- its refs in ``packed-refs`` (from the migration that created it) with every branch and
  a seeded share of the rest written loose again by later pushes.

Packs get modification times spread over the past year, oldest first. Everything comes
from the bundle and ``--seed`` through the controlled git of ``make_fleet.py`` (no user or
system config, fixed identity and dates, one packing thread), so the same bundle and seed
give the same objects, packs and refs. The result is checked before it is used: refs
equal to the mirror's, ``fsck --connectivity-only`` clean.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from pathlib import Path

from make_fleet import GIT_CONFIG, Git, history

CORPUS_VERSION = 1  # bump when the builder changes what it writes: caches are rebuilt
DAY = 86400.0
EMPTY_PACK_BYTES = 32  # a pack header and its checksum: no objects


def bundles(corpus: Path) -> list[Path]:
    """The corpus's bundles, sorted by name; an error naming the fix when there are none."""
    found = sorted(corpus.glob("*.bundle")) if corpus.is_dir() else []
    if not found:
        raise FileNotFoundError(
            f"{corpus}: no *.bundle found; pass --corpus DIR (see shared/corpus/README.md) "
            "or --no-corpus"
        )
    return found


def _mirror(git: Git, bundle: Path, dest: Path) -> None:
    git(None, "clone", "-q", "--mirror", "--no-local", str(bundle), str(dest))
    git(dest, "config", "--remove-section", "remote.origin")


def _pack(git: Git, source: Path, target: Path, revs: list[str]) -> Path | None:
    """Write the objects of ``revs`` (``--revs`` lines) from ``source`` as one pack of
    ``target``; None when there was nothing to pack."""
    base = target / "objects" / "pack" / "pack"
    name = git(source, "pack-objects", "-q", "--revs", "--delta-base-offset", str(base),
               input="".join(f"{r}\n" for r in revs).encode()).strip()  # fmt: skip
    pack = base.parent / f"pack-{name}.pack"
    if pack.stat().st_size <= EMPTY_PACK_BYTES:
        for sibling in base.parent.glob(f"pack-{name}.*"):
            sibling.unlink()
        return None
    return pack


def _loose(git: Git, source: Path, target: Path, revs: list[str]) -> None:
    """Write the objects of ``revs`` from ``source`` into ``target`` as loose objects, as
    a push below ``receive.unpackLimit`` leaves them."""
    cmd = ["git", *(a for item in GIT_CONFIG for a in ("-c", item)), "-C", str(source)]
    proc = subprocess.run(
        [*cmd, "pack-objects", "-q", "--revs", "--stdout"],
        input="".join(f"{r}\n" for r in revs).encode(),
        capture_output=True,
        env=git.env,
        check=False,
    )
    if proc.returncode:
        raise RuntimeError(f"pack-objects in {source}: {proc.stderr.decode(errors='replace')}")
    git(target, "unpack-objects", "-q", input=proc.stdout)


def _loose_files(repo: Path) -> set[Path]:
    objects = repo / "objects"
    return {p for d in objects.glob("[0-9a-f][0-9a-f]") for p in d.iterdir()}


def _age(paths: list[Path], rng: random.Random, low_days: float, high_days: float) -> None:
    now = time.time()
    for path in paths:
        when = now - rng.uniform(low_days, high_days) * DAY
        os.utime(path, (when, when))


def _unreachable(git: Git, repo: Path, head: str, rng: random.Random) -> list[Path]:
    """Leave loose objects no ref reaches, as a deleted branch and force-pushes do; return
    their files."""
    before = _loose_files(repo)
    gone = "refs/heads/bench-deleted-branch"
    commits = rng.randrange(3, 12)
    git.fast_import(repo, history(gone, commits, start=700_000, parent=head), pack=False)
    git(repo, "update-ref", "-d", gone)
    blobs = Path(repo, "stray-blobs.tmp")
    blobs.mkdir()
    names = []
    for i in range(rng.randrange(80, 260)):
        path = blobs / f"{i}.txt"
        lines = rng.randrange(5, 200)
        path.write_text("".join(f"line {rng.getrandbits(48):x} {k}\n" for k in range(lines)))
        names.append(str(path))
    git(repo, "hash-object", "-w", "--stdin-paths", input="\n".join(names).encode() + b"\n")
    shutil.rmtree(blobs)
    return sorted(_loose_files(repo) - before)


def _refs(source: Path, out: Path, head: str, refs: list[list[str]], rng: random.Random) -> None:
    """packed-refs as the migration wrote it; every branch and some others loose."""
    shutil.copyfile(source / "packed-refs", out / "packed-refs")
    (out / "HEAD").write_text(f"ref: {head}\n")
    for oid, ref in refs:
        if ref.startswith("refs/heads/") or rng.random() < 0.1:
            path = out / ref
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{oid}\n")


def neglect(git: Git, bundle: Path, out: Path, scratch: Path, seed: int) -> None:
    """Write the neglected repository made from ``bundle`` at ``out``."""
    rng = random.Random(f"{seed}:{bundle.stem}")  # noqa: S311  (reproducible, not secrets)
    source = scratch / f"{bundle.stem}.mirror.git"
    _mirror(git, bundle, source)
    git.init(out)
    head_ref = git(source, "symbolic-ref", "HEAD").strip()
    first_parent = git(source, "rev-list", "--first-parent", "--reverse", head_ref).split()
    refs = [line.split(" ", 1) for line in git(
        source, "for-each-ref", "--format=%(objectname) %(refname)").splitlines()]  # fmt: skip

    # The recent small pushes to the default branch: the last few first-parent commits.
    recent = sum(rng.randrange(2, 9) for _ in range(rng.randrange(2, 5)))
    recent = min(recent, max(0, len(first_parent) - 2))
    loose_cuts = sorted(rng.sample(range(len(first_parent) - recent, len(first_parent)),
                               min(recent, rng.randrange(2, 5))))  # fmt: skip
    if not loose_cuts or loose_cuts[-1] != len(first_parent) - 1:
        loose_cuts.append(len(first_parent) - 1)
    loose_tips = [first_parent[i] for i in loose_cuts]
    # Pushes kept as packs: a base (half to two thirds of the history), then more.
    older = len(first_parent) - recent
    cuts = {max(0, int(older * rng.uniform(0.5, 0.67)) - 1)}
    while len(cuts) < min(older, rng.randrange(6, 11)):
        cuts.add(rng.randrange(min(cuts), older))
    pack_tips = [first_parent[i] for i in sorted(cuts)]

    packs: list[Path] = []
    seen: list[str] = []
    for tip in pack_tips:
        pack = _pack(git, source, out, [tip, *(f"^{s}" for s in seen)])
        seen.append(tip)
        if pack:
            packs.append(pack)
    # The other refs in a few groups (branches, tags, then pull requests in chunks), each
    # pushed as a pack; what the recent pushes bring is left to them.
    others = [(oid, ref) for oid, ref in refs if oid not in loose_tips]
    groups = max(2, min(5, len(others) // 400 + 2))
    step = -(-len(others) // groups) if others else 1
    for i in range(0, len(others), step):
        tips = sorted({oid for oid, _ref in others[i : i + step]})
        exclude = [f"^{s}" for s in (*seen, *loose_tips)]
        pack = _pack(git, source, out, [*tips, *exclude])
        seen.extend(tips)
        if pack:
            packs.append(pack)
    before = _loose_files(out)
    done = list(pack_tips)  # not the groups' tips: a branch off the newest commit has them
    for tip in loose_tips:
        _loose(git, source, out, [tip, *(f"^{s}" for s in done)])
        done.append(tip)
    _age(sorted(_loose_files(out) - before), rng, 0.5, 6)
    _age(_unreachable(git, out, first_parent[-1], rng), rng, 30, 300)
    # Last: writing an object a pack already has freshens that pack's time.
    for i, pack in enumerate(packs):  # oldest first, a year ago to a fortnight ago
        when = time.time() - (365 - (365 - 14) * i / max(1, len(packs) - 1)) * DAY
        for sibling in pack.parent.glob(pack.stem + ".*"):
            os.utime(sibling, (when, when))

    _refs(source, out, head_ref, refs, rng)
    want = git(source, "for-each-ref")
    if git(out, "for-each-ref") != want:
        raise RuntimeError(f"{out}: refs differ from {bundle}'s after neglecting it")
    git(out, "fsck", "--connectivity-only", "--no-progress", "--no-dangling")
    shutil.rmtree(source)


def build_corpus(out: Path, corpus: Path, seed: int, scratch: Path) -> list[str]:
    """Write a neglected copy of every bundle of ``corpus`` into ``out`` as ``NAME.git``;
    return their names relative to ``out``."""
    home = scratch / "home"
    home.mkdir(exist_ok=True)
    git = Git(home)
    names = []
    for bundle in bundles(corpus):
        neglect(git, bundle, out / f"{bundle.stem}.git", scratch, seed)
        names.append(f"{bundle.stem}.git")
    return names


def summary(repo: Path) -> str:
    """Packs, loose object files and loose refs of a repository, for the log."""
    packs = len(list((repo / "objects" / "pack").glob("*.pack")))
    loose = len(_loose_files(repo))
    refs = sum(len(files) for _d, _s, files in os.walk(repo / "refs"))
    return f"{packs} packs, {loose} loose objects, {refs} loose refs"
