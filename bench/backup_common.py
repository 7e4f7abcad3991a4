"""What every bench/backup scenario shares: measuring a child, the three tools, checks.

Owns: ``measure`` (wall time and peak memory of one fresh child process and its
descendants), ``Tools`` (custode, restic and borg, each with its store, backing up and
restoring one data directory), the cached data sets under ``--work`` (``dataset``), the
restore checks (refs, HEAD, ``fsck --connectivity-only``), and the printing of a
scenario's table and targets. The scenarios themselves live in ``backup_fleet.py`` and
``backup_scenarios.py``; the command line in ``bench/backup``.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PASSWORD = "bench-backup-password"  # noqa: S105  (a throw-away benchmark repository)
INSTALL = "install them with: apt-get install restic borgbackup (Debian/Ubuntu)"
TOOLS = ("custode", "restic", "borg")
DATASET_VERSION = 1  # bump when a builder changes what it writes: cached sets are rebuilt
SAMPLE_EVERY = 0.05  # seconds between two samples of a child's process tree
_PEER_PRIORITY = [
    *(["nice", "-n", "10"] if shutil.which("nice") else []),
    *(["ionice", "-t", "-c", "2", "-n", "7"] if shutil.which("ionice") else []),
]


def _load_maintenance():  # type: ignore[no-untyped-def]
    """bench/maintenance has no .py suffix: load it by path for its fleet and env helpers."""
    name = "bench_maintenance"
    if name in sys.modules:
        return sys.modules[name]
    sys.dont_write_bytecode = True
    loader = importlib.machinery.SourceFileLoader(name, str(HERE / "maintenance"))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module  # its dataclasses look themselves up there
    loader.exec_module(module)
    return module


maint = _load_maintenance()
BenchError = maint.BenchError


# --------------------------------------------------------------------------- measuring


@dataclass
class Measurement:
    seconds: float
    peak_mb: float  # max(largest single process, sampled sum of the whole tree)
    stdout: bytes


def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and every descendant now (0 for those already gone)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/statm", "rb") as fh:
                total += int(fh.read().split()[1]) * page
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except (OSError, ValueError, IndexError):
            continue  # exited between two reads
    return total


def measure(argv: list[str], env: dict[str, str], *, cwd: Path | None = None) -> Measurement:
    """Run ``argv`` as a fresh child after ``os.sync()``: wall time and peak memory.

    Peak memory is the larger of ``ru_maxrss`` from ``wait4`` (the largest single process
    among the child and every descendant it waited for: exact, catches short spikes) and
    the largest sum of resident memory over the child's whole process tree sampled every
    ``SAMPLE_EVERY`` seconds from /proc (catches a tool whose processes add up: custode's
    Python and its git children run at the same time)."""
    os.sync()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=cwd
        )
        tree_peak = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal tree_peak
            while not done.wait(SAMPLE_EVERY):
                tree_peak = max(tree_peak, _tree_rss(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _pid, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if code:
            raise BenchError(f"{' '.join(argv[:3])} ... failed ({code}):\n{maint.tail(err.read())}")
        peak = max(usage.ru_maxrss * 1024, tree_peak) / 1e6  # ru_maxrss is in KiB
        return Measurement(seconds, peak, out.read())


def du(root: Path) -> int:
    """Bytes in every file under ``root`` (apparent sizes)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def count_files(root: Path) -> int:
    return sum(len(files) for _d, _s, files in os.walk(root))


def fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def ratio(values: dict[str, float]) -> float:
    """custode / restic (inf when restic's is 0 and custode's is not)."""
    if values["restic"]:
        return values["custode"] / values["restic"]
    return float("inf") if values["custode"] else 0.0


def version(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, check=False)
    return proc.stdout.decode().strip().splitlines()[0] if proc.returncode == 0 else "?"


# --------------------------------------------------------------------------- data sets


