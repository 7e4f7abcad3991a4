"""custode.git.runner: the hardened git runner."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from custode import interrupts
from custode.config.model import GitConfig
from custode.errors import GitError, GitNotFoundError, GitRefusedError, GitTimeoutError
from custode.git.runner import (
    ALLOWLIST,
    FEATURES,
    MINIMUM_VERSION,
    NO_PROTOCOL,
    Git,
    GitResult,
    GitVersion,
    ObjectDirs,
    git_dir_of,
)
from fixtures.builders import git_env, run_git

REAL = GitVersion.parse(
    subprocess.run(["git", "version"], capture_output=True, text=True, check=True).stdout
)


def _fake_git(tmp_path: Path, body: str = "", version: str = "2.39.5") -> Path:
    """A stand-in git: answers ``version``, otherwise runs ``body`` (sh) with $OUT set."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    script = tmp_path / "fake-git"
    script.write_text(
        "#!/bin/sh\n"
        f"OUT={out}\n"
        'if [ "$#" = 1 ] && [ "$1" = version ]; then\n'
        '  echo x >> "$OUT/version-calls"\n'
        f"  echo 'git version {version}'\n"
        "  exit 0\n"
        "fi\n"
        'printf "%s\\n" "$@" > "$OUT/argv"\n'
        f"{body}\n"
    )
    script.chmod(0o755)
    return script


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A small working copy with two commits."""
    path = tmp_path / "wc"
    run_git(None, "init", "-q", str(path))
    for serial in range(2):
        (path / "f.txt").write_text(f"{serial}\n")
        run_git(path, "add", "f.txt")
        run_git(path, "commit", "-q", "-m", f"c{serial}")
    return path


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_until_dead(pid: int, within: float = 5.0) -> None:
    """Fail unless ``pid`` is gone (or a zombie) within ``within`` seconds: a SIGKILLed
    process dies when next scheduled, which a loaded machine delays."""
    deadline = time.monotonic() + within
    while _alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still alive after {within} s"
        time.sleep(0.01)


# --------------------------------------------------------------------------- versions


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("git version 2.39.5\n", (2, 39, 5)),
        ("git version 2.39.5.windows.1", (2, 39, 5)),
        ("git version 2.43.0.vfs.0.0", (2, 43, 0)),
        ("git version 2.24.3 (Apple Git-128)", (2, 24, 3)),
        ("git version 2.40.0-rc1", (2, 40, 0)),
        ("git version 2.45.GIT", (2, 45, 0)),
        ("git version 3.0", (3, 0, 0)),
    ],
)
def test_version_parsing(text: str, expected: tuple[int, int, int]) -> None:
    assert GitVersion.parse(text) == GitVersion(*expected)


@pytest.mark.parametrize("text", ["", "hello", "git version", "git version x.y"])
def test_unparseable_versions(text: str) -> None:
    with pytest.raises(GitNotFoundError, match="cannot read a git version"):
        GitVersion.parse(text)


def test_versions_order_numerically() -> None:
    assert GitVersion(2, 9, 9) < GitVersion(2, 10) < GitVersion(2, 10, 1) < GitVersion(3, 0)
    assert str(GitVersion(2, 43)) == "2.43.0"
    assert max(GitVersion(2, 30), MINIMUM_VERSION) == GitVersion(2, 30, 0)


def test_feature_table() -> None:
    assert FEATURES["repack-geometric"] == GitVersion(2, 32)
    assert FEATURES["cruft-packs"] == GitVersion(2, 37)
    assert FEATURES["pack-refs-include-exclude"] == GitVersion(2, 42)
    assert FEATURES["repack-max-cruft-size"] == GitVersion(2, 43)
    assert FEATURES["rev-list-disk-usage"] == GitVersion(2, 31)
    assert all(GitVersion(2, 19) <= v < GitVersion(3, 0) for v in FEATURES.values())


@pytest.mark.integration
def test_real_git_version_and_gates() -> None:
    git = Git()
    assert git.version() == REAL >= MINIMUM_VERSION
    for feature, needed in FEATURES.items():
        assert git.supports(feature) == (needed <= REAL)
    if not git.supports("repack-max-cruft-size"):
        with pytest.raises(GitNotFoundError, match=r"too old for repack-max-cruft-size \(needs"):
            git.require("repack-max-cruft-size")


def test_gates_with_a_given_version(tmp_path: Path) -> None:
    git = Git(str(_fake_git(tmp_path, version="2.39.5.windows.1")))
    assert git.supports("cruft-packs") and not git.supports("pack-refs-include-exclude")
    git.require("repack-geometric")
    with pytest.raises(GitNotFoundError) as info:
        git.require("repack-max-cruft-size")
    assert str(info.value) == (
        "git 2.39.5 is too old for repack-max-cruft-size (needs 2.43.0); upgrade git"
    )
    git.version()
    assert (tmp_path / "out" / "version-calls").read_text().count("x") == 1  # cached


def test_too_old_git_fails_at_first_use(tmp_path: Path) -> None:
    git = Git(str(_fake_git(tmp_path, version="2.25.1")))
    with pytest.raises(GitNotFoundError, match=r"git 2.25.1 is older than 2.30.0.*upgrade git"):
        git.run(["count-objects"], repo=None)
    assert not (tmp_path / "out" / "argv").exists()


# --------------------------------------------------------------------------- environment


def test_child_environment_is_built_from_scratch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in {
        "GIT_DIR": "/nonexistent",
        "GIT_CONFIG_PARAMETERS": "'core.hookspath'='/tmp/evil'",
        "GIT_SSH_COMMAND": "evil",
        "GIT_ASKPASS": "evil",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "GITHUB_TOKEN": "secret",
        "LANG": "de_DE.UTF-8",
        "LD_PRELOAD": "/tmp/evil.so",
    }.items():
        monkeypatch.setenv(key, value)
    git = Git(str(_fake_git(tmp_path, 'env > "$OUT/env"')), nice=None, ionice="none")
    git.run(["count-objects"], repo=None, env_extra={"GIT_TRACE2_EVENT": "/dev/null"})
    env = dict(line.split("=", 1) for line in (tmp_path / "out" / "env").read_text().splitlines())
    shell_own = {"PWD", "OLDPWD", "SHLVL", "_", "OUT"}
    assert set(env) - shell_own <= {
        "PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "GIT_TERMINAL_PROMPT", "GIT_PAGER",
        "PAGER", "GIT_EDITOR", "GIT_NO_REPLACE_OBJECTS", "GIT_PROTOCOL_FROM_USER",
        "GIT_ALLOW_PROTOCOL", "GIT_NO_LAZY_FETCH", "GIT_TRACE2_EVENT",
    }  # fmt: skip
    assert env["LANG"] == env["LC_ALL"] == "C"
    # no transport, not even one a repository allows itself, and no lazy fetch
    assert env["GIT_ALLOW_PROTOCOL"] == NO_PROTOCOL and env["GIT_NO_LAZY_FETCH"] == "1"
    assert env["GIT_TERMINAL_PROMPT"] == "0" and env["GIT_PAGER"] == "cat"
    assert env["PATH"] == os.environ["PATH"]


@pytest.mark.integration
def test_real_git_ignores_inherited_git_variables(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIT_DIR", "/nonexistent")
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", "'custode.leaked'='yes'")
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "custode.leaked2")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "yes")
    git = Git()
    # No repo: git discovers the one in cwd, which an inherited GIT_DIR would override.
    found = git.run(["rev-parse", "--absolute-git-dir"], repo=None, cwd=repo).text.strip()
    assert found == str(repo / ".git")
    origins = git.run(["config", "--list", "--show-origin"], repo=repo).text
    assert "custode.leaked" not in origins
    assert "command line:\tcore.hookspath=/dev/null" in origins


def test_env_extra_cannot_undo_the_hardening() -> None:
    for key in ("GIT_DIR", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_GLOBAL", "GIT_PAGER", "LC_ALL"):
        with pytest.raises(GitRefusedError, match=key):
            Git().environment({key: "x"})


def test_env_extra_cannot_set_the_object_directories() -> None:
    """Only ObjectDirs may, and only with paths it checked."""
    for key in ("GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES"):
        with pytest.raises(GitRefusedError, match=key):
            Git().environment({key: "/tmp"})


def test_object_dirs_set_exactly_the_two_variables(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = Git().environment()
    env = Git().environment(objects=ObjectDirs(tmp_path, (tmp_path / "a", tmp_path / "b")))
    assert {k: v for k, v in env.items() if plain.get(k) != v} == {
        "GIT_OBJECT_DIRECTORY": str(tmp_path),
        "GIT_ALTERNATE_OBJECT_DIRECTORIES": f"{tmp_path / 'a'}:{tmp_path / 'b'}",
    }
    alone = Git().environment(objects=ObjectDirs(tmp_path))
    assert "GIT_ALTERNATE_OBJECT_DIRECTORIES" not in alone


@pytest.mark.parametrize("name", ["a:b", "a;b", '"a', "a\nb", "a\\b", "tab\there"])
def test_object_dirs_refuse_what_the_alternates_list_cannot_carry(
    tmp_path: Path, name: str
) -> None:
    bad = tmp_path / name
    bad.mkdir()
    for objects in (ObjectDirs(bad), ObjectDirs(tmp_path, (bad,))):
        with pytest.raises(GitRefusedError, match="object directory") as caught:
            Git().environment(objects=objects)
        assert "\n" not in str(caught.value.message)  # one line, the name shown escaped


def test_object_dirs_refuse_relative_and_missing_paths(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    for path, why in ((Path("objects"), "absolute"), (tmp_path / "gone", "existing"),
                      (tmp_path / "file", "existing")):  # fmt: skip
        with pytest.raises(GitRefusedError, match=why):
            Git().environment(objects=ObjectDirs(path))
        with pytest.raises(GitRefusedError, match=why):
            Git().environment(objects=ObjectDirs(tmp_path, (path,)))


@pytest.mark.integration
def test_a_scratch_object_directory_borrows_and_receives(repo: Path, tmp_path: Path) -> None:
    """Objects are read through the alternates and written to the primary directory only."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    head = run_git(repo, "rev-parse", "HEAD").strip()
    git = Git()
    borrowed = ObjectDirs(scratch, (repo / ".git" / "objects",))
    assert git.run(["cat-file", "-t", head], repo=repo, objects=borrowed).text == "commit\n"
    with pytest.raises(GitError):  # without the alternate the scratch directory is empty
        git.run(["cat-file", "-t", head], repo=repo, objects=ObjectDirs(scratch))
    before = sorted(p.name for p in (repo / ".git" / "objects").rglob("*"))
    blob = git.run(["hash-object", "-w", "--no-filters", "--stdin"], repo=repo, input=b"new\n",
                   objects=borrowed).text.strip()  # fmt: skip
    assert (scratch / blob[:2] / blob[2:]).is_file()
    assert sorted(p.name for p in (repo / ".git" / "objects").rglob("*")) == before


