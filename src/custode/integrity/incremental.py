"""The integrity check at the cost of what changed: ``custode check`` with a record of the
repository's last clean check (``integrity.verified``) reads only what is new since.

With a record, and nothing in the repository that makes it unsound (``Snapshot.doubts``),
a check reads:

* **packs** (``full`` only): each pack that is new, whose files changed in any way (its
  key), that was never read in full, or that is due again (``verified.due``), is read in
  full by ``git index-pack --verify --strict``: every object inflated and hashed, the index
  rebuilt and compared with the one on disk, the pack's and the index's checksums, every
  object parsed as fsck parses it, its links present. The format ids are demoted to
  warnings (``FORMAT_IDS``), so they are reported as ``check`` reports them, never as
  damage. An unchanged pack read in full before is not read.
* **loose objects** (``full`` only): all of them, every time, by ``git fsck --no-full``
  (hash and format of each loose object) with one loose blob or tree as the only head, so
  fsck walks nothing else (to find it, headers are read in id order up to the first
  blob: nothing else reads a loose object's type), and commit-graph and
  multi-pack-index off, so it does not verify those as a side job.
* **refs**: listed by ``for-each-ref`` (a broken one makes git warn: in doubt); HEAD must
  name a branch (``refs/heads/``, unborn allowed) or a commit, as fsck requires.
* **reachability**: the refs' tips (and HEAD, the reflogs, the index) are walked by
  ``git rev-list --objects`` (commit-graph, bitmaps and multi-pack-index not trusted)
  with the tips whose reachability the record proved marked uninteresting: only what is
  new is read. That stands only while no object present at
  the record's time can be gone: no recorded pack gone or changed, no recorded loose
  object gone (with ``full``, one gone must still be found in a pack: packed by a
  repack, whose new pack was just read in full). Otherwise the whole history is walked.
* **commit-graph, multi-pack-index**: verified when their files changed since the record,
  or when a pack went away.

Anything the incremental steps find wrong (a pack that fails, a loose object, a walk that
meets a missing object or a broken ref, git saying anything at all where it should say
nothing) is not judged here: the whole check (``check.whole``, today's ``git fsck``) runs
and its verdict is the verdict. The same whole check runs when there is no record, when
the record is in doubt, when most of the pack bytes are new anyway (``_worth_it``: after
a full repack, fsck reads them faster), or when asked (``incremental=False``). A
repository that borrows objects, has linked worktrees or is shallow
(``verified.whole_only``) is checked whole before anything else is listed: it keeps no
record, so its refs and objects would be listed for nothing. The verdict of an
incremental check is therefore only ever ``ok`` or the whole check's.

After a sound check the record is rebuilt (``Outcome.record``); after any other the
repository's record is dropped, so the next check is whole. Objects are listed before
anything is read, refs before objects: a pack's key is taken before it is read, so a later
write is seen; a tip counts as proven only if it was listed before the objects were
(and, after a whole check, is still there: listed again, unless ``refs_state`` says not
one file the refs stand on was written meanwhile).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from custode.errors import GitError, GitNotFoundError
from custode.git.runner import DISTRUST_DERIVED, unknown_extensions
from custode.integrity import verified
from custode.integrity.check import (
    FSCK_CONFIG,
    LINK_IDS,
    CheckResult,
    Step,
    line,
    run_step,
    warnings_of,
    whole,
)
from custode.integrity.verified import OID, PackKey, PackRecord, Record, Snapshot

if TYPE_CHECKING:
    from custode.git.runner import Git

#: git 2.39's fsck message ids that ``index-pack --strict`` may demote to warnings: every
#: id but the fatal ones (``nulInHeader``, ``unterminatedHeader``: git refuses to demote
#: them) and ``check.LINK_IDS`` (a missing object, links git cannot follow: damage).
FORMAT_IDS = tuple(i for i in (
    "badDate", "badDateOverflow", "badEmail", "badFilemode", "badName", "badTagName",
    "badTimezone", "duplicateEntries", "extraHeaderEntry", "fullPathname",
    "gitattributesBlob", "gitattributesLarge", "gitattributesLineLength",
    "gitattributesSymlink", "gitignoreSymlink", "gitmodulesBlob", "gitmodulesLarge",
    "gitmodulesName", "gitmodulesParse", "gitmodulesPath", "gitmodulesSymlink",
    "gitmodulesUpdate", "gitmodulesUrl", "hasDot", "hasDotdot", "hasDotgit", "mailmapSymlink",
    "missingAuthor", "missingCommitter", "missingEmail", "missingNameBeforeEmail",
    "missingSpaceBeforeDate", "missingSpaceBeforeEmail", "missingTaggerEntry",
    "multipleAuthors", "nulInCommit", "treeNotSorted", "zeroPaddedDate", "zeroPaddedFilemode",
) if i not in LINK_IDS)  # fmt: skip

#: read the whole repository instead when more than this share of its pack bytes, and
#: more than WHOLE_MIN_BYTES, are new (``_worth_it``)
WHOLE_SHARE = 0.5
WHOLE_MIN_BYTES = 16 << 20

_STRICT = "--strict=" + ",".join(f"{i}=warn" for i in FORMAT_IDS)
# "warning: object <oid>: badTimezone: invalid author/committer line - bad time zone"
_PACK_MESSAGE = re.compile(r"warning: object (?P<oid>[0-9a-f]{40,64}): (?P<id>[a-z][A-Za-z0-9]*): ")
#: loose fsck reads the objects only: graph and midx verified on their own
_LOOSE_CONFIG = (*FSCK_CONFIG, ("core.commitGraph", "false"), ("core.multiPackIndex", "false"))
#: the reason a check given ``incremental=False`` (or none to trust) reports
ASKED_WHOLE = "asked for a whole check"

Tips = frozenset[tuple[str, str]]  # (ref, oid); HEAD too


class _Doubt(Exception):
    """The incremental check cannot vouch for the repository: the whole check decides."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _Here:
    """One check of one repository: where, how deep, and what was listed first."""

    git_dir: Path
    git: Git
    full: bool
    snap: Snapshot
    tips: Tips | None
    at: float  # now (Unix time)
    refs: str = ""  # verified.refs_state, taken before the tips were listed


