"""Alert rules: the ``[alerting]`` config section, the shipped rules and the small expression
language custode evaluates itself (custode cannot run PromQL).

Every expression is valid PromQL with the same meaning, so the rules can be written as a
Prometheus rules file (``custode rules``, ``custode.monitoring.rulesfile``; the shipped
``deploy/prometheus/custode-rules.yml`` is generated from ``DEFAULT_RULES``). The subset,
over the samples of one refresh::

    SELECTOR OP NUMBER            custode_filesystem_used_ratio > 0.7
    time() - SELECTOR OP NUMBER   time() - custode_backup_last_success_timestamp_seconds > 93600
    absent(SELECTOR)              absent(custode_repository_integrity_ok{repository="web"})

    SELECTOR = METRIC or METRIC{label="v", label!="v", label=~"re", label!~"re"}
    OP       = > >= < <= == !=

A comparison yields every matching series whose value (or age, with ``time() -``) passes,
as PromQL's filtering comparison does; ``absent`` yields one series (labels: the selector's
``=`` matchers) when nothing matches. Regular expressions are anchored at both ends as in
PromQL, but are Python's ``re`` (RE2 and ``re`` agree on ordinary patterns). A missing label
compares as "". Annotations may use ``{{ $labels.NAME }}`` and ``{{ $value }}``, optionally
piped through ``humanize``, ``humanize1024``, ``humanizeDuration`` or ``humanizePercentage``
(Prometheus's template functions, same output); anything else in ``{{ }}`` is an error.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias
from urllib.parse import urlsplit

from pydantic import ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator

from custode.config.types import Duration, Section

if TYPE_CHECKING:  # only a type here: reading the config loads no prometheus_client
    from prometheus_client.samples import Sample

SeriesIndex: TypeAlias = "Mapping[str, Sequence[Sample]]"  # a string: Sample is a type only
"""Samples by sample name (``foo_total``, ``foo_bucket`` are names of their own)."""

_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<number>[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[iI]nf|NaN)(?![a-zA-Z0-9_:]))
    | (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`[^`]*`)
    | (?P<op>==|!=|>=|<=|=~|!~|[=<>(){},\[\]+*/^%-])
    )""",
    re.VERBOSE,
)
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt,
    "<=": operator.le, "==": operator.eq, "!=": operator.ne,
}  # fmt: skip
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'"}


class ExpressionError(ValueError):
    """An expression outside the subset; the message says where and what was expected."""


@dataclass(frozen=True)
class Matcher:
    label: str
    op: Literal["=", "!=", "=~", "!~"]
    value: str

    def matches(self, labels: Mapping[str, str]) -> bool:
        got = labels.get(self.label, "")
        if self.op in ("=", "!="):
            return (got == self.value) == (self.op == "=")
        return (re.fullmatch(self.value, got) is not None) == (self.op == "=~")


@dataclass(frozen=True)
class Expression:
    """A parsed rule expression; ``evaluate`` gives (series labels, value) per result."""

    text: str
    metric: str
    matchers: tuple[Matcher, ...]
    kind: Literal["compare", "age", "absent"]
    op: str = ""
    threshold: float = 0.0
    metric_at: int = 0  # where ``metric`` starts in ``text``

    def with_metric(self, metric: str) -> str:
        """The expression's text reading ``metric`` instead (the rest unchanged)."""
        end = self.metric_at + len(self.metric)
        return self.text[: self.metric_at] + metric + self.text[end:]

    def evaluate(self, series: SeriesIndex, now: float) -> list[tuple[dict[str, str], float]]:
        found = [
            s
            for s in series.get(self.metric, ())
            if all(m.matches(s.labels) for m in self.matchers)
        ]
        if self.kind == "absent":
            if found:
                return []
            return [({m.label: m.value for m in self.matchers if m.op == "="}, 1.0)]
        compare = _COMPARE[self.op]
        out = []
        for s in found:
            value = now - float(s.value) if self.kind == "age" else float(s.value)
            if compare(value, self.threshold):
                out.append((dict(s.labels), value))
        return out


def parse_expression(text: str) -> Expression:
    """Parse ``text`` (see the module docstring) or raise ExpressionError saying where."""
    return _Parser(text).expression()


_SUBSET = "custode evaluates SELECTOR OP NUMBER, time() - SELECTOR OP NUMBER, absent(SELECTOR)"


