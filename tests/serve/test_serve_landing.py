"""``custode serve``'s landing page on ``/`` and its pid file: the page in-process, then the
real command on 127.0.0.1 (behind basic auth, stopped by signals, failing to start, killed)
and what it leaves in the state directory."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt
import pytest

import custode
from custode.errors import LockedError, StateUnusableError
from custode.serve import pidfile
from custode.serve.http import MetricsApp, MetricsServer
from custode.serve.landing import landing_page
from custode.serve.pidfile import PidFile

PASSWORD = "s3cret pass"  # noqa: S105 (a test password)
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()  # cost 4: fast tests
HOST = socket.gethostname()
integration = pytest.mark.integration


def get(
    url: str, *, method: str = "GET", password: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)  # noqa: S310 (127.0.0.1)
    if password is not None:
        token = base64.b64encode(f"prometheus:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:  # noqa: S310
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def assert_landing_page(body: bytes) -> None:
    text = body.decode()
    assert text.startswith("<!DOCTYPE html>\n"), text
    assert "<title>custode</title>" in text
    assert (
        f"<p>Metrics of the git repositories on {HOST}, from custode {custode.__version__}.</p>"
        in text
    )
    assert '<li><a href="metrics">/metrics</a>: the Prometheus metrics</li>' in text
    assert (
        '<li><a href="healthz">/healthz</a>: ok, or 503 and why the metrics cannot be trusted</li>'
        in text
    )


# --------------------------------------------------------------------------- the page


class StaticExporter:
    last_error = ""

    def refresh(self) -> None:
        pass

    def exposition(self) -> bytes:
        return b"fake 1.0\n"


@pytest.fixture
def url() -> Iterator[str]:
    server = MetricsServer(("127.0.0.1", 0), MetricsApp(StaticExporter(), lambda: None))
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server.url
    server.shutdown()
    server.server_close()


def test_root_is_a_landing_page(url: str) -> None:
    status, headers, body = get(f"{url}/")
    assert (status, headers["Content-Type"]) == (200, "text/html; charset=utf-8")
    assert_landing_page(body)
    # nothing of the request comes back: a query string changes nothing
    assert get(f"{url}/?q=%3Cscript%3Ealert(1)%3C/script%3E")[2] == body
    head = get(f"{url}/", method="HEAD")
    assert (head[0], head[2], head[1]["Content-Length"]) == (200, b"", str(len(body)))
    post = get(f"{url}/", method="POST")
    assert (post[0], post[1]["Allow"]) == (405, "GET, HEAD")
    assert get(f"{url}/index.html")[0] == 404


def test_the_page_escapes_what_it_shows() -> None:
    page = landing_page(version="1<2", host="<script>&").decode()
    assert "on &lt;script&gt;&amp;, from custode 1&lt;2." in page
    assert "<script>" not in page


# --------------------------------------------------------------------------- the pid file


def test_a_pid_file_is_removed_only_while_it_is_ours(tmp_path: Path) -> None:
    held = PidFile.acquire(tmp_path / "state")
    path = tmp_path / "state" / "serve.pid"
    assert path.read_text() == f"{os.getpid()}\n"
    with pytest.raises(LockedError, match=f"custode serve \\(pid {os.getpid()}\\) already uses"):
        PidFile.acquire(tmp_path / "state")
    path.unlink()  # someone removed it; another serve took its place
    path.write_text("4242\n")
    held.release()
    assert path.read_text() == "4242\n"
    path.unlink()
    with PidFile.acquire(tmp_path / "state"):
        assert path.read_text() == f"{os.getpid()}\n"
    assert not path.exists()


def test_a_start_racing_a_clean_exit_locks_the_file_that_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second serve opens the pid file just before the first removes it and exits: it
    must not end up holding the removed file while a third one creates a new one."""
    first = PidFile.acquire(tmp_path)
    real_open = pidfile._open
    opened: list[int] = []

    def open_then_first_exits(path: Path) -> int:
        fd = real_open(path)
        if not opened:
            first.release()
        opened.append(fd)
        return fd

    monkeypatch.setattr(pidfile, "_open", open_then_first_exits)
    second = PidFile.acquire(tmp_path)
    assert len(opened) == 2  # it started over on the file that is there now
    monkeypatch.undo()
    with pytest.raises(LockedError):
        PidFile.acquire(tmp_path)
    second.release()
    assert not (tmp_path / "serve.pid").exists()