@dataclass(frozen=True)
class Outcome:
    result: CheckResult
    record: Record | None  # to keep for the next check; None: drop the repository's record


def check(
    git_dir: Path,
    git: Git,
    *,
    full: bool,
    record: Record | None,
    incremental: bool = True,
    now: float | None = None,
    no_loose: bool = False,
) -> Outcome:
    """Check ``git_dir`` at the cost of what changed since ``record`` (module docstring).
    Never raises for a problem of the repository; GitNotFoundError propagates.

    ``no_loose``: the caller's scan, just before, found not one file in the loose-object
    directories, so the test of whether anything changed does not list them again (that
    listing was most of the cost of a check in which nothing changed). A loose object
    written since is not in the record, so the next check reads it, as it reads one
    written just after this check; and one that came with a ref's move is read now,
    because then the refs changed and the objects are listed."""
    started = time.monotonic()
    if doubts := verified.whole_only(git_dir):
        # checked whole and never recorded whatever changed: the refs' state, the tips and
        # the object store would be read for nothing
        result, _ = whole(git_dir, git, full=full)
        why = _why_whole(incremental, record, doubts)  # a reason: there are doubts
        return Outcome(replace(result, read={"mode": "whole", "why": why}), None)
    at = time.time() if now is None else now
    refs = verified.refs_state(git_dir)  # before the tips: what they are proven for
    if incremental and record is not None:
        same = _unchanged(git_dir, record, refs, full=full, at=at, started=started,
                          loose=not no_loose)  # fmt: skip
        if same is not None:
            return same
    tips = _tips(git, git_dir)  # before the objects: see the module docstring
    snap = verified.snapshot(git_dir)
    here = _Here(git_dir, git, full, snap, tips, at, refs)
    why = _why_whole(incremental, record, snap.doubts)
    if why is None and tips is None:
        why = "the refs could not be listed cleanly"
    if why is None and record is not None and tips is not None:
        try:
            return _incremental(here, record, tips, started)
        except _Doubt as exc:
            why = exc.reason
    return _whole(here, record, why or "")


