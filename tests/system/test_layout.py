"""The package tree's rules that import-linter's contracts do not state: no import cycles
(imports inside functions count; only ``TYPE_CHECKING`` imports are exempt), a small face
(at most eight modules directly in ``src/custode/``), and every third-party module the
package imports declared directly in pyproject.toml. Each check is a helper, tested on a
synthetic input that breaks it, then run on the real tree."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping
from importlib.metadata import packages_distributions
from pathlib import Path

import grimp
import pytest

import custode
from fixtures.paths import PROJECT

TOP = PROJECT
PACKAGE = Path(custode.__file__).resolve().parent
MAX_TOP_LEVEL_MODULES = 8
DEVELOPMENT_EXTRAS = {"test"}  # what a checkout needs to develop, not what custode needs to run


# -- the helpers --------------------------------------------------------------------------


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) for each group of modules that import each other."""
    modules = sorted(graph.modules)
    imports = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in imports.get(module, []):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1 or module in imports.get(module, []):
                groups.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(modules) + 100))
    for module in modules:
        if module not in index:
            visit(module)
    cycles = []
    for group in sorted(groups):
        first = group[0]
        if first in imports[first]:
            cycles.append([first, first])
            continue
        back = min(  # within the group every module leads back to first
            (graph.find_shortest_chain(importer=m, imported=first) or () for m in imports[first]
             if m in group),
            key=len,
        )  # fmt: skip
        cycles.append([first, *back])
    return cycles


def top_level_modules(package: Path) -> list[str]:
    """The modules directly in ``package`` (not in its subpackages)."""
    return sorted(p.stem for p in package.glob("*.py"))


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _distribution(requirement: str) -> str:
    """The distribution a requirement names: ``Jinja2>=3.1`` and ``custode[s3]`` alike."""
    match = re.match(r"\s*([A-Za-z0-9._-]+)", requirement)
    assert match, requirement
    return _normalise(match.group(1))


def declared_distributions(pyproject: Mapping[str, object]) -> set[str]:
    """The distributions pyproject declares for running custode: its dependencies and
    every extra a user can install (not the development extras)."""
    project = pyproject["project"]
    assert isinstance(project, dict)
    requirements = list(project.get("dependencies", []))
    for extra, items in project.get("optional-dependencies", {}).items():
        if extra not in DEVELOPMENT_EXTRAS:
            requirements += items
    return {_distribution(r) for r in requirements} - {_normalise(str(project["name"]))}


def undeclared_imports(
    imported: Iterable[str], declared: set[str], distributions: Mapping[str, list[str]]
) -> dict[str, str]:
    """Each third-party top-level module in ``imported`` whose distribution is not in
    ``declared``, and why: {module: problem}."""
    problems = {}
    for module in sorted(set(imported)):
        if module in sys.stdlib_module_names or module == "__future__":
            continue
        names = distributions.get(module)
        if not names:
            problems[module] = "no installed distribution provides it"
        elif not declared & {_normalise(n) for n in names}:
            problems[module] = f"comes from {', '.join(sorted(set(names)))}, not declared"
    return problems


# -- the helpers catch what they should ----------------------------------------------------


def _graph(*imports: tuple[str, str]) -> grimp.ImportGraph:
    graph = grimp.ImportGraph()
    for importer, imported in imports:
        graph.add_import(importer=importer, imported=imported)
    return graph


def test_import_cycles_finds_each_cycle_and_reports_its_path() -> None:
    graph = _graph(
        ("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"),  # a three-module cycle
        ("p.c", "p.d"), ("p.d", "p.e"),  # not part of it
        ("p.x", "p.y"), ("p.y", "p.x"),  # a second, separate cycle
        ("p.s", "p.s"),  # a module importing itself
    )  # fmt: skip
    assert import_cycles(graph) == [["p.a", "p.b", "p.c", "p.a"], ["p.s", "p.s"],
                                    ["p.x", "p.y", "p.x"]]  # fmt: skip
    assert import_cycles(_graph(("p.a", "p.b"), ("p.b", "p.c"), ("p.a", "p.c"))) == []


def test_top_level_modules_counts_only_the_package_directory(tmp_path: Path) -> None:
    for name in ("__init__", "errors", "b"):
        (tmp_path / f"{name}.py").touch()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inner.py").touch()
    (tmp_path / "notes.txt").touch()
    assert top_level_modules(tmp_path) == ["__init__", "b", "errors"]


def test_undeclared_imports_names_the_module_and_its_distribution() -> None:
    pyproject = {"project": {
        "name": "custode",
        "dependencies": ["Jinja2>=3.1", "PyYAML>=6 ; python_version >= '3'"],
        "optional-dependencies": {"s3": ["boto3>=1.35"], "test": ["custode[s3]", "pytest"]},
    }}  # fmt: skip
    declared = declared_distributions(pyproject)
    assert declared == {"jinja2", "pyyaml", "boto3"}
    dists = {"jinja2": ["Jinja2"], "markupsafe": ["MarkupSafe"], "yaml": ["PyYAML"],
             "boto3": ["boto3"], "pytest": ["pytest"]}  # fmt: skip
    imported = ["os", "__future__", "jinja2", "yaml", "boto3", "markupsafe", "pytest", "gone"]
    assert undeclared_imports(imported, declared, dists) == {
        "gone": "no installed distribution provides it",
        "markupsafe": "comes from MarkupSafe, not declared",
        "pytest": "comes from pytest, not declared",  # a test tool is not a dependency
    }


# -- the tree -----------------------------------------------------------------------------


# No cache: grimp keeps one file of modification times for all its graphs, so a graph built
# with other options after an edit can be read back stale.


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("custode", exclude_type_checking_imports=True, cache_dir=None)


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    cycles = import_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_at_most_eight_modules_at_the_top_of_the_package() -> None:
    modules = top_level_modules(PACKAGE)
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, (
        f"{len(modules)} modules directly in src/custode/ ({', '.join(modules)}); at most "
        f"{MAX_TOP_LEVEL_MODULES}: move the new one into the package it belongs to"
    )


def test_every_third_party_import_is_declared_directly() -> None:
    """Imported but only installed as someone else's dependency is not declared: the
    other package may drop it in any release."""
    graph = grimp.build_graph("custode", include_external_packages=True, cache_dir=None)
    imported = {m for m in graph.modules if m.partition(".")[0] != "custode"}
    declared = declared_distributions(tomllib.loads((TOP / "pyproject.toml").read_text()))
    problems = undeclared_imports(imported, declared, packages_distributions())
    assert not problems, "; ".join(
        f"{module} ({problem}): add it to pyproject.toml's dependencies or an extra"
        for module, problem in problems.items()
    )


@pytest.mark.parametrize("module", ["custode.config.model", "custode.cli"])
def test_reading_the_config_and_starting_the_cli_load_no_domain_library(module: str) -> None:
    """Every command reads the config: it must not drag in what only some commands use
    (the exporter's prometheus_client, serve's croniter, S3's boto3, the report's Jinja2)."""
    heavy = ("prometheus_client", "croniter", "boto3", "botocore", "jinja2")
    code = f"import sys, {module}; print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [], f"importing {module} loads {out.stdout.strip()}"
