"""What an installed netmesh carries (issue 16 §4): version, license, type marker."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import netmesh

ROOT = Path(__file__).resolve().parents[2]


def test_version_matches_the_project_metadata() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert netmesh.__version__ == project["version"]
    assert importlib.metadata.version("netmesh") == netmesh.__version__


def test_license_and_py_typed_are_shipped() -> None:
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert (Path(netmesh.__file__).parent / "py.typed").exists()
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "py.typed" in setuptools["package-data"]["netmesh"]


def test_build_output_is_ignored() -> None:
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "build/" in ignored and "dist/" in ignored