def _unchanged(git_dir: Path, record: Record, refs: str, *, full: bool, at: float,
               started: float, loose: bool) -> Outcome | None:  # fmt: skip
    """The outcome when nothing the record proved can have changed, without running git;
    None otherwise. Nothing changed: not one file the refs' reachability stands on was
    written, added or removed (``refs_state``, taken before the objects are looked at),
    every pack is the one recorded and settled (and, with ``full``, not due to be read
    again), no loose object is there (they are read again on every check), and the
    commit-graph and multi-pack-index files are the ones verified. ``loose``: list the
    loose objects (False: the caller knows there are none)."""
    if not refs or refs != record.refs:
        return None
    snap = verified.snapshot(git_dir, loose=loose)
    if snap.doubts or snap.loose or set(snap.packs) != set(record.packs):
        return None
    for name, key in snap.packs.items():
        old = _known(record, name, key)
        if old is None or not _settled(key, snap) or (full and not _read_lately(old, name, at)):
            return None
    graphs = {n: d for n, (d, calm) in snap.graphs.items() if d}
    if any(not snap.graphs[n][1] for n in graphs) or graphs != record.graphs:
        return None
    read: dict[str, object] = {
        "mode": "incremental", "verified": "nothing changed since the last sound check",
        "packs": {"verified": 0, "unchanged_skipped": len(snap.packs), "gone": 0},
        "reachability": "nothing changed: no walk",
    }  # fmt: skip
    return Outcome(_result(record, {}, full, read, started), record)


def _why_whole(incremental: bool, record: Record | None, doubts: tuple[str, ...]) -> str | None:
    """Why the check is whole before anything is read (None: it can be incremental)."""
    if not incremental:
        return ASKED_WHOLE
    if record is None:
        return "no record of an earlier sound check"
    if doubts:
        return doubts[0]
    return None


def _whole(here: _Here, old: Record | None, why: str) -> Outcome:
    git_dir, git, full, snap, tips, at = (here.git_dir, here.git, here.full, here.snap,
                                          here.tips, here.at)  # fmt: skip
    result, formats = whole(git_dir, git, full=full)
    read: dict[str, object] = {"mode": "whole", "why": why}
    if not result.ok or snap.doubts:
        return Outcome(replace(result, read=read), None)
    # a ref that moved during the check may not have been walked at its listed tip: the
    # tips listed before count only where they are still the same. Not one file the refs
    # stand on written since they were listed (``refs_state`` equal, as ``_unchanged``
    # relies on): they are, without listing them again.
    same = here.refs != "" and verified.refs_state(git_dir) == here.refs
    after = tips if same else _tips(git, git_dir)
    proven = sorted({oid for _, oid in tips & after}) if tips and after else []
    packs = {}
    for name, key in snap.packs.items():
        calm = _settled(key, snap)
        known = _known(old, name, key)
        kept = known.verified_at if known else None  # when it was last read in full
        packs[name] = PackRecord(key, at if full and calm else kept, calm)
    graphs = {n: d for n, (d, calm) in snap.graphs.items() if full and d and calm}
    if not full and old is not None:
        graphs = {n: d for n, d in old.graphs.items() if snap.graphs.get(n, ("", False))[0] == d}
    keys = {f"{i} {o}": text for (i, o), text in formats.items()}
    counts = dict(result.warnings.counts)
    if len(keys) > verified.MAX_WARNING_KEYS:
        keys = dict(list(keys.items())[: verified.MAX_WARNING_KEYS])
    record = Record(packs, _loose_set(snap), tuple(proven), graphs, keys, counts, here.refs)
    return Outcome(replace(result, read=read), record)


def _incremental(here: _Here, record: Record, tips: Tips, started: float) -> Outcome:
    try:
        return _steps(here, record, tips, started)
    except GitNotFoundError:
        raise
    except GitError as exc:  # timed out, refused, vanished: the whole check says what
        raise _Doubt(line(f"git failed: {exc.message}")) from exc


