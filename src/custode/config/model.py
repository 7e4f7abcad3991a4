"""The configuration model: one TOML file, every setting with a default, validated eagerly.

Precedence is flags over environment (``CUSTODE_CONFIG`` names the file) over the file
over these defaults. Errors name the file, the key path and what is wrong, and suggest
the closest key for a typo. ``render_default_config`` writes the commented default file
from this model, so the model is the single source of truth for names and defaults.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from custode.base.units import format_duration
from custode.config.alerting import AlertingConfig
from custode.config.email import EmailConfig
from custode.config.maintenance import MaintenancePolicy
from custode.config.monitoring import MonitoringConfig
from custode.config.schedule import ScheduleConfig
from custode.config.trace2 import Trace2Config
from custode.config.types import Duration, Section, is_duration
from custode.errors import ConfigError


class DiscoveryConfig(Section):
    exclude: list[str] = Field(
        default=[],
        description="Glob patterns (matched against paths relative to a root, and against "
        'directory names) that discovery skips, e.g. ["**/node_modules", "archive/*"].',
    )
    follow_symlinks: bool = Field(
        default=True,
        description="Follow symbolic links to directories (never inside a working tree); "
        "loops are detected and reported.",
    )
    max_depth: int = Field(
        default=16, ge=1, description="How many directory levels below a root to search."
    )
    descend_into_worktrees: bool = Field(
        default=True,
        description="Look for nested repositories inside working trees (not inside .git).",
    )


class GitConfig(Section):
    binary: str = Field(default="git", description="The git executable (a name on PATH or a path).")
    timeout: Duration = Field(
        default=3600.0, description="Longest a single git command may run before it is killed."
    )
    doubt_timeout: Duration = Field(
        default=60.0,
        description="Longest a git command may run on a repository custode doubts (a FIFO, "
        "a device or a huge file where git expects a small file, which git would wait on "
        "or read for ever); the lower of this and timeout applies.",
    )
    nice: int = Field(
        default=10, ge=0, le=19, description="CPU niceness for git processes custode starts."
    )
    ionice: Literal["none", "idle", "best-effort"] = Field(
        default="best-effort",
        description="I/O scheduling class for git processes: none, idle or best-effort (lowest).",
    )
    trust_repository_owner: bool = Field(
        default=True,
        description="Operate on repositories owned by another user (git's safe.directory) for "
        "the repositories under the roots. Safe because custode never lets a repository's "
        "config run a program (hooks, fsmonitor, pagers, filters are all disabled).",
    )


class StateConfig(Section):
    directory: Path | None = Field(
        default=None,
        description="Where the history database and audit log live "
        "(default: $XDG_STATE_HOME/custode).",
    )
    keep_history: Duration = Field(
        default=90 * 86400.0,
        description="How long the history database keeps runs and observations (each "
        "repository's latest observation is always kept).",
    )
    busy_timeout: Duration = Field(
        default=30.0,
        description="How long custode waits for another process holding the history "
        "database before it gives up on that step (the backup still runs; the step that "
        "needed the history is reported).",
    )


class BackupConfig(Section):
    store: str | None = Field(
        default=None,
        description="Where backups go: a directory, a file:// URL, or s3://BUCKET/PREFIX "
        "(default: $XDG_DATA_HOME/custode/backups).",
    )
    recipients: list[str] = Field(
        default=[],
        description="age public keys (age1...) backups are encrypted to. The host needs no "
        "secret to back up. Default: the public key of the identity file below, which is "
        "generated on first use if it does not exist.",
    )
    identity: Path | None = Field(
        default=None,
        description="The age identity (secret key) file used to restore and verify "
        "(default: $XDG_CONFIG_HOME/custode/identity.txt). Keep a copy somewhere else.",
    )
    host: str | None = Field(
        default=None,
        description="The name of this host in the store, so several hosts can share one "
        "(default: the host name).",
    )
    full_every: int = Field(
        default=30, ge=1,
        description="Start a new chain with a full backup after this many incremental ones "
        "(bounds restore time).",
    )  # fmt: skip
    full_after: Duration = Field(
        default=30 * 86400.0,
        description="Start a new chain with a full backup once the chain's first is this old.",
    )
    jobs: int = Field(
        default=0, ge=0, description="Repositories backed up or restored at once (0: one per CPU)."
    )
    scratch: Path | None = Field(
        default=None,
        description="Where bundles are written before encryption (default: "
        "$XDG_STATE_HOME/custode/scratch); needs room for the largest repository.",
    )
    s3_endpoint: str | None = Field(
        default=None,
        description="S3 endpoint URL for s3:// stores other than AWS (else AWS_ENDPOINT_URL).",
    )
    s3_region: str | None = Field(
        default=None, description="S3 region for s3:// stores (else AWS_REGION)."
    )
    keep_last: int = Field(default=0, ge=-1, description="forget: keep the last N snapshots.")
    keep_hourly: int = Field(default=0, ge=-1, description="forget: keep N hourly snapshots.")
    keep_daily: int = Field(default=14, ge=-1, description="forget: keep N daily snapshots.")
    keep_weekly: int = Field(default=8, ge=-1, description="forget: keep N weekly snapshots.")
    keep_monthly: int = Field(default=12, ge=-1, description="forget: keep N monthly snapshots.")
    keep_yearly: int = Field(default=0, ge=-1, description="forget: keep N yearly snapshots.")
    keep_within: Duration = Field(
        default=0.0, description="forget: keep every snapshot this close to the newest."
    )


class RunConfig(Section):
    drill_sample: int = Field(
        default=3, ge=0,
        description="Repositories custode run restores in its restore drill (chosen at random "
        "each night, so the whole fleet is drilled in turn); 0 skips the drill.",
    )  # fmt: skip
    report_directory: Path | None = Field(
        default=None,
        description="Where custode run writes each night's HTML report (default: "
        "$XDG_STATE_HOME/custode/reports).",
    )


# A section the file leaves out is its defaults, made as pydantic makes every default: not
# validated (model_construct), so that no validator is built for it (``Section``).
class Config(Section):
    roots: list[Path] = Field(
        default=[],
        description="Directories holding the repositories to look after. Roots given on the "
        "command line replace these.",
    )
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig.model_construct)
    git: GitConfig = Field(default_factory=GitConfig.model_construct)
    maintenance: MaintenancePolicy = Field(default_factory=MaintenancePolicy.model_construct)
    state: StateConfig = Field(default_factory=StateConfig.model_construct)
    backup: BackupConfig = Field(default_factory=BackupConfig.model_construct)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig.model_construct)
    alerting: AlertingConfig = Field(default_factory=AlertingConfig.model_construct)
    trace2: Trace2Config = Field(default_factory=Trace2Config.model_construct)
    run: RunConfig = Field(default_factory=RunConfig.model_construct)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig.model_construct)
    email: EmailConfig = Field(default_factory=EmailConfig.model_construct)


def load_config(path: Path, *, required: bool) -> Config:
    """Read and validate ``path``; a missing optional file gives the defaults."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if required:
            raise ConfigError(
                f"config file {path} does not exist; create it with 'custode init --config {path}'"
            ) from None
        return Config.model_construct()  # equal to Config() (tested), with no validator built
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; pass a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    import tomllib  # noqa: PLC0415  (only with a file: start-up of the runs without one)

    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return parse_config(data, source=str(path))


