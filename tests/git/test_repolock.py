import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from custode.errors import ExitCode, LockedError, RepositoryError
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