def _steps(here: _Here, record: Record, tips: Tips, started: float) -> Outcome:
    git_dir, git, full, snap, at = here.git_dir, here.git, here.full, here.snap, here.at
    gone = sorted(n for n in record.packs if _known(record, n, snap.packs.get(n)) is None)
    read: dict[str, object] = {"mode": "incremental"}
    formats: dict[tuple[str, str], str] = {}  # from packs: kept in the record
    packs: dict[str, PackRecord] = {}
    reading: list[str] = []  # packs to read in full
    for name, key in sorted(snap.packs.items()):
        old = _known(record, name, key)
        calm = _settled(key, snap)
        if not full:
            packs[name] = PackRecord(key, old.verified_at if old else None, calm)
        elif old is not None and _read_lately(old, name, at):
            packs[name] = old
        else:
            reading.append(name)
            packs[name] = PackRecord(key, at if calm else None, calm)
    if full:
        _worth_it(snap, reading)
        for name in reading:
            formats.update(_verify_pack(git, git_dir, name))
        read["packs"] = {"verified": len(reading), "unchanged_skipped": len(snap.packs)
                         - len(reading), "gone": len(gone)}  # fmt: skip
        read["loose"] = len(snap.loose)
    base = _with(record, formats)
    if full and snap.loose:  # read again each time: not kept
        formats.update(_verify_loose(git, git_dir, snap))
    read["reachability"] = _reach(here, record, tips, gone)
    read["verified"] = _graphs(git, git_dir, record, snap, gone)
    graphs = {n: d for n, (d, calm) in snap.graphs.items() if d and calm}
    proven = tuple(sorted({oid for _, oid in tips}))
    new = Record(
        packs, _loose_set(snap), proven, graphs, base.warnings, base.warning_counts, here.refs
    )
    return Outcome(_result(record, formats, full, read, started), new)


def _worth_it(snap: Snapshot, reading: list[str]) -> None:
    """Raise _Doubt when most of the repository's pack bytes are to be read anyway (after a
    full repack): ``git fsck`` reads a pack about a third faster than ``index-pack``
    (measured on the corpus), and walks the history besides."""
    new = sum(snap.packs[n][0][0] for n in reading)
    total = sum(key[0][0] for key in snap.packs.values())
    if new > WHOLE_SHARE * total and new > WHOLE_MIN_BYTES:
        raise _Doubt(f"{new * 100 // total}% of the pack bytes are new: the whole check is cheaper")


def _with(record: Record, formats: dict[tuple[str, str], str]) -> Record:
    """``record`` with the format warnings of packs just read added (by object: a pack
    read again adds nothing twice)."""
    keys = dict(record.warnings)
    counts = dict(record.warning_counts)
    for (msg_id, oid), text in formats.items():
        key = f"{msg_id} {oid}"
        if key in keys:
            continue
        counts[msg_id] = counts.get(msg_id, 0) + 1
        if len(keys) < verified.MAX_WARNING_KEYS:
            keys[key] = text
    return replace(record, warnings=keys, warning_counts=counts)


def _result(record: Record, formats: dict[tuple[str, str], str], full: bool,
            read: dict[str, object], started: float) -> CheckResult:  # fmt: skip
    """An incremental check's result: sound, with the record's format warnings (objects
    not read again still carry them) and those just found."""
    fresh = {k: v for k, v in formats.items() if f"{k[0]} {k[1]}" not in record.warnings}
    lines = [*record.warnings.values(), *fresh.values()]
    warnings = warnings_of(fresh, record.warning_counts)
    examples = tuple(line(text) for text in lines[:3])
    warnings = replace(warnings, examples=examples)
    return CheckResult("ok", (), time.monotonic() - started, full, warnings, read)


def _known(record: Record | None, name: str, key: PackKey | None) -> PackRecord | None:
    """The record's entry for the pack ``name`` when the pack there now (``key``; None:
    gone) holds the bytes the record saw: its files' keys as recorded, and settled when
    recorded (one recorded unsettled could have changed unseen: as good as new, and as
    good as gone); None otherwise. The one test of a pack's validity: every step asks it."""
    old = record.packs.get(name) if record is not None else None
    return old if old is not None and old.key == key and old.settled else None


def _read_lately(old: PackRecord, name: str, at: float) -> bool:
    """The known pack ``name`` was read in full, and not so long ago that it is due to be
    read again at ``at`` (``verified.due``)."""
    return old.verified_at is not None and not verified.due(name, old.verified_at, at)