def parse_config(data: dict[str, Any], *, source: str) -> Config:
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"config file {source}: {_describe(exc)}") from None
    base = Path(source).parent
    roots = [r if r.is_absolute() else base / r for r in (p.expanduser() for p in config.roots)]
    update: dict[str, Any] = {"roots": roots}
    web = config.monitoring.web_config
    if web is not None and not web.expanduser().is_absolute():  # as the roots: beside the file
        update["monitoring"] = config.monitoring.model_copy(update={"web_config": base / web})
    return config.model_copy(update=update)


def _describe(exc: ValidationError) -> str:
    """One line for the first error: key path, what is wrong, and a suggestion for typos."""
    import difflib  # noqa: PLC0415  (only for an error: start-up)

    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        model: type[BaseModel] = Config
        for part in loc[:-1]:
            field = model.model_fields.get(part)
            ann = field.annotation if field else None
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                model = ann
        close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.6)
        hint = (
            f"; did you mean '{'.'.join([*loc[:-1], close[0]])}'?"
            if close
            else (f"; known keys here: {', '.join(model.model_fields)}")
        )
        return f"{key}: unknown key{hint}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{key}: {msg} (got {err.get('input')!r})"


def _toml_value(value: Any, duration: bool = False) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if duration and isinstance(value, float):
        return f'"{format_duration(value)}"'
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _wrap(text: str, prefix: str = "# ") -> list[str]:
    return [prefix + line for line in textwrap.wrap(text, width=86)]


