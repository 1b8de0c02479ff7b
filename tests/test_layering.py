"""The import rules of DESIGN.md: kernels <- core <- connectors <- apps, never upwards."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"apps", "core", "kernels", "connectors"}
ALLOWED = {
    "kernels": {"kernels"},  # intra-package only: nothing else of ours
    "core": {"core", "kernels"},
    "connectors": {"connectors", "core", "kernels"},
    "apps": OURS,
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down_only(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"package {package} has no modules"
    bad = {
        str(f.relative_to(ROOT)): sorted(imported_packages(f) - ALLOWED[package])
        for f in files
        if imported_packages(f) - ALLOWED[package]
    }
    assert not bad, f"{package} imports what it must not: {bad}"


def test_checker_catches_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom apps.cli import app\nimport core.moe\n")
    assert imported_packages(bad) == {"apps", "core"}
