"""gitolite3 from Debian's package, and custode looking after its repositories.

gitolite is set up the way Debian's package sets it up (``gitolite setup -pk admin.pub``
run as the hosting user: repositories in ``~/repositories``, the admin data in
``~/.gitolite``, the rc in ``~/.gitolite.rc``, its own ``~/.ssh/authorized_keys``), for a
hosting user whose home is a temporary directory: ``nobody`` when the tests run as root
(no account is created and nothing outside the temporary directory is touched), the
current user otherwise. The hosting user's git config is the one docs/servers.md
recommends beside custode: no ``gc --auto`` after a push.

sshd (``fixtures.gitserver.ssh_server``) listens on 127.0.0.1 and reads gitolite's
authorized_keys, every key with gitolite's forced command (``gitolite-shell <user>``). A
real install logs the hosting user in; ``nobody``'s shell is nologin and a real account
would touch the system, so as root the test's sshd logs root in and each forced command
is prefixed with a ``setpriv`` to the hosting user: gitolite runs as that user, in its
home, exactly as it would have.

Through gitolite, over ssh, the admin pushes a new ``gitolite.conf`` (gitolite-admin's
``post-update`` hook creates ``team/app`` and a wild-repository rule), pushes to
``team/app`` (commits in several pushes, one large enough to arrive as a pack, a branch,
an annotated tag; gitolite's ``update`` hook checks every one), creates the wild
repository ``dev/admin/tool`` by pushing to it, and grants READERS on it with gitolite's
``perms`` command. Two marker hooks append to a file whenever they run: a gitolite common
hook (``LOCAL_CODE/hooks/common/post-receive``, a symlink in every repository) and a plain
``hooks/reference-transaction`` file in team/app. The pushes run both (so they are live);
the marker is then removed.

Then ``custode run`` on ``~/repositories`` as the hosting user, with throw-away XDG
directories in its home, and ``custode restore`` of the snapshot into a new directory
with gitolite's umask (0077). Last, a new server as docs/servers.md describes it: a fresh
``gitolite setup`` with the same admin key and the old rc, the copied identity,
``custode snapshots --host OLD``, a restore beside ``~/repositories``, the repositories
moved in, the old gitolite-admin pushed over the fresh one (``gitolite push -f``, as
gitolite's "moving servers" says) and ``gitolite setup``; its own sshd serves it.

Required: maintenance did work on the repositories and left every gitolite file as it
was — each hook (gitolite's ``update`` symlinks, gitolite-admin's ``post-update``, the
common hook's symlinks, the plain hook file: kind, target or bytes, mode) and each
``gl-conf``, ``gl-creator`` and ``gl-perms`` byte for byte; every repository passes ``git
fsck --strict``; no hook ran during maintenance, backup, verification or restore; a clone
through gitolite after maintenance has every ref as pushed. From the restore: the refs, the
plain hook file, config and description exactly, nothing readable by group or others. On
the new server: every ref, gitolite's hooks and ``gl-conf`` as before (made again by
``gitolite setup``), a clone and a push through gitolite.

Also from the restore: every repository has its ``hooks/`` directory, gitolite's hook
symlinks come back as the same links, and its ``gl-*`` files byte for byte; on the new
server a wild repository keeps its creator and permissions.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fixtures.builders import run_git
from fixtures.gitserver import SshPrograms, SshServer, keygen, ssh_server
from fixtures.system import need

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOSTING_USER = "nobody"  # when the tests run as root: an unprivileged uid every system has
TIMEOUT = 300  # seconds for any one command; the whole module takes well under a minute
REPOS = ("gitolite-admin", "testing", "team/app", "dev/admin/tool")
GL_FILES = ("gl-conf", "gl-creator", "gl-perms")
KEPT_FILES = ("config", "description")
CONF = """\
repo gitolite-admin
    RW+     =   admin

repo testing
    RW+     =   @all

repo team/app
    RW+     =   admin

repo dev/CREATOR/..*
    C       =   admin
    RW+     =   CREATOR
    R       =   READERS