def render_default_config() -> str:
    """The commented default config file: every key, its meaning and its default."""
    lines = [
        "# custode configuration. Every key is shown with its default, commented out;",
        "# uncomment and change what you need. Durations accept 90s, 30m, 2h, 14d, 2w.",
        "",
    ]
    defaults = Config()
    sections: list[tuple[str, BaseModel]] = []
    for name, field in Config.model_fields.items():
        value = getattr(defaults, name)
        if isinstance(value, BaseModel):
            sections.append((name, value))
            continue
        lines += _wrap(field.description or "")
        lines += [f"# {name} = {_toml_value(value)}", ""]
    for name, section in sections:
        lines.append(f"[{name}]")
        for key, field in type(section).model_fields.items():
            lines += _wrap(field.description or "")
            value = getattr(section, key)
            if isinstance(value, list) and value and isinstance(value[0], BaseModel):
                lines.append(f"# {key}: {len(value)} built in (see the documentation); "
                             f"setting [[{name}.{key}]] replaces them all")  # fmt: skip
                continue
            placeholder = '"/path/of/your/choice"' if "Path" in str(field.annotation) else '"..."'
            shown = placeholder if value is None else _toml_value(value, is_duration(field))
            lines.append(f"# {key} = {shown}")
        lines.append("")
    return "\n".join(lines)


def render_reference() -> str:
    """The configuration reference in Markdown (docs/configuration.md), from the model."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from custode's config model (`custode init --reference`); a test keeps",
        "this file equal to it. One TOML file: `--config FILE`, else `$CUSTODE_CONFIG`, else",
        "`$XDG_CONFIG_HOME/custode/config.toml`. Every key is optional; durations accept",
        "`90s`, `30m`, `2h`, `14d`, `2w`. `custode init` writes the file with every key",
        "commented out at its default.",
        "",
    ]
    defaults = Config()
    top: list[str] = []
    for name, field in Config.model_fields.items():
        value = getattr(defaults, name)
        if not isinstance(value, BaseModel):
            top.append(f"| `{name}` | `{_toml_value(value)}` | {field.description or ''} |")
    lines += ["## Top level", "", "| key | default | meaning |", "|---|---|---|", *top, ""]
    for name in Config.model_fields:
        section = getattr(defaults, name)
        if not isinstance(section, BaseModel):
            continue
        lines += [f"## `[{name}]`", "", "| key | default | meaning |", "|---|---|---|"]
        for key, sub in type(section).model_fields.items():
            value = getattr(section, key)
            if value is None:
                shown = "unset"
            elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
                shown = f"{len(value)} built in"
            else:
                shown = f"`{_toml_value(value, is_duration(sub))}`"
            text = (sub.description or "").replace("|", "\\|")
            lines.append(f"| `{key}` | {shown} | {text} |")
        lines.append("")
    return "\n".join(lines)
