"""A repository whose directory name is not UTF-8 (a Latin-1 ``café.git``): every command
carries its exact bytes (history, JSON, backup, restore) and shows it as ``caf\\xe9.git``,
and the rest of the fleet is served as usual (issue 12, "File systems")."""

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from custode.backup.manifest import canonical
from custode.base.pathtext import display, json_bytes, sql_value
from custode.records.state import Observation, RepositoryResult, StateDB, utcnow
from fixtures.builders import fast_import, history_stream, run_git
from fixtures.cli import CliResult
from fixtures.system import need

Run = Callable[..., CliResult]
LATIN1 = b"caf\xe9.git"
HOOK = b"h\xe4"  # a file inside it with such a name too (backed up among the hooks)
NAME = os.fsdecode(LATIN1)  # "caf\udce9.git": how Python carries those bytes in a str
SHOWN = "caf\\xe9.git"  # how a person sees it: the byte escaped, as ``ls -b`` does


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A good repository and one whose name is Latin-1, each with a little history, under a
    root whose own name is Latin-1 too."""
    root = tmp_path / os.fsdecode(b"r\xf6ot")
    for name in ("good.git", NAME):
        repo = root / name
        run_git(None, "init", "-q", "--bare", repo)
        fast_import(repo, history_stream("refs/heads/main", 3))
    (root / NAME / "hooks" / os.fsdecode(HOOK)).write_text("#!/bin/sh\n")
    assert sorted(os.listdir(os.fsencode(root))) == [LATIN1, b"good.git"]
    return root


def refs(repo: Path) -> str:
    return run_git(repo, "for-each-ref", "--format=%(objectname) %(refname)")


def by_name(rows: list[dict], key: str = "relative") -> dict[str, dict]:
    return {row[key]: row for row in rows}


def test_status_and_check_show_the_name_escaped_and_json_carries_its_bytes(
    custode: Run, root: Path
) -> None:
    # strict: a terminal in a UTF-8 locale other than C.UTF-8 refuses what is not UTF-8
    table = custode("status", root, env={"PYTHONIOENCODING": "utf-8:strict"})
    assert table.code == 0, table.stderr
    assert SHOWN in table.stdout and "good.git" in table.stdout
    assert "history not recorded" not in table.stderr  # the history database took it
    found = custode("status", "--json", root)
    assert found.code == 0, found.stderr
    repos = by_name(found.json()["repositories"])
    assert sorted(repos) == sorted([NAME, "good.git"])
    assert os.fsencode(repos[NAME]["path"]) == os.fsencode(root) + b"/" + LATIN1
    check = custode("check", root)
    assert check.code == 0, check.stderr
    assert SHOWN in check.stdout and "not recorded" not in check.stderr
    checked = custode("check", "--json", root)
    assert checked.code == 0, checked.stderr
    assert by_name(checked.json()["repositories"])[NAME]["verdict"] == "ok"


def test_metrics_label_the_repository_escaped_in_valid_exposition(
    custode: Run, root: Path, tmp_path: Path
) -> None:
    result = custode("metrics", root)
    assert result.code == 0, result.stderr
    # the exposition escapes a label's backslash: the label value is caf\xe9.git
    assert 'custode_repository_size_bytes{repository="caf\\\\xe9.git"' in result.stdout
    assert 'repository="good.git"' in result.stdout
    exposition = tmp_path / "metrics.prom"
    exposition.write_text(result.stdout)
    promtool = need("promtool", package="prometheus")
    with exposition.open("rb") as data:
        checked = subprocess.run([promtool, "check", "metrics"], stdin=data,
                                 capture_output=True, text=True, check=False)  # fmt: skip
    assert "error" not in (checked.stdout + checked.stderr).lower(), checked


def test_backup_and_restore_give_back_the_exact_bytes(
    custode: Run, root: Path, tmp_path: Path
) -> None:
    backup = custode("backup", root, "--json")
    assert backup.code == 0, backup.stderr
    summary = backup.json()["summary"]
    assert summary["new"] == 2 and summary["failed"] == 0, summary
    listed = custode("snapshots", "--json")
    assert listed.code == 0, listed.stderr
    full = custode("verify", "--level", "full")
    assert full.code == 0, full.stderr + full.stdout
    again = custode("backup", root, "--json")
    assert again.code == 0 and again.json()["summary"]["unchanged"] == 2  # found again
    out = tmp_path / "out"
    restored = custode("restore", "--to", out, "--json")
    assert restored.code == 0, restored.stderr
    assert restored.json()["summary"]["restored"] == 2
    assert sorted(os.listdir(os.fsencode(out))) == [LATIN1, b"good.git"]  # byte for byte
    assert refs(out / NAME) == refs(root / NAME)
    assert HOOK in os.listdir(os.fsencode(out / NAME / "hooks"))
    run_git(out / NAME, "fsck", "--strict")
    one = custode("restore", SHOWN, "--to", tmp_path / "one")  # named as shown
    assert one.code == 0, one.stderr
    assert os.listdir(os.fsencode(tmp_path / "one")) == [LATIN1]
    drill = custode("verify", "--level", "drill")
    assert drill.code == 0, drill.stderr + drill.stdout


def test_run_completes_every_stage_and_the_report_shows_the_name_escaped(
    custode: Run, root: Path, tmp_path: Path
) -> None:
    result = custode("run", "--json", root)
    assert result.code == 0, result.stderr
    stages = {s["name"]: s for s in result.json()["stages"]}
    assert all(s["outcome"] == "ok" for s in stages.values()), stages
    assert stages["backup"]["summary"]["new"] == 2
    for fmt in ("md", "html"):
        report = custode("report", "--format", fmt)
        assert report.code == 0, report.stderr
        assert SHOWN in report.stdout, fmt
    data = custode("report", "--format", "json")
    assert data.code == 0 and NAME in json.dumps(data.json(), ensure_ascii=False)


def test_the_history_database_finds_the_repository_again(tmp_path: Path) -> None:
    """A check's verdict recorded under the name must be found under it next run: the
    doubt that keeps a repository untouched lives there (issue 11)."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    root = str(tmp_path / os.fsdecode(b"srv\xff"))
    with StateDB.open(state / "state.db") as db:
        run = db.begin_run("check")
        for name in (NAME, "good.git", "caf\u00e9.git"):  # the UTF-8 café.git is another one
            db.record_results(run, [RepositoryResult(name, root, "check", "corrupt", utcnow(),
                                                     0.1, {"repository": name})])  # fmt: skip
        db.finish_run(run, "ok", {"repositories": [NAME]})
        seen = db.begin_run("status")
        db.record_observations(seen, [Observation(NAME, root, "ok", 1, 2, 3, 4, 5, 6, "f1")])
    with StateDB.open(state / "state.db") as db:
        history = db.task_history("check")
        latest = {(r.root, r.repository): r for r in db.latest_results(["check"])}
        runs = db.runs()
        fingerprints = db.latest_fingerprints()
        observed = db.latest_observations()
    for name in (NAME, "good.git", "caf\u00e9.git"):
        assert history[(root, name)].outcome == "corrupt", name
        assert latest[(root, name)].details == {"repository": name}
    assert len(history) == 3
    assert fingerprints == {(root, NAME): ("f1", "ok")}  # the fast path knows it unchanged
    assert [o.repository for o in observed.values()] == [NAME]
    assert list(observed) == [(root, NAME)]
    assert runs[1].summary == {"repositories": [NAME]}  # runs[0] is the status run


def test_the_conventions_keep_every_utf8_name_as_it_was() -> None:
    assert display(NAME) == SHOWN and display("café.git") == "café.git"
    assert display("\ud800x") == "\\ud800x"  # not a file name: still shown, never a crash
    assert sql_value("café.git") == "café.git" and sql_value(NAME) == LATIN1
    document = json.dumps({"r": NAME, "u": "café"}, ensure_ascii=False)
    assert json.loads(json_bytes(document)) == {"r": NAME, "u": "café"}
    assert json.loads(canonical({"repository": NAME})) == {"repository": NAME}
    # a manifest without such a name is byte for byte what it was (its checksum holds)
    plain = {"repository": "café.git", "roots": ["/srv/git"]}
    assert canonical(plain) == json.dumps(
        plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    with pytest.raises(UnicodeEncodeError):
        json_bytes('"\ud800"')  # a lone surrogate no file name has stays damage
