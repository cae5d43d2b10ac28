"""Interleaved trials, their summaries and the run's provenance (shared by every suite).

A *figure* is one netmesh measurement next to its peers measured in the same run:
``trial(...)`` callables are run in rounds, netmesh first, then every peer, round after
round, so that machine noise (other processes, frequency changes) hits all of them
alike. Each series is summarised as min/median/max of its trials, and each peer gets a
ratio ``median(netmesh) / median(peer)`` (for rates: > 1 means netmesh is faster; for
latencies the figure says ``lower_is_better`` and the ratio is inverted, so > 1 still
means netmesh is better) plus the range of the per-round ratios.

Absolute figures on a shared machine move 2-4x between hours; only ratios measured in
one run are evidence (shared/PEERS.md).
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

Trial = Callable[[], float]


class Unavailable(Exception):
    """A peer cannot be measured here (not installed, server missing); the reason is
    reported in the figure instead of a number."""


def summary(xs: list[float]) -> dict[str, Any]:
    """``{"min", "median", "max", "trials": [...]}`` of ``xs`` (empty: NaNs)."""
    if not xs:
        nan = float("nan")
        return {"min": nan, "median": nan, "max": nan, "trials": []}
    return {
        "min": min(xs),
        "median": float(statistics.median(xs)),
        "max": max(xs),
        "trials": list(xs),
    }


def interleave(
    netmesh: Trial,
    peers: dict[str, Trial],
    rounds: int,
    log: Callable[[str], None] = lambda _m: None,
) -> tuple[list[float], dict[str, list[float]], dict[str, str]]:
    """Run ``rounds`` rounds of (netmesh, every peer in order).

    Returns (netmesh samples, peer samples by name, reasons of peers that raised
    :class:`Unavailable` or failed; such a peer is dropped from later rounds).
    """
    nm: list[float] = []
    got: dict[str, list[float]] = {name: [] for name in peers}
    errors: dict[str, str] = {}
    for r in range(rounds):
        nm.append(netmesh())
        log(f"  round {r + 1}/{rounds}: netmesh {nm[-1]:,.1f}")
        for name, fn in peers.items():
            if name in errors:
                continue
            try:
                got[name].append(fn())
                log(f"  round {r + 1}/{rounds}: {name} {got[name][-1]:,.1f}")
            except Unavailable as exc:
                errors[name] = str(exc)
            except Exception as exc:  # a peer's failure is reported, not fatal
                errors[name] = f"{type(exc).__name__}: {exc}"
    return nm, {k: v for k, v in got.items() if v}, errors


def figure(
    unit: str,
    label: str,
    netmesh: list[float],
    peers: dict[str, list[float]],
    errors: dict[str, str] | None = None,
    lower_is_better: bool = False,
    note: str = "",
    peer_labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One headline figure: netmesh's summary, each peer's, and the ratios."""
    nm = summary(netmesh)
    out: dict[str, Any] = {
        "unit": unit,
        "label": label,
        "lower_is_better": lower_is_better,
        "netmesh": nm,
        "peers": {},
    }
    if note:
        out["note"] = note
    for name, xs in peers.items():
        ps = summary(xs)
        entry: dict[str, Any] = {**ps, "label": (peer_labels or {}).get(name, name)}
        entry["ratio"] = _ratio(nm["median"], ps["median"], lower_is_better)
        paired = [
            r
            for a, b in zip(netmesh, xs, strict=False)
            if (r := _ratio(a, b, lower_is_better)) is not None
        ]
        if len(paired) >= 3:  # a range of one or two pairs says nothing
            entry["ratio_min"], entry["ratio_max"] = min(paired), max(paired)
        out["peers"][name] = entry
    if errors:
        out["unavailable"] = dict(errors)
    return out


def _ratio(a: float, b: float, lower_is_better: bool) -> float | None:
    if lower_is_better:
        a, b = b, a
    if not b or a != a or b != b:  # zero or NaN
        return None
    return a / b


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0..100) of ``xs``; NaN when empty. With fewer
    than 100 / (100 - q) samples the top percentiles are the maximum: callers report
    ``max`` and the sample count instead of a p99 of 8 samples."""
    if not xs:
        return float("nan")
    ys = sorted(xs)
    return ys[min(len(ys) - 1, round(q / 100 * (len(ys) - 1)))]


# --------------------------------------------------------------------------- provenance


def load() -> list[float]:
    """``os.getloadavg()`` (1, 5, 15 min), rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    with (
        contextlib.suppress(OSError),
        open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh,
    ):
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git_commit(path: str) -> str | None:
    """``git rev-parse HEAD`` of the checkout holding ``path`` (None without git),
    with ``+dirty`` when tracked files differ from it."""
    try:
        head = subprocess.run(
            ["git", "-C", path, "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", path, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def pkg_version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def tool_version(argv: list[str]) -> str | None:
    """First line of ``argv``'s output (e.g. ``redis-server --version``); None if absent."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def provenance(root: str) -> dict[str, Any]:
    """Date (UTC), commit, CPU model and count, Python and package versions."""
    versions: dict[str, Any] = {"python": platform.python_version()}
    for dist in (
        "netmesh",
        "msgpack",
        "cryptography",
        "posix-ipc",
        "psutil",
        "pyzmq",
        "redis",
        "hiredis",
        "nats-py",
        "net-mesh",
        "matplotlib",
    ):
        versions[dist] = pkg_version(dist)
    versions["redis-server"] = tool_version(["redis-server", "--version"])
    versions["nats-server"] = tool_version(["nats-server", "--version"])
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": git_commit(root),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "versions": versions,
    }