# --------------------------------------------------------------------------- repositories


@pytest.mark.integration
def test_repo_is_passed_as_git_dir(repo: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare.git"
    run_git(None, "clone", "-q", "--bare", str(repo), str(bare))
    git = Git()
    for given, git_dir in ((repo, repo / ".git"), (repo / ".git", repo / ".git"), (bare, bare)):
        assert git_dir_of(given) == git_dir
        assert f"--git-dir={git_dir}" in git.command_line(["count-objects"], given)
        out = git.run(["rev-parse", "--absolute-git-dir"], repo=given, cwd=tmp_path)
        assert out.text.strip() == str(git_dir)


def test_missing_repository(tmp_path: Path) -> None:
    with pytest.raises(GitError, match="is not a directory"):
        Git().run(["count-objects"], repo=tmp_path / "missing.git")


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["-c", "core.hooksPath=x", "status"],
        ["status"],
        ["diff"],
        ["show", "HEAD"],
        ["checkout", "main"],
        ["archive", "HEAD"],
        ["grep", "x"],
        ["blame", "f.txt"],
        ["push", "/tmp/x"],
        ["maintenance", "run"],
        ["st"],
        ["log", "-p"],
        ["log", "--patch"],
        ["log", "--stat"],
        ["log", "-Sneedle"],
        ["log", "-G", "re"],
        ["log", "--ext-diff"],
        ["log", "--textconv"],
        ["log", "--show-signature"],
        ["log", "--cc"],
        ["log", "-L1,2:f.txt"],
        ["rev-list", "--all", "-p"],
        ["cat-file", "--textconv", "HEAD:f.txt"],
        ["cat-file", "--filters", "HEAD:f.txt"],
        ["cat-file", "--batch", "--filters"],
        ["hash-object", "-w", "f.txt"],
        ["hash-object", "--no-filters", "--path=f.txt", "--stdin"],
        ["reflog"],
        ["reflog", "show"],
        ["worktree", "add", "/tmp/x"],
        ["commit-graph"],
        ["config", "core.hooksPath", "/tmp/evil"],
        ["config", "--edit", "--file=/tmp/x"],
        ["clone", "/tmp", "/tmp/dest"],
        ["clone", "--bare", "--recurse-submodules", "/tmp", "/tmp/dest"],
        ["clone", "--mirror", "https://example.com/x.git", "/tmp/dest"],
        ["clone", "--mirror", "ext::sh -c touch% /tmp/pwned", "/tmp/dest"],
        ["clone", "--mirror", "-u", "evil", "/tmp", "/tmp/dest"],
        ["fetch"],
        ["fetch", "origin"],
        ["fetch", "relative/path"],
        ["fetch", "--upload-pack=evil", "/tmp"],
        ["fetch", "--all"],
        ["ls-remote", "ssh://example.com/x.git"],
        ["ls-remote", "/tmp"],  # custode never transfers: not even from a local path
        ["fetch", "/tmp", "+refs/heads/*:refs/heads/*"],
        ["clone", "--mirror", "/tmp", "/tmp/dest"],
        ["push", "/tmp", "main"],
    ],
)
def test_refused_before_anything_runs(args: list[str]) -> None:
    git = Git("/nonexistent/git")  # refusal comes first: no binary is even looked for
    with pytest.raises(GitRefusedError) as info:
        git.run(args, repo=None)
    message = str(info.value)
    assert message.startswith("refusing to run 'git") and "\n" not in message
    assert info.value.command == tuple(args)


