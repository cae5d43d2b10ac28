"""In-process append: netmesh's ``RedexFile`` vs the reference's Rust wheels (net-mesh).

Each trial opens a fresh in-memory file and appends ``n`` events of ``size`` bytes, one
``append`` per event or ``append_batch`` of ``batch``, in a tight loop, and checks the
last seq. netmesh and the wheel installed beside it (``import net``, net-mesh 0.24)
run in this process; another wheel version (0.45.1 pins different dependencies) runs
in its own interpreter, one subprocess per trial, timing itself the same way:

    python -m venv /opt/venv-net-mesh-0451
    /opt/venv-net-mesh-0451/bin/pip install net-mesh==0.45.1
    export NETMESH_BENCH_WHEEL_PYTHONS=/opt/venv-net-mesh-0451/bin/python

(``NETMESH_BENCH_WHEEL_PYTHONS`` is a colon-separated list of interpreters; the path
above is also tried when the variable is unset.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks.trials import Trial, Unavailable

DEFAULT_WHEEL_PYTHONS = ("/opt/venv-net-mesh-0451/bin/python",)

# Runs in the wheel's interpreter: argv n size batch -> prints "version eps"
_SCRIPT = r"""
import sys, time
import net
n, size, batch = (int(x) for x in sys.argv[1:4])
f = net.Redex().open_file("bench/wheel")
payload = b"x" * size
if batch == 1:
    append = f.append
    t0 = time.perf_counter()
    for _ in range(n):
        append(payload)
    dt = time.perf_counter() - t0
    count = n
else:
    chunk = [payload] * batch
    t0 = time.perf_counter()
    for _ in range(n // batch):
        f.append_batch(chunk)
    dt = time.perf_counter() - t0
    count = n // batch * batch
last = f.read_range(count - 1, count)
assert len(last) == 1 and last[0].seq == count - 1, "last seq"
print(getattr(net, "__version__", "?"), count / dt)
"""


def _loop(
    append: Callable[[bytes], Any],
    append_batch: Callable[[list[bytes]], Any],
    n: int,
    size: int,
    batch: int,
) -> tuple[int, float]:
    payload = b"x" * size
    if batch == 1:
        t0 = time.perf_counter()
        for _ in range(n):
            append(payload)
        return n, time.perf_counter() - t0
    chunk = [payload] * batch
    t0 = time.perf_counter()
    for _ in range(n // batch):
        append_batch(chunk)
    return n // batch * batch, time.perf_counter() - t0


def netmesh_rate(n: int, size: int, batch: int) -> float:
    """netmesh ``Redex().open_file(...)`` in memory, this process."""
    from netmesh import ChannelName, Redex, RedexFileConfig

    redex = Redex()
    f = redex.open_file(ChannelName(f"bench/inproc{time.monotonic_ns()}"), RedexFileConfig())
    try:
        count, dt = _loop(f.append, f.append_batch, n, size, batch)
        last = f.read_range(count - 1, count)
        assert len(last) == 1 and last[0].entry.seq == count - 1, "last seq"
        return count / dt
    finally:
        f.close()


def wheel_inprocess(n: int, size: int, batch: int) -> float:
    """The net-mesh wheel importable here (``import net``), this process."""
    try:
        import net
    except Exception as exc:
        raise Unavailable(
            f"net-mesh wheel not importable ({exc}); pip install net-mesh==0.24.0"
        ) from exc
    f = net.Redex().open_file(f"bench/wheel{time.monotonic_ns()}")
    try:
        count, dt = _loop(f.append, f.append_batch, n, size, batch)
        last = f.read_range(count - 1, count)
        assert len(last) == 1 and last[0].seq == count - 1, "last seq"
        return count / dt
    finally:
        f.close()


def wheel_pythons() -> list[str]:
    """Interpreters with another net-mesh wheel (see the module doc)."""
    env = os.environ.get("NETMESH_BENCH_WHEEL_PYTHONS")
    cands = env.split(":") if env else list(DEFAULT_WHEEL_PYTHONS)
    here = os.path.abspath(sys.executable)
    # a venv's python is a symlink to the base interpreter: compare the paths as given
    return [p for p in cands if p and os.access(p, os.X_OK) and os.path.abspath(p) != here]


def wheel_version(python: str) -> str | None:
    try:
        out = subprocess.run(
            [python, "-c", "import importlib.metadata as m; print(m.version('net-mesh'))"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def wheel_subprocess(python: str, n: int, size: int, batch: int) -> Trial:
    """A trial running :data:`_SCRIPT` in ``python``."""

    def trial() -> float:
        out = subprocess.run(
            [python, "-c", _SCRIPT, str(n), str(size), str(batch)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if out.returncode != 0:
            raise Unavailable(f"{python}: {out.stderr.strip().splitlines()[-1:] or out.returncode}")
        return float(out.stdout.split()[-1])

    return trial