class _Parser:
    def __init__(self, text: str) -> None:
        self.text, self.tokens, pos = text, [], 0
        while pos < len(text.rstrip()):
            m = _TOKEN.match(text, pos)
            if not m or m.lastgroup is None:  # reported when the parser gets there
                self.tokens.append(("unknown", text[pos:].strip()[:12], pos + 1))
                break
            self.tokens.append((m.lastgroup, m.group(m.lastgroup), m.start(m.lastgroup) + 1))
            pos = m.end()
        else:
            self.tokens.append(("end", "", len(text) + 1))
        self.i = 0

    def peek(self, kind: str, value: str, ahead: int = 0) -> bool:
        tok = self.tokens[min(self.i + ahead, len(self.tokens) - 1)]
        return tok[0] == kind and tok[1] == value

    def take(self, kind: str, value: str | None = None, what: str = "") -> str:
        tok = self.tokens[self.i]
        if tok[0] != kind or (value is not None and tok[1] != value):
            shown = "the end" if tok[0] == "end" else repr(tok[1])
            raise ExpressionError(
                f"expected {what or value or kind} at column {tok[2]}, found {shown}"
            )
        self.i = min(self.i + 1, len(self.tokens) - 1)
        return tok[1]

    def expression(self) -> Expression:
        kind: Literal["compare", "age", "absent"] = "compare"
        if self.tokens[0][0] == "name" and self.peek("op", "(", 1):
            function = self.take("name")
            self.take("op", "(")
            if function == "time":
                self.take("op", ")")
                self.take("op", "-", what="'-' after time()")
                kind = "age"
            elif function == "absent":
                kind = "absent"
            else:
                raise ExpressionError(f"function {function}() is not supported; {_SUBSET}")
        metric_at = self.tokens[self.i][2] - 1
        metric = self.take("name", what="a metric name")
        if self.peek("op", "("):
            raise ExpressionError(f"function {metric}() is not supported here; {_SUBSET}")
        matchers = self.matchers()
        if kind == "absent":
            self.take("op", ")")
            self.take("end", what="the end after absent(...)")
            return Expression(self.text, metric, matchers, kind, metric_at=metric_at)
        op = self.take("op", what="a comparison (> >= < <= == !=)")
        if op not in _COMPARE:
            raise ExpressionError(
                f"expected a comparison (> >= < <= == !=), found {op!r}; " + _SUBSET
            )
        threshold = float(self.take("number", what="a number"))
        self.take("end", what=f"the end of the expression ({_SUBSET})")
        return Expression(self.text, metric, matchers, kind, op, threshold, metric_at)

    def matchers(self) -> tuple[Matcher, ...]:
        out: list[Matcher] = []
        if not self.peek("op", "{"):
            return ()
        self.take("op")
        while not self.peek("op", "}"):
            label = self.take("name", what="a label name")
            if not _LABEL.fullmatch(label):
                raise ExpressionError(f"{label!r} is not a label name")
            op = self.take("op", what="=, !=, =~ or !~")
            if op not in ("=", "!=", "=~", "!~"):
                raise ExpressionError(f"expected =, !=, =~ or !~ after {label}, found {op!r}")
            value = _unquote(self.take("string", what="a quoted string"))
            if op in ("=~", "!~"):
                try:
                    re.compile(value)
                except re.error as exc:
                    raise ExpressionError(f"bad regular expression {value!r}: {exc}") from None
            out.append(Matcher(label, op, value))  # type: ignore[arg-type]
            if not self.peek("op", "}"):
                self.take("op", ",", what="',' or '}'")
        self.take("op", "}")
        return tuple(out)


def _unquote(token: str) -> str:
    if token[0] == "`":
        return token[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), token[1:-1])


# -- annotation templates ----------------------------------------------------------------

_PLACEHOLDER = re.compile(
    r"\{\{-?\s*(?:\$labels\.(?P<label>[a-zA-Z_][a-zA-Z0-9_]*)|(?P<value>\$value))"
    r"\s*(?:\|\s*(?P<fn>[a-zA-Z0-9]+)\s*)?-?\}\}"
)


