"""Partial clones whose promisor remotes name programs (``fixtures.hostile``): plain git that
meets a missing object lazy-fetches and so runs them; nothing custode starts does, and
custode reports such a clone instead of maintaining or backing it up."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import custode.git.runner
from custode.config.maintenance import MaintenancePolicy
from custode.git.runner import HARDENING, Git
from custode.maintenance.health import assess
from custode.maintenance.planner import plan
from custode.monitoring.histograms import OperationHistograms
from custode.monitoring.probes import Prober
from custode.monitoring.view import RepoView
from custode.scan.discovery import discover
from custode.scan.repostate import RepoState, inspect
from fixtures.builders import git_env
from fixtures.cli import CliResult
from fixtures.hostile import (
    PROMISOR_VARIANTS,
    PromisorFleet,
    build_promisor_fleet,
    run_every_command,
)

pytestmark = pytest.mark.integration
Run = Callable[..., CliResult]

#: What a backup and a maintenance walk run, as plain git runs them.
PLAIN = (("rev-list", "--objects", "--all"), ("pack-objects", "--revs", "--all", "--stdout"))
#: The protocols a hostile remote allows itself (protocol.<name>.allow = always), which
#: outrank a command-line protocol.allow = never.
SELF_ALLOWED = {"ext", "vcs", "helper-alias", "insteadof-ext"}
#: What the file transport runs: its uploadpack, however the URL was spelled or included.
LOCAL = {"uploadpack", "insteadof", "include"}
#: The runner as it was: the file transport allowed, no environment layer.
OLD_HARDENING = tuple(
    (key, "always" if key == "protocol.file.allow" else value) for key, value in HARDENING
)


@pytest.fixture
def promisor(tmp_path: Path) -> PromisorFleet:
    return build_promisor_fleet(tmp_path / "promisor")


def _plain_git(repo: Path, *args: str, env: dict[str, str] | None = None) -> None:
    """git as a user would run it: the repository's config is live."""
    subprocess.run(["git", "-C", str(repo), *args], env={**git_env(), **(env or {})},
                   input=b"", capture_output=True, check=False)  # fmt: skip


def _states(fleet: PromisorFleet) -> dict[str, RepoState]:
    return {Path(s.path).name: s for s in map(inspect, discover([fleet.root]).repositories)}


def _weaken(monkeypatch: pytest.MonkeyPatch, *, old_hardening: bool, drop: tuple[str, ...]) -> None:
    if old_hardening:
        monkeypatch.setattr(custode.git.runner, "HARDENING", OLD_HARDENING)
    env = {k: v for k, v in custode.git.runner._FIXED_ENV.items() if k not in drop}
    monkeypatch.setattr(custode.git.runner, "_FIXED_ENV", env)


def test_plain_git_runs_every_promisor_program(promisor: PromisorFleet) -> None:
    for clone in promisor.clones:
        for args in PLAIN:
            promisor.clear_markers()
            _plain_git(clone, *args)
            assert promisor.markers() == sorted(PROMISOR_VARIANTS), (clone.name, args)


def test_partial_clones_are_seen_and_left_alone(promisor: PromisorFleet) -> None:
    states = _states(promisor)
    policy, now = MaintenancePolicy(), time.time()
    for name in ("partial.git", "partial-work"):
        state = states[name]
        assert state.partial_clone == "remote.uploadpack.promisor = true"
        health = assess(state, policy, now)
        assert health.verdict == "broken"
        assert any(r.text.startswith("partial clone (") for r in health.reasons)
        p = plan(state, policy, custode.git.runner.Git().version(), now)
        assert not p.tasks and "partial clone" in (p.skipped_reason or "")
    # Made one only by an included file: not seen without git, and still harmless (below).
    assert states["hidden.git"].partial_clone == "" and states["sound.git"].partial_clone == ""


def test_every_command_through_the_runner_runs_nothing(
    promisor: PromisorFleet, tmp_path: Path
) -> None:
    for clone in promisor.clones:
        run_every_command(Git(timeout=60), clone, tmp_path / clone.name, strict=False)
    assert promisor.markers() == [], f"the runner let a promisor remote run {promisor.markers()}"


def _honours_no_lazy_fetch(fleet: PromisorFleet) -> bool:
    """GIT_NO_LAZY_FETCH came with the May 2024 security releases (2.39.4 and later)."""
    _plain_git(fleet.bare, *PLAIN[0], env={"GIT_NO_LAZY_FETCH": "1"})
    honoured = fleet.markers() == []
    fleet.clear_markers()
    return honoured