def test_options_after_double_dash_are_paths() -> None:
    argv = Git().command_line(["log", "--format=%H", "--", "-p"], None)
    assert argv[-4:] == ["log", "--format=%H", "--", "-p"]


def test_transfers_are_not_on_the_allowlist() -> None:
    for sub in ("clone", "fetch", "ls-remote", "push", "upload-pack", "remote"):
        assert sub not in ALLOWLIST, f"custode never transfers, but {sub} is allowed"


def test_every_command_line_is_hardened() -> None:
    argv = Git(nice=None, ionice="none").command_line(["count-objects", "-v"], None)
    assert argv[0] == shutil.which("git") and argv[1] == "--no-pager"
    pairs = {argv[i + 1] for i, word in enumerate(argv) if word == "-c"}
    assert {"core.hooksPath=/dev/null", "core.fsmonitor=false", "protocol.allow=never",
            "protocol.file.allow=never"} <= pairs  # fmt: skip
    assert argv[-2:] == ["count-objects", "-v"]


# --------------------------------------------------------------------------- nice/ionice


@pytest.mark.skipif(not (shutil.which("nice") and shutil.which("ionice")), reason="no util")
def test_nice_and_ionice_prefix(tmp_path: Path) -> None:
    nice, ionice = shutil.which("nice"), shutil.which("ionice")
    idle = Git(nice=7, ionice="idle").command_line(["version"])
    assert idle[:7] == [nice, "-n", "7", ionice, "-t", "-c", "3"]
    best = Git(nice=10, ionice="best-effort").command_line(["version"])
    assert best[:9] == [nice, "-n", "10", ionice, "-t", "-c", "2", "-n", "7"]
    assert Git(nice=None, ionice="none").command_line(["version"])[0] == shutil.which("git")
    assert Git(nice=0, ionice="none").command_line(["version"])[0] == shutil.which("git")

    body = 'nice > "$OUT/nice"; ionice -p $$ > "$OUT/ionice"'
    Git(str(_fake_git(tmp_path, body)), nice=5, ionice="idle").run(["version"], repo=None)
    assert int((tmp_path / "out" / "nice").read_text()) == min(os.nice(0) + 5, 19)
    assert (tmp_path / "out" / "ionice").read_text().strip() in ("idle", "none: prio 0")


