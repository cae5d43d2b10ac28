"""RedexFile: one append-only event file (a channel's log), in memory or on disk.

Sequence numbers start at 0 and grow by one per event. In memory (no ``path``) the
retained payloads are chunks, bounded by retention: lists of ``bytes`` (single appends,
batches of objects) and batches of ring frames kept as the ring held them, one ``bytes``
per batch (:meth:`RedexFile.append_frames`; reads cut copies out of them; a replica
keeps a replicated batch as it arrived, :meth:`RedexFile.apply_packed`). With
``RedexFileConfig(path=dir)`` the log lives in segment files in ``dir`` (format:
:mod:`netmesh.log.record`), one ``write`` per batch, and **reads are served from the
files** (``pread`` located through a sparse seq -> offset index per segment, rebuilt and
checked against the records on open), with the newest ``cache_bytes`` of payloads also
kept in memory. What a persisted file holds in memory is bounded: 4 bytes per retained
event (its length), 24 bytes per ``index_interval_bytes`` of records, the cache, and the
epochs. On reopen:

* segments are restored from their index sidecars (``<first seq>.idx``: written when a
  segment is sealed, when the file closes cleanly, and as an unsynced checkpoint every
  ``CHECKPOINT_BYTES`` of the active segment), each checked against its segment; only
  the records a sidecar does not cover are scanned (after a crash: those past the last
  checkpoint), so reopening takes about the same time at any log size;
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
``append_batch`` return (an acknowledged event survives a power cut), or, with a node's
group commit (:meth:`RedexFile.use_group_commit`, :mod:`netmesh.log.commit`), in one
fsync round per loop turn off the event loop: appends return once written and
:attr:`RedexFile.durable_seq` / :meth:`RedexFile.when_durable` gate acknowledgements;
``"interval"``
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
import heapq
import logging
import os
import struct
import time
from array import array
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from itertools import accumulate, pairwise
from typing import Any, Protocol

import msgpack
from crc32c import crc32c

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
from netmesh.log.commit import GroupCommitter
from netmesh.log.packed import PackedPayloads

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".seg"
HEAD_FILE = "HEAD"
LOCK_FILE = "LOCK"
READ_BYTES = 1 << 20  # bytes per pread of cold records (raw reads: at least)
INDEX_SUFFIX = ".idx"  # a sealed segment's index sidecar (or the active one's checkpoint)
#: the active segment gets a checkpoint sidecar every this many bytes (see _maybe_checkpoint)
CHECKPOINT_BYTES = 8 << 20
RESET_MARK = b"reset"  # the payload of a HEAD marker written by reset_to


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
    """One segment file: its sparse index (seq and offset of the batch records that
    start an index interval; the first batch is always indexed) and a read descriptor."""

    first_seq: int
    path: str
    size: int
    idx_seq: array[int] = field(default_factory=lambda: array("Q"))
    idx_off: array[int] = field(default_factory=lambda: array("Q"))
    rfd: int = -1

    def index(self, seq: int, offset: int, interval: int) -> None:
        if not self.idx_off or offset - self.idx_off[-1] >= interval:
            self.idx_seq.append(seq)
            self.idx_off.append(offset)

    def cut_index(self, offset: int) -> None:
        n = bisect.bisect_left(self.idx_off, offset)
        del self.idx_seq[n:]
        del self.idx_off[n:]

    def close_reader(self) -> None:
        if self.rfd >= 0:
            fd, self.rfd = self.rfd, -1
            os.close(fd)


@dataclass(slots=True)
class _RawWindow:
    """Records one :meth:`RedexFile.read_records` pread read and checked (CRCs, seqs,
    terms: :func:`record.scan_index`): ``buf`` is segment ``seg`` from offset ``off``
    to ``end_off`` (seq ``end_seq``); per record ``firsts`` (first seqs) and
    ``offsets`` (in ``buf``), every event's length in ``lengths``; valid while the
    file's truncation generation is ``gen``. Consecutive chunks of a catch-up (a
    record larger than a chunk included) are cut from it without reading or checking
    the bytes again; ``sums``: prefix sums of the lengths of the records sliced so
    far (by record index)."""

    gen: int
    seg: _Segment
    off: int
    buf: bytes
    firsts: array[int]
    offsets: array[int]
    lengths: array[int]
    end_off: int
    end_seq: int
    sums: dict[int, list[int]] = field(default_factory=dict)


class RedexFile:
    """An append-only event file; see the module docstring for the guarantees."""

    def __init__(
        self,
        name: str,
        config: RedexFileConfig | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        """Open (and for a persisted file, recover) the file ``name``.

        ``clock``: append times in Unix nanoseconds (recorded per batch; retention by
        age compares them with it).

        Raises ChannelNameError, ConfigError for a bad config or an unusable ``path``,
        LogCorrupt for a corrupt or incomplete log, LogLocked when it is open elsewhere.
        """
        from netmesh.channel import ChannelName  # validated where it enters (issue 16)

        self.name = str(ChannelName(name))
        self.config = config or RedexFileConfig()
        self.config.validate()
        self._persisted = self.config.path is not None
        self._mem = _MemStore()  # in memory only: the retained payloads
        self._open: list[bytes] | None = None  # the fast path's list (_mem.open)
        self._lens = array("I")  # the length of every retained event (both modes)
        self._head = 0  # index in _lens of the first retained event
        self._first_seq = 0  # seq of the first retained event
        self._next_seq = 0
        self._retained_bytes = 0
        self._closed = False
        self._fd = -1
        self._segments: list[_Segment] = []
        self._seg_firsts: list[int] = []
        # persisted: recent payloads, newest last (first seqs, batches, head index)
        self._cache_seqs: list[int] = []
        self._cache: list[list[bytes]] = []
        self._cache_head = 0
        self._cache_bytes = 0
        self._last_sync = 0.0
        self._lock_fd = -1
        self._failed: StorageFailed | None = None
        #: (term, first seq) of each run of events written in one term, ascending
        self._epochs: list[tuple[int, int]] = []
        #: [first seq, newest append time ns] per index interval: retention by age
        self._ages: deque[list[int]] = deque()
        self._ages_bytes = 0  # bytes appended since the last _ages entry
        self._last_append_ns = 0
        self.clock = clock
        # the one-event fast path of append() is allowed (see _refresh_fast)
        self._fast = False
        self._max_payload = self.config.max_payload
        self._append_term = 0
        #: retention never removes events at or above this seq (quorum: the commit)
        self._retention_floor: int | None = None
        #: from-seq of every truncation that removed events (subscribers check it)
        self._truncations: list[int] = []
        self.torn_tail_truncations = 0
        self._refusal: Exception | None = None
        #: called after a user append when ``append_pending`` was False; it is set to
        #: True first, and the listener clears it once it has handled the new events
        #: (so a burst of appends costs one call, not one per append)
        self._on_append: Callable[[], None] | None = None
        self.append_pending = False
        self._tails: set[asyncio.Event] = set()
        self._producers: dict[int, tuple[int, int]] | None = None  # built on first use
        self._producers_at = -1
        # group commit (netmesh.log.commit): the writes below _durable are fdatasynced
        self._committer: GroupCommitter | None = None
        self._durable = 0
        self._sync_gen = 0  # bumped when the log is cut: an older round's seq is stale
        self._durable_waiters: list[tuple[int, int, Callable[[], None]]] = []
        self._durable_no = 0
        self._durable_listeners: list[Callable[[], None]] = []
        self._ckpt_at = 0  # active segment bytes covered by its last checkpoint
        self._pending_ckpt = False
        self._job_at: tuple[int, _Segment, int, int] | None = None  # gen, seg, size, seq
        #: the last cold read (segment, offset, end offset, records); cut on truncation
        self._last_read: tuple[_Segment, int, int, list[record.Batch]] | None = None
        #: the last raw window read_records read (catch-up from disk; see _RawWindow)
        self._raw_win: _RawWindow | None = None
        if self.config.path is not None:
            try:
                self._recover(self.config.path)
            except BaseException:
                self._release()
                raise
        self._durable = self._next_seq
        self._refresh_fast()

    # -- reading ---------------------------------------------------------------------
    @property
    def next_seq(self) -> int:
        """The seq the next appended event gets (= events ever appended)."""
        return self._next_seq

    @property
    def first_retained_seq(self) -> int:
        """Seq of the oldest retained event (== next_seq when empty)."""
        return self._first_seq

    def __len__(self) -> int:
        return self._next_seq - self._first_seq

    @property
    def retained_bytes(self) -> int:
        """Payload bytes of the retained events."""
        return self._retained_bytes

    @property
    def cached_bytes(self) -> int:
        """Payload bytes a persisted file holds in memory (bounded by ``cache_bytes``)."""
        return self._cache_bytes if self._persisted else self._retained_bytes

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
        if not self._first_seq <= seq < self._next_seq:
            return None
        i = bisect.bisect_right(self._epochs, seq, key=lambda e: e[1]) - 1
        return self._epochs[i][0] if i >= 0 else None

    def read_range(self, start: int, end: int) -> list[RedexEvent]:
        """Retained events with ``start <= seq < end``, ascending (empty if none)."""
        payloads, first = self.read_published(start, end)
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
            payloads, first = self.read_published(seq, seq + max_batch)
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
            self._fast = False
            try:
                await wakeup.wait()
            finally:
                self._tails.discard(wakeup)
                self._refresh_fast()

    @property
    def truncation_generation(self) -> int:
        """How many truncations removed events so far (see :meth:`truncated_since`)."""
        return len(self._truncations)

    def truncated_since(self, generation: int) -> int | None:
        """The lowest seq removed by a truncation after ``generation``, or None."""
        later = self._truncations[generation:]
        return min(later) if later else None

    async def wait_changed(self, timeout: float | None = None) -> None:
        """Wait until events are appended or truncated, the file closes or fails, or
        ``timeout`` seconds pass (a reader outside :meth:`tail` follows the file so)."""
        if self._closed or self._failed is not None:
            return
        wakeup = asyncio.Event()
        self._tails.add(wakeup)
        self._fast = False
        try:
            await asyncio.wait_for(wakeup.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            self._tails.discard(wakeup)
            self._refresh_fast()

    def _wake_tails(self) -> None:
        for wakeup in self._tails:
            wakeup.set()

    def read_published(self, start: int, end: int) -> tuple[list[bytes], int]:
        """:meth:`read_payloads` as the producers published them: without the envelope
        of an ``idempotence`` file (the same list otherwise)."""
        payloads, first = self.read_payloads(start, end)
        if self.config.idempotence:
            payloads = [p[ENVELOPE.size :] for p in payloads]
        return payloads, first

    # -- idempotent producers (issue 12) -------------------------------------------------
    def append_idempotent(
        self, payloads: list[bytes], producer: int, batch_seq: int
    ) -> tuple[int, bool]:
        """Append a batch of producer ``producer`` (a non-zero u64) numbered ``batch_seq``
        (increasing per producer), unless this log already holds it: returns (seq of the
        batch's last event, False), or (seq of the producer's newest stored event, True)
        for a duplicate. The de-duplication state is rebuilt from the log (the envelopes
        of the last ``DEDUP_WINDOW`` events), so a new leader knows what the old one
        stored; a batch older than that window is not recognised. Raises like
        :meth:`append_batch`, and ConfigError on a file without ``idempotence``."""
        if not self.config.idempotence:
            raise ConfigError(
                f"{self.name}: idempotent producers need RedexFileConfig(idempotence=True)"
            )
        if not 0 < producer < 1 << 64 or batch_seq < 0:
            raise ConfigError(f"bad producer id {producer} or batch seq {batch_seq}")
        table = self._producer_table()
        held = table.get(producer)
        if held is not None and batch_seq <= held[0]:
            return held[1], True
        first = self.append_batch(_envelope(payloads, producer, batch_seq))
        last = first + len(payloads) - 1
        table[producer] = (batch_seq, last)
        return last, False

    def _producer_table(self) -> dict[int, tuple[int, int]]:
        """producer id -> (newest batch seq, seq of its last event), from the log."""
        if self._producers is None or self._producers_at != self.truncation_generation:
            table: dict[int, tuple[int, int]] = {}
            lo = max(self._first_seq, self._next_seq - DEDUP_WINDOW)
            seq = lo
            while seq < self._next_seq:
                payloads, first = self.read_payloads(seq, min(self._next_seq, seq + 65536))
                if not payloads:
                    break
                _scan_envelopes(table, payloads, first)
                seq = first + len(payloads)
            self._producers, self._producers_at = table, self.truncation_generation
        return self._producers

    def read_payloads(
        self, start: int, end: int, max_bytes: int | None = None
    ) -> tuple[list[bytes], int]:
        """Like read_range without per-event objects: (payloads, seq of the first one).

        ``max_bytes``: stop before the payload bytes pass it (at least one event is
        returned): a sync chunk reads what it sends, not a fixed event count.
        In memory: a slice. Persisted: from the recent-payload cache when it holds
        ``start``, else from the segment files (``pread`` of the records that hold the
        range, located through the sparse index; each record read is checked against
        its CRCs, LogCorrupt otherwise)."""
        lo = max(start, self._first_seq)
        hi = min(end, self._next_seq)
        if hi <= lo:
            return [], lo
        if max_bytes is not None:
            hi = lo + self._fit(lo, hi, max_bytes)
        if not self._persisted:
            return self._mem.read(lo, hi, self._lens, self._head - self._first_seq), lo
        if self._cache_head < len(self._cache_seqs) and lo >= self._cache_seqs[self._cache_head]:
            return self._read_cache(lo, hi), lo
        return self._read_disk(lo, hi), lo

    def read_packed(
        self, start: int, end: int, max_bytes: int | None = None
    ) -> tuple[PackedPayloads, int]:
        """:meth:`read_payloads` as one :class:`~netmesh.log.packed.PackedPayloads`
        (lengths, then payloads, in one buffer): what a replication push or sync chunk
        sends. In memory no object per event is made: the lengths are a slice of the
        file's length array and the payloads are joined from the stored batches (a
        view per ring frame, a ``bytes`` per event only for chunks stored as lists).
        Persisted: :meth:`read_payloads`, packed."""
        lo = max(start, self._first_seq)
        hi = min(end, self._next_seq)
        if hi <= lo:
            return PackedPayloads(array("I"), b""), lo
        size = None
        if max_bytes is not None:
            n, size = self._fit_sized(lo, hi, max_bytes)
            hi = lo + n
        if self._persisted:
            return PackedPayloads.of(self.read_payloads(lo, hi)[0]), lo
        base = self._head - self._first_seq
        parts = self._mem.read_parts(lo, hi, self._lens, base)
        return PackedPayloads.join(self._lens[base + lo : base + hi], parts, size), lo

    def _fit(self, lo: int, hi: int, max_bytes: int) -> int:
        """How many events from ``lo`` (below ``hi``) fit in ``max_bytes`` (>= 1)."""
        return self._fit_sized(lo, hi, max_bytes)[0]

    def _fit_sized(self, lo: int, hi: int, max_bytes: int) -> tuple[int, int | None]:
        """:meth:`_fit`, and the payload bytes of those events when all of ``[lo, hi)``
        fit (None otherwise). Each length is summed once: windows of 64, 256, ...
        events from where the previous one ended, until one passes ``max_bytes``."""
        base = self._head - self._first_seq
        total, a, k = 0, lo, 64
        while True:
            b = min(hi, a + k)
            part = self._lens[base + a : base + b]
            size = sum(part)
            if total + size > max_bytes:
                fit = bisect.bisect_right(list(accumulate(part, initial=total)), max_bytes)
                return max(1, a - lo + fit - 1), None
            total += size
            if b >= hi:
                return hi - lo, total
            a, k = b, k * 4

    def _read_cache(self, lo: int, hi: int) -> list[bytes]:
        seqs, batches = self._cache_seqs, self._cache
        i = bisect.bisect_right(seqs, lo, self._cache_head) - 1
        out: list[bytes] = []
        seq = lo
        while seq < hi and i < len(seqs):
            first, batch = seqs[i], batches[i]
            out += batch[seq - first : hi - first]
            seq = first + len(batch)
            i += 1
        return out

    def _read_disk(self, lo: int, hi: int) -> list[bytes]:
        out: list[bytes] = []
        seq = lo
        si = bisect.bisect_right(self._seg_firsts, seq) - 1
        while seq < hi and 0 <= si < len(self._segments):
            seg = self._segments[si]
            j = bisect.bisect_right(seg.idx_seq, seq) - 1
            off = seg.idx_off[j] if j >= 0 else record.FILE_HEADER_SIZE
            if seg.rfd < 0:
                seg.rfd = os.open(seg.path, os.O_RDONLY)
            while seq < hi and off < seg.size:
                # the records that hold [seq, hi), plus what precedes seq in its interval
                base = self._head - self._first_seq
                want = (
                    sum(self._lens[base + seq : base + hi])
                    + (record.LENGTH_SIZE + record.RECORD_HEADER_SIZE) * (hi - seq)
                    + self.config.index_interval_bytes
                )
                batches, off = self._read_records(seg, off, want)
                for b in batches:
                    if b.end_seq <= seq:
                        continue
                    out += b.payloads[seq - b.first_seq : hi - b.first_seq]
                    seq = min(hi, b.end_seq)
                    if seq >= hi:
                        break
            si += 1
        return out

    def _read_records(
        self, seg: _Segment, off: int, want: int = READ_BYTES
    ) -> tuple[list[record.Batch], int]:
        """Whole batch records from ``off`` (about ``want`` bytes of them, at least one).
        The last result is kept: consecutive sync chunks inside one large record read
        and check it once."""
        last = self._last_read
        if last is not None and last[0] is seg and last[1] == off:
            return last[3], last[2]
        batches, end = self._scan_records(seg, off, want)
        self._last_read = (seg, off, end, batches)
        return batches, end

    def _scan_records(self, seg: _Segment, off: int, want: int) -> tuple[list[record.Batch], int]:
        buf = os.pread(seg.rfd, min(max(want, 1 << 16), seg.size - off), off)
        res = record.scan(buf)
        if not res.batches and res.end is record.ScanEnd.TORN and len(buf) >= 4:
            need = record.RECORD_HEADER_SIZE + int.from_bytes(buf[:4], "little")
            buf = os.pread(seg.rfd, min(need, seg.size - off), off)  # one large record
            res = record.scan(buf)
        if not res.batches:
            raise LogCorrupt(seg.path, off, res.reason or "unreadable record")
        return res.batches, off + res.consumed

    # -- writing ---------------------------------------------------------------------
    # -- the append guard and listener (the replication runtime sets them) ------------
    @property
    def refusal(self) -> Exception | None:
        """When set, user appends raise it (replication: NotLeader on a replica)."""
        return self._refusal

    @refusal.setter
    def refusal(self, exc: Exception | None) -> None:
        self._refusal = exc
        self._refresh_fast()

    @property
    def on_append(self) -> Callable[[], None] | None:
        """Called after a user append when ``append_pending`` was False; it is set to
        True first, and the listener clears it once it has handled the new events
        (so a burst of appends costs one call, not one per append)."""
        return self._on_append

    @on_append.setter
    def on_append(self, callback: Callable[[], None] | None) -> None:
        self._on_append = callback
        self._refresh_fast()

    @property
    def append_term(self) -> int:
        """The term stamped on local appends (the replication runtime sets it)."""
        return self._append_term

    @append_term.setter
    def append_term(self, term: int) -> None:
        self._append_term = term
        self._refresh_fast()

    def _refresh_fast(self) -> None:
        """Allow :meth:`append`'s one-event fast path only while it has nothing to do
        but store the payload: an in-memory file, open and not failed, no refusal,
        no listener, no envelope, no retention, no tail waiting, and an epoch of the
        append term already open. Anything else takes :meth:`append_batch`, which does
        every check. Called whenever one of those inputs changes."""
        cfg = self.config
        self._open = self._mem.open
        self._fast = (
            self._open is not None
            and not self._persisted
            and not self._closed
            and self._failed is None
            and self._refusal is None
            and self._on_append is None
            and not cfg.idempotence
            and cfg.retention_max_events is None
            and cfg.retention_max_bytes is None
            and cfg.retention_max_age_s is None
            and not self._tails
            and bool(self._epochs)
            and self._epochs[-1][0] == self._append_term
        )

    def append(self, payload: bytes) -> int:
        """Append one event; returns its seq. Raises PayloadTooLarge, Closed,
        StorageFailed, and ``refusal`` when set.

        In memory, with nothing else to do (see :meth:`_refresh_fast`), the event is
        stored without building a batch (about 4x cheaper; the Rust reference appends
        one event with no batch either); every other case is ``append_batch([payload])``.
        """
        if self._fast and type(payload) is bytes and len(payload) <= self._max_payload:
            seq = self._next_seq
            self._open.append(payload)  # type: ignore[union-attr]  # _fast: not None
            self._lens.append(len(payload))
            self._retained_bytes += len(payload)
            self._next_seq = seq + 1
            return seq
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
        if self.config.idempotence and not _enveloped(payloads):
            payloads = _envelope(payloads, 0, 0)  # a plain producer: producer id 0
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
        first = self._next_seq
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
            lens: array[int] | list[int] = [size]
        else:  # per batch, not per event: C-level map/sum/set, no Python loop
            lens = array("I", map(len, payloads))
            size = sum(lens)
            # the largest only matters when the sum passes the limit (no pass otherwise)
            biggest = max(lens) if size > self.config.max_payload else size
            if set(map(type, payloads)) != {bytes}:  # immutable copies of anything else
                payloads = [bytes(p) for p in payloads]
        if biggest > self.config.max_payload:
            raise PayloadTooLarge(biggest, self.config.max_payload)
        now = self.clock()
        fresh = False
        if self._persisted:
            offset = self._segments[-1].size
            fresh = offset == record.FILE_HEADER_SIZE
            self._write(record.encode_batch(first, payloads, term, now))  # disk first
            self._segments[-1].index(first, offset, self.config.index_interval_bytes)
            self._cache_add(first, payloads, size)
        elif self._mem.extend(first, payloads):
            self._refresh_fast()  # a new list: the fast path appends to it
        self._lens.extend(lens)
        self._next_seq = first + len(payloads)
        self._retained_bytes += size
        if self._producers is not None:  # replicated batches keep the table current
            _scan_envelopes(self._producers, payloads, first)
        self._appended(first, term, now, size, fresh)
        return first

    def append_frames(self, frames: Frames) -> int:
        """Append the records of ring frames (:class:`Frames`, as
        ``ShmRing.take_frames`` copied them out of a ring) as one batch; returns the
        first seq. Like :meth:`append_batch` (the append guard, ``on_append``, stamped
        with :attr:`append_term`; raises Closed, StorageFailed, PayloadTooLarge,
        ``refusal``), but in memory the frames are kept as they are: one ``bytes`` per
        batch, no object per event; reads cut the payloads out (copies: a reader never
        holds the ring's memory, nor the batch's). A persisted or ``idempotence`` file
        takes ``frames.payloads()`` through :meth:`append_batch`."""
        self._check_writable()
        if self._refusal is not None:
            raise self._refusal
        if self._persisted or self.config.idempotence:
            return self.append_batch(frames.payloads())
        first = self._next_seq
        n = frames.count
        if not n:
            return first
        term = self._append_term
        if term < self.last_term:
            raise OutOfOrder(f"{self.name}: batch of term {term} after term {self.last_term}")
        size, limit = frames.size, self.config.max_payload
        if size > limit and max(frames.lens) > limit:  # no pass while the sum fits
            raise PayloadTooLarge(max(frames.lens), limit)
        now = self.clock()
        self._mem.add_frames(first, frames)
        self._open = None
        self._fast = False  # the next single append opens a list (append_batch)
        self._lens.extend(frames.lens)
        self._next_seq = first + n
        self._retained_bytes += size
        self._appended(first, term, now, size, False)
        if self._on_append is not None and not self.append_pending:
            self.append_pending = True
            self._on_append()
        return first

    def apply_packed(
        self, packed: PackedPayloads, expect_seq: int | None = None, term: int | None = None
    ) -> int:
        """:meth:`apply_batch` of a :class:`~netmesh.log.packed.PackedPayloads` (a
        replica applying a replicated batch): in memory it is stored as it came, one
        buffer, no object per event (as :meth:`append_frames` stores ring frames); a
        persisted file, or one whose producer table is in use (idempotence), takes its
        events as a list through :meth:`apply_batch`. Same checks and errors."""
        if self._persisted or self._producers is not None or self.config.idempotence:
            return self.apply_batch(packed.to_list(), expect_seq, term)
        self._check_writable()
        first = self._next_seq
        if expect_seq is not None and expect_seq != first:
            raise OutOfOrder(f"{self.name}: batch starts at {expect_seq}, next_seq is {first}")
        n = len(packed)
        if not n:
            return first
        term = self._append_term if term is None else term
        if term < self.last_term:
            raise OutOfOrder(f"{self.name}: batch of term {term} after term {self.last_term}")
        size, limit, lens = packed.size, self.config.max_payload, packed.lens
        if size > limit and max(lens) > limit:  # no pass while the sum fits
            raise PayloadTooLarge(max(lens), limit)
        now = self.clock()
        self._mem.add_packed(first, packed)
        self._open = None
        self._fast = False  # the next single append opens a list (append_batch)
        self._lens.extend(lens)
        self._next_seq = first + n
        self._retained_bytes += size
        self._appended(first, term, now, size, False)
        return first

    def _appended(self, first: int, term: int, now: int, size: int, fresh: bool) -> None:
        """After a batch from ``first`` (``size`` payload bytes) is stored: epochs,
        ages, retention, checkpoint and segment roll, tail wake-ups."""
        if not self._epochs or self._epochs[-1][0] != term:
            self._epochs.append((term, first))
            self._refresh_fast()
        self._note_age(first, now, size, fresh)
        self._apply_retention()
        if self._pending_ckpt:
            self._pending_ckpt = False
            self._maybe_checkpoint(self._segments[-1].size, self._next_seq)
        if self._persisted and self._segments[-1].size >= self.config.segment_bytes:
            self._guarded(self._start_segment, self._next_seq)
        if self._tails:
            self._wake_tails()

    # -- raw records (catch-up from disk, issue 15 §5) ------------------------------------
    def read_records(
        self, from_seq: int, max_bytes: int, end_seq: int | None = None
    ) -> tuple[int, bytes, int] | None:
        """Batch records as stored, from ``from_seq``: (events, record bytes, payload
        bytes), whole records added while their payloads stay within ``max_bytes`` and
        their events below ``end_seq`` (and ``next_seq``), never past the end of a
        segment. A record that starts before ``from_seq``, or that does not fit, is
        sliced (:func:`record.slice_record`: its events in range, one new record with
        the same term and time; a record is sliced to fill a chunk that is less than
        half full, and always when nothing else would fit): so a chunk holds at least
        one event and, unless its first event alone is larger, at most ``max_bytes``
        of payloads, whatever the size of the records on disk. None when ``from_seq``
        is not held or the file is in memory: the caller then reads payloads.

        Reads go through a window (:class:`_RawWindow`, at least ``READ_BYTES`` or one
        whole record, every record in it checked -- CRCs, seqs, terms -- once, when it
        is read; LogCorrupt otherwise): consecutive chunks of a catch-up are cut from
        the same window, and the next window starts where the last one ended, not at
        the sparse index."""
        limit = self._next_seq if end_seq is None else min(end_seq, self._next_seq)
        if not self._persisted or not self._first_seq <= from_seq < limit:
            return None
        si = bisect.bisect_right(self._seg_firsts, from_seq) - 1
        if si < 0:
            return None
        seg = self._segments[si]
        gen = self.truncation_generation
        win = self._raw_win
        if (
            win is None
            or win.gen != gen
            or win.seg is not seg
            or not win.firsts[0] <= from_seq < win.end_seq
        ):
            if win is not None and win.gen == gen and win.seg is seg and from_seq == win.end_seq:
                off = win.end_off  # the chunk before ended this window: read on from it
            else:
                j = bisect.bisect_right(seg.idx_seq, from_seq) - 1
                off = seg.idx_off[j] if j >= 0 else record.FILE_HEADER_SIZE
            win = self._raw_window(seg, off, from_seq, max(READ_BYTES, 4 * max_bytes), gen)
            if win is None:
                return None
            self._raw_win = win
        else:  # less than a chunk left in the window: read on from the record start
            start = win.off + win.offsets[bisect.bisect_right(win.firsts, from_seq) - 1]
            if win.end_off - start < max_bytes and win.end_off < seg.size and win.end_seq < limit:
                win = self._raw_window(seg, start, from_seq, max(READ_BYTES, 4 * max_bytes), gen)
                if win is None:
                    return None
                self._raw_win = win
        return _raw_chunk(win, from_seq, max_bytes, limit)

    def _raw_window(
        self, seg: _Segment, off: int, from_seq: int, want: int, gen: int
    ) -> _RawWindow | None:
        """Read records of ``seg`` from ``off`` (a record start at or before
        ``from_seq``) until a window holds ``from_seq``: about ``want`` bytes, or the
        whole record when one is larger. None if the segment ends first."""
        if seg.rfd < 0:
            seg.rfd = os.open(seg.path, os.O_RDONLY)
        while off < seg.size:
            size = min(want, seg.size - off)
            head = os.pread(seg.rfd, 4, off)  # the first record's body_len
            if len(head) == 4:  # (checked by the scan with its header CRC)
                need = record.RECORD_HEADER_SIZE + int.from_bytes(head, "little")
                if size < need <= seg.size - off:  # one record larger than want
                    size = need
            buf = os.pread(seg.rfd, size, off)
            res = record.scan_index(buf)
            if not res.first_seqs:
                raise LogCorrupt(seg.path, off, res.reason or "unreadable record")
            end_seq = res.first_seqs[0] + len(res.lengths)
            if end_seq > from_seq:
                firsts, offsets, lengths = res.first_seqs, res.offsets, res.lengths
                end = off + res.consumed
                return _RawWindow(gen, seg, off, buf, firsts, offsets, lengths, end, end_seq)
            off += res.consumed
        return None

    def append_records(
        self,
        first_seq: int,
        count: int,
        records: bytes,
        runs: tuple[tuple[int, int, int], ...] | list[tuple[int, int, int]] = (),
    ) -> None:
        """Append another log's batch records as they are (a replica catching up from
        its leader's disk): ``count`` events from ``first_seq`` (= ``next_seq``).
        Every record is checked first -- header and body CRC, contiguous seqs from
        ``first_seq``, terms never below the last one, each record's term equal to the
        term its seqs have in ``runs`` ((start, end, term) of the adopted epochs), the
        payload size limit -- and the chunk is refused whole (OutOfOrder; nothing
        written) if any fails. Then one ``write``, and the index, epochs and ages come
        from the records. Raises Closed, StorageFailed, PayloadTooLarge, OutOfOrder."""
        self._check_writable()
        if first_seq != self._next_seq:
            raise OutOfOrder(
                f"{self.name}: records start at {first_seq}, next_seq is {self._next_seq}"
            )
        res = record.scan_index(records, 0, first_seq, self.last_term)
        if res.end is not record.ScanEnd.CLEAN or len(res.lengths) != count or not count:
            why = res.reason or f"{len(res.lengths)} events, {count} announced"
            raise OutOfOrder(f"{self.name}: refused a chunk of records at seq {first_seq}: {why}")
        firsts, terms = res.first_seqs, res.terms
        end = first_seq + count
        k = 0
        for i, first in enumerate(firsts):
            last = (firsts[i + 1] if i + 1 < len(firsts) else end) - 1
            while k < len(runs) and runs[k][1] <= first:
                k += 1
            if (
                k >= len(runs)
                or not runs[k][0] <= first <= last < runs[k][1]
                or (runs[k][2] != terms[i])
            ):
                raise OutOfOrder(
                    f"{self.name}: refused a chunk of records: the record at seq {first} has"
                    f" term {terms[i]}, the leader's epochs another"
                )
        if max(res.lengths) > self.config.max_payload:
            raise PayloadTooLarge(max(res.lengths), self.config.max_payload)
        if not self._persisted or self.config.idempotence:  # payload objects needed
            for b in record.scan(records).batches:
                self.apply_batch(b.payloads, b.first_seq, b.term)
            return
        seg = self._segments[-1]
        offset = seg.size
        self._write(records)  # disk first
        interval = self.config.index_interval_bytes
        offsets, times, lens = res.offsets, res.times, res.lengths
        self._cache_clear()  # the cache holds a contiguous run up to next_seq
        self._lens.extend(lens)
        self._retained_bytes += sum(lens)
        self._next_seq = end
        for i, first in enumerate(firsts):
            nxt = firsts[i + 1] if i + 1 < len(firsts) else end
            rec_end = offsets[i + 1] if i + 1 < len(firsts) else len(records)
            seg.index(first, offset + offsets[i], interval)
            if not self._epochs or self._epochs[-1][0] != terms[i]:
                self._epochs.append((terms[i], first))
            size = rec_end - offsets[i] - record.RECORD_HEADER_SIZE
            size -= record.LENGTH_SIZE * (nxt - first)
            self._note_age(first, times[i], size, i == 0 and offset == record.FILE_HEADER_SIZE)
        self._refresh_fast()
        self._apply_retention()
        if self._pending_ckpt:
            self._pending_ckpt = False
            self._maybe_checkpoint(self._segments[-1].size, self._next_seq)
        if self._segments[-1].size >= self.config.segment_bytes:
            self._guarded(self._start_segment, self._next_seq)
        if self._tails:
            self._wake_tails()

    def _cache_add(self, first: int, payloads: list[bytes], size: int) -> None:
        limit = self.config.cache_bytes
        if size > limit:
            self._cache_clear()  # the cache must stay contiguous up to next_seq
            return
        self._cache_seqs.append(first)
        self._cache.append(payloads)
        self._cache_bytes += size
        while self._cache_bytes > limit:
            self._cache_evict()

    def _cache_evict(self) -> None:
        i = self._cache_head
        self._cache_bytes -= sum(map(len, self._cache[i]))
        self._cache[i] = []
        self._cache_head = i + 1
        if self._cache_head > 1024 and self._cache_head * 2 > len(self._cache):
            del self._cache[: self._cache_head]
            del self._cache_seqs[: self._cache_head]
            self._cache_head = 0

    def _cache_clear(self) -> None:
        self._cache_seqs.clear()
        self._cache.clear()
        self._cache_head = 0
        self._cache_bytes = 0

    def _note_age(self, first: int, now: int, size: int, fresh: bool = False) -> None:
        """Record an append time; ``fresh``: the batch starts a segment (age entries
        never span segments, so a segment's index sidecar holds its own)."""
        self._last_append_ns = now
        self._ages_bytes += size
        if fresh or not self._ages or self._ages_bytes >= self.config.index_interval_bytes:
            self._ages.append([first, now])
            self._ages_bytes = 0
        else:
            self._ages[-1][1] = max(self._ages[-1][1], now)

    def truncate_from(self, seq: int) -> int:
        """Drop every event with seq >= ``seq``; returns how many were dropped.

        Used by replication to discard a divergent, never-committed suffix. Disk first
        (``ftruncate`` on the open descriptor), then memory; tail subscribers that had
        received a dropped event get Truncated. Raises Closed, StorageFailed.
        """
        self._check_writable()
        seq = max(seq, self._first_seq)
        dropped = self._next_seq - seq
        if dropped <= 0:
            return 0
        if self._persisted:
            self._last_read = None
            self._guarded(self._truncate_disk, seq)  # fdatasyncs the cut segment
            self._sync_gen += 1
            self._durable = min(self._durable, seq)
            self._set_durable(seq)
            while self._cache_head < len(self._cache_seqs) and self._cache_seqs[-1] >= seq:
                self._cache_bytes -= sum(map(len, self._cache.pop()))
                self._cache_seqs.pop()
            if self._cache_head < len(self._cache_seqs):
                last = self._cache[-1]
                cut = seq - self._cache_seqs[-1]
                self._cache_bytes -= sum(map(len, last[cut:]))
                del last[cut:]
        keep = self._head + (seq - self._first_seq)
        self._retained_bytes -= sum(self._lens[keep:])
        del self._lens[keep:]
        if not self._persisted:
            self._mem.truncate(seq)
        self._next_seq = seq
        while self._epochs and self._epochs[-1][1] >= seq:
            self._epochs.pop()
        while self._ages and self._ages[-1][0] >= seq:
            self._ages.pop()
        self._truncations.append(seq)
        self._wake_tails()
        self._refresh_fast()
        return dropped

    def reset_to(self, first_seq: int, prev_term: int) -> None:
        """Drop every event and restart the log at ``first_seq`` (the next append gets
        it), with ``prev_term`` as the term of seq ``first_seq - 1`` in :attr:`epochs`.

        For a replica that fell behind the leader's retained head (issue 10 §4, the way
        Redis falls back to a full resync): durable (a HEAD marker written first, then a
        new segment, then the old ones removed; an interrupted reset completes on
        open). Subscribers get Lagged. Raises Closed, StorageFailed."""
        self._check_writable()
        old_next = self._next_seq
        if self._persisted:
            self._last_read = None
            self._guarded(self._reset_disk, first_seq, prev_term)
            self._sync_gen += 1
        self._restart_memory(first_seq, prev_term)
        self._durable = min(self._durable, first_seq)
        self._set_durable(first_seq)
        self._truncations.append(min(old_next, first_seq))
        self._wake_tails()

    def _restart_memory(self, first_seq: int, prev_term: int) -> None:
        self._mem = _MemStore()
        self._lens = array("I")
        self._head = 0
        self._first_seq = self._next_seq = first_seq
        self._retained_bytes = 0
        self._cache_clear()
        self._ages.clear()
        self._ages_bytes = 0
        self._epochs = [(prev_term, first_seq - 1)] if first_seq > 0 else []
        self._refresh_fast()

    def _restart_at(self, first_seq: int, prev_term: int) -> None:
        """On open: an interrupted reset -> an empty log at ``first_seq`` on disk too."""
        old = list(self._segments)
        self._restart_memory(first_seq, prev_term)
        self._start_segment(first_seq)
        for seg in old:
            seg.close_reader()
            os.unlink(seg.path)
            _remove(seg.path[: -len(SEGMENT_SUFFIX)] + INDEX_SUFFIX)
        self._segments = self._segments[-1:]
        self._seg_firsts = self._seg_firsts[-1:]

    def _reset_disk(self, first_seq: int, prev_term: int) -> None:
        assert self.config.path is not None
        _write_atomic(
            os.path.join(self.config.path, HEAD_FILE),
            record.encode_batch(first_seq, [RESET_MARK], prev_term),
        )
        old = list(self._segments)
        active = f"{first_seq:020d}{SEGMENT_SUFFIX}"
        if old and os.path.basename(old[-1].path) == active:  # reset to its own start
            _remove(old[-1].path[: -len(SEGMENT_SUFFIX)] + INDEX_SUFFIX)  # a checkpoint
            self._ckpt_at = 0
            os.ftruncate(self._fd, record.FILE_HEADER_SIZE)
            old[-1].size = record.FILE_HEADER_SIZE
            old[-1].cut_index(record.FILE_HEADER_SIZE)
            keep = old.pop()
        else:
            self._start_segment(first_seq)
            keep = self._segments[-1]
        for seg in old:
            seg.close_reader()
            os.unlink(seg.path)
            _remove(seg.path[: -len(SEGMENT_SUFFIX)] + INDEX_SUFFIX)
        self._segments = [keep]
        self._seg_firsts = [keep.first_seq]
        _fsync_dir(self.config.path)

    def set_retention_floor(self, seq: int | None) -> None:
        """Retention keeps every event with seq >= ``seq`` (None: no floor). Quorum
        replication sets it to the commit index, so retention never removes events a
        majority does not hold yet (issue 10 §4); raising the floor applies retention."""
        self._retention_floor = seq
        if not self._closed and self._failed is None:
            self._apply_retention()

    def expire(self) -> int:
        """Apply retention now (by age, for a channel with no appends); returns how many
        events it removed. Raises StorageFailed."""
        if self._closed or self._failed is not None:
            return 0
        before = self._first_seq
        self._apply_retention()
        return self._first_seq - before

    def sync(self) -> None:
        """fdatasync the active segment (no-op in memory). Raises StorageFailed."""
        if self._fd >= 0:
            self._check_writable()
            self._guarded(os.fdatasync, self._fd)
            self._last_sync = time.monotonic()
            self._set_durable(self._next_seq)

    def close(self) -> None:
        """Sync and close; idempotent. Later appends raise Closed."""
        if self._closed:
            return
        self._closed = True
        self._fast = False
        self._wake_tails()
        try:
            if self._fd >= 0 and self._failed is None:
                os.fdatasync(self._fd)
                self._set_durable(self._next_seq)
                self._checkpoint_active()
        finally:
            self._release()
            self._release_durable_waiters()

    def _checkpoint_active(self) -> None:
        """On a clean close (everything synced): an index sidecar for the active
        segment too, so the next open reads it instead of scanning every record
        (issue 17 §3: 8M events reopen in well under a second). Best effort: the open
        removes it before appending again, and a missing or stale one means a scan."""
        if not self._segments:
            return
        try:
            self._write_sidecar(self._segments[-1], self._next_seq)
        except OSError as exc:
            log.warning("%s: no index sidecar for the active segment: %s", self.name, exc)

    # -- group commit (netmesh.log.commit) ---------------------------------------------
    def use_group_commit(self, committer: GroupCommitter | None) -> None:
        """Share ``committer``'s fsync rounds (persisted ``fsync="batch"`` files; others
        ignore it). Appends then return once written, BEFORE their fdatasync, which
        runs off the event loop; :attr:`durable_seq` and :meth:`when_durable` say when
        they are durable, and whoever acknowledges them must wait for that (the node
        does: producer acks, a follower's SyncAck). ``None`` goes back to one
        fdatasync per append (after syncing what is pending). Loop thread only."""
        if not self._persisted or self.config.fsync != "batch" or self._closed:
            return
        if committer is None and self._committer is not None and self._failed is None:
            self._committer = None
            self.sync()
        self._committer = committer

    @property
    def durable_seq(self) -> int:
        """Events below this seq are as durable as the ``fsync`` policy makes them:
        ``next_seq``, except under group commit while an fsync round is pending."""
        return self._durable if self._committer is not None else self._next_seq

    @property
    def syncs_later(self) -> bool:
        """Group commit: writes become durable when a later fsync round completes
        (:attr:`durable_seq` may lag :attr:`next_seq`); False: at once."""
        return self._committer is not None

    def when_durable(self, seq_exclusive: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the loop) once ``durable_seq >= seq_exclusive`` or the
        file failed or closed (the callback checks :attr:`failed`); at once if so."""
        if self.durable_seq >= seq_exclusive or self._failed is not None or self._closed:
            callback()
            return
        self._durable_no += 1
        heapq.heappush(self._durable_waiters, (seq_exclusive, self._durable_no, callback))

    def add_durable_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever :attr:`durable_seq` advances or the file fails."""
        self._durable_listeners.append(callback)

    def remove_durable_listener(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._durable_listeners.remove(callback)

    def _sync_job(self) -> tuple[int, int, int] | None:
        """For a group commit round: (dup'd descriptor, seq written, generation)."""
        if self._closed or self._failed is not None or self._fd < 0:
            return None
        if self._durable >= self._next_seq:
            return None
        try:
            fd = os.dup(self._fd)
        except OSError as exc:
            self._fail(exc)
            return None
        self._job_at = (self._sync_gen, self._segments[-1], self._segments[-1].size, self._next_seq)
        return fd, self._next_seq, self._sync_gen

    def _synced(self, target: int, generation: int, error: OSError | None) -> None:
        """A group commit round ended for this file (loop thread)."""
        if self._closed:
            return
        if error is not None:
            self._fail(error)  # fail-stop: never retried (the dirty pages may be gone)
            return
        if generation == self._sync_gen and self._failed is None:
            self._set_durable(min(target, self._next_seq))
            job = self._job_at
            if job is not None and job[0] == generation and job[1] is self._segments[-1]:
                self._maybe_checkpoint(job[2], job[3])  # what this round made durable

    def _set_durable(self, seq: int) -> None:
        if seq <= self._durable:
            return
        self._durable = seq
        waiters = self._durable_waiters
        if waiters and waiters[0][0] <= seq:
            ready = []
            while waiters and waiters[0][0] <= seq:
                ready.append(heapq.heappop(waiters)[2])
            self._run_durable_callbacks(ready)
        if self._durable_listeners:
            self._run_durable_callbacks(list(self._durable_listeners))

    def _release_durable_waiters(self) -> None:
        """Closed or failed: every waiter runs now (and checks ``failed``)."""
        ready = [cb for _, _, cb in sorted(self._durable_waiters)]
        self._durable_waiters.clear()
        self._run_durable_callbacks(ready + list(self._durable_listeners))

    def _run_durable_callbacks(self, callbacks: list[Callable[[], None]]) -> None:
        for cb in callbacks:
            try:
                cb()
            except Exception:  # one bad waiter must not strand the others
                log.exception("%s: durability callback failed", self.name)

    def _release(self) -> None:
        for seg in self._segments:
            seg.close_reader()
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
        self._fast = False
        if self._failed is None:
            self._failed = StorageFailed(self.name, exc)
            log.error("%s: storage failed, file stopped until reopened: %s", self.name, exc)
            self._wake_tails()
            self._release_durable_waiters()
        return self._failed

    # -- retention -------------------------------------------------------------------
    def _apply_retention(self) -> None:
        cfg = self.config
        drop = 0
        count = self._next_seq - self._first_seq
        if cfg.retention_max_events is not None and count > cfg.retention_max_events:
            drop = count - cfg.retention_max_events
        by_bytes, freed = 0, -1
        if cfg.retention_max_bytes is not None and self._retained_bytes > cfg.retention_max_bytes:
            by_bytes, freed = self._bytes_to_drop(self._retained_bytes - cfg.retention_max_bytes)
            drop = max(drop, by_bytes)
        if cfg.retention_max_age_s is not None and self._ages:
            drop = max(drop, self._expired(self.clock() - int(cfg.retention_max_age_s * 1e9)))
        if self._retention_floor is not None:
            drop = min(drop, max(0, self._retention_floor - self._first_seq))
        if drop > 0:
            self._drop_head(drop, freed if drop == by_bytes else -1)

    def _bytes_to_drop(self, excess: int) -> tuple[int, int]:
        """(events, their payload bytes): the fewest events from the head whose
        payloads add up to at least ``excess`` (<= the retained bytes). Per batch, not
        per event: C-level sums over windows of lengths sized by the mean length, and
        arithmetic for a window whose lengths are all equal (one ``memcmp``)."""
        lens, i, end = self._lens, self._head, len(self._lens)
        freed = 0
        k = excess * (end - i) // max(1, self._retained_bytes) + 64  # about enough
        while True:
            window = lens[i : i + k]
            raw = window.tobytes()
            if window and raw == raw[:4] * len(window):  # one length: no pass at all
                size = window[0]
                if size and freed + size * len(window) >= excess:
                    m = -(-(excess - freed) // size)
                    return i - self._head + m, freed + m * size
                total = size * len(window)
            else:
                total = sum(window)
            if freed + total >= excess or i + k >= end:
                break
            freed += total
            i += k
            k *= 2
        sums = list(accumulate(window, initial=freed))
        m = bisect.bisect_left(sums, excess, 1)
        return i - self._head + m, sums[m]

    def _expired(self, cutoff_ns: int) -> int:
        """How many events from the head are older than ``cutoff_ns``: whole age entries
        (about ``index_interval_bytes`` of events each) whose newest append is older."""
        ages = self._ages
        upto = self._first_seq
        for i, (_, newest) in enumerate(ages):
            if newest >= cutoff_ns:
                break
            upto = ages[i + 1][0] if i + 1 < len(ages) else self._next_seq
        return max(0, upto - self._first_seq)

    def _drop_head(self, n: int, freed: int = -1) -> None:
        """Drop the ``n`` oldest events (``freed``: their payload bytes, if known)."""
        stop = self._head + n
        self._retained_bytes -= sum(self._lens[self._head : stop]) if freed < 0 else freed
        self._head = stop
        self._first_seq += n
        cut = self._head
        if not self._persisted:  # a packed batch reads the lengths from its first event
            cut -= self._first_seq - self._mem.drop_before(self._first_seq)
        if cut > 4096 and cut * 2 > len(self._lens):
            del self._lens[:cut]  # amortised O(1) per dropped event
            self._head -= cut
        while len(self._epochs) > 1 and self._epochs[1][1] <= self._first_seq:
            self._epochs.pop(0)
        while len(self._ages) > 1 and self._ages[1][0] <= self._first_seq:
            self._ages.popleft()
        if self._persisted:
            seqs, batches = self._cache_seqs, self._cache
            while self._cache_head < len(seqs) and (
                seqs[self._cache_head] + len(batches[self._cache_head]) <= self._first_seq
            ):
                self._cache_evict()
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
            if (policy == "batch" and self._committer is None) or (
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
        if self._committer is not None:
            self._committer.mark(self)  # fdatasynced by the round of this loop turn
        elif seg.size - self._ckpt_at >= CHECKPOINT_BYTES:
            self._pending_ckpt = True  # written once the batch is in memory too

    def _recover(self, directory: str) -> None:
        try:
            os.makedirs(directory, exist_ok=True)
            lock_path = os.path.join(directory, LOCK_FILE)
            self._lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"path {directory!r} is not a usable directory: {exc}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LogLocked(f"{directory}: the event file is open elsewhere (LOCK held)") from None
        head, head_term, reset = self._read_head(directory)
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
        if reset and f"{head:020d}{SEGMENT_SUFFIX}" in names:  # a reset cut short
            for n in [n for n in names if int(n[:20]) < head]:
                os.unlink(os.path.join(directory, n))
                _remove(os.path.join(directory, n[:20] + INDEX_SUFFIX))
                names.remove(n)
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
            self._ckpt_at = self._segments[-1].size
        if head > self._first_seq:
            if head >= self._next_seq:  # a reset cut short before its segment existed
                self._restart_at(head, head_term)
            else:  # retention was cut short after writing HEAD
                self._drop_head(head - self._first_seq)
        if reset and head > 0 and (not self._epochs or self._epochs[0][1] >= head):
            self._epochs.insert(0, (head_term, head - 1))
        self._apply_retention()

    def _read_head(self, directory: str) -> tuple[int, int, bool]:
        """(first seq kept, term, was it a reset) from the HEAD marker; (0, 0, False)."""
        path = os.path.join(directory, HEAD_FILE)
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            return 0, 0, False
        res = record.scan(raw)
        if res.end is not record.ScanEnd.CLEAN or len(res.batches) != 1:
            raise LogCorrupt(path, 0, f"unreadable retention head: {res.reason or 'empty'}")
        b = res.batches[0]
        return b.first_seq, b.term, b.payloads == [RESET_MARK]

    def _load_segment(self, path: str, first_seq: int, last: bool) -> int:
        covered = self._load_sidecar(path, first_seq, partial=last)
        if covered is not None:
            if not last:
                return self._next_seq
            # the active segment: its sidecar is a checkpoint (or a clean close's) that
            # covers ``covered`` bytes; appends follow, so it goes, and only the records
            # after it are scanned (torn tail rules as below)
            _remove(path[: -len(SEGMENT_SUFFIX)] + INDEX_SUFFIX)
            seg = self._segments[-1]
            if covered == os.path.getsize(path):
                return self._next_seq
            with open(path, "rb") as fh:
                fh.seek(covered)
                rest = fh.read()
            res = record.scan_index(rest, 0, self._next_seq, self.last_term)
            if res.end is record.ScanEnd.CORRUPT:
                raise LogCorrupt(path, covered + res.consumed, res.reason)
            if res.end is record.ScanEnd.TORN:
                self._count_torn(path, len(rest) - res.consumed, covered + res.consumed)
                os.truncate(path, covered + res.consumed)
            for i in range(len(res.offsets)):
                res.offsets[i] += covered
            res.consumed += covered
            seg.size = res.consumed
            self._absorb(seg, res, self._next_seq, fresh=False)
            return self._next_seq
        _remove(path[: -len(SEGMENT_SUFFIX)] + INDEX_SUFFIX)
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
        res = record.scan_index(buf, record.FILE_HEADER_SIZE, first_seq, self.last_term)
        if res.end is record.ScanEnd.CORRUPT or (res.end is record.ScanEnd.TORN and not last):
            raise LogCorrupt(path, res.consumed, res.reason)
        if res.end is record.ScanEnd.TORN:
            self._count_torn(path, len(buf) - res.consumed, res.consumed)
            os.truncate(path, res.consumed)
        del buf
        if not self._segments:
            self._first_seq = self._next_seq = first_seq
        seg = _Segment(first_seq, path, res.consumed)
        self._segments.append(seg)
        self._seg_firsts.append(first_seq)
        self._absorb(seg, res, first_seq, fresh=True)
        return self._next_seq

    def _absorb(self, seg: _Segment, res: record.IndexScan, first_seq: int, fresh: bool) -> None:
        """Add the records ``res`` found in ``seg`` (from seq ``first_seq``; ``fresh``:
        from the segment's start) to the lengths, sparse index, epochs and ages."""
        interval = self.config.index_interval_bytes
        lens = res.lengths
        self._lens.extend(lens)
        self._retained_bytes += sum(lens)
        firsts, offsets, terms, times = res.first_seqs, res.offsets, res.terms, res.times
        # per record, inlined (a log of millions of single-event records reopens here
        # after a crash): sparse index, epochs, ages (see _Segment.index, _note_age)
        epochs, ages = self._epochs, self._ages
        idx_seq, idx_off = seg.idx_seq, seg.idx_off
        last_off = idx_off[-1] if idx_off else -interval
        ages_bytes = self._ages_bytes
        overhead = record.RECORD_HEADER_SIZE
        n_rec = len(firsts)
        end_all = first_seq + len(lens)
        for i in range(n_rec):
            first, term, off = firsts[i], terms[i], offsets[i]
            if i + 1 < n_rec:
                end, size = firsts[i + 1], offsets[i + 1] - off
            else:
                end, size = end_all, res.consumed - off
            if off - last_off >= interval:
                idx_seq.append(first)
                idx_off.append(off)
                last_off = off
            if end > first and (not epochs or epochs[-1][0] != term):
                epochs.append((term, first))
            payload = size - overhead - record.LENGTH_SIZE * (end - first)
            now = times[i]
            self._last_append_ns = now
            ages_bytes += payload
            if (fresh and i == 0) or not ages or ages_bytes >= interval:
                ages.append([first, now])
                ages_bytes = 0
            else:
                newest = ages[-1]
                if now > newest[1]:
                    newest[1] = now
        self._ages_bytes = ages_bytes
        self._next_seq = first_seq + len(lens)

    def _load_sidecar(self, path: str, first_seq: int, partial: bool = False) -> int | None:
        """Restore a segment from its index sidecar after checking it against the
        segment: its size, the first and last indexed record headers, and every record
        after the last indexed one (CRCs, seqs). Returns the bytes it covers, or None
        (rebuild by scanning) when missing or not matching. A sealed segment's sidecar
        covers it exactly; with ``partial`` (the active segment) it may cover a prefix
        (a checkpoint), and the caller scans the rest."""
        side = path[: -len(SEGMENT_SUFFIX)] + INDEX_SUFFIX
        try:
            with open(side, "rb") as fh:
                raw = fh.read()
            size = os.path.getsize(path)
        except FileNotFoundError:
            return None
        got = _decode_sidecar(raw)
        if (
            got is None
            or not (got["size"] == size or (partial and got["size"] < size))
            or got["first_seq"] != first_seq
        ):
            log.warning("%s: index sidecar does not match its segment; rebuilding", side)
            return None
        covered = int(got["size"])
        idx_seq, idx_off = array("Q"), array("Q")
        idx_seq.frombytes(got["idx_seq"])
        idx_off.frombytes(got["idx_off"])
        lens = array("I")
        lens.frombytes(got["lens"])
        if not idx_seq or idx_seq[0] != first_seq or idx_off[0] != record.FILE_HEADER_SIZE:
            return None
        with open(path, "rb") as fh:
            for seq, off in ((idx_seq[0], idx_off[0]), (idx_seq[-1], idx_off[-1])):
                fh.seek(off)
                head = fh.read(record.RECORD_HEADER_SIZE)
                if record.peek_first_seq(head) != seq:
                    log.warning("%s: index sidecar disagrees with record at %d", side, off)
                    return None
            # the records after the last indexed one, checked whole: they must end
            # exactly where the sidecar ends, at its next seq
            fh.seek(idx_off[-1])
            tail = record.scan_index(fh.read(covered - idx_off[-1]), 0, idx_seq[-1])
            if tail.end is not record.ScanEnd.CLEAN or idx_seq[-1] + len(tail.lengths) != (
                first_seq + len(lens)
            ):
                log.warning("%s: index sidecar disagrees with the segment's tail", side)
                return None
        if not self._segments:
            self._first_seq = self._next_seq = first_seq
        for term, start in got["epochs"]:
            if term < self.last_term:
                raise LogCorrupt(path, 0, f"term {term} after term {self.last_term}")
            if not self._epochs or self._epochs[-1][0] != term:
                self._epochs.append((term, start))
        for start, newest in got["ages"]:
            self._ages.append([start, newest])
            self._last_append_ns = max(self._last_append_ns, newest)
        self._lens.extend(lens)
        self._retained_bytes += sum(lens)
        self._next_seq = first_seq + len(lens)
        self._segments.append(_Segment(first_seq, path, covered, idx_seq, idx_off))
        self._seg_firsts.append(first_seq)
        return covered

    def _write_sidecar(
        self, seg: _Segment, end_seq: int, size: int | None = None, sync: bool = True
    ) -> None:
        """Seal ``seg`` (all of it still retained) with an index sidecar; with ``size``
        (a checkpoint of the active segment): only its first ``size`` bytes, which hold
        the events below ``end_seq``; ``sync=False`` skips the fdatasyncs (a lost or
        stale checkpoint only means a longer scan on open)."""
        if seg.first_seq < self._first_seq:
            return  # partly dropped by retention: rebuilt by a scan if ever reopened
        size = seg.size if size is None else size
        n_idx = bisect.bisect_left(seg.idx_off, size)
        lo = self._head + (seg.first_seq - self._first_seq)
        hi = lo + (end_seq - seg.first_seq)
        epochs = [
            [t, max(s, seg.first_seq)]
            for i, (t, s) in enumerate(self._epochs)
            if s < end_seq
            and (i + 1 == len(self._epochs) or self._epochs[i + 1][1] > seg.first_seq)
        ]
        ages = []  # this segment's entries: the newest ones (no pass over the whole log)
        for s, t in reversed(self._ages):
            if s < seg.first_seq:
                break
            if s < end_seq:
                ages.append([s, t])
        ages.reverse()
        body = {
            "size": size,
            "first_seq": seg.first_seq,
            "idx_seq": seg.idx_seq[:n_idx].tobytes(),
            "idx_off": seg.idx_off[:n_idx].tobytes(),
            "lens": self._lens[lo:hi].tobytes(),
            "epochs": epochs,
            "ages": ages,
        }
        _write_atomic(seg.path[: -len(SEGMENT_SUFFIX)] + INDEX_SUFFIX, _encode_sidecar(body), sync)

    def _maybe_checkpoint(self, size: int, end_seq: int) -> None:
        """A checkpoint sidecar of the active segment once it grew ``CHECKPOINT_BYTES``
        since the last one: after a crash, open scans only the records after it (issue
        17 §3: reopen reads an index, not every record). ``size``/``end_seq``: bytes and
        events that are as durable as the fsync policy makes them."""
        if size - self._ckpt_at < CHECKPOINT_BYTES or self._closed or self._failed:
            return
        self._ckpt_at = size
        try:
            self._write_sidecar(self._segments[-1], end_seq, size, sync=False)
        except OSError as exc:  # an optimisation: the next open scans instead
            log.debug("%s: checkpoint not written: %s", self.name, exc)

    def _count_torn(self, path: str, nbytes: int, offset: int) -> None:
        self.torn_tail_truncations += 1
        log.warning("%s: truncated a torn tail of %d bytes at offset %d", path, nbytes, offset)

    def _start_segment(self, first_seq: int) -> None:
        assert self.config.path is not None
        if self._fd >= 0:
            os.fdatasync(self._fd)  # the old segment is complete: durable before the new one
            self._write_sidecar(self._segments[-1], first_seq)
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
        self._seg_firsts.append(first_seq)
        self._ckpt_at = 0
        self._set_durable(self._next_seq)  # the old segment was synced before the roll

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
            seg.close_reader()
            os.unlink(seg.path)
            _remove(seg.path[: -len(SEGMENT_SUFFIX)] + INDEX_SUFFIX)
        del self._segments[:doomed]
        del self._seg_firsts[:doomed]
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
        j = bisect.bisect_right(seg.idx_seq, seq) - 1
        off = seg.idx_off[j] if j >= 0 else record.FILE_HEADER_SIZE
        with open(seg.path, "rb") as fh:
            fh.seek(off)
            buf = fh.read(seg.size - off)
        res = record.scan(buf)
        cut, keep, term, ts = seg.size, [], 0, 0
        for b in res.batches:
            if b.end_seq > seq:
                cut, keep = off + b.offset, b.payloads[: seq - b.first_seq]
                term, ts = b.term, b.time_ns
                break
        active = idx == len(self._segments) - 1
        fd = self._fd if active else os.open(seg.path, os.O_WRONLY | os.O_APPEND)
        tail = record.encode_batch(seq - len(keep), keep, term, ts)
        try:
            os.ftruncate(fd, cut)
            if tail:
                os.write(fd, tail)
            os.fdatasync(fd)
        except BaseException:
            if fd != self._fd:
                os.close(fd)
            raise
        _remove(seg.path[: -len(SEGMENT_SUFFIX)] + INDEX_SUFFIX)  # active again
        self._ckpt_at = 0
        for later in self._segments[idx + 1 :]:
            later.close_reader()
            os.unlink(later.path)
            _remove(later.path[: -len(SEGMENT_SUFFIX)] + INDEX_SUFFIX)
        if fd != self._fd:
            os.close(self._fd)
            self._fd = fd
        del self._segments[idx + 1 :]
        del self._seg_firsts[idx + 1 :]
        seg.size = cut + len(tail)
        seg.cut_index(cut)
        if tail:
            seg.index(seq - len(keep), cut, self.config.index_interval_bytes)
        _fsync_dir(self.config.path)


_SIDECAR_MAGIC = b"NMIX\x01"


def _raw_chunk(
    win: _RawWindow, from_seq: int, max_bytes: int, limit: int
) -> tuple[int, bytes, int]:
    """The chunk :meth:`RedexFile.read_records` answers from ``win`` (which holds
    ``from_seq``): (events, record bytes, payload bytes)."""
    firsts, offsets, lengths = win.firsts, win.offsets, win.lengths
    nrec = len(firsts)
    base = firsts[0]
    stop_off = win.end_off - win.off
    i = bisect.bisect_right(firsts, from_seq) - 1
    mv = memoryview(win.buf)
    parts: list[bytes | memoryview] = []
    count = payload = 0
    seq = from_seq
    run_start = run_end = 0  # a run of whole records not yet in parts (buf offsets)
    fixed = record.RECORD_HEADER_SIZE
    while i < nrec and seq < limit:
        first, at = firsts[i], offsets[i]
        last = i + 1 == nrec
        n = (win.end_seq if last else firsts[i + 1]) - first
        lo, hi = seq - first, min(n, limit - first)
        room = max_bytes - payload
        if lo == 0 and hi == n:
            rec_end = stop_off if last else offsets[i + 1]
            size = rec_end - at - fixed - record.LENGTH_SIZE * n
            if size <= room or (not count and n == 1):
                if run_end != at:  # whole records next to each other go as one slice
                    if run_end > run_start:
                        parts.append(mv[run_start:run_end])
                    run_start = at
                run_end = rec_end
                count, payload, seq, i = count + n, payload + size, first + n, i + 1
                continue
        if count and 2 * payload >= max_bytes:
            break  # at least half full: leave the record whole for the next chunk
        sums = win.sums.get(i)
        if sums is None:
            k0 = first - base
            sums = win.sums[i] = list(accumulate(lengths[k0 : k0 + n], initial=0))
        k = min(hi, bisect.bisect_right(sums, sums[lo] + room) - 1)
        if k <= lo:
            if count:
                break
            k = lo + 1  # one event larger than a chunk goes alone
        if run_end > run_start:
            parts.append(mv[run_start:run_end])
        run_start = run_end = 0
        parts += record.slice_record(mv, at, sums, lo, k)
        count, payload, seq = count + k - lo, payload + sums[k] - sums[lo], first + k
        if k < hi:
            break  # the chunk is full
        i += 1
    if run_end > run_start:
        parts.append(mv[run_start:run_end])
    return count, (bytes(parts[0]) if len(parts) == 1 else b"".join(parts)), payload


def _encode_sidecar(body: dict[str, object]) -> bytes:
    raw: bytes = msgpack.packb(body, use_bin_type=True)
    return _SIDECAR_MAGIC + crc32c(raw).to_bytes(4, "little") + raw


def _decode_sidecar(data: bytes) -> dict[str, Any] | None:
    n = len(_SIDECAR_MAGIC)
    if len(data) < n + 4 or data[:n] != _SIDECAR_MAGIC:
        return None
    raw = data[n + 4 :]
    if crc32c(raw) != int.from_bytes(data[n : n + 4], "little"):
        return None
    try:
        body = msgpack.unpackb(raw, raw=False)
    except (ValueError, msgpack.UnpackException):
        return None
    return body if isinstance(body, dict) else None


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


ENVELOPE = struct.Struct("<QQI")  # producer id, batch seq, index in the batch
DEDUP_WINDOW = 100_000  # events whose envelopes rebuild the de-duplication state


def _envelope(payloads: list[bytes], producer: int, batch_seq: int) -> list[bytes]:
    pack = ENVELOPE.pack
    return _Enveloped(pack(producer, batch_seq, i) + bytes(p) for i, p in enumerate(payloads))


def _enveloped(payloads: list[bytes]) -> bool:
    """Whether a batch already carries envelopes (an idempotent append marks it so)."""
    return isinstance(payloads, _Enveloped)


class _Enveloped(list):  # type: ignore[type-arg]
    """A batch wrapped by :func:`_envelope` (so ``append_batch`` does not wrap it again)."""


def _scan_envelopes(table: dict[int, tuple[int, int]], payloads: list[bytes], first: int) -> None:
    unpack = ENVELOPE.unpack_from
    for i, p in enumerate(payloads):
        if len(p) < ENVELOPE.size:
            continue
        producer, batch_seq, _ = unpack(p)
        if producer:
            held = table.get(producer)
            if held is None or batch_seq >= held[0]:
                table[producer] = (batch_seq, first + i)


def _write_atomic(path: str, data: bytes, sync: bool = True) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
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


def write_durably(directory: str, name: str, data: bytes) -> None:
    """``directory/name`` := ``data`` so that a crash leaves the old content or the
    new, never a mix or nothing: a tmp file, fdatasync, rename over ``name``, fsync
    of ``directory``. Raises OSError (disk full, ...); then ``name`` is unchanged."""
    _write_atomic(os.path.join(directory, name), data)
    _fsync_dir(directory)


class Frames(Protocol):
    """Records copied out of a shared-memory ring, still framed (what
    ``netmesh.ring.shm.ShmRing.take_frames`` returns; the log does not import the
    ring): ``blob`` holds frame ``i``'s payloads back to back from ``offs[i]``, its
    records are ``firsts[i]`` up to ``firsts[i + 1]`` (or ``count``), ``lens`` every
    record's length (u32 array), ``size`` their sum."""

    blob: bytes
    firsts: array[int]
    offs: array[int]
    lens: array[int]
    size: int
    count: int

    def payloads(self) -> list[bytes]: ...


class _Packed:
    """A batch of ring frames kept as copied (see :class:`Frames`), or a replicated
    batch kept as it arrived (one frame: :meth:`RedexFile.apply_packed`): one
    ``bytes``."""

    __slots__ = ("blob", "count", "firsts", "offs")

    def __init__(self, blob: Any, firsts: array[int], offs: array[int], count: int) -> None:
        self.blob = blob
        self.firsts = firsts
        self.offs = offs
        self.count = count

    @classmethod
    def of_frames(cls, frames: Frames) -> _Packed:
        return cls(frames.blob, frames.firsts, frames.offs, frames.count)

    @classmethod
    def of(cls, packed: PackedPayloads) -> _Packed:
        """A replicated batch, kept as it came: one frame, payloads from ``start``."""
        return cls(packed.data, array("I", [0]), array("Q", [packed.start]), len(packed))

    def parts(self, a: int, b: int, lens: array[int], base: int, out: list[Any]) -> None:
        """Append views of the payloads of records ``a <= i < b`` (back to back within
        a frame: one view per frame, none per record) to ``out``; lengths as
        :meth:`read`."""
        firsts, offs = self.firsts, self.offs
        view = memoryview(self.blob)
        nf = len(firsts)
        f = bisect.bisect_right(firsts, a) - 1
        while a < b:
            fa = firsts[f]
            stop = min(b, firsts[f + 1] if f + 1 < nf else self.count)
            if stop > a:
                pos = offs[f] + (sum(lens[base + fa : base + a]) if a > fa else 0)
                out.append(view[pos : pos + sum(lens[base + a : base + stop])])
                a = stop
            f += 1

    def read(self, a: int, b: int, lens: array[int], base: int, out: list[bytes]) -> None:
        """Append copies of records ``a <= i < b`` of this batch to ``out``; their
        lengths are ``lens[base + a : base + b]``."""
        firsts, offs, blob = self.firsts, self.offs, self.blob
        nf = len(firsts)
        f = bisect.bisect_right(firsts, a) - 1
        while a < b:
            fa = firsts[f]
            stop = min(b, firsts[f + 1] if f + 1 < nf else self.count)
            if stop > a:
                pos = offs[f] + (sum(lens[base + fa : base + a]) if a > fa else 0)
                if stop - a == 1:  # a single record: a slice
                    out.append(blob[pos : pos + lens[base + a]])
                    a = stop
                    f += 1
                    continue
                ls = lens[base + a : base + stop]
                st = _unpackers.get(ls)
                if st is not None:  # every record of the piece in one C call
                    out += st.unpack_from(blob, pos)
                else:
                    ends = list(accumulate(ls, initial=pos))
                    out += [blob[x:y] for x, y in pairwise(ends)]
                a = stop
            f += 1


class _Unpackers:
    """A compiled ``struct`` per length signature (``<64s64s...``): for ``k`` records of
    one length, by (length, ``k``) (a ``memcmp`` tells); else by the lengths, built on
    their second sighting. At most ``MAX`` of each kind kept (all dropped when full),
    none for more than ``MAX_COUNT`` records: one C call cuts a frame's payloads (or
    the part of it a read wants) out of a batch."""

    MAX, MAX_COUNT = 128, 4096

    def __init__(self) -> None:
        self.structs: dict[bytes, struct.Struct] = {}
        self.uniform: dict[tuple[int, int], struct.Struct] = {}
        self.seen: set[bytes] = set()

    def get(self, lens: array[int]) -> struct.Struct | None:
        k = len(lens)
        if k > self.MAX_COUNT:
            return None
        key = lens.tobytes()
        if key == key[:4] * k:  # one length: (length, count) names the struct
            uk = (lens[0], k)
            st = self.uniform.get(uk)
            if st is None:
                if len(self.uniform) >= self.MAX:
                    self.uniform.clear()
                st = self.uniform[uk] = struct.Struct("<" + f"{lens[0]}s" * k)
            return st
        st = self.structs.get(key)
        if st is not None:
            return st
        if key not in self.seen:
            if len(self.seen) >= self.MAX:
                self.seen.clear()
            self.seen.add(key)
            return None
        if len(self.structs) >= self.MAX:
            self.structs.clear()
        st = self.structs[key] = struct.Struct("<" + "".join(map("{}s".format, lens)))
        return st


_unpackers = _Unpackers()


class _MemStore:
    """An in-memory file's payloads: chunks in seq order (``seqs[i]``: the first seq
    of ``chunks[i]``), each a list of ``bytes`` (single appends and batches of
    objects; the last one, ``open``, grows) or a :class:`_Packed` batch of ring
    frames. Chunks before ``head`` were dropped by retention; a list chunk's dropped
    events are cut off its front once they are more than half of it (amortised O(1)
    per event), a packed batch is freed whole once all its events are dropped (it
    is at most one ring's capacity)."""

    __slots__ = ("chunks", "head", "open", "seqs")

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.chunks: list[list[bytes] | _Packed] = []
        self.head = 0
        self.open: list[bytes] | None = None

    def extend(self, first: int, payloads: list[bytes]) -> bool:
        """Store ``payloads`` from seq ``first`` (= the end); True if a new open list
        was started."""
        opened = self.open is None
        if self.open is None:
            self.open = []
            self.seqs.append(first)
            self.chunks.append(self.open)
        self.open.extend(payloads)
        return opened

    def add_frames(self, first: int, frames: Frames) -> None:
        if self.open is not None and not self.open:  # an emptied open list: replace it
            self.seqs.pop()
            self.chunks.pop()
        self.open = None
        self.seqs.append(first)
        self.chunks.append(_Packed.of_frames(frames))

    def add_packed(self, first: int, packed: PackedPayloads) -> None:
        if self.open is not None and not self.open:  # an emptied open list: replace it
            self.seqs.pop()
            self.chunks.pop()
        self.open = None
        self.seqs.append(first)
        self.chunks.append(_Packed.of(packed))

    def read_parts(self, lo: int, hi: int, lens: array[int], base: int) -> list[Any]:
        """The payloads of seqs ``lo <= seq < hi`` (all held) as buffers to join, in
        order: views of packed batches (one per ring frame), ``bytes`` of list chunks."""
        seqs, chunks = self.seqs, self.chunks
        last = len(seqs) - 1
        i = bisect.bisect_right(seqs, lo, self.head) - 1
        out: list[Any] = []
        seq = lo
        while seq < hi:
            first, c = seqs[i], chunks[i]
            stop = hi if i == last else min(hi, seqs[i + 1])
            if type(c) is list:
                out += c[seq - first : stop - first]
            elif stop > seq:
                c.parts(seq - first, stop - first, lens, base + first, out)  # type: ignore[union-attr]
            seq = stop
            i += 1
        return out

    def read(self, lo: int, hi: int, lens: array[int], base: int) -> list[bytes]:
        """Payloads of seqs ``lo <= seq < hi`` (all held); ``lens[base + seq]`` is the
        length of ``seq``."""
        seqs, chunks = self.seqs, self.chunks
        last = len(seqs) - 1
        i = bisect.bisect_right(seqs, lo, self.head) - 1
        out: list[bytes] = []
        seq = lo
        while seq < hi:
            first, c = seqs[i], chunks[i]
            stop = hi if i == last else min(hi, seqs[i + 1])
            if type(c) is list:
                out += c[seq - first : stop - first]
            elif stop > seq:
                c.read(seq - first, stop - first, lens, base + first, out)  # type: ignore[union-attr]
            seq = stop
            i += 1
        return out

    def drop_before(self, seq: int) -> int:
        """Retention dropped every event below ``seq``; returns the first seq of the
        oldest chunk still held (its lengths are still needed), ``seq`` if none."""
        seqs, chunks = self.seqs, self.chunks
        h, n = self.head, len(seqs)
        while h + 1 < n and seqs[h + 1] <= seq:
            chunks[h] = []  # freed now, its slot later (below)
            h += 1
        if h < n:
            c = chunks[h]
            k = seq - seqs[h]
            if type(c) is list and k > 0 and (k == len(c) or (k > 4096 and 2 * k > len(c))):
                del c[:k]
                seqs[h] = seq
        if h > 1024 and 2 * h > n:
            del seqs[:h]
            del chunks[:h]
            h = 0
        self.head = h
        return min(seq, seqs[h]) if h < len(seqs) else seq

    def truncate(self, seq: int) -> None:
        """Drop every event at or above ``seq``."""
        seqs, chunks = self.seqs, self.chunks
        while len(seqs) > self.head and seqs[-1] >= seq:
            seqs.pop()
            if chunks.pop() is self.open:
                self.open = None
        self.head = min(self.head, len(seqs))
        if len(seqs) > self.head:
            c = chunks[-1]
            if type(c) is list:
                del c[seq - seqs[-1] :]