@pytest.mark.parametrize(
    ("old_hardening", "drop", "expected"),
    [
        # each layer alone holds: the protocols refused (lazy fetches allowed)...
        (False, ("GIT_NO_LAZY_FETCH",), set()),
        # ...or lazy fetches refused (the local transport and every protocol allowed)
        (True, ("GIT_ALLOW_PROTOCOL",), set()),
        # the environment's protocol list is needed: a repository allows itself a protocol
        (False, ("GIT_NO_LAZY_FETCH", "GIT_ALLOW_PROTOCOL"), SELF_ALLOWED),
        # the runner as it was: the local transport runs the promisor's uploadpack too
        (True, ("GIT_NO_LAZY_FETCH", "GIT_ALLOW_PROTOCOL"), SELF_ALLOWED | LOCAL),
    ],
)
def test_each_layer_holds_and_has_teeth(  # noqa: PLR0917  (pytest passes them by name)
    promisor: PromisorFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    old_hardening: bool, drop: tuple[str, ...], expected: set[str],
) -> None:  # fmt: skip
    if "GIT_NO_LAZY_FETCH" not in drop and not _honours_no_lazy_fetch(promisor):
        pytest.skip("this git ignores GIT_NO_LAZY_FETCH")
    _weaken(monkeypatch, old_hardening=old_hardening, drop=drop)
    for clone in promisor.clones:
        run_every_command(Git(timeout=60), clone, tmp_path / clone.name, strict=False)
    if expected:
        assert set(promisor.markers()) >= expected
    else:
        assert promisor.markers() == []


def _probe_everything(fleet: PromisorFleet) -> None:
    """serve's probes over every repository, partial clones included (as if healthy)."""
    prober = Prober(Git(timeout=60), OperationHistograms(), count=10, budget=60)
    assert prober.run([RepoView(s, "ok") for s in _states(fleet).values()]) == 4


def test_serve_probes_run_nothing(promisor: PromisorFleet, monkeypatch: pytest.MonkeyPatch) -> None:
    _probe_everything(promisor)  # hidden.git lacks every tree: ls-tree -r HEAD needs them
    assert promisor.markers() == []
    # Judged as serve judges them, detected partial clones are not even probed.
    policy, now = MaintenancePolicy(), time.time()
    views = [RepoView(s, assess(s, policy, now).verdict) for s in _states(promisor).values()]
    assert Prober(Git(), OperationHistograms(), count=10, budget=60).run(views) == 2
    _weaken(monkeypatch, old_hardening=True, drop=("GIT_NO_LAZY_FETCH", "GIT_ALLOW_PROTOCOL"))
    _probe_everything(promisor)
    assert set(promisor.markers()) >= LOCAL  # the same probes, under the old runner


def _no_marker_after(fleet: PromisorFleet, custode: Run, *args: str | Path) -> CliResult:
    result = custode(*args)
    assert fleet.markers() == [], (args, fleet.markers(), result.stderr)
    return result


def test_no_custode_command_runs_a_promisor_program(
    promisor: PromisorFleet, custode: Run, tmp_path: Path
) -> None:
    root, said = promisor.root, "partial clone (remote.uploadpack.promisor = true)"
    status = _no_marker_after(promisor, custode, "status", "--json", root)
    assert status.code == 3
    repos = {Path(r["path"]).name: r for r in status.json()["repositories"]}
    for name in ("partial.git", "partial-work"):
        assert repos[name]["verdict"] == "broken"
        assert repos[name]["reasons"][0]["text"].startswith(said)
    assert _no_marker_after(promisor, custode, "status", root).code == 3

    dry = _no_marker_after(promisor, custode, "maintain", "--dry-run", "--json", root)
    maintain = _no_marker_after(promisor, custode, "maintain", "--json", root)
    for result in (dry, maintain):
        assert result.code == 3
        assert result.stderr.count(f": left untouched: {said}") == 2
    for name in ("check", "check --full"):
        assert _no_marker_after(promisor, custode, *name.split(), root).code == 3  # hidden.git

    backup = _no_marker_after(promisor, custode, "backup", "--json", root)
    assert backup.code == 3
    assert backup.stderr.count(f"custode: partial.git: {said}") == 1
    assert backup.stderr.count(f"custode: partial-work: {said}") == 1
    assert backup.json()["summary"]["new"] == 1  # sound.git
    for level in ("quick", "full", "drill"):
        assert _no_marker_after(promisor, custode, "verify", "--level", level).code == 0
    out = tmp_path / "restored"
    restored = _no_marker_after(promisor, custode, "restore", "--to", out)
    assert restored.code == 0 and (out / "sound.git").is_dir()

    run = _no_marker_after(promisor, custode, "run", "--json", root)
    assert run.code == 3
    assert _no_marker_after(promisor, custode, "metrics", root).code == 0


@pytest.fixture
def old_runner(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment for a custode whose runner is as it was (a sitecustomize undoes the
    transport policy at interpreter start)."""
    site = tmp_path / "old-runner"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import custode.git.runner\n"
        f"custode.git.runner.HARDENING = {OLD_HARDENING!r}\n"
        "for key in ('GIT_NO_LAZY_FETCH', 'GIT_ALLOW_PROTOCOL'):\n"
        "    custode.git.runner._FIXED_ENV.pop(key, None)\n"
    )
    yield {"PYTHONPATH": str(site)}


def test_custode_with_the_old_runner_ran_them(
    promisor: PromisorFleet, custode: Run, old_runner: dict[str, str]
) -> None:
    """The issue as reported, through the commands: only hidden.git, which custode cannot
    tell from a full clone, reaches git; the old runner let its lazy fetches run."""
    for command in (("maintain",), ("backup",), ("run",)):
        promisor.clear_markers()
        custode(*command, promisor.root, env=old_runner)
        assert set(promisor.markers()) >= LOCAL, command
