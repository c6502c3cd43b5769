"""pyproject.toml: every runtime dependency is imported by the shipped packages (and every
third-party import is declared), and the typing markers and schemas ship as package data."""

from __future__ import annotations

import ast
import re
import sys
from importlib import resources
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("hawq_search", "cost_models", "searches")
# Distribution name -> import name, where they differ.
IMPORT_NAMES = {"pyyaml": "yaml", "psycopg2-binary": "psycopg2", "pillow": "PIL"}


@pytest.fixture(scope="module")
def project() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def dist_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert match, requirement
    return match.group(0).lower().replace("_", "-")


def import_name(requirement: str) -> str:
    name = dist_name(requirement)
    return IMPORT_NAMES.get(name, name.replace("-", "_"))


def imported_modules() -> set[str]:
    """Top-level modules named by absolute imports anywhere in the shipped packages."""
    found: set[str] = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                if isinstance(node, ast.Import):
                    found.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return found


def test_every_runtime_dependency_is_imported(project):
    imported = imported_modules()
    unused = [r for r in project["project"]["dependencies"] if import_name(r) not in imported]
    assert not unused, f"runtime dependencies nothing in {PACKAGES} imports: {unused}"
    assert "jsonschema" in {import_name(r) for r in project["project"]["dependencies"]}


def test_every_third_party_import_is_declared(project):
    extras = project["project"]["optional-dependencies"]
    declared = {import_name(r) for r in project["project"]["dependencies"]}
    declared |= {import_name(r) for reqs in extras.values() for r in reqs}
    third_party = imported_modules() - set(sys.stdlib_module_names) - set(PACKAGES)
    assert not third_party - declared, f"imported but not declared: {third_party - declared}"


def test_extras(project):
    extras = project["project"]["optional-dependencies"]
    assert extras["postgres"] == ["psycopg[binary]>=3.1"]  # driver of postgresql+psycopg://
    assert {dist_name(r) for r in extras["test"]} >= {
        "pytest",
        "hypothesis",
        "ruff",
        "psycopg",
    }
    assert extras["all"] == ["hawq-search[postgres]"]
    deps = {dist_name(r) for r in project["project"]["dependencies"]}
    assert {"optuna", "matplotlib"} <= deps  # searches and pareto plots are core features


def test_metadata(project):
    meta = project["project"]
    assert "Typing :: Typed" in meta["classifiers"]
    assert "License :: OSI Approved :: Apache Software License" in meta["classifiers"]
    assert meta["keywords"]
    urls = meta["urls"]
    assert urls["Homepage"] == urls["Repository"] == "https://github.com/hawq-search/hawq-search"
    assert urls["Issues"] == "https://github.com/hawq-search/hawq-search/issues"
    assert set(urls) == {"Homepage", "Repository", "Issues", "Documentation"}


def test_typing_markers_and_schemas_are_package_data(project):
    package_data = project["tool"]["setuptools"]["package-data"]
    for package in PACKAGES:
        assert "py.typed" in package_data[package]
        assert resources.files(package).joinpath("py.typed").is_file()
    assert "*.schema.json" in package_data["hawq_search.schemas"]
    assert resources.files("hawq_search.schemas").joinpath("plan.schema.json").is_file()
