"""The health verdict and the planner apply one set of rules (``integrity.needs``):
"attention" in ``custode status`` means exactly that ``custode maintain`` has work."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_planner import GITS, NOW, POLICIES, POLICY, STATES, state, temp

from custode.config.maintenance import DAY, HOUR, MaintenancePolicy
from custode.git.runner import MINIMUM_VERSION, Git, GitVersion
from custode.maintenance.health import assess
from custode.maintenance.planner import plan
from custode.scan.discovery import discover
from custode.scan.repostate import RepoState, inspect, link_borrowers
from fixtures.builders import Fleet

#: Every supported git minor release up to well past today's.
SUPPORTED = [GitVersion(2, minor) for minor in range(MINIMUM_VERSION.minor, 60)]
_AGES = st.floats(0, NOW)
_AGO = st.floats(0, 120 * DAY).map(lambda age: NOW - age)
#: States whose times vary too: the largest pack (full repack cooldown), the oldest cruft
#: pack (expiry), a dead worktree's index (git's prune expiry).
TIMED = st.builds(
    lambda s, base, cruft, worktree: replace(
        s, base_pack_mtime=base, oldest_cruft_mtime=cruft, dead_worktree_mtime=worktree
    ),
    STATES.map(lambda s: replace(s, problems=())), _AGES, _AGES, _AGES,
)  # fmt: skip
#: A few fields of an optimised repository changed, each near its rule's threshold: about
#: as many states with work as without.
_NEAR = {
    "kind": st.sampled_from(["bare", "working", "submodule"]), "loose_objects": st.integers(0, 2000),
    "packs": st.integers(0, 8), "pack_bytes": st.integers(0, 2**31), "kept_packs": st.integers(0, 2),
    "cruft_packs": st.integers(0, 2), "pack_bitmaps": st.integers(0, 1),
    "multi_pack_index": st.booleans(), "midx_packs": st.integers(0, 8),
    "midx_bitmap": st.booleans(), "commit_graph": st.booleans(),
    "commit_graph_chain": st.integers(0, 25), "commit_graph_changed_paths": st.booleans(),
    "loose_refs": st.integers(0, 40), "packed_refs": st.integers(0, 200),
    "symbolic_refs": st.integers(0, 3), "refs": st.integers(0, 50),
    "temp_files": st.lists(st.builds(temp, st.sampled_from(
        ["config.lock", "packed-refs.lock", "gc.pid", "objects/ab/tmp_1", "info/x.lock"]),
        st.floats(0, 2 * DAY)), max_size=2).map(tuple),
    "alternates": st.just(("/srv/pool.git/objects",)), "borrowed_by": st.just(("fork.git",)),
    "prunable_worktrees": st.integers(0, 2), "dead_worktree_mtime": _AGO,
    "garbage_files": st.integers(0, 2), "gc_log": st.booleans(), "base_pack_mtime": _AGO,
    "oldest_cruft_mtime": _AGO,
}  # fmt: skip
NEAR = st.lists(st.one_of(*(st.tuples(st.just(k), v) for k, v in _NEAR.items())), max_size=3).map(
    lambda changes: state(**dict(changes))
)
NEAR_POLICIES = st.builds(
    MaintenancePolicy, loose_objects=st.integers(500, 1500),
    full_repack_cooldown=st.floats(DAY, 40 * DAY), commit_graph_chain=st.integers(5, 25),
    cruft_expiration=st.none() | st.floats(DAY, 100 * DAY), write_bitmaps=st.booleans(),
    multi_pack_index=st.booleans(), changed_paths=st.booleans(),
)  # fmt: skip
ANY_STATE = NEAR | TIMED
ANY_POLICY = NEAR_POLICIES | POLICIES


def attention(s: RepoState, pol: MaintenancePolicy, git: GitVersion | None = None) -> bool:
    return assess(s, pol, NOW, git).verdict == "attention"


@settings(max_examples=300)
@given(ANY_STATE, ANY_POLICY, GITS.filter(lambda g: g >= MINIMUM_VERSION))
def test_property_attention_exactly_when_maintain_plans_work(
    s: RepoState, pol: MaintenancePolicy, git: GitVersion
) -> None:
    assert attention(s, pol, git) == bool(plan(s, pol, git, NOW).tasks)


@settings(max_examples=300)
@given(ANY_STATE, ANY_POLICY)
def test_property_without_a_git_attention_means_work_for_every_git(
    s: RepoState, pol: MaintenancePolicy
) -> None:
    assert attention(s, pol) == all(plan(s, pol, git, NOW).tasks for git in SUPPORTED)


@given(ANY_STATE.map(lambda s: replace(s, problems=("HEAD is missing",))), ANY_POLICY, GITS)
def test_property_a_broken_repository_is_broken_and_untouched(
    s: RepoState, pol: MaintenancePolicy, git: GitVersion
) -> None:
    assert assess(s, pol, NOW, git).verdict == "broken" and not plan(s, pol, git, NOW).tasks


def test_what_maintain_leaves_alone_is_information_not_attention() -> None:
    young = state(prunable_worktrees=1, dead_worktree_mtime=NOW - DAY, garbage_files=2,
                  garbage_bytes=10, gc_log=True, temp_files=(temp("HEAD.lock", 60),))  # fmt: skip
    health = assess(young, POLICY, NOW)
    assert health.verdict == "ok" and {r.severity for r in health.reasons} == {"info"}
    assert "1 dead worktree" in [r.text for r in health.reasons]
    old = replace(young, dead_worktree_mtime=NOW - 91 * DAY,
                  temp_files=(temp("HEAD.lock", 2 * HOUR), temp("objects/ab/tmp_obj_1", 2 * DAY)))  # fmt: skip
    texts = [r.text for r in assess(old, POLICY, NOW).reasons if r.severity == "attention"]
    assert texts[0] == "2 stale lock/temporary files (oldest 2 days)"
    assert texts[1].startswith("1 dead worktree (directory gone), one unused for 13w")


def test_work_a_running_git_holds_is_information() -> None:
    busy = state(loose_refs=500, temp_files=(temp("packed-refs.lock", 60),))
    health = assess(busy, POLICY, NOW)
    assert health.verdict == "ok"
    assert any(r.text.startswith("packed-refs.lock is held") for r in health.reasons)


@pytest.mark.integration
def test_the_fixture_fleet_with_the_hosts_git(fleet: Fleet) -> None:
    found = link_borrowers([inspect(r) for r in discover([fleet.root]).repositories])
    git, now, pol = Git().version(), time.time(), MaintenancePolicy()
    verdicts = {}
    for s in found:
        work = bool(plan(s, pol, git, now).tasks)
        assert (assess(s, pol, now, git).verdict == "attention") == work, s.relative
        verdicts[s.relative] = assess(s, pol, now).verdict
        if verdicts[s.relative] == "attention":  # without the git: work for it as for any
            assert work, s.relative
    assert verdicts["loose.git"] == "attention" and verdicts["empty.git"] == "ok"
