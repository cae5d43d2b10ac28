"""RedexFile: one append-only event file (a channel's log), in memory or on disk.

Sequence numbers start at 0 and grow by one per event. Every retained payload is kept
in memory (reads never touch the disk); with ``RedexFileConfig(path=dir)`` the file is
also written to segment files in ``dir`` (format: :mod:`netmesh.log.record`), one
``write`` per batch, and restored on reopen:

* a torn tail (the last write cut short by a crash) is truncated and counted in
  ``torn_tail_truncations``;
* a corrupt record anywhere else raises :class:`LogCorrupt` naming the file and offset;
  nothing is ever skipped silently; a log that comes back shorter at its head than
  the ``HEAD`` marker retention keeps (a deleted first segment) is corrupt too;
* each batch record carries the term it was written in, so the **epochs** (term, first
  seq) are rebuilt from the log itself (:attr:`RedexFile.epochs`);
* the directory is locked (``flock`` on ``LOCK``): a second opener, in this process
  or another, gets :class:`LogLocked`.

Fail-stop storage: any failed write, fsync, truncate or segment roll puts the file in a
FAILED state (logged once, :attr:`RedexFile.failed`); every later write raises
:class:`StorageFailed` and nothing more reaches the disk until the file is reopened.
Truncation works on the open descriptor (``ftruncate``), disk first, then memory.

Durability per ``fsync`` policy: ``"batch"`` fdatasyncs before ``append``/
``append_batch`` return (an acknowledged event survives a power cut); ``"interval"``
fdatasyncs on the first append at least ``fsync_interval_s`` after the previous sync
(and on close); ``"never"`` leaves it to the OS (survives a process crash, not a
machine crash).

Not thread-safe: one owner (a node's event loop) calls it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from netmesh.config import RedexFileConfig
from netmesh.errors import (
    Closed,
    ConfigError,
    Lagged,
    LogCorrupt,
    LogLocked,
    OutOfOrder,
    PayloadTooLarge,
    StorageFailed,
    Truncated,
)
from netmesh.log import record

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".seg"
HEAD_FILE = "HEAD"
LOCK_FILE = "LOCK"


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
        self._lock_fd = -1
        self._failed: StorageFailed | None = None
        #: (term, first seq) of each run of events written in one term, ascending
        self._epochs: list[tuple[int, int]] = []
        #: the term stamped on local appends (the replication runtime sets it)
        self.append_term = 0
        #: retention never removes events at or above this seq (quorum: the commit)
        self._retention_floor: int | None = None
        #: from-seq of every truncation that removed events (subscribers check it)
        self._truncations: list[int] = []
        self.torn_tail_truncations = 0
        #: when set, user appends raise it (replication: NotLeader on a replica)
        self.refusal: Exception | None = None
        #: called after a user append when ``append_pending`` was False; it is set to
        #: True first, and the listener clears it once it has handled the new events
        #: (so a burst of appends costs one call, not one per append)
        self.on_append: Callable[[], None] | None = None
        self.append_pending = False
        self._tails: set[asyncio.Event] = set()
        if self.config.path is not None:
            try:
                self._recover(self.config.path)
            except BaseException:
                self._release()
                raise

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

    @property
    def failed(self) -> StorageFailed | None:
        """The storage error that stopped this file, or None (see the module doc)."""
        return self._failed

    @property
    def epochs(self) -> tuple[tuple[int, int], ...]:
        """``(term, first_seq)`` per term, ascending, from the first retained event on
        (the first epoch may start before ``first_retained_seq``). Rebuilt from the
        records on open."""
        return tuple(self._epochs)

    @property
    def last_term(self) -> int:
        """Term of the last event (0 for an empty file)."""
        return self._epochs[-1][0] if self._epochs else 0

    def term_at(self, seq: int) -> int | None:
        """Term of the retained event ``seq``, or None when it is not held."""
        if not self._first_seq <= seq < self.next_seq:
            return None
        i = bisect.bisect_right(self._epochs, seq, key=lambda e: e[1]) - 1
        return self._epochs[i][0] if i >= 0 else None

    def read_range(self, start: int, end: int) -> list[RedexEvent]:
        """Retained events with ``start <= seq < end``, ascending (empty if none)."""
        payloads, first = self.read_payloads(start, end)
        return [RedexEvent(RedexEntry(first + i, len(p)), p) for i, p in enumerate(payloads)]

    async def tail(self, from_seq: int = 0, max_batch: int = 1024) -> AsyncIterator[RedexEvent]:
        """Every event with seq >= ``from_seq``: first those held (backfill), then each
        new one as it is appended (locally or by replication), with no gap or
        duplicate at the boundary. Ends when the file closes.

        Raises Lagged if events the subscriber needs were dropped by retention, and
        Truncated if replication removed events it had already yielded (never two
        histories mixed, even when the truncation and the new events arrive in the
        same loop turn). Must be iterated on the event loop that appends to the file.
        """
        seq = from_seq
        seen = len(self._truncations)

        def check_truncated() -> None:
            nonlocal seen
            if len(self._truncations) != seen:
                low = min(self._truncations[seen:])
                seen = len(self._truncations)
                if low < seq:
                    raise Truncated(self.name, low)

        while True:
            check_truncated()
            if seq < self._first_seq or seq > self.next_seq:
                raise Lagged(
                    f"{self.name}: tail at seq {seq}, the file holds "
                    f"[{self._first_seq}, {self.next_seq})"
                )
            payloads, first = self.read_payloads(seq, seq + max_batch)
            if payloads:
                generation = len(self._truncations)
                for i, p in enumerate(payloads):
                    if len(self._truncations) != generation:
                        break  # this batch may be stale: check, then read again
                    yield RedexEvent(RedexEntry(first + i, len(p)), p)
                    seq = first + i + 1
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
        """Append one event; returns its seq. Raises PayloadTooLarge, Closed,
        StorageFailed."""
        return self.append_batch([payload])

    def append_batch(self, payloads: list[bytes], expect_seq: int | None = None) -> int:
        """Append events with contiguous seqs, all or nothing; returns the first seq.

        ``expect_seq``: if given, the batch must start at exactly this seq, else
        OutOfOrder is raised. An empty batch appends nothing and returns ``next_seq``.
        The events are stamped with :attr:`append_term`. Raises Closed, StorageFailed,
        PayloadTooLarge, and ``refusal`` when set (replication: NotLeader on a replica).
        """
        self._check_writable()
        if self.refusal is not None:
            raise self.refusal
        first = self.apply_batch(payloads, expect_seq)
        if self.on_append is not None and not self.append_pending:
            self.append_pending = True
            self.on_append()
        return first

    def apply_batch(
        self, payloads: list[bytes], expect_seq: int | None = None, term: int | None = None
    ) -> int:
        """``append_batch`` without the append guard (replicas applying the leader's log);
        ``term``: the term the events were written in (default :attr:`append_term`).
        A term lower than the last event's is refused (OutOfOrder): terms never go back
        within a log (Raft's log matching)."""
        self._check_writable()
        first = self.next_seq
        if expect_seq is not None and expect_seq != first:
            raise OutOfOrder(f"{self.name}: batch starts at {expect_seq}, next_seq is {first}")
        if not payloads:
            return first
        term = self.append_term if term is None else term
        if term < self.last_term:
            raise OutOfOrder(f"{self.name}: batch of term {term} after term {self.last_term}")
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
            self._write(record.encode_batch(first, payloads, term))  # disk first
        self._payloads.extend(payloads)
        self._retained_bytes += size
        if not self._epochs or self._epochs[-1][0] != term:
            self._epochs.append((term, first))
        self._apply_retention()
        if self._fd >= 0 and self._segments[-1].size >= self.config.segment_bytes:
            self._guarded(self._start_segment, self.next_seq)
        if self._tails:
            self._wake_tails()
        return first

    def truncate_from(self, seq: int) -> int:
        """Drop every event with seq >= ``seq``; returns how many were dropped.

        Used by replication to discard a divergent, never-committed suffix. Disk first
        (``ftruncate`` on the open descriptor), then memory; tail subscribers that had
        received a dropped event get Truncated. Raises Closed, StorageFailed.
        """
        self._check_writable()
        seq = max(seq, self._first_seq)
        dropped = self.next_seq - seq
        if dropped <= 0:
            return 0
        if self._fd >= 0:
            self._guarded(self._truncate_disk, seq)
        keep = self._head + (seq - self._first_seq)
        self._retained_bytes -= sum(map(len, self._payloads[keep:]))
        del self._payloads[keep:]
        while self._epochs and self._epochs[-1][1] >= seq:
            self._epochs.pop()
        self._truncations.append(seq)
        self._wake_tails()
        return dropped

    def set_retention_floor(self, seq: int | None) -> None:
        """Retention keeps every event with seq >= ``seq`` (None: no floor). Quorum
        replication sets it to the commit index, so retention never removes events a
        majority does not hold yet (issue 10 §4); raising the floor applies retention."""
        self._retention_floor = seq
        if not self._closed and self._failed is None:
            self._apply_retention()

    def sync(self) -> None:
        """fdatasync the active segment (no-op in memory). Raises StorageFailed."""
        if self._fd >= 0:
            self._check_writable()
            self._guarded(os.fdatasync, self._fd)
            self._last_sync = time.monotonic()

    def close(self) -> None:
        """Sync and close; idempotent. Later appends raise Closed."""
        if self._closed:
            return
        self._closed = True
        self._wake_tails()
        try:
            if self._fd >= 0 and self._failed is None:
                os.fdatasync(self._fd)
        finally:
            self._release()

    def _release(self) -> None:
        for attr in ("_fd", "_lock_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                setattr(self, attr, -1)
                os.close(fd)

    def _check_writable(self) -> None:
        if self._closed:
            raise Closed(f"event file {self.name!r} is closed")
        if self._failed is not None:
            raise self._failed

    def _guarded(self, op: Callable[..., object], *args: object) -> None:
        """Run a storage operation; an OSError stops the file (fail-stop)."""
        try:
            op(*args)
        except OSError as exc:
            raise self._fail(exc) from exc

    def _fail(self, exc: OSError) -> StorageFailed:
        if self._failed is None:
            self._failed = StorageFailed(self.name, exc)
            log.error("%s: storage failed, file stopped until reopened: %s", self.name, exc)
            self._wake_tails()
        return self._failed

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
        if self._retention_floor is not None:
            drop = min(drop, max(0, self._retention_floor - self._first_seq))
        if drop > 0:
            self._drop_head(drop)

    def _drop_head(self, n: int) -> None:
        stop = self._head + n
        self._retained_bytes -= sum(map(len, self._payloads[self._head : stop]))
        self._head = stop
        self._first_seq += n
        if self._head > 4096 and self._head * 2 > len(self._payloads):
            del self._payloads[: self._head]  # amortised O(1) per dropped event
            self._head = 0
        while len(self._epochs) > 1 and self._epochs[1][1] <= self._first_seq:
            self._epochs.pop(0)
        if self._fd >= 0:
            self._guarded(self._delete_old_segments)

    # -- disk ------------------------------------------------------------------------
    def _write(self, buf: bytes) -> None:
        seg = self._segments[-1]
        view = memoryview(buf)
        written = 0
        try:
            while written < len(buf):
                written += os.write(self._fd, view[written:])
            policy = self.config.fsync
            if policy == "batch" or (
                policy == "interval"
                and time.monotonic() - self._last_sync >= self.config.fsync_interval_s
            ):
                os.fdatasync(self._fd)
                self._last_sync = time.monotonic()
        except OSError as exc:
            with contextlib.suppress(OSError):  # no partial batch left (best effort)
                os.ftruncate(self._fd, seg.size)
            raise self._fail(exc) from exc
        seg.size += written

    def _recover(self, directory: str) -> None:
        try:
            os.makedirs(directory, exist_ok=True)
            self._lock_fd = os.open(
                os.path.join(directory, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644
            )
        except OSError as exc:
            raise ConfigError(f"path {directory!r} is not a usable directory: {exc}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LogLocked(f"{directory}: the event file is open elsewhere (LOCK held)") from None
        head = self._read_head(directory)
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
        if names and int(names[0][: -len(SEGMENT_SUFFIX)]) > head:
            raise LogCorrupt(
                directory,
                0,
                f"segments before seq {int(names[0][:20])} are missing (retention kept"
                f" from seq {head}, {HEAD_FILE})",
            )
        if not names and head > 0:
            raise LogCorrupt(directory, 0, f"no segment files, but {HEAD_FILE} says seq {head}")
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
        if head > self._first_seq:  # retention was cut short after writing HEAD
            self._drop_head(min(head, self.next_seq) - self._first_seq)
        self._apply_retention()

    def _read_head(self, directory: str) -> int:
        path = os.path.join(directory, HEAD_FILE)
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            return 0
        res = record.scan(raw)
        if res.end is not record.ScanEnd.CLEAN or len(res.batches) != 1:
            raise LogCorrupt(path, 0, f"unreadable retention head: {res.reason or 'empty'}")
        return res.batches[0].first_seq

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
        res = record.scan(buf, record.FILE_HEADER_SIZE, first_seq, self.last_term)
        if res.end is record.ScanEnd.CORRUPT or (res.end is record.ScanEnd.TORN and not last):
            raise LogCorrupt(path, res.consumed, res.reason)
        if res.end is record.ScanEnd.TORN:
            self._count_torn(path, len(buf) - res.consumed, res.consumed)
            os.truncate(path, res.consumed)
        if not self._segments:
            self._first_seq = first_seq
        for b in res.batches:
            self._payloads.extend(b.payloads)
            self._retained_bytes += sum(map(len, b.payloads))
            if b.payloads and (not self._epochs or self._epochs[-1][0] != b.term):
                self._epochs.append((b.term, b.first_seq))
        self._segments.append(_Segment(first_seq, path, res.consumed))
        return res.batches[-1].end_seq if res.batches else first_seq

    def _count_torn(self, path: str, nbytes: int, offset: int) -> None:
        self.torn_tail_truncations += 1
        log.warning("%s: truncated a torn tail of %d bytes at offset %d", path, nbytes, offset)

    def _start_segment(self, first_seq: int) -> None:
        assert self.config.path is not None
        if self._fd >= 0:
            os.fdatasync(self._fd)  # the old segment is complete: durable before the new one
        path = os.path.join(self.config.path, f"{first_seq:020d}{SEGMENT_SUFFIX}")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, record.FILE_HEADER)
            os.fdatasync(fd)
            _fsync_dir(self.config.path)
        except BaseException:
            os.close(fd)
            raise
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self._segments.append(_Segment(first_seq, path, record.FILE_HEADER_SIZE))

    def _delete_old_segments(self) -> None:
        # a segment may go once the next one starts at or below the first retained seq;
        # HEAD records the retained head first, so a missing first segment is detectable
        doomed = 0
        while doomed + 1 < len(self._segments) and (
            self._segments[doomed + 1].first_seq <= self._first_seq
        ):
            doomed += 1
        if not doomed:
            return
        assert self.config.path is not None
        _write_atomic(
            os.path.join(self.config.path, HEAD_FILE),
            record.encode_batch(self._segments[doomed].first_seq, [b"head"]),
        )
        for seg in self._segments[:doomed]:
            os.unlink(seg.path)
        del self._segments[:doomed]
        _fsync_dir(self.config.path)

    def _truncate_disk(self, seq: int) -> None:
        """Cut the log at ``seq`` on disk: later segments go, the segment holding
        ``seq`` is cut at the start of its batch (``ftruncate`` on an open descriptor)
        and the batch's events below ``seq`` are written back with their term."""
        assert self.config.path is not None
        idx = len(self._segments) - 1
        while idx > 0 and self._segments[idx].first_seq > seq:
            idx -= 1
        seg = self._segments[idx]
        with open(seg.path, "rb") as fh:
            buf = fh.read(seg.size)
        res = record.scan(buf, record.FILE_HEADER_SIZE, seg.first_seq)
        cut, keep, term = seg.size, [], 0
        for b in res.batches:
            if b.end_seq > seq:
                cut, keep, term = b.offset, b.payloads[: seq - b.first_seq], b.term
                break
        fd = (
            self._fd
            if idx == len(self._segments) - 1
            else os.open(seg.path, os.O_WRONLY | os.O_APPEND)
        )
        try:
            os.ftruncate(fd, cut)
            tail = record.encode_batch(seq - len(keep), keep, term)
            if tail:
                os.write(fd, tail)
            os.fdatasync(fd)
        except BaseException:
            if fd != self._fd:
                os.close(fd)
            raise
        for later in self._segments[idx + 1 :]:
            os.unlink(later.path)
        if fd != self._fd:
            os.close(self._fd)
            self._fd = fd
        del self._segments[idx + 1 :]
        seg.size = cut + len(tail)
        _fsync_dir(self.config.path)


def _write_atomic(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
