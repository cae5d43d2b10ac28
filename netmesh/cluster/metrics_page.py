"""A node's metrics in a shared-memory page the supervisor reads without asking.

Layout: ``version u64 | length u64 | msgpack blob``. The single writer (the node) makes
``version`` odd, writes the blob and length, then makes it even again (a seqlock). A
reader copies the blob between two reads of ``version`` and retries if they differ or
are odd, so it never decodes a half-written snapshot. The supervisor creates and
unlinks the page (its name is one of the supervisor's run names); the node attaches
to it. ``dropped`` counts snapshots too large for the page (the node reports it as
``metrics_pages_dropped``).
"""

from __future__ import annotations

import mmap
import time
from typing import Any

import msgpack
import posix_ipc

from netmesh.ring.shm import fence as _fence

PAGE_BYTES = 1 << 18
_HEADER = 16


class MetricsPage:
    """One end of a metrics page (writer: the node; reader: the supervisor)."""

    def __init__(self, name: str, create: bool) -> None:
        self.name = name if name.startswith("/") else "/" + name
        flags = posix_ipc.O_CREX if create else 0
        shm = posix_ipc.SharedMemory(self.name, flags, size=PAGE_BYTES if create else 0)
        try:
            self._mm = mmap.mmap(shm.fd, shm.size)
        finally:
            shm.close_fd()
        self._words = memoryview(self._mm)[:_HEADER].cast("Q")
        self.dropped = 0

    @classmethod
    def create(cls, name: str) -> MetricsPage:
        return cls(name, create=True)

    @classmethod
    def attach(cls, name: str) -> MetricsPage:
        return cls(name, create=False)

    def write(self, snapshot: dict[str, Any]) -> bool:
        """Publish a snapshot; False (and counted) if it does not fit the page."""
        blob = msgpack.packb(snapshot, use_bin_type=True)
        if len(blob) > PAGE_BYTES - _HEADER:
            self.dropped += 1
            return False
        words = self._words
        v = words[0]
        words[0] = v + 1
        _fence()
        self._mm[_HEADER : _HEADER + len(blob)] = blob
        words[1] = len(blob)
        _fence()
        words[0] = v + 2
        return True

    def read(self, attempts: int = 100) -> dict[str, Any] | None:
        """The latest snapshot, or None if none was written yet (or the writer is stuck)."""
        words = self._words
        for _ in range(attempts):
            v1 = words[0]
            if v1 == 0:
                return None
            if v1 & 1:
                time.sleep(0)
                continue
            n = words[1]
            blob = self._mm[_HEADER : _HEADER + min(n, PAGE_BYTES - _HEADER)]
            _fence()
            if words[0] == v1:
                result: dict[str, Any] = msgpack.unpackb(blob, raw=False, strict_map_key=False)
                return result
        return None

    def close(self) -> None:
        self._words.release()
        self._mm.close()
