"""netmesh/core must stay pure: no IO, clock, process or global-randomness imports."""

from __future__ import annotations

import ast
import pathlib

import pytest

CORE = pathlib.Path(__file__).resolve().parents[2] / "netmesh" / "core"
FORBIDDEN = {
    "socket",
    "asyncio",
    "time",
    "os",
    "signal",
    "threading",
    "multiprocessing",
    "mmap",
    "posix_ipc",
    "random",
    "secrets",
    "subprocess",
    "select",
    "selectors",
    "psutil",
    "io",
    "pathlib",
    "shutil",
    "tempfile",
    "logging",
}


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _type_checking_only(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            for sub in ast.walk(node):
                if isinstance(sub, ast.Import):
                    names.update(a.name.split(".")[0] for a in sub.names)
                elif isinstance(sub, ast.ImportFrom) and sub.module:
                    names.add(sub.module.split(".")[0])
    return names


MODULES = sorted(CORE.glob("*.py"))


def test_core_has_modules() -> None:
    assert len(MODULES) >= 3


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_core_module_is_pure(path: pathlib.Path) -> None:
    bad = (_imports(path) - _type_checking_only(path)) & FORBIDDEN
    assert not bad, f"{path.name} imports {sorted(bad)}"
