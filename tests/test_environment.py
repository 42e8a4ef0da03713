"""Packaging checks: environment.yml matches pyproject.toml, and rtkit's __all__.

Markers need no test here: pytest runs with --strict-markers (pyproject.toml's
addopts), so an undeclared marker already fails collection.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet

import rtkit

ROOT = Path(__file__).resolve().parent.parent

CONDA_TO_PYPI = {"playwright-python": "playwright"}
"""conda-forge package names that differ from the PyPI name of the same package."""

CONDA_ONLY = frozenset({"python", "pip"})
"""Packages environment.yml needs for itself, which pyproject.toml does not list."""

CONDA_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?P<spec>.*)$")

MODULES = [
    "rtkit",
    *(f"rtkit.{module.name}" for module in pkgutil.iter_modules(rtkit.__path__)),
]
"""rtkit and each of its modules, whose __all__ lists are checked."""


def normalize(name: str) -> str:
    """Return a package name lowercased, with runs of -, _ and . as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def load_pyproject() -> dict:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def load_environment() -> dict:
    with (ROOT / "environment.yml").open(encoding="utf-8") as file:
        return yaml.safe_load(file)


def pyproject_requirements() -> dict[str, Requirement]:
    """Return the dependencies and the test extra of pyproject.toml, by name."""
    project = load_pyproject()["project"]
    lines = project["dependencies"] + project["optional-dependencies"]["test"]
    requirements = [Requirement(line) for line in lines]
    return {normalize(requirement.name): requirement for requirement in requirements}


def environment_specs() -> dict[str, tuple[str, SpecifierSet]]:
    """Return the conda and pip packages of environment.yml, by PyPI name.

    Each value is the line as written and its version bounds. Local pip
    entries such as ``-e .`` are left out.
    """
    specs: dict[str, tuple[str, SpecifierSet]] = {}
    for entry in load_environment()["dependencies"]:
        lines = entry["pip"] if isinstance(entry, dict) else [entry]
        for line in lines:
            if line.startswith(("-", ".")):
                continue
            match = CONDA_SPEC.match(line)
            assert match, f"environment.yml: cannot parse dependency {line!r}"
            name = normalize(match["name"])
            name = CONDA_TO_PYPI.get(name, name)
            try:
                specifier = SpecifierSet(match["spec"].replace(" ", ""))
            except InvalidSpecifier:
                pytest.fail(f"environment.yml: invalid version bounds in {line!r}")
            assert name not in specs, f"environment.yml lists {name} twice"
            specs[name] = (line, specifier)
    return specs


def test_environment_lists_every_pyproject_package() -> None:
    environment = environment_specs()
    for name, requirement in pyproject_requirements().items():
        assert name in environment, (
            f"environment.yml lacks {name}, which pyproject.toml requires as "
            f"{str(requirement)!r}"
        )


def test_pyproject_lists_every_environment_package() -> None:
    requirements = pyproject_requirements()
    for name, (line, _) in environment_specs().items():
        if name in CONDA_ONLY:
            continue
        assert name in requirements, (
            f"pyproject.toml lacks {name}, which environment.yml lists as {line!r}"
        )


@pytest.mark.parametrize("name", sorted(pyproject_requirements()))
def test_version_bounds_match(name: str) -> None:
    requirement = pyproject_requirements()[name]
    environment = environment_specs()
    if name not in environment:
        pytest.skip(f"environment.yml lacks {name}; another test reports it")
    line, specifier = environment[name]
    assert specifier == requirement.specifier, (
        f"{name}: pyproject.toml requires {str(requirement.specifier) or 'any'}, "
        f"environment.yml has {line!r}"
    )


def test_environment_python_matches_requires_python() -> None:
    requires_python = SpecifierSet(load_pyproject()["project"]["requires-python"])
    line, specifier = environment_specs()["python"]
    assert specifier == requires_python, (
        f"environment.yml has {line!r}, pyproject.toml has "
        f"requires-python = {str(requires_python)!r}"
    )


def test_environment_installs_rtkit_editable() -> None:
    """Editable, because the server serves static/ from the checkout."""
    pip_sections = [
        entry["pip"]
        for entry in load_environment()["dependencies"]
        if isinstance(entry, dict)
    ]
    assert pip_sections, "environment.yml has no pip: section to install rtkit"
    assert "-e ." in pip_sections[0], (
        "environment.yml's pip: section must install rtkit with '-e .'"
    )


def test_environment_name_and_channel() -> None:
    environment = load_environment()
    assert environment["name"] == "rtkit"
    assert environment["channels"] == ["conda-forge"]


def all_sort_key(name: str) -> tuple[int, str]:
    """Order names as ruff's isort-style __all__ sort (RUF022) does.

    SCREAMING_SNAKE_CASE names come first, then CamelCase, then the rest.
    """
    if name.isupper():
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


@pytest.mark.parametrize("module_name", MODULES)
def test_all_is_sorted_without_duplicates(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert hasattr(module, "__all__"), f"{module_name} has no __all__"
    names = list(module.__all__)
    assert len(set(names)) == len(names), f"{module_name}.__all__ has duplicates"
    assert names == sorted(names, key=all_sort_key), (
        f"{module_name}.__all__ is not sorted; expected "
        f"{sorted(names, key=all_sort_key)}"
    )


@pytest.mark.parametrize("module_name", MODULES)
def test_all_names_resolve(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert hasattr(module, "__all__"), f"{module_name} has no __all__"
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, f"{module_name}.__all__ names undefined attributes {missing}"
