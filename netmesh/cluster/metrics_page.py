"""A node's metrics in a shared-memory page the supervisor reads without asking.

Layout (little-endian u64 words, then two msgpack blobs)::

    0 version    seqlock: odd while the writer changes the blobs
    1 ch_len     bytes of the channels blob (a msgpack map name -> channel dict)
    2 top_len    bytes of the top blob (a msgpack map: node, peers, mesh, counters...)
    3 size       bytes of the shared-memory object (it grows; readers remap)
    4 heartbeat  float64: the writer's time.monotonic() when the page was last current
    5 period     float64: the writer's publishing period in seconds
    6 writes     how many times the channels blob was rewritten
    7 (spare)
    [64 .. 64+ch_len)             channels blob
    [64+ch_len .. +top_len)       top blob

The single writer (the node) makes ``version`` odd, writes, then makes it even again
(a seqlock); a reader copies between two reads of ``version`` and retries if they
differ or are odd, so it never decodes a half-written snapshot. The page **grows**:
a snapshot larger than the object is written after ``ftruncate`` to the next power of
two (readers see ``size`` and remap), so any number of channels fits; ``dropped``
counts the snapshots that could not be written even so (no memory left in
/dev/shm), and then the heartbeat stops advancing, so readers see the page as stale.

The channels blob is rewritten only when a channel's entry changed
(:class:`SnapshotWriter` keeps each channel's encoded entry and re-encodes only those
it refreshed and found changed); the small top blob and the heartbeat every period.
``CLOCK_MONOTONIC`` is system-wide, so a reader in another process compares the
heartbeat with its own ``time.monotonic()``
(:func:`netmesh.cluster.snapshot.is_stale`).

The supervisor creates and unlinks the page (its name is one of the supervisor's run
names); the node attaches to it.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import msgpack
import posix_ipc

from netmesh.ring.shm import fence as _fence

PAGE_BYTES = 1 << 18  # initial size of a page; it grows as needed
_HEADER = 64
W_VERSION, W_CH_LEN, W_TOP_LEN, W_SIZE, W_HEARTBEAT, W_PERIOD, W_WRITES = range(7)
_F64 = struct.Struct("<d")
F = TypeVar("F")


def _f64_bits(x: float) -> int:
    return int.from_bytes(_F64.pack(x), "little")


def _bits_f64(w: int) -> float:
    return float(_F64.unpack(int(w).to_bytes(8, "little"))[0])


class MetricsPage:
    """One end of a metrics page (writer: the node; reader: the supervisor)."""

    def __init__(self, name: str, create: bool) -> None:
        self.name = name if name.startswith("/") else "/" + name
        flags = posix_ipc.O_CREX if create else 0
        shm = posix_ipc.SharedMemory(self.name, flags, size=PAGE_BYTES if create else 0)
        try:
            self._map(shm.fd, shm.size)
        finally:
            shm.close_fd()
        if create:
            self._words[W_SIZE] = len(self._mm)
        self.dropped = 0
        #: heartbeat and period of the snapshot ``read`` returned last (None: none)
        self.heartbeat: float | None = None
        self.period: float | None = None

    def _map(self, fd: int, size: int) -> None:
        self._mm = mmap.mmap(fd, size)
        self._words = memoryview(self._mm)[:_HEADER].cast("Q")

    def _remap(self) -> None:
        """Map the object at its current size (it grew)."""
        shm = posix_ipc.SharedMemory(self.name)
        try:
            old_words, old_mm = self._words, self._mm
            self._map(shm.fd, shm.size)
            old_words.release()
            old_mm.close()
        finally:
            shm.close_fd()

    def _grow(self, need: int) -> None:
        size = len(self._mm)
        while size < need:
            size *= 2
        shm = posix_ipc.SharedMemory(self.name)
        try:
            os.ftruncate(shm.fd, size)
        finally:
            shm.close_fd()
        self._remap()

    @classmethod
    def create(cls, name: str) -> MetricsPage:
        return cls(name, create=True)

    @classmethod
    def attach(cls, name: str) -> MetricsPage:
        return cls(name, create=False)

    @property
    def size(self) -> int:
        """Bytes of this end's mapping."""
        return len(self._mm)

    # -- writer ----------------------------------------------------------------------
    def write(self, snapshot: dict[str, Any], now: float | None = None) -> bool:
        """Publish a whole snapshot (channels under ``"channels"``); see write_parts."""
        top = dict(snapshot)
        channels = top.pop("channels", {})
        return self.write_parts(
            msgpack.packb(channels, use_bin_type=True), msgpack.packb(top, use_bin_type=True), now
        )

    def write_parts(
        self, channels: bytes | None, top: bytes, now: float | None = None, period: float = 0.1
    ) -> bool:
        """Publish a top blob and, unless None (unchanged), a channels blob, then the
        heartbeat ``now`` (default: time.monotonic()). False (and counted in
        ``dropped``) if the page could not grow to fit them."""
        words = self._words
        ch_len = len(channels) if channels is not None else int(words[W_CH_LEN])
        need = _HEADER + ch_len + len(top)
        if need > len(self._mm):
            if channels is None:  # the old channels blob must move with the new mapping
                channels = bytes(self._mm[_HEADER : _HEADER + ch_len])
            try:
                self._grow(need)
            except OSError:
                self.dropped += 1
                return False
            words = self._words
        v = words[W_VERSION]
        words[W_VERSION] = v + 1
        _fence()
        if channels is not None:
            self._mm[_HEADER : _HEADER + ch_len] = channels
            words[W_CH_LEN] = ch_len
            words[W_WRITES] += 1
        self._mm[_HEADER + ch_len : _HEADER + ch_len + len(top)] = top
        words[W_TOP_LEN] = len(top)
        words[W_SIZE] = len(self._mm)
        words[W_PERIOD] = _f64_bits(period)
        words[W_HEARTBEAT] = _f64_bits(time.monotonic() if now is None else now)
        _fence()
        words[W_VERSION] = v + 2
        return True

    # -- reader ----------------------------------------------------------------------
    def read(self, attempts: int = 100) -> dict[str, Any] | None:
        """The latest snapshot (top fields plus ``"channels"``), or None if none was
        written yet (or the writer is stuck mid-write). Sets ``heartbeat``/``period``."""
        for _ in range(attempts):
            words = self._words
            v1 = words[W_VERSION]
            if v1 == 0:
                return None
            if v1 & 1:
                time.sleep(0)
                continue
            if words[W_SIZE] > len(self._mm):
                self._remap()
                continue
            ch_len, top_len = int(words[W_CH_LEN]), int(words[W_TOP_LEN])
            heartbeat, period = int(words[W_HEARTBEAT]), int(words[W_PERIOD])
            if _HEADER + ch_len + top_len > len(self._mm):
                continue  # torn header read; the version check below would fail too
            blob = self._mm[_HEADER : _HEADER + ch_len + top_len]
            _fence()
            if words[W_VERSION] != v1:
                continue
            top: dict[str, Any] = msgpack.unpackb(blob[ch_len:], raw=False, strict_map_key=False)
            top["channels"] = (
                msgpack.unpackb(blob[:ch_len], raw=False, strict_map_key=False) if ch_len else {}
            )
            self.heartbeat, self.period = _bits_f64(heartbeat), _bits_f64(period)
            top["heartbeat_at"], top["period"] = self.heartbeat, self.period
            return top
        return None

    def close(self) -> None:
        self._words.release()
        self._mm.close()


