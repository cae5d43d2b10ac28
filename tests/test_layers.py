"""The layering contracts (pyproject.toml [tool.importlinter]) hold, and they bite."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
LINT = [
    sys.executable,
    "-c",
    "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())",
]


def _lint(cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        LINT,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"},
    )


def test_contracts_are_kept() -> None:
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 kept, 0 broken" in r.stdout


def test_a_forbidden_import_breaks_the_contracts(tmp_path: pathlib.Path) -> None:
    for part in ("netmesh", "benchmarks"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    quorum = tmp_path / "netmesh" / "replication" / "quorum.py"
    quorum.write_text(
        quorum.read_text() + "\nimport time  # deliberate: a clock in a pure module\n"
    )
    record = tmp_path / "netmesh" / "log" / "record.py"
    record.write_text(record.read_text() + "\nimport netmesh.cluster.cluster  # deliberate\n")
    r = _lint(tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "netmesh.replication.quorum is not allowed to import time" in r.stdout
    assert "netmesh.log is not allowed to import netmesh.cluster" in r.stdout
