"""Integrity verification of one repository: ``custode check``'s core. It changes nothing.

By default only connectivity is checked (``fsck --connectivity-only``): every object a ref,
the index or a reflog needs is present and readable. ``full`` adds a full fsck (every
object parsed and hashed, packs checked against their indexes) and verification of the
commit-graph and multi-pack-index when the repository has them.

The verdict is ``ok``, ``corrupt`` (the repository is damaged) or ``error`` (the check
itself could not run: git timed out, the repository vanished or is not one, its ``fsck.*``
config is invalid, it uses a repository extension this git does not know: "not supported
by git 2.39 (extension NAME)", never corrupt).

**Damage versus format warnings.** git's fsck says two kinds of thing. A line naming a
message id (``error in commit <oid>: badTimezone: ...``) is about how an object is
*written*: git read it whole and its hash matched, so every copy of that history (each
clone, every backup) holds the very same bytes, and a restore could not change them. Such
objects were written by old or odd tools and live on in public histories; they are
reported as format warnings, with their ids, and never make a repository corrupt. Damage
is everything else git reports: an object missing, unreadable, not matching its hash or
that git cannot parse ("object could not be parsed", "broken links"), a broken link, a bad
pack or index, a bad ref, a commit-graph or multi-pack-index that fails verification, or
a non-zero exit with nothing said. Only damage makes a repository ``corrupt``. fsck runs
without ``--strict``, so the repository's own ``fsck.<msg-id>`` and ``fsck.skipList`` are
honoured; they can silence warnings, never damage: no setting turns the plain lines
above into message ids, and the ids that name a missing object or unfollowable links
(``LINK_IDS``) are forced to ``error`` on the command line, which outranks the
repository's config, and counted as damage.

``check_git_dir`` (``whole``) is the one judge of a repository's objects: the restore
drill uses it, and ``custode check`` reads only what changed since its last sound check
(``integrity.incremental``) and runs this whole check whenever anything is in doubt.
Findings are git's first complaint lines, bounded, so a badly broken repository cannot
flood the report. Nothing here repairs anything: a corrupt repository is reported and
left exactly as it was. git runs only through the hardened runner, so a repository's
hooks and config run nothing.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from custode.base.fsread import unfit
from custode.base.units import counted
from custode.errors import GitError, GitNotFoundError
from custode.git.runner import unknown_extensions

if TYPE_CHECKING:
    from custode.git.runner import Git, GitResult
    from custode.scan.discovery import Repository
    from custode.scan.repostate import RepoState

Verdict = Literal["ok", "corrupt", "error"]

#: git exits 128 when it dies before checking anything (not a repository, unreadable).
_FATAL = 128
MAX_LINES_PER_STEP = 5
MAX_FINDINGS = 12
MAX_LINE = 300  # characters
MAX_RUNNER_LINE = 1000  # characters of the runner's own message (paths, why in doubt)
MAX_EXAMPLES = 3  # git's lines kept as examples of format warnings

#: fsck message ids (git 2.39's fsck.h) that name a missing object or links git cannot
#: follow. git 2.39 also prints a plain error line for each ("object could not be
#: parsed", "broken links", "broken link from"), which already makes it damage; naming the
#: ids keeps it so if a later git prints only the id, or the repository says ``ignore``.
LINK_IDS = frozenset({
    "badObjectSha1", "badParentSha1", "badTree", "badTreeSha1", "badType", "emptyName",
    "gitattributesMissing", "gitmodulesMissing", "missingObject", "missingTag",
    "missingTagEntry", "missingTree", "missingType", "missingTypeEntry", "nullSha1",
    "unknownType",
})  # fmt: skip

#: ``-c`` pairs for every fsck: the link ids reported whatever the repository says. (Not
#: ``DISTRUST_DERIVED``: fsck walks the objects themselves anyway, and with
#: ``core.commitGraph`` or ``core.multiPackIndex`` off it would skip verifying them.)
FSCK_CONFIG = tuple((f"fsck.{msg_id}", "error") for msg_id in sorted(LINK_IDS))

# "error in commit <oid>: badTimezone: invalid author/committer line - bad time zone"
_MESSAGE = re.compile(
    r"(?P<level>error|warning) in (?P<kind>[a-z]+) (?P<oid>[0-9a-f]{40,64}): "
    r"(?P<id>[a-z][A-Za-z0-9]*): "
)
# fsck dies on a bad ``fsck.*`` setting, or a config (or what it includes) git cannot
# parse, before it reads any object (git 2.39's wording): the config is wrong, not the data.
_BAD_FSCK_CONFIG = (
    "Cannot demote", "Unhandled message id", "Unknown fsck message type",
    "could not open object name list", "invalid object name", "bad config line",
    "bad config variable", "bad numeric config value", "bad boolean config value",
)  # fmt: skip


@dataclass(frozen=True)
class FormatWarnings:
    """fsck's findings about how objects are written (see the module docstring):
    information, never damage. ``counts``: message id → objects, most frequent first."""

    counts: tuple[tuple[str, int], ...] = ()
    examples: tuple[str, ...] = ()  # a few of git's own lines

    @property
    def total(self) -> int:
        return sum(n for _, n in self.counts)

    def summary(self) -> str:
        """``2 format warnings in historical objects (badTimezone: 1, ...)``; "" if none."""
        if not self.counts:
            return ""
        ids = ", ".join(f"{msg_id}: {n:,}" for msg_id, n in self.counts)
        return f"{counted(self.total, 'format warning')} in historical objects ({ids}); not damage"

    def to_json(self) -> dict[str, object]:
        return {"total": self.total, "ids": dict(self.counts), "examples": list(self.examples)}


@dataclass(frozen=True)
class CheckResult:
    verdict: Verdict
    findings: tuple[str, ...]  # damage or why the check could not run: "<step>: <git's line>"
    duration: float  # seconds
    full: bool
    warnings: FormatWarnings = FormatWarnings()
    #: what was read: {"mode": "whole" | "incremental", ...} (``integrity.incremental``)
    read: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Sound: nothing missing, unreadable or mismatching. Format warnings allowed."""
        return self.verdict == "ok"


