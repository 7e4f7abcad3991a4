"""``custode run``: the whole nightly cycle on real repositories, with no config at all."""

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures.builders import Fleet, fast_import, history_stream, run_git
from fixtures.cli import CliResult

pytestmark = pytest.mark.integration
Run = Callable[..., CliResult]
STAGES = ["check", "maintain", "backup", "verify", "drill", "forget"]


@pytest.fixture
def root(tmp_path: Path, fleet: Fleet) -> Path:
    root = tmp_path / "root"
    for name in ("loose.git", "many-packs.git", "packed.git", "sha256.git"):
        shutil.copytree(fleet.root / name, root / name, symlinks=True)
    return root


def stages(result: CliResult) -> dict[str, dict]:
    return {s["name"]: s for s in result.json()["stages"]}


def test_a_fresh_home_runs_the_whole_cycle_then_a_second_run_is_fast_and_consistent(
    custode: Run, root: Path, isolated_env: dict[str, str]
) -> None:
    first = custode("run", "--json", root)
    assert first.code == 0, first.stderr
    done = stages(first)
    assert list(done) == [*STAGES, "report"]
    assert all(s["outcome"] == "ok" for s in done.values()), done
    assert done["maintain"]["summary"]["maintained"] >= 3
    assert done["backup"]["summary"]["new"] == 4
    assert (
        done["drill"]["summary"]["drills"] == 3 and done["drill"]["summary"]["drills_failed"] == 0
    )
    key = Path(isolated_env["XDG_CONFIG_HOME"]) / "custode" / "identity.txt"
    assert key.stat().st_mode & 0o777 == 0o600 and "keep a copy" in first.stderr
    store = Path(isolated_env["XDG_DATA_HOME"]) / "custode" / "backups"
    assert store.is_dir()
    second = custode("run", "--json", root)
    assert second.code == 0, second.stderr
    again = stages(second)
    assert again["maintain"]["summary"]["maintained"] == 0  # nothing left to do
    assert again["backup"]["summary"]["unchanged"] == 4 and again["backup"]["summary"]["new"] == 0
    assert again["backup"]["summary"]["bytes_added"] < 4096
    # fast by the work it skips, not by a clock a busy machine makes lie: no repository is
    # read again for a backup (the history shows nothing changed since)
    again_backup = custode("backup", root, "--json")
    assert again_backup.code == 0, again_backup.stderr
    assert all(r["reason"].startswith("not read: nothing changed")
               for r in again_backup.json()["repositories"])  # fmt: skip
    report = Path(done["report"]["summary"]["file"])
    assert report.is_file() and "<svg" in report.read_text()
    listed = custode("snapshots", "--json").json()["snapshots"]
    assert len(listed) == 3  # two runs and the backup above
    table = custode("run", root)
    assert table.code == 0 and "run: ok" in table.stdout and str(store) in table.stdout


def test_the_exit_status_is_the_worst_stage_and_later_stages_still_run(
    custode: Run, root: Path
) -> None:
    broken = root / "loose.git"
    tree = run_git(broken, "rev-parse", "refs/heads/main^{tree}").strip()
    (broken / "objects" / tree[:2] / tree[2:]).unlink()  # the tip's tree is gone
    result = custode("run", "--json", root)
    assert result.code == 3, result.stderr
    done = stages(result)
    assert done["check"]["outcome"] == "partial"
    assert done["backup"]["summary"]["failed"] == 1 and done["backup"]["summary"]["new"] == 3
    assert done["verify"]["outcome"] == "ok" and done["drill"]["outcome"] == "ok"


def test_a_repository_the_check_finds_corrupt_is_not_maintained(custode: Run, root: Path) -> None:
    repo = root / "packed.git"
    fast_import(repo, history_stream("refs/heads/extra", 2, start=500, label="x "), pack=False)
    blob = run_git(repo, "rev-parse", "refs/heads/extra:src/file2.txt").strip()
    (repo / "objects" / blob[:2] / blob[2:]).unlink()  # corrupt, though no walk ran yet
    lock = repo / "config.lock"
    lock.write_text("[core]\n")
    when = time.time() - 2 * 86400
    os.utime(lock, (when, when))  # stale: maintenance would remove it
    result = custode("run", "--json", "--drill", "0", root)
    assert result.code == 3, result.stderr
    done = stages(result)
    assert list(done)[:2] == ["check", "maintain"]
    assert done["maintain"]["summary"]["in_doubt"] == ["packed.git"]
    assert done["maintain"]["summary"]["maintained"] == 3
    assert lock.exists()


def test_a_missing_root_fails_at_once(custode: Run, tmp_path: Path) -> None:
    result = custode("run", tmp_path / "absent")
    assert result.code == 4
    assert (
        result.stderr == f"custode: root {tmp_path / 'absent'} is not a directory; check the path\n"
    )
    nothing = custode("run")
    assert nothing.code == 4 and "no roots given" in nothing.stderr
