"""The README's quick-start commands are the ones CI runs."""

import re

from fixtures.paths import PROJECT

TOP = PROJECT


def _commands() -> list[str]:
    readme = (TOP / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", quick)


def test_readme_has_two_quick_start_commands_near_the_top() -> None:
    readme = (TOP / "README.md").read_text()
    assert readme.index("## Quick start") < 1500
    run, tests = _commands()
    assert "custode run" in run
    assert "pytest" in tests


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (TOP / ".ci" / "run").read_text().splitlines()
    assert _commands()[1] in ci