@dataclass(frozen=True)
class FsckReading:
    """What one git run said, sorted: damage lines, and format warnings as
    ``(msg_id, oid, line)``."""

    damage: tuple[str, ...]
    formats: tuple[tuple[str, str, str], ...]


def read_fsck(result: GitResult) -> FsckReading:
    """Sort git's complaint lines into damage and format warnings (module docstring).
    A successful exit is never damage, whatever was printed."""
    damage: list[str] = []
    formats: dict[tuple[str, str], str] = {}
    for line in _lines(result):
        m = _MESSAGE.match(line)
        if m is None or m["id"] in LINK_IDS:
            damage.append(line)
        else:
            formats.setdefault((m["id"], m["oid"]), line)
    if result.returncode == 0:
        damage = []
    elif not damage and not formats:
        damage = [f"git exited with status {result.returncode} and said nothing"]
    return FsckReading(tuple(damage), tuple((i, o, line) for (i, o), line in formats.items()))


@dataclass(frozen=True)
class Step:
    name: str
    args: tuple[str, ...]
    config: tuple[tuple[str, str], ...] = ()


def steps(git_dir: Path, *, full: bool) -> list[Step]:
    """The git commands a check runs on the repository whose git dir is ``git_dir``."""
    if not full:
        args = ("fsck", "--connectivity-only", "--no-dangling", "--no-progress")
        return [Step("fsck", args, FSCK_CONFIG)]
    out = [Step("fsck", ("fsck", "--full", "--no-dangling", "--no-progress"), FSCK_CONFIG)]
    info = git_dir / "objects" / "info"
    if (info / "commit-graph").is_file() or (info / "commit-graphs").is_dir():
        out.append(Step("commit-graph verify", ("commit-graph", "verify")))
    if (git_dir / "objects" / "pack" / "multi-pack-index").is_file():
        out.append(Step("multi-pack-index verify", ("multi-pack-index", "verify")))
    return out


def check(target: RepoState | Repository, git: Git, *, full: bool) -> CheckResult:
    """Verify ``target``'s integrity (see the module docstring). Never raises for a
    problem of this repository; GitNotFoundError (git missing or too old) propagates.

    A repository whose scan found a FIFO, a device or a giant where git expects a small
    file (a loose ref, an object, a pack index...) gets only ``git.doubt_timeout``."""
    if found := unfit(getattr(target, "problems", ())):
        git.suspect(Path(target.git_dir), "; ".join(found[:3]))
    return check_git_dir(Path(target.git_dir), git, full=full)


