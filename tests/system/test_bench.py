"""`netmesh bench` runs and writes its figures (speed itself is not asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_bench_ingest_quick_writes_json_and_plot(tmp_path: Path) -> None:
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    plot = ["--plot", str(out_png)] if _have_matplotlib() else []  # else: exit 2 (tests/cli)
    proc = subprocess.run(
        [
            sys.executable,
            "-P",
            "-m",
            "netmesh.cli",
            "bench",
            "ingest",
            "--quick",
            "--json",
            str(out_json),
            *plot,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out_json.read_text())
    for key in ("ingest_single_eps", "ingest_batched_eps", "ingest_batched_1k_mb_s"):
        assert figures[key] > 0, key
    assert figures["cpu_count"] >= 1 and figures["python"] and figures["netmesh_version"]
    assert "ingest_batched_eps" in proc.stdout
    if plot:
        assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
