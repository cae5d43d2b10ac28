"""The netmesh command line, run as a user would."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_and_reports_ok() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "netmesh.cli", "demo", "--events", "5000"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "next_seq=5000" in out.stdout and out.stdout.strip().endswith("OK")