def _settled(key: PackKey, snap: Snapshot) -> bool:
    return verified.settled(key[0], snap.taken_ns) and verified.settled(key[1], snap.taken_ns)


def _loose_set(snap: Snapshot) -> frozenset[str] | None:
    return snap.loose if len(snap.loose) <= verified.MAX_LOOSE else None


def _verify_pack(git: Git, git_dir: Path, name: str) -> dict[tuple[str, str], str]:
    """Read the pack ``name`` in full (module docstring); its format warnings."""
    path = git_dir / "objects" / "pack" / f"{name}.pack"
    # index-pack takes no "--": the path is absolute, so never read as an option
    result = git.run(["index-pack", "--verify", _STRICT, str(path)], repo=git_dir, check=False)
    text = result.stderr.decode("utf-8", errors="replace")
    formats: dict[tuple[str, str], str] = {}
    for raw in text.splitlines():
        if not raw.strip():
            continue
        m = _PACK_MESSAGE.match(raw.strip())
        if result.returncode != 0 or m is None or m["id"] in LINK_IDS:
            raise _Doubt(line(f"pack {name}: {raw.strip() or 'index-pack failed'}"))
        formats.setdefault((m["id"], m["oid"]), raw.strip())
    if result.returncode != 0:
        raise _Doubt(f"pack {name}: index-pack exited with status {result.returncode}")
    return formats


def _verify_loose(git: Git, git_dir: Path, snap: Snapshot) -> dict[tuple[str, str], str]:
    """Hash and parse every loose object (module docstring); their format warnings."""
    head = _loose_head(git_dir, snap.loose)
    args = ("fsck", "--no-full", "--no-dangling", "--no-reflogs", "--no-progress", head)
    result, reading = run_step(git, git_dir, Step("fsck (loose objects)", args, _LOOSE_CONFIG))
    if names := unknown_extensions(result.stderr):
        raise _Doubt(git.unsupported(names))
    if reading.damage:
        raise _Doubt(line(f"loose objects: {reading.damage[0]}"))
    return {(i, o): text for i, o, text in reading.formats}


def _loose_head(git_dir: Path, loose: frozenset[str]) -> str:
    """The loose object fsck takes as its only head: the first blob by id (fsck walks
    nothing from it), else the first tree (its entries only), else the first object (a
    commit: its history). The only step that reads loose objects' types
    (``verified.loose_type``): one header each, in order, up to the first blob."""
    tree = ""
    ordered = sorted(loose)
    for oid in ordered:
        kind = verified.loose_type(verified.loose_path(git_dir, oid))
        if kind == "blob":
            return oid
        if kind == "tree" and not tree:
            tree = oid
    return tree or ordered[0]


def _reach(here: _Here, record: Record, tips: Tips, gone: list[str]) -> str:
    """Prove every object reachable from the tips (and HEAD, the reflogs, the index) is
    there, walking only what the record's proven tips do not cover when nothing can be
    gone; what was walked, in words."""
    git, git_dir = here.git, here.git_dir
    why = _why_walk_all(here, record, gone)
    oids = sorted({oid for _, oid in tips})
    stdin = [*oids, *([] if why else [f"^{oid}" for oid in record.tips])]
    args = ["rev-list", "--objects", "--quiet", "--reflog", "--indexed-objects", "--stdin"]
    result = git.run(args, repo=git_dir, check=False, config=DISTRUST_DERIVED,
                     input=("\n".join(stdin) + "\n").encode())  # fmt: skip
    said = (result.stderr + result.stdout).decode("utf-8", errors="replace").strip()
    if result.returncode != 0 or said:
        first = said.splitlines()[0] if said else f"exit status {result.returncode}"
        raise _Doubt(line(f"reachability: {first}"))
    if why:
        return f"whole walk from {len(oids):,} tips ({why})"
    fresh = len(set(oids) - set(record.tips))
    return f"{fresh:,} new tips walked, {len(oids) - fresh:,} unchanged"