"""
#: Appends to the marker file whenever git runs it (reads its input first, as hooks do).
MARKER_HOOK = """\
#!/bin/sh
cat >/dev/null
echo "$0 $*" >>'{marker}'
"""
#: The hosting user's git config, as docs/servers.md recommends next to custode.
HOST_GITCONFIG = "[receive]\n\tautogc = false\n[gc]\n\tauto = 0\n"

# --------------------------------------------------------------------------- the hosting user


@dataclass(frozen=True)
class Host:
    """The user gitolite runs as, its home, and how to run a command as that user."""

    uid: int
    gid: int
    name: str
    home: Path
    setpriv: str | None  # None: the tests' own user is the hosting user

    @property
    def prefix(self) -> list[str]:
        if self.setpriv is None:
            return []
        return [self.setpriv, f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                "--inh-caps=-all", "--"]  # fmt: skip

    @property
    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "LC_ALL": "C",
            "GIT_CONFIG_NOSYSTEM": "1",
        }

    @property
    def repositories(self) -> Path:
        return self.home / "repositories"

    def run(self, *cmd: str | Path, cwd: Path | None = None) -> str:
        proc = subprocess.run(
            [*self.prefix, *map(str, cmd)],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=cwd or self.home,
            timeout=TIMEOUT,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(f"{cmd} as {self.name} exited {proc.returncode}:\n{proc.stderr}")
        return proc.stdout

    def write(self, path: Path, text: str, mode: int = 0o644) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
        if self.setpriv is not None:
            os.chown(path, self.uid, self.gid)


def _hosting_user(base: Path, name: str) -> Host:
    home = base / name
    home.mkdir(mode=0o700)
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return Host(me.pw_uid, me.pw_gid, me.pw_name, home, None)
    setpriv = need("setpriv", package="util-linux")
    entry = pwd.getpwnam(HOSTING_USER)
    base.chmod(0o711)  # the hosting user passes through to its home, and sees nothing else
    os.chown(home, entry.pw_uid, entry.pw_gid)
    return Host(entry.pw_uid, entry.pw_gid, entry.pw_name, home, setpriv)


# --------------------------------------------------------------------------- what must survive


def server_files(repo: Path) -> dict[str, tuple[str, str | bytes, int]]:
    """gitolite's files in ``repo``: every hook but git's samples, and the gl-* files, each
    as (kind, symlink target or bytes, permission bits)."""
    files: dict[str, tuple[str, str | bytes, int]] = {}
    hooks = sorted(os.listdir(repo / "hooks")) if (repo / "hooks").is_dir() else []
    names = [f"hooks/{n}" for n in hooks if not n.endswith(".sample")]
    for name in (*names, *GL_FILES, *KEPT_FILES):
        path = repo / name
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISLNK(info.st_mode):
            files[name] = ("symlink", os.readlink(path), 0)
        else:
            files[name] = ("file", path.read_bytes(), mode)
    return files


def refs(host: Host, repo: Path) -> dict[str, str]:
    out = host.run("git", "-C", repo, "for-each-ref", "--format=%(objectname) %(refname)")
    return {name: oid for oid, name in (line.split(" ", 1) for line in out.splitlines())}


def fsck(host: Host, repo: Path) -> None:
    host.run("git", "-c", "core.hooksPath=/dev/null", "-C", repo, "fsck", "--strict",
             "--no-progress")  # fmt: skip


# --------------------------------------------------------------------------- the whole story


@dataclass
class Story:
    """What happened, for the tests below to check."""

    host: Host
    server: SshServer
    key: Path
    client: Path
    marker: Path
    before: dict[str, dict[str, tuple[str, str | bytes, int]]]
    pushed: dict[str, dict[str, str]]
    after: dict[str, dict[str, tuple[str, str | bytes, int]]]
    run: dict[str, object]
    run_stderr: str
    restored: Path
    marker_after_run: bool
    marker_after_restore: bool
    gitolite: str
    programs: SshPrograms

    def ssh(self, *command: str, server: SshServer | None = None) -> str:
        """Run a gitolite command (``info``, ``perms``...) as the admin, over ssh."""
        server = server or self.server
        argv = [*shlex.split(server.command(self.key)), f"{server.user}@127.0.0.1"]
        proc = subprocess.run([*argv, *command], capture_output=True, text=True,
                              timeout=TIMEOUT, check=False)  # fmt: skip
        assert proc.returncode == 0, f"ssh {command}: {proc.stderr}"
        return proc.stdout

    def git(self, repo: Path | None, *args: str | Path, server: SshServer | None = None) -> str:
        """git as the admin's client, reaching gitolite over ssh."""
        command = (server or self.server).command(self.key)
        return run_git(repo, *args, config=(f"core.sshCommand={command}",))