class SnapshotWriter:
    """Publishes a node's snapshot to its page, doing work in proportion to change.

    Each :meth:`publish` (one per period) refreshes channel entries in round-robin
    order, starting where the previous one stopped, until ``budget`` of the period is
    spent (every channel, when they are few): ``fingerprint(item)`` is cheap (None:
    unknown, always rebuild), ``entry(item)`` builds the channel's dict and is called
    only when the fingerprint changed. An entry is re-encoded only when refreshed, the
    channels blob re-assembled and rewritten only when an entry changed, appeared or
    went away. The top blob (node-wide figures) and the heartbeat are written every
    period. ``channels_sampled_since`` in the top is the start of the last complete
    round-robin pass: every channel's entry is at least that fresh.

    Passes are paced so that refreshing costs at most ``share`` of a core on average:
    the next pass starts ``max(period, pass cost / share)`` after the previous one
    started (a few channels: every period; 10,000 unchanged channels, ~10 ms a pass:
    about every second). ``budget`` bounds the work of one period (a share of it).
    """

    def __init__(
        self, page: MetricsPage, period: float, budget: float = 0.02, share: float = 0.005
    ) -> None:
        self.page = page
        self.period = period
        self.budget = budget
        self.share = share
        self._pass_cost = 0.0
        self._next_pass_at = float("-inf")
        self._entries: dict[str, tuple[Hashable, bytes]] = {}
        self._cursor = 0
        self._pass_started: float | None = None
        self._complete_since: float | None = None
        self._dirty = True
        self._blob = b""

    def publish(
        self,
        top: dict[str, Any],
        items: Sequence[F],
        name: Callable[[F], str],
        fingerprint: Callable[[F], Hashable | None],
        entry: Callable[[F], dict[str, Any]],
        now: float | None = None,
    ) -> bool:
        """Refresh within the budget and write the page; False if the page could not
        take it (counted in the page's ``dropped``)."""
        t0 = time.monotonic() if now is None else now
        n = len(items)
        if n < len(self._entries) or not n:
            self._forget_closed({name(it) for it in items})
        started = time.perf_counter()
        deadline = started + self.budget * self.period
        if n > len(self._entries):  # channels opened since: on the page at once
            self._add_new(items, name, fingerprint, entry, deadline)
        if self._cursor == 0 and t0 < self._next_pass_at:
            n = 0  # the previous pass was recent enough: only the top and heartbeat
        elif self._cursor == 0:
            self._pass_started = t0
        entries = self._entries
        done = 0
        while done < n:
            if self._cursor >= n:
                break
            it = items[self._cursor]
            self._cursor += 1
            done += 1
            key = name(it)
            fp = fingerprint(it)
            old = entries.get(key)
            if fp is None or old is None or old[0] != fp:
                packed = msgpack.packb(key, use_bin_type=True) + msgpack.packb(
                    entry(it), use_bin_type=True
                )
                if old is None or old[1] != packed:
                    entries[key] = (fp, packed)
                    self._dirty = True
                elif fp != old[0]:
                    entries[key] = (fp, packed)
            if done & 15 == 0 and time.perf_counter() > deadline:
                break
        self._pass_cost += time.perf_counter() - started
        if n and self._cursor >= n:  # this publish finished a pass
            self._cursor = 0
            self._complete_since = self._pass_started
            assert self._pass_started is not None
            self._next_pass_at = self._pass_started + max(
                self.period * 0.999, self._pass_cost / self.share
            )
            self._pass_cost = 0.0
        channels = None
        if self._dirty:
            channels = self._blob = _map_header(len(entries)) + b"".join(
                v[1] for v in entries.values()
            )
            self._dirty = False
        top = {**top, "channels_sampled_since": self._complete_since}
        return self.page.write_parts(
            channels, msgpack.packb(top, use_bin_type=True), t0, self.period
        )

    def _add_new(
        self,
        items: Sequence[F],
        name: Callable[[F], str],
        fingerprint: Callable[[F], Hashable | None],
        entry: Callable[[F], dict[str, Any]],
        deadline: float,
    ) -> None:
        """Entries for items not on the page yet (newest last), within ``deadline``."""
        entries = self._entries
        for k, it in enumerate(reversed(items)):
            key = name(it)
            if key in entries:
                continue
            packed = msgpack.packb(key, use_bin_type=True) + msgpack.packb(
                entry(it), use_bin_type=True
            )
            entries[key] = (fingerprint(it), packed)
            self._dirty = True
            if len(entries) >= len(items) or (k & 15 == 15 and time.perf_counter() > deadline):
                return

    def _forget_closed(self, names: set[str]) -> None:
        for key in [k for k in self._entries if k not in names]:
            del self._entries[key]
            self._dirty = True


def _map_header(n: int) -> bytes:
    """The msgpack header of a map of ``n`` pairs."""
    if n < 16:
        return bytes([0x80 | n])
    if n < 1 << 16:
        return b"\xde" + n.to_bytes(2, "big")
    return b"\xdf" + n.to_bytes(4, "big")