def check_git_dir(git_dir: Path, git: Git, *, full: bool) -> CheckResult:
    """``check`` of the repository whose git dir is ``git_dir`` (a restored copy too):
    always the whole check, every object read (the restore drill relies on it)."""
    return whole(git_dir, git, full=full)[0]


def whole(git_dir: Path, git: Git, *, full: bool) -> tuple[CheckResult, dict[tuple[str, str], str]]:
    """The whole check of ``git_dir``, and its format warnings by (message id, object id)."""
    started = time.monotonic()
    findings: list[str] = []
    formats: dict[tuple[str, str], str] = {}
    verdict: Verdict = "ok"
    for step in steps(git_dir, full=full):
        try:
            result, reading = run_step(git, git_dir, step)
        except GitNotFoundError:
            raise
        except GitError as exc:  # timed out (naming why it was in doubt), refused, vanished
            findings.append(_line(f"{step.name}: {exc.message}", MAX_RUNNER_LINE))
            verdict = "error"
            break
        if names := unknown_extensions(result.stderr):
            # not damage: this git cannot open it at all; a newer one can (never cut: the
            # runner bounds each name)
            findings.append(f"{step.name}: {git.unsupported(names)}")
            verdict = "error"
            break
        for msg_id, oid, line in reading.formats:
            formats.setdefault((msg_id, oid), line)
        if not reading.damage:
            continue
        lines = list(reading.damage)
        findings += [_line(f"{step.name}: {text}") for text in lines[:MAX_LINES_PER_STEP]]
        if len(lines) > MAX_LINES_PER_STEP:
            findings.append(f"{step.name}: ... {len(lines) - MAX_LINES_PER_STEP} more lines")
        if result.returncode == _FATAL and not _is_corruption(lines):
            verdict = "error" if verdict == "ok" else verdict
            break  # the repository cannot be opened: later steps would say the same
        verdict = "corrupt"
    if len(findings) > MAX_FINDINGS:
        findings = [*findings[: MAX_FINDINGS - 1], f"... {len(findings) - MAX_FINDINGS + 1} more"]
    warnings = warnings_of(formats)
    seconds = time.monotonic() - started
    return CheckResult(verdict, tuple(findings), seconds, full, warnings), formats


def run_step(git: Git, git_dir: Path, step: Step) -> tuple[GitResult, FsckReading]:
    """Run one fsck-like step; damage gets a second look."""
    result = git.run(list(step.args), repo=git_dir, check=False, config=step.config)
    reading = read_fsck(result)
    if reading.damage and not unknown_extensions(result.stderr):
        # fsck lists objects before it reads refs: a push landing in between looks like
        # a missing commit. Real damage is still there on a second look.
        result = git.run(list(step.args), repo=git_dir, check=False, config=step.config)
        reading = read_fsck(result)
    return result, reading


def warnings_of(
    formats: dict[tuple[str, str], str], extra: dict[str, int] | None = None
) -> FormatWarnings:
    """The format warnings ``formats`` name, plus ``extra`` objects per message id."""
    counts = Counter(msg_id for msg_id, _ in formats)
    counts.update(extra or {})
    ranked = tuple(sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    examples = tuple(_line(line) for line in list(formats.values())[:MAX_EXAMPLES])
    return FormatWarnings(ranked, examples)


def _lines(result: GitResult) -> list[str]:
    """git's complaint lines, in order and without repeats: stderr (errors) then stdout
    (fsck's "missing"/"broken link" lines); notices (an unborn HEAD...) are not problems."""
    text = (result.stderr + b"\n" + result.stdout).decode("utf-8", errors="replace")
    seen: dict[str, None] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith(("notice:", "Checking ", "Verifying ")):
            seen.setdefault(line, None)
    return list(seen)


def _is_corruption(lines: list[str]) -> bool:
    """A fatal exit caused by bad data rather than by a repository git cannot open or by
    an ``fsck.*`` setting git rejects (fix the config: no object was read)."""
    opened = not any("not a git repository" in line or "cannot chdir" in line for line in lines)
    config = any(line.startswith("fatal:") and any(p in line for p in _BAD_FSCK_CONFIG)
                 for line in lines)  # fmt: skip
    return opened and not config and any(line.startswith(("fatal:", "error:")) for line in lines)


def line(text: str, limit: int = MAX_LINE) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    return _line(text, limit)


def _line(text: str, limit: int = MAX_LINE) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
