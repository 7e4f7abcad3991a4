"""Zero downtime on a real git server: clients over smart HTTP and SSH while custode runs.

Three neglected bare repositories are served on 127.0.0.1 by nginx + fcgiwrap + ``git
http-backend`` and by openssh-server + git-shell (``fixtures.gitserver``). Four client
threads run 50 seeded operations each (clone, fetch, push, force-push, branch delete, a
deleted branch pushed again; alternating the protocols; ``fixtures.gitload``) while
``custode run`` loops on the served root with one config, state and backup store
(``fixtures.soak``): every cycle checks, maintains (a full repack with a cruft pack
whenever there is more than one pack), backs up, verifies, drills a restore and forgets,
with the clients' new pushes to work on.

Required: 0 failed client operations; every clone and fetch served each client's branches
exactly as it last pushed them; afterwards every ref where the last push put it, every
published commit present and every live one reachable, ``git fsck --strict`` clean; every
``custode run`` exit 0 with its restore drills passing; ``custode verify --level full``
clean over every snapshot the loop made; the latest snapshot restores to exactly the
served refs. The long version is ``bench/soak``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.builders import run_git
from fixtures.gitload import KINDS, NAMESPACE, PROTOCOLS, check, refs
from fixtures.gitserver import GitServer, Programs, serve
from fixtures.soak import build_neglected, report, run_soak
from fixtures.system import need

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SEED = 20261204
REPOS = ("team/api.git", "team/web.git", "tools/ci.git")
CLIENTS = 4
OPS_PER_CLIENT = 50  # 200 client operations in all
MIN_CYCLES = 2  # the operations are spread over at least this many custode runs
DEADLINE = 900.0  # seconds; a hard bound far above the ~1-2 minutes it takes


@pytest.fixture
def served(tmp_path: Path) -> Iterator[GitServer]:
    root = tmp_path / "served"
    for i, name in enumerate(REPOS):
        build_neglected(root / name, 1200 + 400 * i)
    with serve(root, Programs.find(need)) as server:
        yield server


def test_clients_see_zero_downtime_on_a_real_server(served: GitServer, tmp_path: Path) -> None:
    result = run_soak(
        served,
        REPOS,
        tmp_path / "soak",
        clients=CLIENTS,
        ops_per_client=OPS_PER_CLIENT,
        min_cycles=MIN_CYCLES,
        seed=SEED,
        deadline=DEADLINE,
    )
    print("\n" + "\n".join(report(result)))
    assert not result.problems, "\n".join(result.problems)

    ops = result.ops
    assert len(ops) == CLIENTS * OPS_PER_CLIENT
    assert {(o.kind, o.protocol) for o in ops} == {(k, p) for k, _w in KINDS for p in PROTOCOLS}
    assert len(result.overlapping()) >= MIN_CYCLES, [(c.start, c.end) for c in result.cycles]
    # custode had real work beside the clients: the neglected fleet, then their pushes.
    first = result.cycles[0]
    assert first.count("maintain", "maintained") == len(REPOS), first.doc
    during = result.cycles[1:]
    assert sum(c.count("maintain", "maintained") for c in during) >= 1, [c.doc for c in during]
    assert sum(c.count("backup", "new") for c in during) >= 1, [c.doc for c in during]
    assert all(c.count("drill", "drills") >= 1 for c in result.cycles)
    assert result.actions()["maintain.full_repack ok"] >= len(REPOS) + 1, result.actions()
    assert len(result.snapshots) == len(result.made()) >= len(result.cycles)

    # The checks can fail: a branch moved and one deleted behind the clients' backs are
    # each reported.
    root = served.root
    name = REPOS[0]
    repo = root / name
    owned = sorted(refs(repo, NAMESPACE).items())
    assert len(owned) >= 2, owned
    (moved, _oid), (deleted, _) = owned[:2]
    run_git(repo, "update-ref", moved, "refs/heads/main")
    run_git(repo, "update-ref", "-d", deleted)
    before = {n: refs(root / n) for n in REPOS}
    problems = check(root, result.clients, before).refs
    assert any(moved in p and "the last push made it" in p for p in problems), problems
    assert any(deleted in p for p in problems), problems
