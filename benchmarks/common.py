"""What the process-pair benchmark suites (clients, bus, groups) share: starting a worker
process of a suite module, and the command-line front (``--quick``, ``--trials``,
``--json``)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import IO, Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def spawn_worker(
    module: str,
    args: list[str],
    stdout: int | IO[Any] | None = subprocess.PIPE,
    stderr: int | IO[Any] | None = subprocess.PIPE,
) -> subprocess.Popen[str]:
    """``worker_main(*args)`` of ``benchmarks.<module>`` in a new process (``-P``: the
    working directory can never stand in for the checkout's benchmarks)."""
    code = (
        f"import sys; sys.path.insert(0, sys.argv[1]); from benchmarks.{module} import "
        "worker_main; sys.exit(worker_main(*sys.argv[2:]))"
    )
    return subprocess.Popen(
        [sys.executable, "-P", "-c", code, ROOT, *args], stdout=stdout, stderr=stderr, text=True
    )


def suite_main(
    prog: str,
    doc: str | None,
    run: Callable[[bool, int], dict[str, Any]],
    report: Callable[[dict[str, Any]], str],
    argv: list[str] | None,
    quick_help: str,
    quick_trials: int = 1,
    trials: int = 3,
) -> int:
    """Parse ``--quick/--trials/--json``, run, print the report, write the JSON."""
    ap = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument(
        "--trials",
        type=int,
        default=None,
        help=f"interleaved trials (default {trials}; {quick_trials} with --quick)",
    )
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    res = run(args.quick, args.trials or (quick_trials if args.quick else trials))
    print(report(res))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0
