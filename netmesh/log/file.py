"""RedexFile: one append-only event file (a channel's log), in memory or on disk.

Sequence numbers start at 0 and grow by one per event. Every retained payload is kept
in memory (reads never touch the disk); with ``RedexFileConfig(path=dir)`` the file is
also written to segment files in ``dir`` (format: :mod:`netmesh.log.record`), one
``write`` per batch, and restored on reopen:

* a torn tail (the last write cut short by a crash) is truncated and counted in
  ``torn_tail_truncations`` / ``torn_bytes_truncated``;
* a corrupt record anywhere else raises :class:`LogCorrupt` naming the file and offset;
  nothing is ever skipped silently.

Durability per ``fsync`` policy: ``"batch"`` fdatasyncs before ``append``/
``append_batch`` return (an acknowledged event survives a power cut); ``"interval"``
fdatasyncs on the first append at least ``fsync_interval_s`` after the previous sync
(and on close); ``"never"`` leaves it to the OS (survives a process crash, not a
machine crash).

Not thread-safe: one owner (a node's event loop) calls it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from netmesh.config import RedexFileConfig
from netmesh.errors import Closed, Lagged, LogCorrupt, OutOfOrder, PayloadTooLarge
from netmesh.log import record

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".seg"


@dataclass(frozen=True, slots=True)
class RedexEntry:
    """Index data of one event."""

    seq: int
    payload_len: int


@dataclass(frozen=True, slots=True)
class RedexEvent:
    """One event read back from a file: ``entry.seq`` and ``payload``."""

    entry: RedexEntry
    payload: bytes


@dataclass(slots=True)
class _Segment:
    first_seq: int
    path: str
    size: int


class RedexFile:
    """An append-only event file; see the module docstring for the guarantees."""

    def __init__(self, name: str, config: RedexFileConfig | None = None) -> None:
        """Open (and for a persisted file, recover) the file ``name``.

        Raises ConfigError for a bad config, LogCorrupt for a corrupt segment.
        """
        self.name = str(name)
        self.config = config or RedexFileConfig()
        self.config.validate()
        self._payloads: list[bytes] = []
        self._head = 0  # index in _payloads of the first retained event
        self._first_seq = 0  # seq of _payloads[_head]
        self._retained_bytes = 0
        self._closed = False
        self._fd = -1
        self._segments: list[_Segment] = []
        self._last_sync = 0.0
        self.torn_tail_truncations = 0
        self.torn_bytes_truncated = 0
        #: when set, user appends raise it (replication: NotLeader on a replica)
        self.refusal: Exception | None = None
        #: called after a user append when ``append_pending`` was False; it is set to
        #: True first, and the listener clears it once it has handled the new events
        #: (so a burst of appends costs one call, not one per append)
        self.on_append: Callable[[], None] | None = None
        self.append_pending = False
        self._tails: set[asyncio.Event] = set()
        if self.config.path is not None:
            self._recover(self.config.path)

    # -- reading ---------------------------------------------------------------------
    @property
    def next_seq(self) -> int:
        """The seq the next appended event gets (= events ever appended)."""
        return self._first_seq + len(self._payloads) - self._head

    @property
    def first_retained_seq(self) -> int:
        """Seq of the oldest retained event (== next_seq when empty)."""
        return self._first_seq

    def __len__(self) -> int:
        return len(self._payloads) - self._head

    @property
    def retained_bytes(self) -> int:
        return self._retained_bytes

    @property
    def closed(self) -> bool:
        return self._closed

    def read_range(self, start: int, end: int) -> list[RedexEvent]:
        """Retained events with ``start <= seq < end``, ascending (empty if none)."""
        payloads, first = self.read_payloads(start, end)
        return [RedexEvent(RedexEntry(first + i, len(p)), p) for i, p in enumerate(payloads)]

    async def tail(self, from_seq: int = 0, max_batch: int = 1024) -> AsyncIterator[RedexEvent]:
        """Every event with seq >= ``from_seq``: first those held (backfill), then each
        new one as it is appended (locally or by replication), with no gap or
        duplicate at the boundary. Ends when the file closes.

        Raises Lagged if events the subscriber needs are gone (retention dropped them
        or replication truncated a suffix it had already yielded). Must be iterated on
        the event loop that appends to the file.
        """
        seq = from_seq
        while True:
            if seq < self._first_seq or seq > self.next_seq:
                raise Lagged(
                    f"{self.name}: tail at seq {seq}, the file holds "
                    f"[{self._first_seq}, {self.next_seq})"
                )
            payloads, first = self.read_payloads(seq, seq + max_batch)
            if payloads:
                for i, p in enumerate(payloads):
                    yield RedexEvent(RedexEntry(first + i, len(p)), p)
                seq = first + len(payloads)
                continue
            if self._closed:
                return
            wakeup = asyncio.Event()
            self._tails.add(wakeup)
            try:
                await wakeup.wait()
            finally:
                self._tails.discard(wakeup)

    def _wake_tails(self) -> None:
        for wakeup in self._tails:
            wakeup.set()

    def read_payloads(self, start: int, end: int) -> tuple[list[bytes], int]:
        """Like read_range without per-event objects: (payloads, seq of the first one)."""
        lo = max(start, self._first_seq)
        hi = min(end, self.next_seq)
        if hi <= lo:
            return [], lo
        base = self._head - self._first_seq
        return self._payloads[base + lo : base + hi], lo

    # -- writing ---------------------------------------------------------------------
    def append(self, payload: bytes) -> int:
        """Append one event; returns its seq. Raises PayloadTooLarge, Closed, OSError."""
        return self.append_batch([payload])

    def append_batch(self, payloads: list[bytes], expect_seq: int | None = None) -> int:
        """Append events with contiguous seqs, all or nothing; returns the first seq.

        ``expect_seq``: if given, the batch must start at exactly this seq, else
        OutOfOrder is raised (replicas use it so their seqs equal the leader's).
        An empty batch appends nothing and returns ``next_seq``.
        """
        if self._closed:
            raise Closed(f"event file {self.name!r} is closed")
        if self.refusal is not None:
            raise self.refusal
        first = self.apply_batch(payloads, expect_seq)
        if self.on_append is not None and not self.append_pending:
            self.append_pending = True
            self.on_append()
        return first

    def apply_batch(self, payloads: list[bytes], expect_seq: int | None = None) -> int:
        """``append_batch`` without the append guard (replicas applying the leader's log)."""
        if self._closed:
            raise Closed(f"event file {self.name!r} is closed")
        first = self.next_seq
        if expect_seq is not None and expect_seq != first:
            raise OutOfOrder(f"{self.name}: batch starts at {expect_seq}, next_seq is {first}")
        if not payloads:
            return first
        if len(payloads) == 1:  # the single append: no per-batch machinery
            p = payloads[0]
            size = biggest = len(p)
            if type(p) is not bytes:
                payloads = [bytes(p)]
        else:  # per batch, not per event: C-level map/max/sum/set, no Python loop
            lens = list(map(len, payloads))
            biggest, size = max(lens), sum(lens)
            if set(map(type, payloads)) != {bytes}:  # immutable copies of anything else
                payloads = [bytes(p) for p in payloads]
        if biggest > self.config.max_payload:
            raise PayloadTooLarge(biggest, self.config.max_payload)
        if self._fd >= 0:
            self._write(record.encode_batch(first, payloads))
        self._payloads.extend(payloads)
        self._retained_bytes += size
        self._apply_retention()
        if self._fd >= 0 and self._segments[-1].size >= self.config.segment_bytes:
            self._start_segment(self.next_seq)
        if self._tails:
            self._wake_tails()
        return first

    def truncate_from(self, seq: int) -> int:
        """Drop every event with seq >= ``seq``; returns how many were dropped.

        Used by replication to discard a divergent, never-committed suffix.
        """
        if self._closed:
            raise Closed(f"event file {self.name!r} is closed")
        seq = max(seq, self._first_seq)
        dropped = self.next_seq - seq
        if dropped <= 0:
            return 0
        keep = self._head + (seq - self._first_seq)
        self._retained_bytes -= sum(len(p) for p in self._payloads[keep:])
        del self._payloads[keep:]
        if self._fd >= 0:
            self._truncate_disk(seq)
        self._wake_tails()
        return dropped

    def sync(self) -> None:
        """fdatasync the active segment (no-op in memory)."""
        if self._fd >= 0:
            os.fdatasync(self._fd)
            self._last_sync = time.monotonic()

    def close(self) -> None:
        """Sync and close; idempotent. Later appends raise Closed."""
        if self._closed:
            return
        self._closed = True
        self._wake_tails()
        if self._fd >= 0:
            try:
                os.fdatasync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = -1

    # -- retention -------------------------------------------------------------------
    def _apply_retention(self) -> None:
        cfg = self.config
        drop = 0
        count = len(self._payloads) - self._head
        if cfg.retention_max_events is not None and count > cfg.retention_max_events:
            drop = count - cfg.retention_max_events
        if cfg.retention_max_bytes is not None and self._retained_bytes > cfg.retention_max_bytes:
            excess = self._retained_bytes - cfg.retention_max_bytes
            i, freed = self._head, 0
            while freed < excess:
                freed += len(self._payloads[i])
                i += 1
            drop = max(drop, i - self._head)
        if drop:
            self._drop_head(drop)

    def _drop_head(self, n: int) -> None:
        stop = self._head + n
        self._retained_bytes -= sum(len(p) for p in self._payloads[self._head : stop])
        self._head = stop
        self._first_seq += n
        if self._head > 4096 and self._head * 2 > len(self._payloads):
            del self._payloads[: self._head]  # amortised O(1) per dropped event
            self._head = 0
        self._delete_old_segments()

    # -- disk ------------------------------------------------------------------------
    def _write(self, buf: bytes) -> None:
        seg = self._segments[-1]
        view = memoryview(buf)
        written = 0
        try:
            while written < len(buf):
                written += os.write(self._fd, view[written:])
        except OSError:
            os.ftruncate(self._fd, seg.size)  # leave no partial batch behind
            raise
        seg.size += written
        policy = self.config.fsync
        if policy == "batch" or (
            policy == "interval"
            and time.monotonic() - self._last_sync >= self.config.fsync_interval_s
        ):
            self.sync()

    def _recover(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        names = []
        for n in os.listdir(directory):
            if not n.endswith(SEGMENT_SUFFIX):
                continue
            stem = n[: -len(SEGMENT_SUFFIX)]
            if len(stem) != 20 or not stem.isdigit():
                raise LogCorrupt(
                    os.path.join(directory, n), 0, "not a segment name (<20-digit first seq>.seg)"
                )
            names.append(n)
        names.sort()
        expect: int | None = None
        for i, n in enumerate(names):
            path = os.path.join(directory, n)
            last = i == len(names) - 1
            first_seq = int(n[: -len(SEGMENT_SUFFIX)])
            if expect is not None and first_seq != expect:
                raise LogCorrupt(path, 0, f"segment starts at seq {first_seq}, expected {expect}")
            expect = self._load_segment(path, first_seq, last)
        if not self._segments:
            self._start_segment(0)
        else:
            self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)
        self._apply_retention()

    def _load_segment(self, path: str, first_seq: int, last: bool) -> int:
        with open(path, "rb") as fh:
            buf = fh.read()
        bad = record.check_file_header(buf)
        if bad is not None:
            if not last or len(buf) >= record.FILE_HEADER_SIZE:
                raise LogCorrupt(path, 0, bad)
            self._count_torn(path, len(buf), 0)  # crash while creating the segment
            with open(path, "wb") as fh:
                fh.write(record.FILE_HEADER)
            buf = record.FILE_HEADER
        res = record.scan(buf, record.FILE_HEADER_SIZE, expect_seq=first_seq)
        if res.end is record.ScanEnd.CORRUPT or (res.end is record.ScanEnd.TORN and not last):
            raise LogCorrupt(path, res.consumed, res.reason)
        if res.end is record.ScanEnd.TORN:
            self._count_torn(path, len(buf) - res.consumed, res.consumed)
            os.truncate(path, res.consumed)
        if not self._segments:
            self._first_seq = first_seq
        self._payloads.extend(res.payloads)
        self._retained_bytes += sum(len(p) for p in res.payloads)
        self._segments.append(_Segment(first_seq, path, res.consumed))
        return first_seq + len(res.payloads)

    def _count_torn(self, path: str, nbytes: int, offset: int) -> None:
        self.torn_tail_truncations += 1
        self.torn_bytes_truncated += nbytes
        log.warning("%s: truncated a torn tail of %d bytes at offset %d", path, nbytes, offset)

    def _start_segment(self, first_seq: int) -> None:
        assert self.config.path is not None
        path = os.path.join(self.config.path, f"{first_seq:020d}{SEGMENT_SUFFIX}")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, record.FILE_HEADER)
        os.fdatasync(fd)
        _fsync_dir(self.config.path)
        if self._fd >= 0:
            os.fdatasync(self._fd)  # the old segment is complete: make it durable
            os.close(self._fd)
        self._fd = fd
        self._segments.append(_Segment(first_seq, path, record.FILE_HEADER_SIZE))

    def _delete_old_segments(self) -> None:
        # a segment may go once the next one starts at or below the first retained seq
        deleted = False
        while len(self._segments) > 1 and self._segments[1].first_seq <= self._first_seq:
            os.unlink(self._segments.pop(0).path)
            deleted = True
        if deleted and self.config.path is not None:
            _fsync_dir(self.config.path)

    def _truncate_disk(self, seq: int) -> None:
        while len(self._segments) > 1 and self._segments[-1].first_seq > seq:
            os.unlink(self._segments.pop().path)
        assert self.config.path is not None
        _fsync_dir(self.config.path)
        seg = self._segments[-1]
        with open(seg.path, "rb") as fh:
            buf = fh.read()
        res = record.scan(buf, record.FILE_HEADER_SIZE, expect_seq=seg.first_seq)
        offset = record.FILE_HEADER_SIZE
        for s, p in zip(res.seqs, res.payloads, strict=True):
            if s >= seq:
                break
            offset += record.RECORD_HEADER_SIZE + len(p)
        os.close(self._fd)
        os.truncate(seg.path, offset)
        seg.size = offset
        self._fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND)
        self.sync()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