def test_lowering_the_process_drops_the_wrappers_and_git_inherits(tmp_path: Path) -> None:
    """In a child interpreter (the test runner keeps its priority): after
    lower_own_priority, git starts without wrappers and still runs at nice/ionice."""
    fake = _fake_git(tmp_path, 'nice > "$OUT/nice"; ionice -p $$ > "$OUT/ionice"')
    code = (
        "import sys, threading\n"
        "from custode.git.runner import Git\n"
        f"git = Git({str(fake)!r}, nice=10, ionice='best-effort')\n"
        "git.lower_own_priority()\n"
        "assert git.command_line(['version'])[0] == git.executable(), git.command_line(['version'])\n"
        "t = threading.Thread(target=git.run, args=(['count-objects'],), kwargs={'repo': None})\n"
        "t.start(); t.join()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert int((tmp_path / "out" / "nice").read_text()) == max(os.nice(0), 10)
    assert (tmp_path / "out" / "ionice").read_text().strip() == "best-effort: prio 7"


def test_from_config() -> None:
    cfg = GitConfig(binary="git", timeout=5, nice=3, ionice="idle", trust_repository_owner=False)
    git = Git.from_config(cfg)
    assert (git.binary, git.timeout, git.nice, git.ionice) == ("git", 5, 3, "idle")
    assert git.trust_repository_owner is False


# --------------------------------------------------------------------------- errors


@pytest.mark.integration
def test_failure_carries_command_exit_and_stderr(repo: Path) -> None:
    git = Git()
    with pytest.raises(GitError) as info:
        git.run(["cat-file", "-p", "0" * 40], repo=repo)
    err = info.value
    assert str(err).startswith(f"git cat-file failed in {repo} (exit 128): fatal:")
    assert "\n" not in str(err)
    assert err.returncode == 128 and err.command[-3:] == ("cat-file", "-p", "0" * 40)
    assert "core.hooksPath=/dev/null" in err.command
    assert "fatal:" in err.stderr
    result = git.run(["cat-file", "-p", "0" * 40], repo=repo, check=False)
    assert isinstance(result, GitResult) and result.returncode == 128 and result.stdout == b""
    ok = git.run(["rev-list", "--count", "HEAD"], repo=repo)
    assert ok.text == "2\n" and ok.returncode == 0 and ok.duration > 0


def test_stderr_tail_is_bounded(tmp_path: Path) -> None:
    body = 'i=0; while [ $i -lt 300 ]; do echo "noise line $i of forty bytes...." >&2; i=$((i+1)); done\necho "the last word" >&2; exit 3'
    git = Git(str(_fake_git(tmp_path, body)), nice=None, ionice="none")
    with pytest.raises(GitError) as info:
        git.run(["count-objects"], repo=None)
    assert str(info.value).endswith("(exit 3): the last word")
    assert len(info.value.stderr) <= 4096 and info.value.stderr.endswith("the last word\n")


def test_missing_binary() -> None:
    with pytest.raises(GitNotFoundError) as info:
        Git("/nonexistent/git").run(["version"], repo=None)
    assert "git not found" in str(info.value)
    assert str(info.value).endswith("install git or set git.binary in config")


# --------------------------------------------------------------------------- timeouts


@pytest.mark.integration
def test_timeout_kills_real_git(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # git blocks opening it: nobody ever writes
    git = Git()
    git.version()  # asked once per instance: not part of the time measured below
    started = time.monotonic()
    with pytest.raises(GitTimeoutError) as info:
        git.run(["hash-object", "--no-filters", "--", str(fifo)], repo=None, timeout=0.3)
    # killed at the timeout, SIGKILL at the latest after the grace (slack for a loaded host)
    assert 0.3 <= time.monotonic() - started < 0.3 + git.kill_grace + 3
    assert str(info.value) == (
        f"git hash-object in {Path.cwd()} did not finish within 0.3 s and was killed: "
        "raise git.timeout in config"
    )
    assert info.value.command[-1] == str(fifo)


@pytest.fixture
def stubborn(tmp_path: Path) -> Iterator[tuple[Git, Path]]:
    """A git that ignores SIGTERM and leaves a child (ignoring it too) behind; yields it
    and its output directory: ``child`` holds the child's pid, and ``ready``, written
    after it, says both ignore SIGTERM (until then the fake git dies of it)."""
    body = 'trap "" TERM\nsleep 60 &\necho $! > "$OUT/child"\n: > "$OUT/ready"\nwait'
    git = Git(str(_fake_git(tmp_path, body)), nice=None, ionice="none")
    git.kill_grace = 0.2
    git.version()  # asked once per instance: not part of any time measured
    yield git, tmp_path / "out"


def _wait_for(path: Path, within: float = 30.0) -> int:
    deadline = time.monotonic() + within
    while not (path.exists() and path.read_text().strip()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.01)
    return int(path.read_text())


def test_timeout_kills_the_whole_process_group(stubborn: tuple[Git, Path]) -> None:
    """A timeout SIGTERMs the group, waits the grace, then SIGKILLs every process in it.

    The timeout must fire after the fake git is ``ready`` (it ignores SIGTERM from then
    on), which the runner's clock cannot wait for: a run in which it was not (a loaded
    host did not schedule the shell in time; SIGTERM then ended it) proves nothing and
    is repeated with a longer timeout."""
    git, out = stubborn
    for timeout in (0.3, 1.0, 3.0, 10.0):
        for name in ("child", "ready"):
            (out / name).unlink(missing_ok=True)
        started = time.monotonic()
        with pytest.raises(GitTimeoutError):
            git.run(["count-objects"], repo=None, timeout=timeout)
        took = time.monotonic() - started
        if (out / "ready").exists():
            break
    else:
        pytest.fail("the fake git was never ready before its timeout")
    # SIGTERM ignored: SIGKILL after the grace, and no wait on a child holding the pipes
    # (the runner would give up on those only after 5 s)
    assert timeout + git.kill_grace <= took < timeout + git.kill_grace + 4
    _wait_until_dead(int((out / "child").read_text()))


def _in(thread: int, function: str) -> bool:
    """Whether ``thread`` is running ``function`` now (somewhere down its stack)."""
    frame = sys._current_frames().get(thread)
    while frame is not None and frame.f_code.co_name != function:
        frame = frame.f_back
    return frame is not None


def test_interrupt_kills_the_process_group(stubborn: tuple[Git, Path]) -> None:
    """KeyboardInterrupt while the runner waits for git SIGKILLs git's whole group: sent
    once the fake git is ``ready`` and the runner is in ``communicate``, however late a
    loaded host runs either."""
    git, out = stubborn
    main = threading.get_ident()
    done = threading.Event()
    lock = threading.Lock()

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    def interrupt_when_ready() -> None:
        while not done.wait(0.01):
            with lock:
                if not done.is_set() and (out / "ready").exists() and _in(main, "communicate"):
                    signal.pthread_kill(main, signal.SIGALRM)  # to this thread: wakes its wait
                    return

    previous = signal.signal(signal.SIGALRM, interrupt)
    interrupter = threading.Thread(target=interrupt_when_ready)
    try:
        interrupter.start()
        with pytest.raises(KeyboardInterrupt):
            git.run(["count-objects"], repo=None, timeout=30)  # 30 s: the hang guard
    finally:
        with lock:
            done.set()
        interrupter.join()
        signal.signal(signal.SIGALRM, previous)
    _wait_until_dead(int((out / "child").read_text()))


def test_a_stop_while_git_tells_its_version_is_an_interruption(tmp_path: Path) -> None:
    """A stop reaches every running git, the first ``git version`` of a command too (a CI
    run under load stopped a backup there): that git's failure is the interruption (exit
    130), not "git version failed: install git"."""
    slow = tmp_path / "slow-git"
    slow.write_text(f"#!/bin/sh\necho $$ > {tmp_path}/pid\nexec sleep 60\n")
    slow.chmod(0o755)
    git = Git(str(slow), nice=None, ionice="none")

    def stop() -> None:
        _wait_for(tmp_path / "pid")
        interrupts.request()

    stopper = threading.Thread(target=stop)
    stopper.start()
    try:
        with pytest.raises(interrupts.Interrupted) as info:
            git.run(["count-objects"], repo=None)
    finally:
        stopper.join()
        interrupts.reset()
    assert str(info.value) == f"interrupted: {slow} version was stopped"


# --------------------------------------------------------------------------- ownership


@pytest.fixture
def foreign(repo: Path, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """``repo`` and a bare clone of it, both owned by another user (uid 65534)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give a repository to another user")
    bare = tmp_path / "foreign.git"
    run_git(None, "clone", "-q", "--bare", str(repo), str(bare))
    for path in (repo, bare):
        subprocess.run(["chown", "-R", "65534:65534", str(path)], check=True)
    yield repo, bare
    for path in (repo, bare):
        subprocess.run(["chown", "-R", "0:0", str(path)], check=True)


@pytest.mark.integration
def test_git_itself_refuses_foreign_repositories(foreign: tuple[Path, Path]) -> None:
    """What safe.directory is about, and that git honours it from the command line."""
    wc, _ = foreign
    env = git_env()
    plain = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=wc, env=env, capture_output=True, check=False
    )
    assert plain.returncode == 128 and b"dubious ownership" in plain.stderr
    if FEATURES["safe-directory-command-line"] <= REAL:
        trusted = subprocess.run(
            ["git", "-c", f"safe.directory={wc}", "rev-parse", "HEAD"],
            cwd=wc, env=env, capture_output=True, check=False,
        )  # fmt: skip
        assert trusted.returncode == 0, trusted.stderr


@pytest.mark.integration
def test_untrusted_owner_is_refused(foreign: tuple[Path, Path]) -> None:
    wc, bare = foreign
    git = Git(trust_repository_owner=False)
    for path in (wc, bare):
        with pytest.raises(GitRefusedError, match=r"owned by uid 65534.*trust_repository_owner"):
            git.run(["rev-parse", "HEAD"], repo=path)
    assert not any("safe.directory" in word for word in git.command_line(["version"], wc))


@pytest.mark.integration
def test_trusted_owner_works(foreign: tuple[Path, Path], tmp_path: Path) -> None:
    wc, bare = foreign
    git = Git(trust_repository_owner=True)
    assert f"safe.directory={wc}" in git.command_line(["rev-parse", "HEAD"], wc)
    for path in (wc, bare):
        assert len(git.run(["rev-parse", "HEAD"], repo=path).text.strip()) == 40
        bundle = tmp_path / f"{path.name}.bundle"
        git.run(["bundle", "create", str(bundle), "--all"], repo=path)
        git.run(["bundle", "verify", str(bundle)], repo=path)
