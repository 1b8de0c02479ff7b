"""The distribution installs the four packages and the one console script."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_declares_the_suite() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = meta["project"]
    assert project["name"] == "fathom"
    assert project["scripts"] == {"fathom": "apps.cli:main"}
    assert any(dep.startswith("torch>=2.13,<2.14") for dep in project["dependencies"])
    assert {"gpu", "dist", "dev"} <= set(project["optional-dependencies"])
    for marker in ("integration", "realdata", "slow", "gpu"):
        assert any(m.startswith(marker + ":") for m in meta["tool"]["pytest"]["ini_options"]["markers"])


def test_top_level_packages_import() -> None:
    for name in ("apps", "core", "kernels", "connectors"):
        assert importlib.import_module(name).__doc__


def test_every_yaml_config_loads() -> None:
    files = [p for p in ROOT.rglob("*.y*ml") if ".venv" not in p.parts and p.suffix in (".yaml", ".yml")]
    assert files
    for path in files:
        assert yaml.safe_load(path.read_text()) is not None, path


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci
    assert "make demo" in readme


def test_gpu_check_script_is_valid_bash_and_uses_real_commands() -> None:
    import subprocess

    script = ROOT / "scripts" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    commands = ("pytest -q -m gpu", "kernels.tune --op moe_experts", "bench moe --device cuda", "bench table")
    for command in commands:
        assert command in text
