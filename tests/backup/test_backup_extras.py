"""The kept files: what servers keep beside the repository, hook links, and forged tars.

gitolite links each repository's ``update`` hook to its own and keeps ``gl-conf``,
``gl-creator`` and ``gl-perms`` in the git directory; GitLab keeps ``custom_hooks/``.
They are kept and come back exactly; a link is kept only directly in ``hooks/``, and a
forged tar cannot use one to write anywhere else.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from custode.backup.extras import build_tar, extract
from custode.errors import IntegrityError


def _server_repo(git_dir: Path) -> None:
    (git_dir / "hooks").mkdir(parents=True)
    (git_dir / "hooks" / "update").symlink_to("/home/git/.gitolite/hooks/common/update")
    (git_dir / "hooks" / "post-receive").write_text("#!/bin/sh\nexit 0\n")
    (git_dir / "hooks" / "post-receive").chmod(0o755)
    (git_dir / "custom_hooks" / "pre-receive.d").mkdir(parents=True)
    (git_dir / "custom_hooks" / "pre-receive.d" / "check").write_text("#!/bin/sh\n")
    (git_dir / "custom_hooks" / "link").symlink_to("/etc/passwd")  # not in hooks/: left out
    for name, text in (("gl-conf", "%one_repo = ();\n"), ("gl-creator", "alice\n"),
                       ("gl-perms", "READERS @all\n"), ("config", "[core]\n\tbare = true\n")):  # fmt: skip
        (git_dir / name).write_text(text)
    (git_dir / "config-link").symlink_to("config")  # not a kept name at all


def test_server_files_and_hook_links_come_back_exactly(tmp_path: Path) -> None:
    src, dest = tmp_path / "src.git", tmp_path / "dest.git"
    _server_repo(src)
    dest.mkdir()
    extract(build_tar(src), dest)
    assert os.readlink(dest / "hooks" / "update") == "/home/git/.gitolite/hooks/common/update"
    assert (dest / "hooks" / "post-receive").stat().st_mode & 0o777 == 0o755
    for name in ("gl-conf", "gl-creator", "gl-perms", "config",
                 "custom_hooks/pre-receive.d/check"):  # fmt: skip
        assert (dest / name).read_bytes() == (src / name).read_bytes(), name
    assert not os.path.lexists(dest / "custom_hooks" / "link")
    assert not os.path.lexists(dest / "config-link")
    assert build_tar(dest) == build_tar(src)  # the same set: the same bytes


def test_a_restored_repository_has_hooks_even_when_none_was_kept(tmp_path: Path) -> None:
    src, dest = tmp_path / "src.git", tmp_path / "dest.git"
    src.mkdir()
    (src / "config").write_text("[core]\n")
    dest.mkdir()
    extract(build_tar(src), dest)
    assert (dest / "hooks").is_dir() and not (dest / "hooks").is_symlink()


def _tar(*members: tuple[str, str]) -> bytes:
    """A tar of ("file"|"dir"|"link:TARGET", name) members, in that order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for kind, name in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind.startswith("link:"):
                info.type, info.linkname = tarfile.SYMTYPE, kind[5:]
                tar.addfile(info)
            else:
                info.size = 3
                tar.addfile(info, io.BytesIO(b"hi\n"))
    return buf.getvalue()


@pytest.mark.parametrize(
    "members",
    [
        (("link:/etc/passwd", "config"),),  # a link where only a file may be
        (("link:../../etc", "custom_hooks/x"),),
        (("link:/tmp", "hooks/sub/deeper"),),  # not directly in hooks/
        (("link:", "hooks/empty"),),
        (("link:/tmp", "hooks/escape"), ("file", "hooks/escape/payload")),  # through it
    ],
)
def test_a_forged_tar_cannot_place_a_link_elsewhere_or_write_through_one(
    tmp_path: Path, members: tuple[tuple[str, str], ...]
) -> None:
    dest = tmp_path / "dest.git"
    dest.mkdir()
    with pytest.raises(IntegrityError):
        extract(_tar(*members), dest)
