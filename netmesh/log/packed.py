"""Events packed in one buffer: the lengths, then the payloads (pure).

A :class:`PackedPayloads` is a sequence of ``bytes`` that holds no object per event:
``lens`` (a u32 array, one length per event) and ``data``, a buffer holding the
payloads back to back from ``start``. Its wire form (:meth:`PackedPayloads.body`) is

    lengths u32[count] (little-endian) | payloads, back to back

byte for byte the body of a log batch record (:mod:`netmesh.log.record`) and the part of
a ring frame after its head (:mod:`netmesh.ring.layout`). Replication ships a batch of
events as one such body (one msgpack ``bin``, one copy), the leader builds it from the
log's stored batches without cutting out an object per event
(:meth:`RedexFile.read_packed <netmesh.log.file.RedexFile.read_packed>`), and the replica
checks it (:meth:`PackedPayloads.from_body`) and stores it whole
(:meth:`RedexFile.apply_packed <netmesh.log.file.RedexFile.apply_packed>`).

Indexing, iteration and equality work per event as on a tuple of ``bytes`` (and compare
equal to one), for the code that needs single events (tests, the simulation's list log);
the hot paths use ``lens``, ``size``, slices and :meth:`body` only.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
from itertools import accumulate, pairwise
from typing import Any, overload

from netmesh.errors import DecodeError

_BIG_ENDIAN = sys.byteorder == "big"  # arrays are native-endian; the body is little
if array("I").itemsize != 4:  # pragma: no cover - every platform CPython supports
    raise ImportError("netmesh.log.packed needs a 4-byte array('I')")


class PackedPayloads(Sequence[bytes]):
    """``len(lens)`` events: event ``i`` is ``data[start + sum(lens[:i]) :][: lens[i]]``.

    ``size`` is ``sum(lens)``. Immutable by convention (``data`` is ``bytes`` or a
    read-only view of bytes; nothing here writes to it). Built by :meth:`join`, the
    payloads stay the buffers they were read from until something needs them in one
    piece (:attr:`data`): :meth:`body_parts` hands them to the one join that builds a
    message."""

    __slots__ = ("_data", "_is_body", "_parts", "lens", "size", "start")

    def __init__(self, lens: array[int], data: Any, start: int = 0, size: int | None = None):
        self.lens = lens
        self._data = data
        self._parts: list[Any] | None = None
        #: ``data`` is exactly the wire body (adopted by from_body): body() returns it
        self._is_body = False
        self.start = start
        self.size = sum(lens) if size is None else size

    @property
    def data(self) -> Any:
        """The buffer holding the payloads from :attr:`start` (joined on first use)."""
        if self._parts is not None:
            self._data = b"".join(self._parts)
            self._parts = None
        return self._data

    # -- building ----------------------------------------------------------------------
    @classmethod
    def of(cls, payloads: Iterable[bytes]) -> PackedPayloads:
        """Pack ``payloads`` (one join; the general path for lists of ``bytes``)."""
        if isinstance(payloads, PackedPayloads):
            return payloads
        ps = list(payloads)
        return cls.join(array("I", map(len, ps)), ps)

    @classmethod
    def join(cls, lens: array[int], parts: list[Any], size: int | None = None) -> PackedPayloads:
        """The events whose lengths are ``lens`` and whose payloads are ``parts``
        (buffers, back to back), kept as they are: no copy until :attr:`data` or
        :meth:`body` is needed (a message is built from :meth:`body_parts`)."""
        packed = cls(lens, None, 0, size)
        packed._parts = parts
        return packed

    @classmethod
    def from_body(cls, count: int, buf: bytes, offset: int = 0) -> PackedPayloads:
        """Check and adopt the wire body of ``count`` events that fills ``buf`` from
        ``offset`` to its end (no copy of the payloads: they stay in ``buf``).

        Raises:
            DecodeError: the body is not ``count`` lengths followed by exactly that many
                payload bytes.
        """
        head = 4 * count
        if type(buf) is not bytes or offset + head > len(buf):
            raise DecodeError(f"a body of {count} events needs {head} bytes of lengths")
        lens = array("I")
        lens.frombytes(memoryview(buf)[offset : offset + head])
        if _BIG_ENDIAN:  # pragma: no cover
            lens.byteswap()
        size = sum(lens)
        if offset + head + size != len(buf):
            raise DecodeError(
                f"a body of {count} events: lengths say {size} payload bytes, it holds"
                f" {len(buf) - offset - head}"
            )
        packed = cls(lens, buf, offset + head, size)
        packed._is_body = offset == 0
        return packed

    # -- wire --------------------------------------------------------------------------
    def body(self) -> bytes:
        """The wire form: lengths (u32 little-endian) then payloads (one copy, none when
        ``data`` already is exactly that)."""
        if self._is_body:
            return self._data  # type: ignore[no-any-return]
        return b"".join(self.body_parts())

    def body_parts(self) -> list[Any]:
        """:meth:`body` as buffers to join (the caller's join is the one copy)."""
        lens = self.lens.tobytes() if not _BIG_ENDIAN else _swapped(self.lens)
        if self._parts is not None:
            return [lens, *self._parts]
        return [lens, self.payload_view()]

    def payload_view(self) -> memoryview:
        """The payloads, back to back (a view of ``data``: no copy)."""
        return memoryview(self.data)[self.start : self.start + self.size]

    def to_list(self) -> list[bytes]:
        """Every event as its own ``bytes`` (copies)."""
        data = self.data
        if type(data) is not bytes:
            data = bytes(memoryview(data))
        ends = accumulate(self.lens, initial=self.start)
        return [data[a:b] for a, b in pairwise(ends)]

    # -- Sequence ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.lens)

    @overload
    def __getitem__(self, i: int) -> bytes: ...

    @overload
    def __getitem__(self, i: slice) -> PackedPayloads: ...

    def __getitem__(self, i: int | slice) -> bytes | PackedPayloads:
        lens = self.lens
        n = len(lens)
        if isinstance(i, slice):
            a, b, step = i.indices(n)
            if step != 1:
                return PackedPayloads.of(self.to_list()[i])
            b = max(a, b)
            if a == 0 and b == n:
                return self
            start = self.start + (sum(lens[:a]) if a else 0)
            sub = lens[a:b]
            return PackedPayloads(sub, self.data, start, sum(sub))
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("PackedPayloads index out of range")
        pos = self.start + (sum(lens[:i]) if i else 0)
        return bytes(memoryview(self.data)[pos : pos + lens[i]])

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.to_list())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedPayloads):
            return self.lens == other.lens and self.payload_view() == other.payload_view()
        if isinstance(other, list | tuple):
            return len(other) == len(self) and self.to_list() == list(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self.to_list()))  # equal to an equal tuple's hash

    def __repr__(self) -> str:
        return f"PackedPayloads({len(self.lens)} events, {self.size} B)"


def payload_size(payloads: Sequence[bytes]) -> int:
    """Payload bytes of ``payloads`` (no pass over a :class:`PackedPayloads`)."""
    if isinstance(payloads, PackedPayloads):
        return payloads.size
    return sum(map(len, payloads))


def _swapped(lens: array[int]) -> bytes:  # pragma: no cover - big-endian hosts only
    le = array("I", lens)
    le.byteswap()
    return le.tobytes()
