"""The deployment files in deploy/: systemd units, cron line, Ansible role, scrape config.

The units are checked by ``systemd-analyze verify`` where it exists and, always, by
reading them (hardening and the commands they run); the role's unit templates must say
what deploy/systemd says. The role really runs: ``connection: local`` into a scratch
prefix, installing this checkout into a fresh venv (no systemd, no user creation).
"""

from __future__ import annotations

import configparser
import grp
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from fixtures.paths import PROJECT
from fixtures.system import need

pytestmark = pytest.mark.integration

REPO = PROJECT
DEPLOY = REPO / "deploy"
UNITS = DEPLOY / "systemd"
ROLE = DEPLOY / "ansible" / "roles" / "custode"
UNIT_NAMES = ("custode-serve.service", "custode-run.service", "custode-run.timer")

HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "read-only",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "SystemCallArchitectures": "native",
    "StateDirectory": "custode",
    "CapabilityBoundingSet": "",
    "User": "custode",
    "Group": "custode",
    "EnvironmentFile": "-/etc/default/custode",
    "ReadWritePaths": "-/srv/git -/var/backups/custode",
}
#: The values the role's defaults give, for rendering its templates like deploy/systemd.
ROLE_DEFAULTS = {
    "ansible_managed": "Ansible managed",
    "custode_bin": "/usr/local/bin/custode",
    "custode_user": "custode",
    "custode_group": "custode",
    "custode_config_file": "/etc/custode/config.toml",
    "custode_env_file": "/etc/default/custode",
    "custode_read_write_paths": ["/srv/git", "/var/backups/custode"],
    "custode_protect_home": "read-only",
    "custode_run_on_calendar": "*-*-* 02:00",
    "custode_run_randomized_delay": "30m",
}


def tool(program: str, package: str) -> str:
    """The program's path: beside this Python first (ansible-core comes with the test
    extra), else on PATH."""
    beside = Path(sys.executable).parent / program
    return str(beside) if beside.is_file() else need(program, package=package)