def _commit(work: Path, name: str, files: int = 1) -> None:
    for i in range(files):
        (work / f"{name}-{i}.txt").write_text(f"{name} {i}\n" * 3)
    run_git(work, "add", "-A")
    run_git(work, "commit", "-q", "-m", name)


def _custode(
    host: Host, xdg: Path, *args: str | Path, umask: int = -1
) -> subprocess.CompletedProcess[str]:
    env = {f"XDG_{n}_HOME": str(xdg / n.lower()) for n in ("CONFIG", "STATE", "DATA", "CACHE")}
    keep = {k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "COVERAGE_PROCESS_START")}
    return subprocess.run(
        [*host.prefix, sys.executable, "-m", "custode", *map(str, args)],
        capture_output=True,
        text=True,
        env={**host.env, **keep, **env},
        cwd=host.home,
        timeout=TIMEOUT,
        check=False,
        umask=umask,
    )


@pytest.fixture(scope="module")
def story() -> Iterator[Story]:
    gitolite = need("gitolite", package="gitolite3")
    programs = SshPrograms.find(need)
    base = Path(tempfile.mkdtemp(prefix="custode-gitolite-"))
    try:
        host = _hosting_user(base, "git")
        yield from _tell(base, host, gitolite, programs)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _tell(base: Path, host: Host, gitolite: str, programs: SshPrograms) -> Iterator[Story]:
    client = base / "client"
    client.mkdir()
    key = client / "admin"
    keygen(programs.ssh_keygen, key, comment="admin")
    marker = host.home / "hook-ran"

    # --- gitolite, as Debian's postinst sets it up (its rc stays in ~, not /etc)
    host.write(host.home / ".gitconfig", HOST_GITCONFIG)
    host.write(host.home / "admin.pub", key.with_name("admin.pub").read_text())
    host.run(gitolite, "setup", "-pk", host.home / "admin.pub")
    rc = host.home / ".gitolite.rc"
    text, count = re.subn(r"#\s*(LOCAL_CODE\s*=>\s*\"\$ENV\{HOME\}/local\",)", r"\1",
                          rc.read_text(), count=1)  # fmt: skip
    assert count == 1, "gitolite.rc has no LOCAL_CODE line to enable"
    host.write(rc, text, 0o600)
    hook = MARKER_HOOK.format(marker=marker)
    host.write(host.home / "local" / "hooks" / "common" / "post-receive", hook, 0o755)
    host.run(gitolite, "setup", "--hooks-only")

    with ssh_server(programs, _sshd_keys(host, client)) as server:
        story = Story(host, server, key, client, marker, {}, {}, {}, {}, "", base / "none",
                      False, False, gitolite, programs)  # fmt: skip
        _push(story)
        yield from _maintain_and_restore(story)


def _sshd_keys(host: Host, client: Path) -> Path:
    """The authorized_keys sshd reads: gitolite's, each forced command run as the hosting
    user (when the tests run as root, sshd logs root in: see the module docstring)."""
    keys = client / f"authorized_keys-{host.home.name}"
    text = (host.home / ".ssh" / "authorized_keys").read_text()
    assert 'command="' in text and "gitolite-shell admin" in text, text
    if host.setpriv is not None:
        wrapper = client / f"as-hosting-user-{host.home.name}"
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in host.env.items() if k != "PATH")
        wrapper.write_text(f'#!/bin/sh\nexec {shlex.join(host.prefix)} env {env} "$@"\n')
        wrapper.chmod(0o755)
        text = re.sub(r'command="([^"]*)"', rf'command="{wrapper} \1"', text)
    keys.write_text(text)
    return keys


