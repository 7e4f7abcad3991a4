"""What ``custode maintain`` and ``custode run`` show a person: every repository worked on
and what was done, tables that fit the terminal (or a sensible width in a pipe), ages as a
person reads them, whole paths, and what to do next."""

import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures.builders import Fleet, run_git
from fixtures.cli import CliResult, on_terminal

pytestmark = pytest.mark.integration
Run = Callable[..., CliResult]
NEGLECTED = ("loose.git", "many-packs.git", "stale.git")
YEAR = 365.25 * 86400


@pytest.fixture
def neglected(tmp_path: Path, fleet: Fleet) -> Path:
    return fleet.copy_some(tmp_path / "root", NEGLECTED)


def width(text: str) -> int:
    return max(len(line) for line in text.splitlines())


def column(text: str, index: int) -> str:
    """A table's column read top to bottom, its folded lines joined."""
    cells = [re.split("[│┃]", line) for line in text.splitlines()]
    return " ".join(" ".join(c[index].split()) for c in cells if len(c) > index)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.3, "0 s"),
        (40, "40 s"),
        (12 * 60, "12 min"),
        (5.5 * 3600, "5.5 hours"),
        (86400, "1 day"),
        (3.5 * 86400, "3.5 days"),
        (40 * 86400, "40 days"),
        (YEAR, "1 year"),
        (5.6 * YEAR, "5.6 years"),
        (292 * 7 * 86400 + 2 * 86400 + 6 * 3600, "5.6 years"),
        (-5, "0 s"),  # a clock set back: never a negative age
    ],
)
def test_ages_read_as_a_person_says_them(seconds: float, text: str) -> None:
    from custode.base.units import format_age  # here: the old code has none

    assert format_age(seconds) == text


def test_a_real_maintenance_shows_each_repository_and_what_was_done(
    custode: Run, neglected: Path
) -> None:
    result = custode("maintain", neglected)
    assert result.code == 0, result.stderr
    lines = result.stdout.splitlines()
    cells = [[c.strip() for c in re.split("[│┃]", line)] for line in lines]
    assert cells[0] == ["repository", "outcome", "time", "freed", "tasks"]
    rows = {c[0]: c for c in cells if c[0] in NEGLECTED}
    assert set(rows) == set(NEGLECTED)  # one row per repository worked on
    for name, (_, outcome, seconds, freed, task) in rows.items():
        assert outcome == "ok" and re.fullmatch(r"\d+\.\ds", seconds), name
        assert re.fullmatch(r"[\d.]+ (B|KiB|MiB)", freed), name
        assert re.fullmatch(r"\w+ ok \d+\.\ds", task), name  # each task: outcome, seconds
    assert rows["loose.git"][4].startswith("full_repack ok ")
    assert rows["stale.git"][4].startswith("remove_stale_files ok ")
    then = cells[cells.index(rows["stale.git"]) + 1]  # its next task, in the same row
    assert then[:4] == ["", "", "", ""] and then[4].startswith("write_commit_graph ok ")
    summary = lines[-1]
    assert re.fullmatch(r"3 maintained, 0 skipped, 0 failed; .* reclaimed in \d+\.\ds", summary)


def test_quiet_prints_only_the_summary_line(custode: Run, neglected: Path) -> None:
    result = custode("maintain", "--quiet", neglected)
    assert result.code == 0, result.stderr
    assert re.fullmatch(r"3 maintained, 0 skipped, 0 failed; .* reclaimed in \d+\.\ds\n",
                        result.stdout)  # fmt: skip


def test_the_dry_run_table_fits_a_pipe_and_columns_and_says_ages_plainly(
    custode: Run, neglected: Path
) -> None:
    when = time.time() - 5.6 * YEAR
    for f in (neglected / "stale.git" / "objects").rglob("tmp_*"):
        os.utime(f, (when, when))
    piped = custode("maintain", "--dry-run", neglected, env={"COLUMNS": ""})
    assert piped.code == 0, piped.stderr
    assert width(piped.stdout) <= 100
    assert "(oldest 5.6 years), too old for a running git" in column(piped.stdout, 2)
    assert piped.stdout.splitlines()[-1] == "plan: 6 tasks in 3 of 3 repositories (dry run)"
    narrow = custode("maintain", "--dry-run", neglected, env={"COLUMNS": "80"})
    assert width(narrow.stdout) <= 80
    # nothing is cut: every word of every reason is there, folded
    plans = custode("maintain", "--dry-run", "--json", neglected).json()["repositories"]
    for task in (t for r in plans for t in r["tasks"]):
        assert task["reason"] in column(narrow.stdout, 2)


def test_one_repository_is_said_in_the_singular(custode: Run, neglected: Path) -> None:
    shutil.rmtree(neglected / "many-packs.git")
    shutil.rmtree(neglected / "stale.git")
    result = custode("maintain", "--dry-run", neglected)
    assert result.stdout.splitlines()[-1] == "plan: 2 tasks in 1 of 1 repository (dry run)"
    (neglected / "loose.git" / "HEAD").unlink()
    broken = custode("maintain", neglected)
    assert broken.code == 3
    assert "custode: 1 broken repository was left untouched;" in broken.stderr


@pytest.mark.skipif(not shutil.which("script"), reason="script (util-linux) is not installed")
def test_run_on_an_80_column_terminal_shows_whole_paths_and_what_to_do_next(
    neglected: Path, isolated_env: dict[str, str]
) -> None:
    broken = neglected / "loose.git"
    tree = run_git(broken, "rev-parse", "refs/heads/main^{tree}").strip()
    (broken / "objects" / tree[:2] / tree[2:]).unlink()  # the tip's tree is gone
    proc = on_terminal(["run", "--drill", "0", neglected], isolated_env, columns=80, term="dumb")
    out = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", proc.stdout).replace("\r", "")
    assert proc.returncode == 3, out
    state = Path(isolated_env["XDG_STATE_HOME"]) / "custode"
    report = state / "reports" / f"custode-report-{time.strftime('%Y-%m-%d')}.html"
    assert len(str(report)) > 80 and f"report: {report}\n" in out
    key = Path(isolated_env["XDG_CONFIG_HOME"]) / "custode" / "identity.txt"
    assert (
        f"next: custode check {neglected} shows what is wrong with loose.git (corrupt); "
        "custode maintained nothing there\n"
    ) in out
    assert (
        f"next: copy the backup key {key} to a safe place off this machine: without it no "
        "backup can be restored\n"
    ) in out
    table = out[out.index("stage ") : out.index("report: ")]
    assert width(table) <= 80
