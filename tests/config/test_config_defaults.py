"""The defaults a run without a config file gets, and the sections a file leaves out, are
made without validation (``model_construct``, as pydantic makes every default) so that
start-up builds no validator: they must be exactly what validating them gives, down to
the type of each value (900.0, not 900) and which fields count as set."""

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from custode.config.alerting import _SHIPPED, DEFAULT_RULES, AlertRule
from custode.config.model import Config, load_config


def _same(made: Any, validated: Any, where: str = "config") -> None:
    """Equal, of the same types, with the same fields set, all the way down."""
    assert type(made) is type(validated), where
    assert repr(made) == repr(validated), where
    if isinstance(made, BaseModel):
        assert made == validated, where
        assert made.model_fields_set == validated.model_fields_set, where
        assert made.__pydantic_private__ == validated.__pydantic_private__, where
        for name in type(made).model_fields:
            _same(getattr(made, name), getattr(validated, name), f"{where}.{name}")
    elif isinstance(made, list | tuple):
        for i, (a, b) in enumerate(zip(made, validated, strict=True)):
            _same(a, b, f"{where}[{i}]")


def test_the_defaults_without_a_file_are_the_validated_defaults(tmp_path: Path) -> None:
    defaults = load_config(tmp_path / "none.toml", required=False)
    _same(defaults, Config())
    _same(defaults, Config.model_validate({}))
    # every default value through every validator (field and model validators, the rule
    # expressions, the cron expressions): each passes unchanged
    everything = Config.model_validate(defaults.model_dump(by_alias=True))
    assert everything == defaults
    assert repr(everything) == repr(defaults)


def test_a_section_the_file_leaves_out_is_the_validated_defaults(tmp_path: Path) -> None:
    path = tmp_path / "custode.toml"
    path.write_text("[backup]\njobs = 2\n")
    config = load_config(path, required=True)
    assert config.backup.jobs == 2
    for name, field in Config.model_fields.items():
        section = getattr(config, name)
        if name not in ("roots", "backup"):
            _same(section, field.annotation.model_validate({}), name)  # type: ignore[union-attr]


def test_the_shipped_rules_are_the_same_rules_validated() -> None:
    assert len(DEFAULT_RULES) == len(_SHIPPED)
    for rule, (name, expr, for_, severity, summary, description) in zip(
        DEFAULT_RULES, _SHIPPED, strict=True
    ):
        validated = AlertRule(
            name=name, expr=expr, for_=for_, severity=severity,
            annotations={"summary": summary, "description": description},
        )  # fmt: skip
        _same(rule, validated, name)
        assert rule.expression == validated.expression