def _why_walk_all(here: _Here, record: Record, gone: list[str]) -> str:
    """Why objects present at the record's time may be gone ("" when none can be)."""
    reason = ""
    if gone:
        reason = f"{len(gone)} packs gone or changed"
    elif record.loose is None:
        reason = "too many loose objects were recorded"
    elif not record.tips:
        reason = "no tips proven yet"
    missing = sorted((record.loose or frozenset()) - here.snap.loose)
    if reason or not missing:
        return reason
    if not here.full:  # the packs they went to were not read: walk them
        return f"{len(missing):,} loose objects gone"
    # packed by a repack into a pack read in full just now (or before)?
    args = ["cat-file", "--batch-check=%(objectname)"]
    result = here.git.run(args, repo=here.git_dir, check=False, config=DISTRUST_DERIVED,
                          input=("\n".join(missing) + "\n").encode())  # fmt: skip
    found = set(result.stdout.decode("ascii", errors="replace").split())
    if result.returncode != 0 or not set(missing) <= found:
        return f"{len(missing):,} loose objects gone, not all in a pack"
    return ""


def _graphs(git: Git, git_dir: Path, record: Record, snap: Snapshot, gone: list[str]) -> str:
    """Verify the commit-graph and multi-pack-index when they changed or a pack went
    away; what was verified, in words."""
    done: list[str] = []
    for name, (digest, _) in sorted(snap.graphs.items()):
        if not digest or (record.graphs.get(name) == digest and not gone):
            continue
        step = Step(f"{name} verify", (name, "verify"))
        result, reading = run_step(git, git_dir, step)
        if names := unknown_extensions(result.stderr):
            raise _Doubt(git.unsupported(names))
        if reading.damage or result.returncode != 0:
            first = reading.damage[0] if reading.damage else f"status {result.returncode}"
            raise _Doubt(line(f"{name}: {first}"))
        done.append(name)
    return ", ".join(done) if done else "nothing changed"


def _tips(git: Git, git_dir: Path) -> Tips | None:
    """Every ref and HEAD with the object it names; None when anything about them is not
    plainly sound (the whole check must see it): git said anything about a ref (a broken
    one is skipped with a warning), HEAD names something other than a branch
    (``refs/heads/``) or a commit, or cannot be read."""
    try:
        refs = git.run(["for-each-ref", "--format=%(objectname) %(refname)"], repo=git_dir,
                       check=False)  # fmt: skip
        head = _head(git, git_dir)
    except GitNotFoundError:
        raise
    except GitError:
        return None
    if refs.returncode != 0 or refs.stderr.strip() or head is None:
        return None
    found: set[tuple[str, str]] = set()
    for raw in refs.stdout.decode("utf-8", errors="surrogateescape").splitlines():
        oid, _, ref = raw.partition(" ")
        if not OID.fullmatch(oid):
            return None
        found.add((ref, oid))
    if head:
        found.add(("HEAD", head))
    return frozenset(found)


def _head(git: Git, git_dir: Path) -> str | None:
    """The commit HEAD names ("" for an unborn branch); None when fsck would complain
    about HEAD ("points to something strange", "not a commit", "invalid HEAD"). Two git
    processes when HEAD names a commit: its object and type are read in one."""
    symbolic = git.run(["symbolic-ref", "--quiet", "HEAD"], repo=git_dir, check=False)
    target = symbolic.stdout.decode("utf-8", errors="replace").strip()
    if symbolic.returncode not in {0, 1} or (
        symbolic.returncode == 0 and not target.startswith("refs/heads/")
    ):
        return None
    # "<oid> <type>" when HEAD resolves to an object that is there, "HEAD missing" else
    args = ["cat-file", "--batch-check=%(objectname) %(objecttype)"]
    info = git.run(args, repo=git_dir, check=False, input=b"HEAD\n")
    found = info.stdout.decode("ascii", errors="replace").split()
    if info.returncode == 0 and len(found) == 2 and OID.fullmatch(found[0]):
        return found[0] if found[1] == "commit" else None
    if symbolic.returncode != 0:
        return None  # detached at nothing, or at an object that is not there
    # no object: is the branch unborn (fsck only notes it), or its object missing?
    head = git.run(["rev-parse", "--verify", "--quiet", "HEAD"], repo=git_dir, check=False)
    return "" if head.returncode == 1 and not head.stdout.strip() else None