class _MultiDict(dict[str, Any]):
    """Section storage that keeps every value of a repeated key (systemd allows them)."""

    def __setitem__(self, key: str, value: Any) -> None:
        if isinstance(value, list) and key in self:
            self[key].extend(value)
        else:
            super().__setitem__(key, value)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """``{section: {key: [value, ...]}}``; a repeated key has all its values in order."""
    parser = configparser.ConfigParser(
        strict=False, interpolation=None, dict_type=_MultiDict, empty_lines_in_values=False
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return {
        name: {key: value.split("\n") for key, value in parser.items(name, raw=True)}
        for name in parser.sections()
    }


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, f"[{section}] {key} set {len(values)} times"
    return values[0]


def environment(unit: dict[str, dict[str, list[str]]]) -> dict[str, str]:
    words = [w for line in unit["Service"]["Environment"] for w in shlex.split(line)]
    return dict(w.split("=", 1) for w in words)


def check_service(text: str, command: str, binary: str = "/usr/local/bin/custode") -> None:
    unit = parse_unit(text)
    assert {"Unit", "Service"} <= unit.keys()
    assert one(unit, "Unit", "Description")
    assert shlex.split(one(unit, "Service", "ExecStart")) == [binary, command]
    for key, expected in HARDENING.items():
        assert one(unit, "Service", key) == expected, key
    assert unit["Service"]["SystemCallFilter"] == ["@system-service", "~@privileged"]
    env = environment(unit)
    assert env["CUSTODE_CONFIG"] == "/etc/custode/config.toml"
    assert env["XDG_STATE_HOME"] == "/var/lib"  # state: StateDirectory=custode
    assert env["XDG_CONFIG_HOME"] == "/etc"
    assert env["XDG_RUNTIME_DIR"] == "/run"  # trace2.sock: RuntimeDirectory=custode


def test_serve_unit() -> None:
    text = (UNITS / "custode-serve.service").read_text()
    check_service(text, "serve")
    unit = parse_unit(text)
    assert one(unit, "Service", "Type") == "simple"
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"  # rereads config
    # serve stops its scheduled job itself, within schedule.stop_grace (10 min)
    assert one(unit, "Service", "KillMode") == "mixed"
    assert one(unit, "Service", "TimeoutStopSec") == "11min"
    assert one(unit, "Service", "RuntimeDirectory") == "custode"
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_run_unit_and_timer() -> None:
    text = (UNITS / "custode-run.service").read_text()
    check_service(text, "run")
    unit = parse_unit(text)
    assert one(unit, "Service", "Type") == "oneshot"
    assert one(unit, "Service", "Nice") == "10"
    assert one(unit, "Service", "IOSchedulingClass") == "idle"
    assert one(unit, "Service", "KillMode") == "mixed"  # custode ends its stage cleanly
    # no RuntimeDirectory: stopping the run would remove serve's /run/custode (trace2.sock)
    assert "RuntimeDirectory" not in unit["Service"]
    assert "Install" not in unit  # started by the timer only

    timer = parse_unit((UNITS / "custode-run.timer").read_text())
    assert one(timer, "Timer", "OnCalendar") == "*-*-* 02:00"
    assert one(timer, "Timer", "RandomizedDelaySec") == "30m"
    assert one(timer, "Timer", "Persistent") == "true"
    assert one(timer, "Timer", "Unit") == "custode-run.service"
    assert one(timer, "Install", "WantedBy") == "timers.target"


def render_role_template(name: str, values: dict[str, Any]) -> str:
    """A unit template of the role, rendered as Ansible's template module would (the unit
    templates use plain Jinja only)."""
    env = jinja2.Environment(  # noqa: S701  (systemd units, not HTML)
        loader=jinja2.FileSystemLoader(ROLE / "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        keep_trailing_newline=True,
    )
    return env.get_template(f"{name}.j2").render(values)


def _settings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize("name", UNIT_NAMES)
def test_role_templates_match_the_units(name: str) -> None:
    """Rendered with the role's defaults, the templates set exactly what deploy/systemd does."""
    rendered = render_role_template(name, ROLE_DEFAULTS)
    assert _settings(rendered) == _settings((UNITS / name).read_text())


@pytest.mark.parametrize("source", ["deploy", "role"])
def test_systemd_analyze_verify(tmp_path: Path, source: str) -> None:
    """systemd's own parser: no unknown key, no bad value, every unit loads."""
    analyze = need("systemd-analyze", package="systemd")  # else: the tests above parse them
    true = shutil.which("true")
    assert true is not None
    if source == "deploy":
        texts = {name: (UNITS / name).read_text() for name in UNIT_NAMES}
    else:  # as the role renders them for another prefix and user
        values = ROLE_DEFAULTS | {
            "custode_bin": "/opt/custode/venv/bin/custode",
            "custode_user": "git",
            "custode_group": "git",
            "custode_read_write_paths": ["/home/git/repositories"],
            "custode_protect_home": "no",
        }
        texts = {n: render_role_template(n, values) for n in UNIT_NAMES}
    for name, text in texts.items():
        # custode is not installed here; verify insists that ExecStart's program exists
        (tmp_path / name).write_text(re.sub(r"(?m)^ExecStart=\S+", f"ExecStart={true}", text))
    result = subprocess.run(
        [analyze, "verify", *(str(tmp_path / n) for n in UNIT_NAMES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = result.stdout + result.stderr
    # Lines about our units are findings; anything else is the host (no systemd as PID 1,
    # no user "custode"), which says nothing about the files.
    findings = [line for line in output.splitlines() if "custode-" in line]
    assert result.returncode == 0, output
    assert findings == [], output


def test_cron_line() -> None:
    text = (DEPLOY / "cron" / "custode").read_text()
    assert text.endswith("\n")  # cron ignores a last line without one
    assert "%" not in text  # cron turns % into newlines
    entries = [
        line
        for line in text.splitlines()
        if line.strip() and not line.startswith("#") and "=" not in line.split()[0]
    ]
    assert len(entries) == 1
    fields = entries[0].split(None, 6)
    minute, hour, _, _, _, user, command = fields
    assert (minute, hour, user) == ("0", "2", "custode")
    assert "flock -n " in command
    assert re.search(r"\bsleep \$\(shuf -i 0-\d+ -n 1\)", command)
    assert command.endswith("custode run")
    env = dict(line.split("=", 1) for line in text.splitlines() if re.match(r"^[A-Z_]+=", line))
    assert env["CUSTODE_CONFIG"] == "/etc/custode/config.toml"


def test_scrape_config(tmp_path: Path) -> None:
    path = DEPLOY / "prometheus" / "scrape-config.example.yml"
    config = yaml.safe_load(path.read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "custode"
    assert all(t.endswith(":9877") for t in job["static_configs"][0]["targets"])
    # the commented TLS / basic-auth variant, uncommented
    lines = path.read_text().splitlines()
    start = lines.index("  # - job_name: custode")
    variant = [line.replace("  # ", "  ", 1) for line in lines[start:] if line.startswith("  #")]
    tls = tmp_path / "tls.yml"
    tls.write_text("scrape_configs:\n" + "\n".join(variant) + "\n")
    (tls_job,) = yaml.safe_load(tls.read_text())["scrape_configs"]
    assert tls_job["scheme"] == "https"
    assert tls_job["basic_auth"]["password_file"]
    promtool = tool("promtool", "prometheus")
    for file in (path, tls):
        result = subprocess.run(
            [promtool, "check", "config", str(file)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def _ansible_env(tmp_path: Path) -> dict[str, str]:
    return os.environ | {
        "ANSIBLE_ROLES_PATH": str(ROLE.parent),
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
        "ANSIBLE_REMOTE_TEMP": str(tmp_path / "ansible-remote"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "LC_ALL": "C.UTF-8",  # ansible-core refuses to run without a UTF-8 locale
    }


def _scratch_playbook(tmp_path: Path) -> tuple[Path, Path]:
    prefix = tmp_path / "prefix"
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    variables = {
        "custode_prefix": str(prefix),
        "custode_source": str(REPO),
        "custode_pip_constraints": str(REPO / "requirements.lock"),
        "custode_python": sys.executable,
        "custode_install_packages": False,
        "custode_create_user": False,
        "custode_manage_systemd": False,
        "custode_link": "",
        "custode_user": user,
        "custode_group": group,
        "custode_config_dir": str(prefix / "etc"),
        "custode_env_file": str(prefix / "etc" / "environment"),
        "custode_state_dir": str(prefix / "state"),
        "custode_backup_store": str(prefix / "backups"),
        "custode_systemd_dir": str(prefix / "systemd"),
        "custode_roots": [str(prefix / "git")],
        "custode_environment": {"AWS_REGION": "eu-west-1"},
        "custode_config": {
            "monitoring": {"listen": ":9877"},
            "maintenance": {"cpu_share": 0.5},
            "discovery": {"exclude": ["**/node_modules"], "follow_symlinks": False},
            "alerting": {
                "alertmanagers": ["http://alertmanager:9093"],
                "rules": [
                    {
                        "name": "CustodeBackupStale",
                        "expr": "time() - custode_backup_last_success_timestamp_seconds > 93600",
                        "for": "10m",
                        "severity": "critical",
                        "labels": {"team": "git"},
                        "annotations": {"summary": 'No "backup" for {{ $value }}'},
                    }
                ],
            },
        },
    }
    playbook = tmp_path / "playbook.yml"
    play = {
        "name": "custode into a scratch prefix",
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "vars": {"ansible_python_interpreter": sys.executable},
        "roles": [{"role": "custode", "vars": variables}],
    }
    # JSON is YAML; {{ $value }} is custode's annotation syntax, not Ansible's: mark it
    # !unsafe as the role's README says
    summary = json.dumps(
        variables["custode_config"]["alerting"]["rules"][0]["annotations"]["summary"]
    )
    playbook.write_text(json.dumps([play]).replace(summary, f"!unsafe {summary}"))
    return playbook, prefix


def test_ansible_syntax_check(tmp_path: Path) -> None:
    playbook_bin = tool("ansible-playbook", "ansible-core")
    playbook, _ = _scratch_playbook(tmp_path)
    for inventory, book in (
        (DEPLOY / "ansible" / "inventory.example", DEPLOY / "ansible" / "site.yml"),
        (Path("localhost,"), playbook),
    ):
        result = subprocess.run(
            [playbook_bin, "--syntax-check", "-i", str(inventory), str(book)],
            capture_output=True,
            text=True,
            env=_ansible_env(tmp_path),
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_ansible_role_installs_into_a_prefix(tmp_path: Path) -> None:
    playbook_bin = tool("ansible-playbook", "ansible-core")
    playbook, prefix = _scratch_playbook(tmp_path)
    result = subprocess.run(
        [playbook_bin, "-i", "localhost,", str(playbook)],
        capture_output=True,
        text=True,
        env=_ansible_env(tmp_path),
        timeout=300,  # pip installs custode and its dependencies into a fresh venv
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]

    custode = prefix / "venv" / "bin" / "custode"
    version = subprocess.run(
        [str(custode), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("custode, version ")

    config_file = prefix / "etc" / "config.toml"
    assert config_file.stat().st_mode & 0o777 == 0o640
    config = tomllib.loads(config_file.read_text())
    assert config["roots"] == [str(prefix / "git")]
    assert config["state"] == {"directory": str(prefix / "state")}
    assert config["backup"] == {
        "store": str(prefix / "backups"),
        "identity": str(prefix / "state" / "identity.txt"),
    }
    assert config["trace2"] == {"socket": "/run/custode/trace2.sock"}
    assert config["schedule"] == {"cycle": ""}  # the timer runs the cycle, not serve
    assert config["monitoring"] == {"listen": ":9877"}
    assert config["maintenance"] == {"cpu_share": 0.5}
    assert config["discovery"] == {"exclude": ["**/node_modules"], "follow_symlinks": False}
    assert config["alerting"]["alertmanagers"] == ["http://alertmanager:9093"]
    (rule,) = config["alerting"]["rules"]
    assert rule["labels"] == {"team": "git"}
    assert rule["annotations"] == {"summary": 'No "backup" for {{ $value }}'}
    # custode itself accepts it (the role validated it the same way before installing it)
    doctor = subprocess.run(
        [str(custode), "--config", str(config_file), "doctor"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert doctor.returncode == 0, doctor.stderr

    env_file = prefix / "etc" / "environment"
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert f"CUSTODE_CONFIG={config_file}\n" in env_file.read_text()
    assert 'AWS_REGION="eu-west-1"\n' in env_file.read_text()
    for directory in ("state", "backups"):
        assert (prefix / directory).stat().st_mode & 0o777 == 0o700

    units = prefix / "systemd"
    for name in UNIT_NAMES:
        assert (units / name).is_file(), name
    for name, command in (("custode-serve.service", "serve"), ("custode-run.service", "run")):
        unit = parse_unit((units / name).read_text())
        assert shlex.split(one(unit, "Service", "ExecStart")) == [str(custode), command]
        assert one(unit, "Service", "ReadWritePaths") == (
            f"-{prefix / 'git'} -{prefix / 'backups'} -{prefix / 'state'}"
        )
        assert one(unit, "Service", "EnvironmentFile") == f"-{env_file}"
        assert environment(unit)["CUSTODE_CONFIG"] == str(config_file)
