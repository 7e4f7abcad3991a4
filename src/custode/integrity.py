"""Integrity verification of one repository: ``custode check``'s core. It changes nothing.

By default only connectivity is checked (``fsck --connectivity-only``): every object a ref,
the index or a reflog needs is present and readable. ``full`` adds a full, strict fsck
(every object parsed and hashed, packs checked against their indexes) and verification of
the commit-graph and multi-pack-index when the repository has them.

The verdict is ``ok``, ``corrupt`` (git found a problem in the repository) or ``error``
(the check itself could not run: git timed out, the repository vanished or is not one).
Findings are git's first complaint lines, bounded, so a badly broken repository cannot
flood the report. Nothing here repairs anything: a corrupt repository is reported and left
exactly as it was. git runs only through the hardened runner, so a repository's hooks and
config run nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from custode.errors import GitError, GitNotFoundError

if TYPE_CHECKING:
    from custode.discovery import Repository
    from custode.git import Git, GitResult
    from custode.repostate import RepoState

Verdict = Literal["ok", "corrupt", "error"]

#: git exits 128 when it dies before checking anything (not a repository, unreadable).
_FATAL = 128
MAX_LINES_PER_STEP = 5
MAX_FINDINGS = 12
MAX_LINE = 300  # characters


@dataclass(frozen=True)
class CheckResult:
    verdict: Verdict
    findings: tuple[str, ...]  # one line each, "<step>: <git's line>"
    duration: float  # seconds
    full: bool

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"


@dataclass(frozen=True)
class _Step:
    name: str
    args: tuple[str, ...]


def steps(git_dir: Path, *, full: bool) -> list[_Step]:
    """The git commands a check runs on the repository whose git dir is ``git_dir``."""
    if not full:
        return [_Step("fsck", ("fsck", "--connectivity-only", "--no-dangling", "--no-progress"))]
    out = [_Step("fsck", ("fsck", "--full", "--strict", "--no-dangling", "--no-progress"))]
    info = git_dir / "objects" / "info"
    if (info / "commit-graph").is_file() or (info / "commit-graphs").is_dir():
        out.append(_Step("commit-graph verify", ("commit-graph", "verify")))
    if (git_dir / "objects" / "pack" / "multi-pack-index").is_file():
        out.append(_Step("multi-pack-index verify", ("multi-pack-index", "verify")))
    return out


def check(target: RepoState | Repository, git: Git, *, full: bool) -> CheckResult:
    """Verify ``target``'s integrity (see the module docstring). Never raises for a
    problem of this repository; GitNotFoundError (git missing or too old) propagates."""
    started = time.monotonic()
    git_dir = Path(target.git_dir)
    findings: list[str] = []
    verdict: Verdict = "ok"
    for step in steps(git_dir, full=full):
        try:
            result = git.run(list(step.args), repo=git_dir, check=False)
            if result.returncode != 0:
                # fsck lists objects before it reads refs: a push landing in between looks
                # like a missing commit. Real damage is still there on a second look.
                result = git.run(list(step.args), repo=git_dir, check=False)
        except GitNotFoundError:
            raise
        except GitError as exc:  # timed out, refused (owner), vanished
            findings.append(_line(f"{step.name}: {exc.message}"))
            verdict = "error"
            break
        if result.returncode == 0:
            continue
        lines = complaints(result)
        findings += [_line(f"{step.name}: {text}") for text in lines[:MAX_LINES_PER_STEP]]
        if len(lines) > MAX_LINES_PER_STEP:
            findings.append(f"{step.name}: ... {len(lines) - MAX_LINES_PER_STEP} more lines")
        if result.returncode == _FATAL and not _is_corruption(lines):
            verdict = "error" if verdict == "ok" else verdict
            break  # the repository cannot be opened: later steps would say the same
        verdict = "corrupt"
    if len(findings) > MAX_FINDINGS:
        findings = [*findings[: MAX_FINDINGS - 1], f"... {len(findings) - MAX_FINDINGS + 1} more"]
    return CheckResult(verdict, tuple(findings), time.monotonic() - started, full)


def complaints(result: GitResult) -> list[str]:
    """git's complaint lines, in order and without repeats: stderr (errors) then stdout
    (fsck's "missing"/"broken link" lines); notices (an unborn HEAD...) are not problems."""
    text = (result.stderr + b"\n" + result.stdout).decode("utf-8", errors="replace")
    seen: dict[str, None] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith(("notice:", "Checking ", "Verifying ")):
            seen.setdefault(line, None)
    return list(seen) or [f"git exited with status {result.returncode} and said nothing"]


def _is_corruption(lines: list[str]) -> bool:
    """A fatal exit caused by bad data rather than by a repository git cannot open."""
    opened = not any("not a git repository" in line or "cannot chdir" in line for line in lines)
    return opened and any(line.startswith(("fatal:", "error:")) for line in lines)


def _line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_LINE else text[: MAX_LINE - 1] + "…"
