"""Probes: timed read-only git operations on a rotating sample of repositories, so slow
repositories and regressions show in ``custode_git_operation_duration_seconds``.

Each refresh probes up to ``count`` repositories, continuing where the previous refresh
stopped, and stops early once ``budget`` seconds are spent: the cost is bounded however
large the fleet. Broken and empty repositories are skipped.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from custode.errors import CustodeError
from custode.git.runner import Git
from custode.monitoring.histograms import OperationHistograms
from custode.monitoring.view import RepoView

PROBES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("for-each-ref", ("for-each-ref", "--format=%(objectname) %(refname)")),
    ("rev-list-count", ("rev-list", "--count", "HEAD")),
    ("log-100", ("log", "-n", "100", "--format=%H %s")),
    ("ls-tree-head", ("ls-tree", "-r", "--name-only", "HEAD")),
)


class Prober:
    def __init__(
        self, git: Git, histograms: OperationHistograms, *, count: int, budget: float,
        timeout: float = 30.0,
    ) -> None:  # fmt: skip
        self.git, self.histograms = git, histograms
        self.count, self.budget, self.timeout = count, budget, timeout
        self._next = 0
        self.failures = 0

    def run(self, repos: Sequence[RepoView]) -> int:
        """Probe the next repositories in turn; return how many were probed."""
        eligible = sorted(
            (r for r in repos if r.verdict != "broken" and r.state.refs > 0),
            key=lambda r: (r.state.root, r.state.relative),
        )
        if not eligible or not self.count:
            return 0
        started, probed = time.monotonic(), 0
        for i in range(min(self.count, len(eligible))):
            repo = eligible[(self._next + i) % len(eligible)]
            for name, args in PROBES:
                if time.monotonic() - started > self.budget:
                    self._next = (self._next + probed) % len(eligible)
                    return probed
                if not self._probe(repo, name, args) and "HEAD" in args:
                    break  # HEAD names no commit (unborn branch): nothing more to time
            probed += 1
        self._next = (self._next + probed) % len(eligible)
        return probed

    def _probe(self, repo: RepoView, name: str, args: tuple[str, ...]) -> bool:
        try:
            result = self.git.run(list(args), repo=Path(repo.state.git_dir),
                                  timeout=self.timeout, check=False)  # fmt: skip
        except CustodeError:
            self.failures += 1
            return False
        if result.returncode != 0:
            if "HEAD" not in args or result.returncode != 128:
                self.failures += 1
            return False
        self.histograms.observe(name, result.duration, source="probe",
                                repository=repo.state.relative, root=repo.state.root)  # fmt: skip
        return True