def test_a_symlink_as_pid_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("precious\n")
    (tmp_path / "serve.pid").symlink_to(target)
    with pytest.raises(StateUnusableError) as raised:
        PidFile.acquire(tmp_path)
    assert raised.value.message == (
        f"{tmp_path}/serve.pid is a symbolic link; remove it (custode serve writes its pid there)"
    )
    assert target.read_text() == "precious\n"


# --------------------------------------------------------------------------- the command


@dataclass
class Serving:
    proc: subprocess.Popen[str]
    url: str

    def stop(self, signum: signal.Signals = signal.SIGTERM) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=30)


@dataclass
class Launcher:
    """Starts ``custode serve`` on a free port of 127.0.0.1, all with one state directory."""

    env: dict[str, str]
    root: Path
    started: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def pid_file(self) -> Path:
        return Path(self.env["XDG_STATE_HOME"]) / "custode" / "serve.pid"

    def command(self, *args: str | Path, listen: str = "127.0.0.1:0") -> list[str]:
        return [sys.executable, "-m", "custode", "serve", "--no-trace2", "--no-schedule",
                "--listen", listen, *map(str, args), str(self.root)]  # fmt: skip

    def start(self, *args: str | Path) -> Serving:
        proc = subprocess.Popen(
            self.command(*args), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, env=self.env,
        )  # fmt: skip
        self.started.append(proc)
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("serving metrics on "), line + proc.stderr.read()
        return Serving(proc, line.split()[-1].removesuffix("/metrics"))


@pytest.fixture
def serve(isolated_env: dict[str, str], tmp_path: Path) -> Iterator[Launcher]:
    (tmp_path / "root").mkdir()
    launcher = Launcher(isolated_env, tmp_path / "root")
    yield launcher
    for proc in launcher.started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@integration
def test_the_landing_page_behind_basic_auth(serve: Launcher, tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prometheus: '{HASH}'\n")
    served = serve.start("--web-config", web)
    status, headers, body = get(f"{served.url}/")
    assert (status, headers["WWW-Authenticate"], body) == (
        401, 'Basic realm="custode"', b"unauthorized\n"
    )  # fmt: skip
    assert get(f"{served.url}/", password="wrong")[0] == 401  # noqa: S106
    status, headers, body = get(f"{served.url}/", password=PASSWORD)
    assert (status, headers["Content-Type"]) == (200, "text/html; charset=utf-8")
    assert_landing_page(body)
    assert get(f"{served.url}/other", password=PASSWORD)[0] == 404
    assert served.stop() == 0


@integration
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_clean_exit_removes_the_pid_file(serve: Launcher, signum: signal.Signals) -> None:
    served = serve.start()
    assert serve.pid_file.read_text() == f"{served.proc.pid}\n"
    assert served.stop(signum) == 0
    assert not serve.pid_file.exists()


@integration
def test_a_failed_start_leaves_no_pid_file(serve: Launcher) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(serve.command(listen=f"127.0.0.1:{port}"), capture_output=True,
                              text=True, env=serve.env, timeout=60, check=False)  # fmt: skip
    assert (proc.returncode, proc.stderr) == (
        2, f"custode: cannot listen on 127.0.0.1:{port}: address already in use; "
        "choose another --listen\n",
    )  # fmt: skip
    assert serve.pid_file.parent.is_dir()  # it got as far as writing the pid file
    assert not serve.pid_file.exists()


@integration
def test_a_killed_serve_does_not_block_the_next(serve: Launcher) -> None:
    killed = serve.start()
    killed.proc.kill()
    killed.proc.wait()
    assert serve.pid_file.read_text() == f"{killed.proc.pid}\n"  # a crash leaves it behind
    served = serve.start()
    assert serve.pid_file.read_text() == f"{served.proc.pid}\n"
    assert get(f"{served.url}/healthz")[0] == 200
    assert served.stop() == 0
    assert not serve.pid_file.exists()


@integration
def test_a_serve_leaves_the_pid_file_of_another_alone(serve: Launcher) -> None:
    """Its pid file deleted by hand, a serve lets a second one start; stopping the first
    must not remove the second one's file."""
    first = serve.start()
    serve.pid_file.unlink()
    second = serve.start()
    assert first.stop() == 0
    assert serve.pid_file.read_text() == f"{second.proc.pid}\n"
    assert second.stop() == 0
    assert not serve.pid_file.exists()
