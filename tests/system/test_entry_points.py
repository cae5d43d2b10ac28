"""Entry points and worker processes ignore the working directory (issue 9).

A user's project may hold its own ``workers/`` and ``netmesh/`` folders; neither may
stand in for netmesh's own modules, in the CLI or in the node processes it starts.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.system

POISON = "raise ImportError('the working directory shadowed netmesh')\n"


def _poisoned(tmp_path: pathlib.Path) -> pathlib.Path:
    for pkg in ("workers", "netmesh", "benchmarks"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text(POISON)
    (tmp_path / "workers" / "node.py").write_text(POISON)
    (tmp_path / "netmesh" / "cluster.py").write_text(POISON)
    return tmp_path


def _run(cmd: list[str], cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=180, check=False)


def test_console_script_runs_a_cluster_from_a_shadowing_directory(tmp_path: pathlib.Path) -> None:
    exe = shutil.which("netmesh") or pytest.skip("the netmesh console script is not on PATH")
    out = _run([exe, "demo", "--events", "5000"], _poisoned(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "OK: every node holds the same history" in out.stdout
    assert "shadowed" not in out.stderr


def test_python_P_m_netmesh_cli_runs_from_a_shadowing_directory(tmp_path: pathlib.Path) -> None:
    out = _run(
        [sys.executable, "-P", "-m", "netmesh.cli", "demo", "--events", "5000"], _poisoned(tmp_path)
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "OK: every node holds the same history" in out.stdout


def test_a_shadowing_directory_really_shadows_without_P(tmp_path: pathlib.Path) -> None:
    """The control: without -P the local folder wins, so the tests above can fail."""
    out = _run([sys.executable, "-m", "netmesh.cli", "--help"], _poisoned(tmp_path))
    assert out.returncode != 0
    assert "shadowed netmesh" in out.stderr


def test_bench_help_loads_the_checkout_benchmarks_not_the_local_folder(
    tmp_path: pathlib.Path,
) -> None:
    exe = shutil.which("netmesh") or pytest.skip("the netmesh console script is not on PATH")
    out = _run([exe, "bench", "--help"], _poisoned(tmp_path))
    assert "shadowed" not in out.stderr, out.stderr[-2000:]
    assert out.returncode == 0, out.stderr[-2000:]