def _push(story: Story) -> None:
    host, client, url = story.host, story.client, story.server.url
    assert "hello admin" in story.ssh("info")

    admin = client / "gitolite-admin"
    story.git(None, "clone", "-q", url("gitolite-admin"), admin)
    (admin / "conf" / "gitolite.conf").write_text(CONF)
    _commit(admin, "team-app-and-wild-repos", files=0)
    story.git(admin, "push", "-q", "origin", "HEAD")

    app = client / "app"
    run_git(None, "init", "-q", "-b", "main", app)
    run_git(app, "remote", "add", "origin", url("team/app"))
    for i in range(3):  # small pushes: loose objects on the server
        _commit(app, f"small-{i}")
        story.git(app, "push", "-q", "origin", "main")
    _commit(app, "large", files=150)  # over receive.unpackLimit (100): kept as a pack
    story.git(app, "push", "-q", "origin", "main")
    run_git(app, "checkout", "-q", "-b", "feature")
    _commit(app, "feature")
    story.git(app, "push", "-q", "origin", "feature")
    run_git(app, "tag", "-a", "v1.0", "-m", "release 1.0", "main")
    story.git(app, "push", "-q", "origin", "v1.0")

    tool = client / "tool"
    run_git(None, "init", "-q", "-b", "main", tool)
    _commit(tool, "tool")
    story.git(tool, "push", "-q", url("dev/admin/tool"), "main")  # creates the wild repo
    story.ssh("perms", "dev/admin/tool", "+", "READERS", "alice")

    # A plain hook file beside gitolite's symlinks (an admin's own, as on many servers).
    repos = host.repositories
    host.write(repos / "team/app.git/hooks/reference-transaction",
               MARKER_HOOK.format(marker=story.marker), 0o755)  # fmt: skip
    story.git(app, "push", "-q", "origin", "main:refs/heads/hooked")  # runs both hooks
    ran = story.marker.read_text()
    assert "hooks/post-receive" in ran and "hooks/reference-transaction" in ran, ran
    story.marker.unlink()

    for name in REPOS:
        repo = repos / f"{name}.git"
        story.before[name] = server_files(repo)
        story.pushed[name] = refs(host, repo)
    # What the rest relies on: gitolite made the files this test is about.
    assert story.before["team/app"]["hooks/update"][0] == "symlink", story.before["team/app"]
    assert story.before["gitolite-admin"]["hooks/post-update"][0] == "symlink"
    assert {"gl-creator", "gl-perms"} <= story.before["dev/admin/tool"].keys()
    assert "gl-conf" in story.before["team/app"] and "gl-conf" in story.before["gitolite-admin"]


def _maintain_and_restore(story: Story) -> Iterator[Story]:
    host = story.host
    xdg = host.home / "xdg"
    result = _custode(host, xdg, "run", "--json", host.repositories)
    assert result.returncode == 0, f"custode run exited {result.returncode}:\n{result.stderr}"
    story.run = json.loads(result.stdout)
    story.run_stderr = result.stderr
    story.marker_after_run = story.marker.exists()
    for name in REPOS:
        story.after[name] = server_files(host.repositories / f"{name}.git")

    story.restored = host.home / "restored"
    # gitolite's UMASK (0077 in its rc): what a restore as the hosting user starts from
    result = _custode(host, xdg, "restore", "--to", story.restored, umask=0o077)
    assert result.returncode == 0, f"custode restore exited {result.returncode}:\n{result.stderr}"
    story.marker_after_restore = story.marker.exists()
    yield story


# --------------------------------------------------------------------------- the checks


def _stage(story: Story, name: str) -> dict[str, object]:
    stages = story.run["stages"]
    assert isinstance(stages, list)
    (stage,) = (s for s in stages if s["name"] == name)
    assert stage["outcome"] == "ok", stage
    summary: dict[str, object] = stage["summary"]
    return summary


