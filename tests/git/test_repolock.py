import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from custode.errors import ExitCode, LockedError, RepositoryError
from custode.git import lock as lock_module
from custode.git.lock import LOCK_NAME, repository_lock
from custode.scan.discovery import discover
from custode.scan.repostate import inspect
from fixtures.builders import Fleet


def _hold(git_dir: str, ready: "multiprocessing.synchronize.Event") -> None:  # type: ignore[name-defined]
    with repository_lock(Path(git_dir), "test"):
        ready.set()
        time.sleep(60)


@pytest.fixture
def git_dir(tmp_path: Path) -> Path:
    path = tmp_path / "r.git"
    path.mkdir()
    return path


def test_second_holder_is_refused_with_the_first_named(git_dir: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(git_dir), ready))
    holder.start()
    try:
        assert ready.wait(10)
        with pytest.raises(LockedError) as info, repository_lock(git_dir, "maintain"):
            pass
        assert f"pid {holder.pid} on " in str(info.value)
        assert "wait for it to finish or stop it" in str(info.value)
        assert info.value.exit_code == ExitCode.LOCKED
    finally:
        holder.kill()
        holder.join()


def test_lock_of_a_killed_holder_is_taken_over(git_dir: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(git_dir), ready))
    holder.start()
    assert ready.wait(10)
    assert holder.pid is not None
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    assert (git_dir / LOCK_NAME).exists()  # left behind, as after a crash
    with repository_lock(git_dir, "maintain"):
        pass


def test_released_on_exit_and_on_error(git_dir: Path) -> None:
    with repository_lock(git_dir, "a"):
        pass
    with pytest.raises(ZeroDivisionError), repository_lock(git_dir, "b"):
        1 / 0  # noqa: B018
    with repository_lock(git_dir, "c"):
        pass


def test_nothing_of_custodes_stays_in_the_repository(git_dir: Path) -> None:
    """The lock file is there, naming its holder, while held; gone once released, on
    success and on error; a killed holder's file is taken over, then removed too."""
    with repository_lock(git_dir, "maintain"):
        assert f'"pid": {os.getpid()}' in (git_dir / LOCK_NAME).read_text()
    assert not (git_dir / LOCK_NAME).exists()
    with pytest.raises(ZeroDivisionError), repository_lock(git_dir, "maintain"):
        1 / 0  # noqa: B018
    assert not (git_dir / LOCK_NAME).exists()
    (git_dir / LOCK_NAME).write_text('{"pid": 1}')  # as a killed custode leaves it
    with repository_lock(git_dir, "maintain"):
        pass
    assert sorted(os.listdir(git_dir)) == []


def test_a_lock_file_removed_under_us_is_not_trusted(
    git_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """We open the file, a finished holder removes it, we lock the removed file: the path
    no longer names it, so another custode could lock a new one. We must start over and
    hold the file the path names."""
    real_open = lock_module._open
    calls = []

    def open_then_lose_it(path: Path, where: Path) -> int:
        fd = real_open(path, where)
        calls.append(fd)
        if len(calls) == 1:
            os.unlink(path)  # the finished holder's unlink, between our open and flock
        return fd

    monkeypatch.setattr(lock_module, "_open", open_then_lose_it)
    with repository_lock(git_dir, "maintain") as fd:
        held, named = os.fstat(fd), os.stat(git_dir / LOCK_NAME)
        assert (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)
    assert len(calls) == 2


def test_vanished_repository(tmp_path: Path) -> None:
    gone = tmp_path / "gone.git"
    with (
        pytest.raises(
            RepositoryError,
            match=r"gone\.git is gone \(deleted or moved since it was found\); nothing was done",
        ),
        repository_lock(gone, "maintain"),
    ):
        pass


def test_held_lock_is_not_a_stale_git_lock(tmp_path: Path, fleet: Fleet) -> None:
    """Health and the planner treat *.lock files as git's; custode's own must not look like one."""
    shutil.copytree(fleet.packed, tmp_path / "r.git", symlinks=True)
    repo = discover([tmp_path]).repositories[0]
    with repository_lock(repo.git_dir, "maintain"):
        state = inspect(repo)
    assert state.temp_files == () and state.problems == ()
