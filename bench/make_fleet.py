#!/usr/bin/env python3
"""Generate a deterministic fleet of N bare git repositories for benchmarks.

    python bench/make_fleet.py OUT_DIR --count 10000 [--seed 1] [--force] [--jobs 2]

A handful of template repositories are built with real git (fast-import, gc, pack-refs,
unpack-objects) in a controlled environment (no user/system config, fixed identity and
dates, single-threaded packing), then copied to N destinations laid out like real
servers: Gitea's ``gitea/<owner>/<name>.git`` and GitLab's hashed storage
``gitlab/@hashed/xx/yy/<sha256(project id)>.git`` (some with a ``.wiki.git``).

Same arguments, same tree: repository names, which template each one is, and every
file's content and size are a function of ``--count`` and ``--seed`` (and the git
version). File modification times are not: they are when the fleet was written.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

EPOCH = 1_700_000_000
IDENTITY = ("Bench Builder", "bench@example.com")
GIT_CONFIG = (
    "core.hooksPath=/dev/null",
    "init.defaultBranch=main",
    "gc.auto=0",
    "maintenance.auto=false",
    "pack.threads=1",  # deterministic packs
    "gc.writeCommitGraph=false",  # only the "graph" template gets one, explicitly
)

#: Template name -> weight when choosing a project repository's template.
WEIGHTS = {
    "small": 30,  # fully packed, a few commits
    "tags": 10,  # packed, hundreds of refs in packed-refs, some loose refs
    "loose": 15,  # one pack plus ~100 loose objects
    "packs": 10,  # eight packs, needs a repack
    "empty": 10,  # just created, no commits
    "graph": 10,  # bigger history, commit-graph and bitmap
    "medium": 15,  # bigger history on two branches, loose branch refs
}
WIKI_TEMPLATE = "wiki"  # tiny, loose objects only (GitLab .wiki.git)
GITEA_SHARE = 0.55
WIKI_SHARE = 0.2

ADJECTIVES = (
    "amber", "brisk", "calm", "dusty", "eager", "fuzzy", "gentle", "hollow", "icy", "jolly",
    "keen", "lucky", "mellow", "nimble", "odd", "plain", "quiet", "rapid", "shiny", "tidy",
)  # fmt: skip
NOUNS = (
    "api", "bot", "cli", "docs", "engine", "feed", "gateway", "hub", "infra", "jobs", "kit",
    "lib", "monitor", "notes", "parser", "queue", "relay", "site", "tools", "ui", "worker",
)  # fmt: skip


# --------------------------------------------------------------------------- git


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    stamp = f"{EPOCH} +0000"
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=str(home / ".gitconfig"),
        GIT_AUTHOR_NAME=IDENTITY[0],
        GIT_AUTHOR_EMAIL=IDENTITY[1],
        GIT_AUTHOR_DATE=stamp,
        GIT_COMMITTER_NAME=IDENTITY[0],
        GIT_COMMITTER_EMAIL=IDENTITY[1],
        GIT_COMMITTER_DATE=stamp,
        GIT_TERMINAL_PROMPT="0",
        LC_ALL="C",
    )
    return env


class Git:
    def __init__(self, home: Path) -> None:
        (home / ".gitconfig").write_text("")
        self.env = _env(home)

    def __call__(
        self,
        repo: Path | None,
        *args: str,
        input: bytes | None = None,
        config: tuple[str, ...] = (),
    ) -> str:
        cmd = ["git"]
        for item in (*GIT_CONFIG, *config):
            cmd += ["-c", item]
        if repo is not None:
            cmd += ["-C", str(repo)]
        cmd += args
        proc = subprocess.run(cmd, input=input, capture_output=True, env=self.env, check=False)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.decode(errors='replace')}")
        return proc.stdout.decode()

    def init(self, repo: Path) -> None:
        self(None, "init", "-q", "--bare", "--template=", str(repo))

    def fast_import(self, repo: Path, stream: bytes, *, pack: bool = True) -> None:
        limit = "0" if pack else "1000000"
        self(
            repo,
            "fast-import",
            "--quiet",
            input=stream,
            config=(f"fastimport.unpackLimit={limit}",),
        )


def _data(text: str) -> bytes:
    raw = text.encode()
    return b"data %d\n%s\n" % (len(raw), raw)


def history(ref: str, count: int, *, start: int = 0, parent: str | None = None) -> bytes:
    """fast-import stream: ``count`` commits on ``ref``, each changing one of 8 files."""
    out: list[bytes] = []
    for i in range(count):
        serial = start + i
        who = f"{IDENTITY[0]} <{IDENTITY[1]}> {EPOCH + serial * 60} +0000"
        path = f"src/mod{serial % 8}.py"
        body = "".join(
            f"def f{k}():\n    return {serial if k == serial % 30 else k}\n" for k in range(30)
        )
        out.append(f"commit {ref}\nauthor {who}\ncommitter {who}\n".encode())
        out.append(_data(f"change {serial}\n"))
        if i == 0 and parent:
            out.append(f"from {parent}\n".encode())
        out.append(f"M 100644 inline {path}\n".encode() + _data(body) + b"\n")
    return b"".join(out)


def _ref_lines(git: Git, repo: Path, prefix: str, n: int) -> bytes:
    oids = git(repo, "rev-list", "--all").split()
    return "".join(f"create {prefix}{i:04d} {oids[i % len(oids)]}\n" for i in range(n)).encode()


def _explode(git: Git, repo: Path, pack: Path) -> None:
    data = pack.read_bytes()
    for sibling in pack.parent.glob(pack.stem + ".*"):
        sibling.unlink()
    git(repo, "unpack-objects", "-q", input=data)


def build_templates(where: Path, git: Git) -> dict[str, Path]:
    """Build the template repositories under ``where``; return name -> path."""
    t: dict[str, Path] = {name: where / f"{name}.git" for name in (*WEIGHTS, WIKI_TEMPLATE)}
    for path in t.values():
        git.init(path)

    git.fast_import(t["small"], history("refs/heads/main", 12))
    git(t["small"], "gc", "-q")

    git.fast_import(t["tags"], history("refs/heads/main", 60))
    git(t["tags"], "update-ref", "--stdin", input=_ref_lines(git, t["tags"], "refs/tags/v1.", 150))
    git(t["tags"], "update-ref", "--stdin", input=_ref_lines(git, t["tags"], "refs/heads/b", 150))
    git(t["tags"], "gc", "-q")
    git(t["tags"], "update-ref", "--stdin", input=_ref_lines(git, t["tags"], "refs/heads/new", 10))

    git.fast_import(t["loose"], history("refs/heads/main", 30))
    git(t["loose"], "gc", "-q")
    pack_dir = t["loose"] / "objects" / "pack"
    before = set(pack_dir.glob("*.pack"))
    git.fast_import(t["loose"], history("refs/heads/main", 25, start=30, parent="main^0"))
    for pack in set(pack_dir.glob("*.pack")) - before:
        _explode(git, t["loose"], pack)

    for run in range(8):
        parent = "main^0" if run else None
        git.fast_import(t["packs"], history("refs/heads/main", 4, start=run * 4, parent=parent))

    git.fast_import(t["graph"], history("refs/heads/main", 200))
    git(t["graph"], "gc", "-q", config=("gc.writeCommitGraph=true",))
    git(t["graph"], "commit-graph", "write", "--reachable")

    git.fast_import(t["medium"], history("refs/heads/main", 400))
    git.fast_import(t["medium"], history("refs/heads/develop", 50, start=400, parent="main~20"))
    git(t["medium"], "gc", "-q")
    git(t["medium"], "update-ref", "--stdin", input=_ref_lines(git, t["medium"], "refs/heads/f", 6))

    git.fast_import(t[WIKI_TEMPLATE], history("refs/heads/main", 2), pack=False)
    return t


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Entry:
    path: str  # relative to the fleet directory, ends in .git
    template: str


def gitlab_hashed(project_id: int) -> str:
    digest = hashlib.sha256(str(project_id).encode()).hexdigest()
    return f"gitlab/@hashed/{digest[:2]}/{digest[2:4]}/{digest}"


def plan(count: int, seed: int) -> list[Entry]:
    """Exactly ``count`` repositories: names, layout and template, from ``seed`` alone."""
    rng = random.Random(seed)  # noqa: S311  (reproducible layout, not secrets)
    names = list(WEIGHTS)
    weights = list(WEIGHTS.values())
    owners = max(1, count // 25)
    entries: list[Entry] = []
    project_id = 0
    while len(entries) < count:
        template = rng.choices(names, weights)[0]
        if rng.random() < GITEA_SHARE:
            owner = f"{rng.choice(NOUNS)}-team-{rng.randrange(owners):04d}"
            name = f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}-{len(entries):05d}"
            entries.append(Entry(f"gitea/{owner}/{name}.git", template))
            continue
        project_id += 1 + rng.randrange(3)  # deleted projects leave gaps
        base = gitlab_hashed(project_id)
        entries.append(Entry(f"{base}.git", template))
        if rng.random() < WIKI_SHARE and len(entries) < count:
            entries.append(Entry(f"{base}.wiki.git", WIKI_TEMPLATE))
    return entries


def _copy_many(job: tuple[dict[str, str], str, list[tuple[str, str]]]) -> int:
    templates, out, pairs = job
    for rel, template in pairs:
        dest = os.path.join(out, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copytree(templates[template], dest, symlinks=True)
    return len(pairs)


def make_fleet(out: Path, count: int, seed: int = 1, jobs: int = 2) -> list[Entry]:
    """Write ``count`` repositories into ``out`` (which must exist and be empty)."""
    entries = plan(count, seed)
    with tempfile.TemporaryDirectory(prefix="make-fleet-") as scratch:
        home = Path(scratch, "home")
        home.mkdir()
        templates = build_templates(Path(scratch, "templates"), Git(home))
        paths = {name: str(path) for name, path in templates.items()}
        pairs = [(e.path, e.template) for e in entries]
        chunks = [pairs[i::jobs] for i in range(jobs)] if jobs > 1 else [pairs]
        if jobs > 1:
            with ProcessPoolExecutor(max_workers=jobs) as pool:
                done = sum(pool.map(_copy_many, [(paths, str(out), c) for c in chunks]))
        else:
            done = _copy_many((paths, str(out), pairs))
    assert done == count
    return entries


def _prepare(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        sys.exit(f"make_fleet: {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            sys.exit(f"make_fleet: {out} is not empty (use --force to replace its contents)")
        resolved = out.resolve()
        if resolved in (Path("/"), Path.home().resolve()) or Path.cwd().resolve().is_relative_to(
            resolved
        ):
            sys.exit(f"make_fleet: refusing to empty {resolved}")
        for child in out.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory to write the fleet into")
    parser.add_argument("--count", type=int, default=10_000, help="repositories (default 10000)")
    parser.add_argument("--seed", type=int, default=1, help="layout seed (default 1)")
    parser.add_argument(
        "--force", action="store_true", help="empty OUT first if it is not empty (deletes!)"
    )
    parser.add_argument(
        "--jobs", type=int, default=min(2, os.cpu_count() or 1), help="copying processes"
    )
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    _prepare(args.out, args.force)
    started = time.perf_counter()
    entries = make_fleet(args.out, args.count, args.seed, max(1, args.jobs))
    elapsed = time.perf_counter() - started
    mix = Counter(e.template for e in entries)
    layout = Counter(e.path.split("/", 1)[0] for e in entries)
    print(
        f"wrote {len(entries)} repositories to {args.out} in {elapsed:.1f}s "
        f"(seed {args.seed}; {', '.join(f'{k} {v}' for k, v in sorted(layout.items()))}; "
        f"templates: {', '.join(f'{k} {v}' for k, v in sorted(mix.items()))})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
