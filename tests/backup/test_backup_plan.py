"""The backup plan: one pure decision per repository (``backup/decide.py``) that the
backup carries out and ``custode backup --dry-run`` prints, each reason with its numbers;
the dry run says what the backup then does, and writes nothing."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from custode.backup.crypto import generate_identity
from custode.backup.decide import Facts, Policy, Prediction, decide, predict_pack
from custode.backup.manifest import FileRef, Link, RepoManifest, new_id, repo_prefix
from custode.backup.plan import Sharing
from custode.config.model import Config
from custode.scan.fleet import scan
from custode.scan.repostate import RepoState
from fixtures.builders import fast_import, history_stream, run_git
from fixtures.cli import CliResult

Run = Callable[..., CliResult]
NOW = datetime(2026, 6, 1, tzinfo=UTC)
DAY = 86400.0


def _ref(key: str) -> FileRef:
    return FileRef(key, 1, "0" * 64)


def _manifest(links: int, *, first_days_ago: float = 1.0, ancestors: int = 0) -> RepoManifest:
    """A resolved manifest whose chain has ``links`` bundles, the first that many days old."""
    first = NOW - timedelta(days=first_days_ago)
    ids = [new_id(first + timedelta(seconds=n)) for n in range(links)]
    own = repo_prefix("host", "r.git")  # its own links (a fork's base's are elsewhere)
    chain = tuple(Link(i, _ref(f"{own}{i}/bundle.age"), None, "", 0, 0, ()) for i in ids)
    last = ids[-1] if ids else new_id(first)
    return RepoManifest(
        "host", "r.git", last, first.isoformat(), None, "sha1", True, (), "d", 1,
        _ref("refs"), _ref("files"), "f", chain,
        ancestors=tuple(_ref(f"{own}a{n}/manifest.json") for n in range(ancestors)),
    )  # fmt: skip


def _same(parent: RepoManifest, **changed: bool) -> Facts:
    same = {"same_refs": True, "same_files": True, "same_lfs": True, "same_shallow": True}
    return Facts(parent, "", **{**same, **changed})


POLICY = Policy(full_every=30, full_after=30 * DAY)
BASE = Sharing("base.git", "shares 9 of its 10 tips", "hosts/h/repos/x/1/manifest.json")


def test_no_earlier_backup_is_a_full_bundle_and_says_why() -> None:
    d = decide(Facts(None), POLICY, NOW)
    assert (d.action, d.full, d.parent, d.base) == ("new-chain", True, "", None)
    assert d.why == "no earlier backup in the store: a full bundle"
    asked = decide(Facts(None, "a new chain was asked for (--full)"), POLICY, NOW)
    assert asked.why == "a new chain was asked for (--full): a full bundle"


def test_unchanged_and_in_place_name_the_backup_they_stand_on() -> None:
    parent = _manifest(3)
    d = decide(_same(parent), POLICY, NOW)
    assert (d.action, d.parent, d.full) == ("unchanged", parent.backup_id, False)
    assert d.why == f"same refs, files and LFS objects as backup {parent.backup_id}"
    files = decide(_same(parent, same_files=False), POLICY, NOW)
    assert (files.action, files.parent) == ("in-place", parent.backup_id)
    assert files.why == (
        f"only kept files (config, hooks, info) changed: in the place of backup {parent.backup_id}"
    )
    lfs = decide(_same(parent, same_lfs=False, same_files=False), POLICY, NOW)
    assert "only kept files (config, hooks, info) and LFS objects changed" in lfs.why


def test_an_incremental_gives_the_chain_s_numbers() -> None:
    parent = _manifest(3, first_days_ago=2)
    d = decide(_same(parent, same_refs=False), POLICY, NOW, BASE)
    assert (d.action, d.parent, d.base, d.full) == ("incremental", parent.backup_id, None, False)
    assert d.why == (
        f"refs changed since backup {parent.backup_id}; chain of 3 links < full_every 30, "
        "first bundle 2 days old < full_after 30 days"
    )


@pytest.mark.parametrize(
    ("links", "ancestors", "days", "why"),
    [
        (30, 0, 1, "chain of 30 links ≥ full_every 30"),
        (1, 29, 1, "chain of 30 links ≥ full_every 30"),  # manifests adding refs deltas
        (2, 0, 31, "first bundle 31 days old ≥ full_after 30 days"),
        (2, 0, 30.5, "first bundle 30.5 days old ≥ full_after 30 days"),
        (0, 0, 1, "the chain of backup {id} holds no bundle"),
    ],
)
def test_a_chain_too_long_or_too_old_starts_a_new_one_with_its_numbers(
    links: int, ancestors: int, days: float, why: str
) -> None:
    parent = _manifest(links, first_days_ago=days, ancestors=ancestors)
    d = decide(_same(parent, same_refs=False), POLICY, NOW)
    assert (d.action, d.full, d.parent) == ("new-chain", True, "")
    assert d.why == why.format(id=parent.backup_id) + ": a full bundle"


def test_a_changed_shallow_file_starts_a_new_chain() -> None:
    parent = _manifest(2)
    d = decide(_same(parent, same_refs=False, same_shallow=False), POLICY, NOW)
    assert (d.action, d.full) == ("new-chain", True)
    assert d.why == f"shallow file changed since backup {parent.backup_id}: a full bundle"


def test_a_new_chain_builds_on_its_base_unless_shallow_or_unusable() -> None:
    d = decide(Facts(None), POLICY, NOW, BASE)
    assert (d.action, d.base, d.full, d.on) == ("new-chain", BASE, False, "base.git (base)")
    assert d.why == (
        "no earlier backup in the store: on base.git's backup (shares 9 of its 10 tips)"
    )
    shallow = decide(Facts(None, shallow=True), POLICY, NOW, BASE)
    assert shallow.full and "a shallow repository builds on no base" in shallow.why
    no_key = decide(Facts(None), POLICY, NOW, dataclasses.replace(BASE, key=""))
    assert no_key.full
    dropped = d.without_base("its object format is sha256")
    assert dropped.full and dropped.why.endswith(
        "a full bundle, not on base.git: its object format is sha256"
    )
    long = decide(_same(_manifest(30), same_refs=False), POLICY, NOW, BASE)
    assert long.base == BASE and long.why.startswith("chain of 30 links ≥ full_every 30: on")


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> RepoState:
    root = tmp_path_factory.mktemp("predict")
    run_git(None, "init", "-q", "--bare", root / "r.git")
    fast_import(root / "r.git", history_stream("refs/heads/main", 3))
    return scan([root], Config().discovery).states[0]


def test_the_pack_prediction_says_copy_only_for_a_full_bundle_from_one_pack(
    state: RepoState,
) -> None:
    full = decide(Facts(None), POLICY, NOW)
    one = dataclasses.replace(state, packs=1, loose_objects=0, cruft_packs=0, alternates=())
    copy = predict_pack(full, one)
    assert copy.method == "copy"
    assert copy.why == (
        f"if its one pack ({one.packed_objects:,} objects, 0 loose) is exactly the refs' "
        "closure, else generate"
    )
    many = predict_pack(full, dataclasses.replace(one, packs=3, loose_objects=120))
    assert (many.method, many.why) == ("generate", "3 packs and 120 loose objects")
    cruft = predict_pack(full, dataclasses.replace(one, packs=2, cruft_packs=1))
    assert cruft.why == "2 packs and 1 cruft"
    borrows = predict_pack(full, dataclasses.replace(one, alternates=("/x/objects",)))
    assert borrows.method == "generate" and "alternates" in borrows.why
    inc = decide(_same(_manifest(2), same_refs=False), POLICY, NOW)
    assert predict_pack(inc, one) == Prediction("generate", "only the objects new since the parent")
    on_base = decide(Facts(None), POLICY, NOW, BASE)
    assert predict_pack(on_base, one).method == "generate"
    same = decide(_same(_manifest(2)), POLICY, NOW)
    assert predict_pack(same, one).method == ""


# --- the dry run, end to end -------------------------------------------------------


def _files(*dirs: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``dirs`` with its size and mtime: what "writes nothing" compares."""
    out = {}
    for d in dirs:
        for dirpath, dirnames, filenames in os.walk(d):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                out[p] = (st.st_size, st.st_mtime_ns)
    return out