def dataset(work: Path, name: str, key: str, build: Callable[[Path], None]) -> Path:
    """The data set ``name`` built with parameters ``key`` under ``work/data``: reused when
    a previous run completed it (the directory exists), else built into a temporary
    sibling and renamed into place, so an interrupted build is never taken for a set."""
    root = work / "data"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{name}-v{DATASET_VERSION}-{key}"
    if final.is_dir():
        print(f"{name}: reusing {final}", file=sys.stderr)
        return final
    partial = root / f".partial-{final.name}"
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir()
    started = time.perf_counter()
    build(partial)
    partial.rename(final)
    print(f"{name}: built in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return final


def link_copy(pristine: Path, dest: Path) -> float:
    """Hard-link every file of the cached set ``pristine`` into ``dest``; return seconds.

    Safe for what the scenarios do to their copy: git never writes into an existing file
    of a repository (new packs, objects and lock-then-rename for refs and config), so a
    push or a gc in the copy never reaches the cache; and a tool that creates a file in a
    repository (custode's lock) creates it in the copy only."""
    started = time.perf_counter()
    shutil.copytree(pristine, dest, symlinks=True, copy_function=os.link)
    return time.perf_counter() - started


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def repositories(root: Path) -> list[str]:
    """Bare repositories under ``root`` (directories named ``*.git``), relative, sorted."""
    found: list[str] = []
    for dirpath, dirs, _files in os.walk(root):
        for name in list(dirs):
            if name.endswith(".git"):
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
                dirs.remove(name)
    return sorted(found)


def ref_state(repo: Path, env: dict[str, str]) -> str:
    """What a restore must bring back: every ref with its object, and where HEAD points."""
    refs = subprocess.run(
        ["git", "-C", str(repo), "for-each-ref"], capture_output=True, env=env, check=True
    ).stdout.decode()
    head = subprocess.run(
        ["git", "-C", str(repo), "symbolic-ref", "-q", "HEAD"],
        capture_output=True,
        env=env,
        check=False,
    ).stdout.decode()
    return f"HEAD -> {head}{refs}"


def check_restore(
    restored: Path,
    expected: dict[str, str],
    fsck: list[str],
    env: dict[str, str],
) -> list[str]:
    """Repositories (of ``expected``) whose refs or HEAD differ under ``restored``, and
    those of ``fsck`` whose ``git fsck --connectivity-only`` fails."""
    wrong: list[str] = []
    for rel, state in expected.items():
        try:
            if ref_state(restored / rel, env) != state:
                wrong.append(f"{rel} (refs or HEAD differ)")
        except subprocess.CalledProcessError:
            wrong.append(f"{rel} (missing or unreadable)")
    for rel in fsck:
        proc = subprocess.run(
            ["git", "-C", str(restored / rel), "fsck", "--connectivity-only"],
            capture_output=True,
            env=env,
            check=False,
        )
        if proc.returncode:
            wrong.append(f"{rel} (fsck: {maint.tail(proc.stderr, 3)})")
    return wrong


# --------------------------------------------------------------------------- the tools


def find_peers(args: argparse.Namespace) -> None:
    for name in ("restic", "borg"):
        given = getattr(args, name)
        path = shutil.which(given)
        if not path:
            raise BenchError(f"{given} not found; {INSTALL}")
        setattr(args, name, path)


class Tools:
    """The three contenders, each with its store under ``run`` and its own argv, backing
    up and restoring the one directory ``data``."""

    def __init__(self, args: argparse.Namespace, run: Path, data: Path) -> None:
        self.data = data
        self.run = run
        self.stores = {t: run / f"store-{t}" for t in TOOLS}
        scratch = fresh_dir(run / "scratch")
        self.env = maint.git_env(scratch)
        self.peer_env = dict(
            self.env,
            RESTIC_PASSWORD=PASSWORD,
            RESTIC_CACHE_DIR=str(scratch / "restic-cache"),
            BORG_PASSPHRASE=PASSWORD,
            BORG_BASE_DIR=str(scratch / "borg"),
        )
        self.custode = maint.custode_argv(args.custode)
        self.jobs = [] if args.jobs is None else ["--jobs", str(args.jobs)]
        # restic and borg run at the priority custode gives its own work by default
        # (git.nice = 10, best-effort I/O class 7: a nightly job beside a git server), so
        # that other load on the machine weighs on the three tools alike
        self.restic = [*_PEER_PRIORITY, args.restic]
        self.borg = [*_PEER_PRIORITY, args.borg]
        self.key = scratch / "age-identity.txt"
        try:
            from custode.backup.crypto import generate_identity  # noqa: PLC0415
        except ImportError as exc:
            raise BenchError(
                f"cannot import custode ({exc}); run this with the project's python"
            ) from exc
        self.recipient = generate_identity(self.key)
        # custode as it is installed: with bytecode (pip compiles it; this checkout's
        # environment may forbid writing it, and every run would compile ~300 modules,
        # ~1 s, which restic's and borg's binaries never pay); compiled by one warm-up
        # backup and restore that are not measured
        self.custode_env = {k: v for k, v in self.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        self.custode_env["PYTHONPYCACHEPREFIX"] = str(run.parent / "pycache")
        warm = scratch / "warm"
        subprocess.run(["git", "init", "-q", "--bare", str(warm / "root" / "w.git")],
                       env=self.env, check=True)  # fmt: skip
        for argv in (
            ["backup", str(warm / "root"), "--store", str(warm / "store"),
             "--recipient", self.recipient],
            ["restore", "--store", str(warm / "store"), "--identity", str(self.key),
             "--to", str(warm / "out")],
        ):  # fmt: skip
            measure([*self.custode, *argv], self.custode_env)
        self.serial = 0
        self.custode_json: list[dict[str, Any]] = []  # every custode backup's --json
        self.restore_json: dict[str, Any] = {}
        restic, borg = self.stores["restic"], self.stores["borg"]
        measure([*self.restic, "init", "--repo", str(restic)], self.peer_env)
        measure([*self.borg, "init", "--encryption=repokey", str(borg)], self.peer_env)

    def backup(self, tool: str) -> Measurement:
        store = str(self.stores[tool])
        if tool == "custode":
            argv = [*self.custode, "backup", str(self.data), "--store", store]
            argv += ["--recipient", self.recipient, *self.jobs, "--json"]
            m = measure(argv, self.custode_env)
            try:
                doc = json.loads(m.stdout)
                doc["summary"]  # the contract: a summary is there
            except (ValueError, KeyError, TypeError) as exc:
                raise BenchError(f"custode backup --json: no summary ({exc!r})") from exc
            self.custode_json.append(doc)
            return m
        if tool == "restic":
            argv = [*self.restic, "backup", "--repo", store, "--host", "bench", "--quiet"]
            return measure([*argv, str(self.data)], self.peer_env)
        self.serial += 1
        archive = f"{store}::snap-{self.serial}"
        return measure([*self.borg, "create", archive, str(self.data)], self.peer_env)

    def restore(self, tool: str) -> tuple[Measurement, Path]:
        """Restore the latest snapshot into an empty directory; return where the data is."""
        into = fresh_dir(self.run / f"restore-{tool}")
        store = str(self.stores[tool])
        inside = into / str(self.data).lstrip("/")  # restic and borg keep absolute paths
        if tool == "custode":
            argv = [*self.custode, "restore", "--store", store, "--identity", str(self.key)]
            m = measure([*argv, "--to", str(into), *self.jobs, "--json"], self.custode_env)
            try:
                self.restore_json = json.loads(m.stdout)
            except ValueError:
                self.restore_json = {}
            return m, into
        if tool == "restic":
            argv = [*self.restic, "restore", "latest", "--repo", store, "--target", str(into)]
            return measure(argv, self.peer_env), inside
        archive = f"{store}::snap-{self.serial}"
        return measure([*self.borg, "extract", archive], self.peer_env, cwd=into), inside

    def versions(self) -> dict[str, str]:
        return {
            "git": version(["git", "--version"]),
            "restic": version([*self.restic, "version"]),
            "borg": version([*self.borg, "--version"]),
        }


# --------------------------------------------------------------------------- one scenario


@dataclass
class Results:
    """One scenario's figures: per step and tool, seconds, peak MB and bytes."""

    name: str
    tools: Tools
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    peak_mb: dict[str, dict[str, float]] = field(default_factory=dict)
    stored: dict[str, dict[str, int]] = field(default_factory=dict)  # store size after
    added: dict[str, dict[str, int]] = field(default_factory=dict)  # store growth
    notes: list[str] = field(default_factory=list)
    verdicts: list[tuple[str, str, bool | None]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # label, kind, step

    def backup_step(self, step: str) -> None:
        """Every tool backs the data up once (custode, restic, borg, in that order)."""
        for kind in (self.seconds, self.peak_mb, self.stored, self.added):
            kind[step] = {}
        for tool in TOOLS:
            before = du(self.tools.stores[tool])
            m = self.tools.backup(tool)
            after = du(self.tools.stores[tool])
            self.seconds[step][tool], self.peak_mb[step][tool] = m.seconds, m.peak_mb
            self.stored[step][tool], self.added[step][tool] = after, after - before
            print(
                f"  {self.name} {step}: {tool} {m.seconds:.2f}s, {m.peak_mb:.0f} MB peak, "
                f"+{fmt_bytes(after - before)}",
                file=sys.stderr,
            )

    def restore_step(self, step: str = "restore") -> dict[str, Path]:
        self.seconds[step], self.peak_mb[step] = {}, {}
        where: dict[str, Path] = {}
        for tool in TOOLS:
            m, where[tool] = self.tools.restore(tool)
            self.seconds[step][tool], self.peak_mb[step][tool] = m.seconds, m.peak_mb
            print(
                f"  {self.name} {step}: {tool} {m.seconds:.2f}s, {m.peak_mb:.0f} MB peak",
                file=sys.stderr,
            )
        return where

    def target(self, name: str, value: float, limit: float, *, unit: str = "x") -> bool:
        """Record ``value <= limit`` as a target; return whether it passed."""
        passed = value <= limit
        shown = f"{value:.2f}x" if unit == "x" else f"{value:,.0f} {unit}"
        self.verdicts.append((name, shown, passed))
        return passed

    def check(self, name: str, wrong: list[str]) -> None:
        self.verdicts.append((name, "yes" if not wrong else f"{len(wrong)} wrong", not wrong))
        for line in wrong[:10]:
            print(f"  {self.name}: wrong: {line}", file=sys.stderr)

    def print(self, command: str) -> bool:
        """The scenario's table (``rows``: label, kind of figure, step) and its targets."""
        print(f"\n== scenario {self.name}: {command}")
        for note in self.notes:
            print(f"  {note}")
        rows = self.rows
        width = max(len(r[0]) for r in rows)
        head = f"  {'':<{width}}  {'custode':>10}  {'restic':>10}  {'borg':>10}"
        print(f"{head}  {'custode/restic':>14}")
        for label, kind, step in rows:
            values = {
                "s": self.seconds,
                "MB": self.peak_mb,
                "stored": self.stored,
                "added": self.added,
            }[kind][step]
            if kind == "s":
                text = [f"{values[t]:.2f}" for t in TOOLS]
            elif kind == "MB":
                text = [f"{values[t]:.0f} MB" for t in TOOLS]
            else:
                text = [fmt_bytes(values[t]) for t in TOOLS]
            r = ratio(values)
            shown = f"{r:.2f}x" if r != float("inf") else "inf"
            print(f"  {label:<{width}}  {text[0]:>10}  {text[1]:>10}  {text[2]:>10}  {shown:>14}")
        self.print_custode()
        print(f"targets ({self.name}):")
        return bool(maint.report(self.verdicts))

    def print_custode(self) -> None:
        """Where each custode backup spent its time: its summary and slowest repositories
        (every per-repository field beyond the usual ones is shown, e.g. a plan's path)."""
        usual = {"repository", "root", "outcome", "seconds", "bytes_added", "backup_id", "full"}
        steps = [s for s in self.seconds if s != "restore" and s in self.added]
        for step, doc in zip(steps, self.tools.custode_json, strict=False):
            s = doc.get("summary", {})
            inside = s.get("seconds")
            outside = (
                f" (wall {self.seconds[step]['custode']:.2f} s: "
                f"{self.seconds[step]['custode'] - inside:.2f} s outside it, e.g. start-up)"
                if isinstance(inside, int | float)
                else ""
            )
            print(
                f"  custode {step}: {s.get('new')} new, {s.get('unchanged')} unchanged, "
                f"{s.get('full')} full, {s.get('failed')} failed, "
                f"bytes_added {s.get('bytes_added')}, {inside} s{outside}"
            )
            repos = sorted(doc.get("repositories", []), key=lambda r: -(r.get("seconds") or 0))
            for repo in repos[:4]:
                rest = {k: v for k, v in repo.items() if k not in usual and v not in ("", None)}
                print(
                    f"    {repo.get('repository')}: {repo.get('outcome')} "
                    f"{repo.get('seconds')} s, +{repo.get('bytes_added')} B"
                    + (f" {json.dumps(rest, sort_keys=True)}" if rest else "")
                )
        if self.tools.restore_json:
            s = self.tools.restore_json.get("summary", {})
            print(
                f"  custode restore: {s.get('restored')} restored, {s.get('failed')} failed, "
                f"{s.get('bytes')} bytes, {s.get('seconds')} s"
            )

    def as_json(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "peak_mb": self.peak_mb,
            "store_bytes": self.stored,
            "bytes_added": self.added,
            "notes": self.notes,
            "custode_backups": self.tools.custode_json,
            "targets": [{"target": n, "value": v, "pass": p} for n, v, p in self.verdicts],
            **self.extra,
        }
