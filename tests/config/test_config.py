import tomllib
from pathlib import Path

import pytest

from custode.config.model import Config, load_config, parse_config, render_default_config
from custode.errors import ConfigError
from fixtures.paths import PROJECT


def test_missing_optional_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(tmp_path / "none.toml", required=False) == Config()


def test_missing_required_file_names_it_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"none\.toml does not exist; create it with 'custode init"
    ):
        load_config(tmp_path / "none.toml", required=True)


def test_default_config_is_valid_toml_every_key_commented_and_loads_to_defaults(
    tmp_path: Path,
) -> None:
    text = render_default_config()
    assert all(v == {} for v in tomllib.loads(text).values())  # every key commented out
    uncommented = "\n".join(
        line[2:] if line.startswith("# ") and " = " in line else line for line in text.splitlines()
    )
    data = tomllib.loads(uncommented)
    defaults = Config()
    for name, section in data.items():  # keys unset by default show a placeholder
        for key in list(section):
            if getattr(getattr(defaults, name), key) is None:
                section.pop(key)
    assert parse_config(data, source=str(tmp_path / "c.toml")) == Config()
    for section in ("discovery", "git", "maintenance", "state", "backup"):
        assert f"[{section}]" in text
    for key in type(Config().maintenance).model_fields:
        assert f"# {key} = " in text


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "[discovery]\nexclud = []\n",
            "discovery.exclud: unknown key; did you mean 'discovery.exclude'?",
        ),
        ("rots = []\n", "rots: unknown key; did you mean 'roots'?"),
        (
            "[maintenance]\npacks_min = 0\n",
            "maintenance.packs_min: Input should be greater than or equal to 1",
        ),
        ("[git]\ntimeout = '5 parsecs'\n", "git.timeout: '5 parsecs' is not a duration"),
        ("[git]\nionice = 'fast'\n", "git.ionice: Input should be 'none', 'idle' or 'best-effort'"),
        ("[nosuch]\n", "nosuch: unknown key; known keys here: roots, discovery"),
        ("roots = 'x'\n", "roots: Input should be a valid list"),
    ],
)
def test_invalid_config_names_file_key_and_problem(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path, required=True)
    assert str(info.value).startswith(f"config file {path}: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[git\nbinary = 1\n")
    with pytest.raises(ConfigError, match=rf"config file {path} is not valid TOML: .*line 1"):
        load_config(path, required=True)


def test_durations_and_relative_roots(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        "roots = ['repos', '/abs']\n[git]\ntimeout = '30m'\n[maintenance]\nstale_lock_age = 7200\ncruft_expiration = 'never'\n"
    )
    config = load_config(path, required=True)
    assert config.roots == [tmp_path / "repos", Path("/abs")]
    assert config.git.timeout == 1800
    assert config.maintenance.stale_lock_age == 7200
    assert config.maintenance.cruft_expiration is None


def test_directory_as_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path, required=True)


def test_the_configuration_reference_is_generated_from_the_model() -> None:
    """docs/configuration.md is `custode init --reference`: regenerate it after a change."""
    from custode.config.model import render_reference

    doc = PROJECT / "docs" / "configuration.md"
    assert doc.read_text() == render_reference() + "\n", (
        "docs/configuration.md is stale: run custode init --reference > docs/configuration.md"
    )