def _aged(why: str) -> str:
    return re.sub(r"first bundle [0-9.]+ \w+ old", "first bundle N old", why)


def _push(repo: Path, serial: int) -> None:
    fast_import(repo, history_stream("refs/heads/main", 1, start=serial,
                                     parent="refs/heads/main^0", label=f"{serial} "))  # fmt: skip


def test_dry_run_prints_what_the_backup_then_does_and_writes_nothing(
    custode: Run, tmp_path: Path
) -> None:
    root, store = tmp_path / "root", tmp_path / "store"
    for name in ("base.git", "quiet.git", "changing.git", "long.git", "files.git"):
        run_git(None, "init", "-q", "--bare", root / name)
        fast_import(root / name, history_stream("refs/heads/main", 12, label=f"{name} "))
    run_git(root / "base.git", "tag", "v1", "refs/heads/main~3")
    run_git(root / "base.git", "branch", "dev", "refs/heads/main~5")
    pub = generate_identity(tmp_path / "keys" / "identity.txt")
    config = tmp_path / "config.toml"
    config.write_text('[backup]\nhost = "h"\nfull_every = 2\n')
    env = {"CUSTODE_CONFIG": str(config)}

    def run(*flags: str) -> dict:
        result = custode("backup", root, "--store", store, "--recipient", pub, *flags,
                         "--json", env=env)  # fmt: skip
        assert result.code == 0, result.stderr
        return {r["repository"]: r for r in result.json()["repositories"]}

    first = run()
    assert {r["action"] for r in first.values()} == {"new-chain"}
    _push(root / "long.git", 500)
    second = run()
    assert second["long.git"]["action"] == "incremental"
    # tonight: one repository changed, one with a long chain, a kept file changed, a new fork
    _push(root / "changing.git", 600)
    _push(root / "long.git", 700)
    run_git(root / "files.git", "config", "custom.key", "changed")
    run_git(None, "clone", "-q", "--bare", "--no-local", root / "base.git", root / "fork.git")
    _push(root / "fork.git", 800)

    watched = (store, tmp_path / "xdg", root)
    before = _files(*watched)
    plan = run("--dry-run")
    assert _files(*watched) == before  # nothing written: store, state, repositories

    assert {name: r["action"] for name, r in plan.items()} == {
        "base.git": "unchanged",
        "quiet.git": "unchanged",
        "changing.git": "incremental",
        "long.git": "new-chain",
        "files.git": "in-place",
        "fork.git": "new-chain",
    }
    assert plan["quiet.git"]["read"] is False
    assert plan["quiet.git"]["why"].startswith("not read: nothing changed since backup")
    first_id = first["changing.git"]["backup_id"]
    assert plan["changing.git"]["on"] == f"backup {first_id}"
    assert "chain of 1 link < full_every 2" in plan["changing.git"]["why"]
    assert plan["long.git"]["why"].endswith("chain of 2 links ≥ full_every 2: a full bundle")
    assert plan["long.git"]["pack"] == "generate"  # two pushes: several packs
    assert plan["files.git"]["on"] == f"backup {first['files.git']['backup_id']}"
    assert plan["fork.git"]["base"] == "base.git"
    assert plan["fork.git"]["on"] == "base.git (base)"
    assert "on base.git's backup (shares 2 of its 3 tips)" in plan["fork.git"]["why"]

    done = run()
    assert {n: r["action"] for n, r in done.items()} == {n: r["action"] for n, r in plan.items()}
    for name, r in done.items():
        # the same decision in the same words (the chain's age moved on meanwhile)
        assert _aged(plan[name]["why"]).endswith(_aged(r["decided"])), name
        if plan[name]["pack"] == "generate":
            assert r["method"] == "generate", name
    assert done["fork.git"]["full"] is False and done["long.git"]["full"] is True
    assert done["quiet.git"]["outcome"] == "unchanged"