def _si(v: float, prefixes: Sequence[str], base: float) -> str:
    if v == 0 or not math.isfinite(v):
        return f"{v:.4g}"
    prefix = ""
    if abs(v) >= 1:
        for p in prefixes:
            if abs(v) < base:
                break
            prefix, v = p, v / base
    elif base == 1000:
        for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
            if abs(v) >= 1:
                break
            prefix, v = p, v * base
    return f"{v:.4g}{prefix}"


def _duration(v: float) -> str:
    if not math.isfinite(v) or v == 0:
        return f"{v:.4g}s"
    if abs(v) < 1:
        return _si(v, (), 1000) + "s"
    sign, n = ("-" if v < 0 else ""), int(abs(v))
    d, h, m, s = n // 86400, n // 3600 % 24, n // 60 % 60, n % 60
    if d:
        return f"{sign}{d}d {h}h {m}m {s}s"
    if h:
        return f"{sign}{h}h {m}m {s}s"
    if m:
        return f"{sign}{m}m {s}s"
    return f"{sign}{abs(v):.4g}s"


def _plain(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return str(int(v)) if v.is_integer() and abs(v) < 1e21 else repr(v)


_FUNCTIONS: dict[str, Callable[[float], str]] = {
    "humanize": lambda v: _si(v, ("k", "M", "G", "T", "P", "E", "Z", "Y"), 1000),
    "humanize1024": lambda v: _si(v, ("ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"), 1024),
    "humanizeDuration": _duration,
    "humanizePercentage": lambda v: f"{v * 100:.4g}%",
}


def check_template(text: str) -> None:
    """Raise ValueError for ``{{ }}`` constructs ``render`` does not know."""
    rest = _PLACEHOLDER.sub("", text)
    if "{{" in rest or "}}" in rest:
        bad = rest[rest.find("{{") :][:40] if "{{" in rest else "}}"
        raise ValueError(
            f"unsupported template {bad!r}; use {{{{ $labels.NAME }}}} or "
            "{{ $value }}, optionally | humanize, humanizeDuration, ..."
        )
    for m in _PLACEHOLDER.finditer(text):
        if m["fn"] and m["fn"] not in _FUNCTIONS:
            raise ValueError(
                f"unknown template function {m['fn']!r}; known: " + ", ".join(_FUNCTIONS)
            )


def render(text: str, labels: Mapping[str, str], value: float) -> str:
    def one(m: re.Match[str]) -> str:
        if m["label"]:
            return labels.get(m["label"], "")
        return _FUNCTIONS[m["fn"]](value) if m["fn"] else _plain(value)

    return _PLACEHOLDER.sub(one, text)


# -- config ------------------------------------------------------------------------------


class AlertRule(Section):
    """One rule. ``for`` is a Python keyword, so the field is ``for_`` with the alias."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$", description="The alertname label.")
    expr: str = Field(description="The condition, in custode's PromQL subset (see the docs).")
    for_: Duration = Field(
        default=0.0,
        alias="for",
        description="How long the condition must hold for an instance before it fires.",
    )
    severity: str = Field(default="warning", min_length=1, description="The severity label.")
    labels: dict[str, str] = Field(default={}, description="Extra labels.")
    annotations: dict[str, str] = Field(
        default={}, description="summary, description, ...; may use templates."
    )
    _expression: Expression = PrivateAttr()

    @field_validator("expr")
    @classmethod
    def _parses(cls, expr: str, info: ValidationInfo) -> str:
        try:
            parse_expression(expr)
        except ExpressionError as exc:
            raise ValueError(f"rule {info.data.get('name', '?')!r}: {exc}") from None
        return expr

    @field_validator("labels")
    @classmethod
    def _label_names(cls, labels: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        for key in labels:
            if not _LABEL.fullmatch(key) or key in ("alertname", "severity"):
                raise ValueError(
                    f"rule {info.data.get('name', '?')!r}: {key!r} cannot be "
                    "a label (alertname and severity have fields of their own)"
                )
        return labels

    @field_validator("annotations")
    @classmethod
    def _templates(cls, annotations: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        for key, text in annotations.items():
            try:
                check_template(text)
            except ValueError as exc:
                raise ValueError(
                    f"rule {info.data.get('name', '?')!r} annotation {key}: {exc}"
                ) from None
        return annotations

    def model_post_init(self, context: Any, /) -> None:
        self._expression = parse_expression(self.expr)

    @property
    def expression(self) -> Expression:
        return self._expression


_WHERE = "{{ $labels.repository }} (root {{ $labels.root }})"
# The shipped rules, also in deploy/prometheus/custode-rules.yml: regenerate that file
# (custode rules --shipped --output ...) after changing them; a test says when it is stale.
_SHIPPED = (  # name, expr, for, severity, summary, description
    ("CustodeIntegrityCheckFailed", "custode_repository_integrity_ok == 0", 0, "critical",
     f"Integrity check failed for {_WHERE}",
     "The last custode check found damage; see custode check and restore from a backup."),
    ("CustodeRepositoryUnhealthy", "custode_repository_healthy == 0", 900, "warning",
     f"Repository {_WHERE} is unhealthy",
     "custode status shows why; custode maintain fixes most causes."),
    ("CustodeBackupStale",
     "time() - custode_repository_last_backup_success_timestamp_seconds > 93600", 0,
     "critical", f"No backup of {_WHERE} for {{{{ $value | humanizeDuration }}}}",
     "The last successful backup is older than 26 hours; see custode backup."),
    ("CustodeMaintenanceFailing", "custode_repository_last_maintenance_failed == 1", 0,
     "warning", f"Maintenance of {_WHERE} failed",
     "The latest maintenance run of this repository failed; see custode logs."),
    ("CustodeFilesystemFilling", "custode_filesystem_used_ratio > 0.7", 900, "warning",
     "Filesystem {{ $labels.mountpoint }} is {{ $value | humanizePercentage }} full",
     "The filesystem holding root {{ $labels.root }} is more than 70% full."),
    ("CustodeLooseObjectsPilingUp", "custode_repository_loose_objects > 10000", 3600,
     "warning", f"{{{{ $value }}}} loose objects in {_WHERE}",
     "Maintenance is not keeping up; see custode maintain."),
    ("CustodeGitOperationSlow", 'custode_git_operation_p95_seconds{source="probe"} > 2', 1800,
     "warning", "git {{ $labels.operation }} p95 is {{ $value | humanizeDuration }}",
     "custode's probes of git {{ $labels.operation }} are slow; check the storage."),
)  # fmt: skip

# Not validated here (model_construct, as every default): importing the config builds no
# validator. A test keeps each rule equal to the same rule validated.
DEFAULT_RULES: tuple[AlertRule, ...] = tuple(
    AlertRule.model_construct(name=name, expr=expr, for_=float(for_), severity=severity,
                              annotations={"summary": summary, "description": description})
    for name, expr, for_, severity, summary, description in _SHIPPED
)  # fmt: skip


def _http_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL")
    return url


class AlertingConfig(Section):
    rules: list[AlertRule] = Field(
        default_factory=lambda: list(DEFAULT_RULES),
        description="Alert rules evaluated by custode serve at every refresh; setting this "
        "replaces the shipped rules (integrity, health, backup age, maintenance, filesystem, "
        "loose objects, git latency).",
    )
    alertmanagers: list[str] = Field(
        default=[],
        description="Alertmanager base URLs (http://host:9093); alerts go to each one's "
        "/api/v2/alerts, renewed at every evaluation while firing.",
    )
    webhook: str | None = Field(
        default=None,
        description="A URL that receives a JSON list of alerts (Alertmanager's format) when "
        "alerts start firing or resolve.",
    )
    lease_factor: float = Field(
        default=4.0,
        ge=1.0,
        description="A firing alert's endsAt is this many evaluation intervals ahead, so "
        "Alertmanager resolves it by itself if custode stops.",
    )
    queue_size: int = Field(
        default=1000,
        ge=1,
        description="Alerts kept per destination while it is unreachable (oldest dropped).",
    )
    timeout: Duration = Field(default=10.0, description="Timeout of one notification request.")
    generator_url: str | None = Field(
        default=None, description="A link sent with every alert (e.g. your Grafana dashboard)."
    )

    @field_validator("alertmanagers")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        return [_http_url(u) for u in urls]

    @field_validator("webhook", "generator_url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        return None if url is None else _http_url(url)

    @field_validator("rules")
    @classmethod
    def _unique(cls, rules: list[AlertRule]) -> list[AlertRule]:
        names = [r.name for r in rules]
        if dup := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"rule names must be unique; repeated: {', '.join(dup)}")
        return rules