def test_maintenance_leaves_gitolite_files_exactly_as_they_were(story: Story) -> None:
    maintained = _stage(story, "maintain")
    assert int(str(maintained["maintained"])) >= 2, maintained  # it did real work
    assert maintained["failed"] == 0, maintained
    backup = _stage(story, "backup")
    assert (backup["repositories"], backup["failed"]) == (len(REPOS), 0), backup
    assert _stage(story, "drill")["drills"], story.run  # a restore drill ran too
    for name in REPOS:
        assert story.after[name] == story.before[name], name


def test_no_hook_ran(story: Story) -> None:
    assert not story.marker_after_run, story.marker.read_text()
    assert not story.marker_after_restore, story.marker.read_text()


def test_repositories_are_sound_and_clone_through_gitolite(story: Story) -> None:
    for name in REPOS:
        fsck(story.host, story.host.repositories / f"{name}.git")
    for name in ("team/app", "dev/admin/tool"):
        clone = story.client / f"clone-{name.replace('/', '-')}"
        story.git(None, "clone", "-q", "--mirror", story.server.url(name), clone)
        assert run_git(clone, "fsck", "--strict", "--no-progress") == ""
        got = {
            ref: oid
            for oid, ref in (
                line.split(" ", 1)
                for line in run_git(
                    clone, "for-each-ref", "--format=%(objectname) %(refname)"
                ).splitlines()
            )
        }
        assert got == story.pushed[name], name


def test_restore_brings_back_refs_and_kept_files(story: Story) -> None:
    for name in REPOS:
        repo = story.restored / f"{name}.git"
        fsck(story.host, repo)
        assert refs(story.host, repo) == story.pushed[name], name
        # config and description as they were (a wild repository has no description)
        got = {n: v[1] for n, v in server_files(repo).items() if n in KEPT_FILES}
        want = {n: v[1] for n, v in story.before[name].items() if n in KEPT_FILES}
        assert got == want, name
    hook = "hooks/reference-transaction"
    kind, body, mode = server_files(story.restored / "team/app.git")[hook]
    assert (kind, body) == story.before["team/app"][hook][:2]
    assert mode & 0o100, oct(mode)
    # restored as the hosting user under gitolite's UMASK 0077: nothing for group or others
    # (gitolite's CVE-2013-7203 was world-readable repositories)
    loose = [
        f"{path} {stat.filemode(path.lstat().st_mode)}"
        for path in (story.restored, *story.restored.rglob("*"))
        if not path.is_symlink() and path.lstat().st_mode & 0o077
    ]
    assert not loose, loose


def test_restored_repositories_have_a_hooks_directory(story: Story) -> None:
    missing = [n for n in REPOS if not (story.restored / f"{n}.git" / "hooks").is_dir()]
    assert not missing, missing


def test_restore_brings_back_gitolite_hook_symlinks(story: Story) -> None:
    for name in REPOS:
        want = {n: v for n, v in story.before[name].items() if v[0] == "symlink"}
        got = {n: v for n, v in server_files(story.restored / f"{name}.git").items() if n in want}
        assert got == want, name


def test_restore_brings_back_gl_files(story: Story) -> None:
    for name in REPOS:
        want = {n: v[1] for n, v in story.before[name].items() if n in GL_FILES}
        got = server_files(story.restored / f"{name}.git")
        assert {n: got[n][1] for n in want if n in got} == want, name


# --------------------------------------------------------------------------- a new server


@dataclass
class NewServer:
    """gitolite on a new server, its repositories restored from the old one's backups as
    docs/servers.md says ("Restore onto a new server"), served over ssh."""

    host: Host
    server: SshServer
    snapshots: str