def test_dry_run_with_no_store_plans_every_repository_as_a_first_backup(
    custode: Run, tmp_path: Path
) -> None:
    root, store = tmp_path / "root", tmp_path / "nowhere" / "store"
    for name in ("a.git", "b.git"):
        run_git(None, "init", "-q", "--bare", root / name)
        fast_import(root / name, history_stream("refs/heads/main", 3, label=f"{name} "))
    run_git(root / "a.git", "repack", "-adq")
    _push(root / "b.git", 50)  # a second pack
    result = custode("backup", root, "--store", store, "--dry-run", "--json")
    assert result.code == 0, result.stderr
    assert "does not exist yet: every repository starts a new chain" in result.stderr
    assert "no backup key yet" in result.stderr
    out = result.json()
    assert out["summary"]["store_exists"] is False and out["summary"]["new-chain"] == 2
    for r in out["repositories"]:
        assert r["action"] == "new-chain" and r["on"] == ""
        assert r["why"].endswith("no earlier backup in the store: a full bundle")
    packs = {r["repository"]: r["pack"] for r in out["repositories"]}
    assert packs == {"a.git": "copy", "b.git": "generate"}
    assert not (tmp_path / "nowhere").exists()  # no store made
    assert not (tmp_path / "xdg").exists() or not any(
        p.is_file() for p in (tmp_path / "xdg").rglob("*")
    )  # no key, no history, no cache
    text = custode("backup", root, "--store", store, "--dry-run")
    assert text.code == 0, text.stderr
    assert "plan (dry run, nothing written): 0 unchanged, 0 in-place, 0 incremental, " \
        "2 new-chain, 0 failed" in text.stdout  # fmt: skip
    assert "copy: if its one pack" in text.stdout


def test_a_forks_chain_counts_its_own_links_not_its_bases() -> None:
    """A fork's restore reads its base's chain (bounded by the base's own rule) and its
    own: only its own links and age count toward a new chain."""
    parent = _manifest(2, first_days_ago=2.0)
    other = repo_prefix("host", "base.git")
    old = NOW - timedelta(days=40)
    base_links = tuple(Link(new_id(old + timedelta(seconds=n)),
                            _ref(f"{other}{n}/bundle.age"), None, "", 0, 0, ())
                       for n in range(40))  # fmt: skip
    fork = dataclasses.replace(parent, chain=base_links + parent.chain,
                               ancestors=tuple(_ref(f"{other}{n}/manifest.json")
                                               for n in range(40)))  # fmt: skip
    d = decide(_same(fork, same_refs=False), POLICY, NOW, None)
    assert d.action == "incremental", d.why
    assert "chain of 2 links < full_every 30, first bundle 2 days old" in d.why
