"""The package contract: dependencies run one way, and the bottom loads no torch.

``hawq_search.core`` (the vocabulary) imports nothing else of hawq-search; ``cost_models`` and
``searches`` import only the vocabulary and each other's public modules (``searches`` never
``cost_models``); nothing imports the CLI. Checked on the source (every import statement, also
those inside functions) and in a fresh interpreter (what really gets loaded).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("hawq_search", "cost_models", "searches")

# package -> first-party modules it may import (prefixes)
ALLOWED = {
    "hawq_search.core": ("hawq_search.core",),
    "cost_models": ("cost_models", "hawq_search.core"),
    "searches": ("searches", "hawq_search.core"),
}
# third-party modules the bottom layers may use
THIRD_PARTY_OK = {"numpy", "scipy", "yaml", "optuna"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((node.lineno, name))
    return out


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package.replace(".", "/")).rglob("*.py"))


def _is_stdlib(name: str) -> bool:
    return name.split(".")[0] in sys.stdlib_module_names or name == "__future__"


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_bottom_layers_import_only_the_vocabulary(package):
    bad = []
    for path in _files(package):
        for line, name in _imports(path):
            top = name.split(".")[0]
            if top in FIRST_PARTY:
                if not name.startswith(ALLOWED[package]):
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
            elif not _is_stdlib(name) and top not in THIRD_PARTY_OK:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports third-party {name}")
    assert not bad, "\n".join(bad)


def test_nothing_imports_the_cli():
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for package in FIRST_PARTY
        for path in _files(package)
        if "/cli/" not in str(path)
        for line, name in _imports(path)
        if name.startswith("hawq_search.cli")
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", ["searches", "cost_models", "hawq_search.core", "hawq_search"])
def test_bottom_imports_load_no_torch(module):
    code = (
        f"import sys, {module}; "
        "heavy = sorted(m for m in ('torch', 'torchvision', 'networkx') if m in sys.modules); "
        "print(','.join(heavy))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "", f"import {module} loaded {res.stdout.strip()}"


def test_import_checker_sees_violations(tmp_path):
    """The walker must notice a forbidden import, also one inside a function."""
    f = ROOT / "searches" / "_probe_violation.py"
    f.write_text("def g():\n    from hawq_search.plan import Plan\n")
    try:
        names = [name for _, name in _imports(f)]
    finally:
        f.unlink()
    assert "hawq_search.plan" in names