@pytest.fixture(scope="module")
def new_server(story: Story) -> Iterator[NewServer]:
    base = story.host.home.parent
    new = _hosting_user(base, "new")
    old = story.host
    # 1. install: gitolite setup with the same admin key; the old rc and LOCAL_CODE back
    new.write(new.home / ".gitconfig", HOST_GITCONFIG)
    new.write(new.home / "admin.pub", (old.home / "admin.pub").read_text())
    new.run(story.gitolite, "setup", "-pk", new.home / "admin.pub")
    new.write(new.home / ".gitolite.rc", (old.home / ".gitolite.rc").read_text(), 0o600)
    hook = "local/hooks/common/post-receive"
    new.write(new.home / hook, (old.home / hook).read_text(), 0o755)
    # 2. the identity (copied from the old host's config) and the store
    xdg = new.home / "xdg"
    identity = xdg / "config" / "custode" / "identity.txt"
    new.write(identity, (old.home / "xdg/config/custode/identity.txt").read_text(), 0o600)
    for d in (identity.parent, identity.parent.parent):
        if new.setpriv is not None:
            os.chown(d, new.uid, new.gid)
    backup = _stage(story, "backup")
    store, old_name = str(backup["store"]), str(backup["host"])
    listed = _custode(new, xdg, "snapshots", "--store", store, "--host", old_name)
    assert listed.returncode == 0, listed.stderr
    # 3. restore beside the fresh repositories, then move all but gitolite-admin in place
    staging = new.home / "restore"
    result = _custode(new, xdg, "restore", "--store", store, "--host", old_name,
                      "--to", staging, umask=0o077)  # fmt: skip
    assert result.returncode == 0, result.stderr
    new.run("rm", "-rf", new.repositories / "testing.git")
    for name in REPOS:
        if name != "gitolite-admin":
            new.run("mkdir", "-p", (new.repositories / name).parent)
            new.run("mv", staging / f"{name}.git", new.repositories / f"{name}.git")
    # 4. the old admin repository over the fresh one (gitolite's "moving servers"), hooks
    new.run("git", "clone", "-q", staging / "gitolite-admin.git", new.home / "gitolite-admin")
    admin = new.repositories / "gitolite-admin.git"
    new.run(story.gitolite, "push", "-q", "-f", admin, "master", cwd=new.home / "gitolite-admin")
    new.run(story.gitolite, "setup")
    with ssh_server(story.programs, _sshd_keys(new, story.client)) as server:
        yield NewServer(new, server, listed.stdout)


def _on_new_server(files: dict[str, tuple[str, str | bytes, int]], old: Host, new: Host
                   ) -> dict[str, tuple[str, str | bytes, int]]:  # fmt: skip
    """``files`` as on the new server: symlinks into the hosting user's home follow it."""
    return {
        n: (k, v.replace(str(old.home), str(new.home)) if isinstance(v, str) else v, m)
        for n, (k, v, m) in files.items()
    }


def test_new_server_serves_the_restored_repositories(story: Story, new_server: NewServer) -> None:
    snapshot = _stage(story, "backup")["snapshot"]
    assert str(snapshot) in new_server.snapshots, new_server.snapshots
    new = new_server.host
    for name in ("gitolite-admin", "testing", "team/app"):
        repo = new.repositories / f"{name}.git"
        fsck(new, repo)
        assert refs(new, repo) == story.pushed[name], name
        # gitolite setup made its hooks and gl-conf again, the same as on the old server
        want = {n: v[:2] for n, v in _on_new_server(story.before[name], story.host, new).items()}
        got = {n: v[:2] for n, v in server_files(repo).items()}
        assert got == want, name
    # a clone and a push through gitolite (its update hook checks the push)
    server = new_server.server
    assert "hello admin" in story.ssh("info", server=server)
    clone = story.client / "new-server-app"
    story.git(None, "clone", "-q", "-b", "main", server.url("team/app"), clone, server=server)
    _commit(clone, "after-the-move")
    story.git(clone, "push", "-q", "origin", "HEAD:main", server=server)
    assert (
        refs(new, new.repositories / "team/app.git")["refs/heads/main"]
        == run_git(clone, "rev-parse", "HEAD").strip()
    )


def test_new_server_keeps_wild_repository_creator_and_perms(
    story: Story, new_server: NewServer
) -> None:
    repo = new_server.host.repositories / "dev/admin/tool.git"
    got = {n: v for n, v in server_files(repo).items() if n in GL_FILES}
    want = {n: v for n, v in story.before["dev/admin/tool"].items() if n in GL_FILES}
    assert {n: v[1] for n, v in got.items()} == {n: v[1] for n, v in want.items()}
