"""Datagram framing, pure.

Four datagram kinds, all integers little-endian, first byte = protocol version (2)::

    INITIATION  version u8 | type=1 u8 | reserved u16=0 | sender_index u32 | noise msg1 (120 B)
                | mac1 (16 B) | mac2 (16 B)
    RESPONSE    version u8 | type=2 u8 | reserved u16=0 | sender_index u32 | receiver_index u32
                | noise msg2 (48 B) | mac1 (16 B)
    DATA        version u8 | type=3 u8 | reserved u16=0 | receiver_index u32 | counter u64
                | ChaCha20-Poly1305(body) (>= 16 B)
    COOKIE      version u8 | type=4 u8 | reserved u16=0 | receiver_index u32 | nonce (12 B)
                | sealed cookie (32 B)

``mac1`` is keyed BLAKE2s-128 over every byte before it, keyed for the *receiver*
(:func:`netmesh.link.handshake.mac1_key`); :func:`decode` only frames it, the
receiver checks it with :func:`netmesh.link.handshake.mac1_ok` before any DH (over
:func:`mac1_part` of the datagram). ``mac2`` (initiations only) is all zeros unless
the initiator holds a cookie from the responder: then it is the keyed BLAKE2s-128,
keyed by that cookie, of every byte before it (``netmesh.link.cookie``). A COOKIE
reply answers an initiation (``receiver_index`` = its sender index) when the
responder is under load; see ``netmesh.link.cookie``. Version 1 had no mac2 and no
COOKIE; versions are not mixed (a version-1 datagram is a "decode" drop).

The 16-byte DATA header is the AEAD associated data; ``counter`` is the nonce (see
``netmesh.link.session``). The decrypted body is one msgpack array of *entries*::

    [0, stream: str, [message: bytes, ...]]                       a run of messages
    [1, stream: str, frag_id: int, index: int, count: int, chunk: bytes]  a fragment

An empty array is a keepalive. :func:`pack_bodies` packs a batch of messages into as
few bodies as fit a datagram budget, splitting messages that fit no datagram into
fragments; :class:`Reassembler` puts fragments back together with bounded memory,
per receiving *session* (the receiver passes its session index, so fragments of different
sessions - e.g. before and after a sender restart - are never spliced).

Every decode function raises only :class:`~netmesh.errors.DecodeError` (the
:class:`Truncated` subclass when the datagram is too short for its kind).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from netmesh.errors import DecodeError
from netmesh.link.cookie import NONCE_LEN, SEALED_COOKIE_LEN, mac2
from netmesh.link.handshake import INITIATION_LEN, MAC_LEN, RESPONSE_LEN, mac1

VERSION = 2
TYPE_INITIATION = 1
TYPE_RESPONSE = 2
TYPE_DATA = 3
TYPE_COOKIE = 4

INITIATION_HEADER = struct.Struct("<BBHI")
RESPONSE_HEADER = struct.Struct("<BBHII")
DATA_HEADER = struct.Struct("<BBHIQ")
DATA_HEADER_LEN = DATA_HEADER.size  # 16
TAG_LEN = 16
#: bytes of a DATA datagram that are not body: header + AEAD tag
DATA_OVERHEAD = DATA_HEADER_LEN + TAG_LEN
INITIATION_SIZE = INITIATION_HEADER.size + INITIATION_LEN + 2 * MAC_LEN
COOKIE_HEADER = struct.Struct("<BBHI")
COOKIE_SIZE = COOKIE_HEADER.size + NONCE_LEN + SEALED_COOKIE_LEN
RESPONSE_SIZE = RESPONSE_HEADER.size + RESPONSE_LEN + MAC_LEN

ENTRY_MESSAGES = 0
ENTRY_FRAGMENT = 1
MAX_INDEX = (1 << 32) - 1
MAX_COUNTER = (1 << 64) - 1


class Truncated(DecodeError):
    """The datagram is shorter than its kind requires."""


@dataclass(frozen=True, slots=True)
class Initiation:
    sender_index: int
    noise: bytes


@dataclass(frozen=True, slots=True)
class Response:
    sender_index: int
    receiver_index: int
    noise: bytes


@dataclass(frozen=True, slots=True)
class CookieReply:
    receiver_index: int
    nonce: bytes
    sealed_cookie: bytes


@dataclass(frozen=True, slots=True)
class DataHeader:
    receiver_index: int
    counter: int


def _with_mac(data: bytes, mac_key: bytes | None) -> bytes:
    return data + (mac1(mac_key, data) if mac_key is not None else bytes(MAC_LEN))


def encode_initiation(
    sender_index: int, noise: bytes, mac_key: bytes | None = None, cookie: bytes | None = None
) -> bytes:
    """``mac_key``: ``mac1_key(psk, responder_static)``; None writes an all-zero mac1,
    which any receiver rejects (tests and tools only). ``cookie``: the responder's
    latest cookie, if the initiator holds a fresh one (mac2); None: all-zero mac2."""
    data = _with_mac(
        INITIATION_HEADER.pack(VERSION, TYPE_INITIATION, 0, sender_index) + noise, mac_key
    )
    return data + (mac2(cookie, data) if cookie is not None else bytes(MAC_LEN))


def mac1_part(datagram: bytes) -> bytes:
    """The part of a handshake datagram that ends with its mac1 (mac2 cut off)."""
    if len(datagram) >= 2 and datagram[1] == TYPE_INITIATION:
        return datagram[:-MAC_LEN]
    return datagram


def mac1_of(datagram: bytes) -> bytes:
    """The mac1 field of a handshake datagram (what a cookie reply binds to)."""
    return mac1_part(datagram)[-MAC_LEN:]


def encode_cookie_reply(receiver_index: int, nonce: bytes, sealed_cookie: bytes) -> bytes:
    """A COOKIE datagram answering the initiation whose sender index is ``receiver_index``."""
    if len(nonce) != NONCE_LEN or len(sealed_cookie) != SEALED_COOKIE_LEN:
        raise ValueError("bad cookie reply field length")
    return COOKIE_HEADER.pack(VERSION, TYPE_COOKIE, 0, receiver_index) + nonce + sealed_cookie


def encode_response(
    sender_index: int, receiver_index: int, noise: bytes, mac_key: bytes | None = None
) -> bytes:
    """``mac_key``: ``mac1_key(psk, initiator_static)`` (see :func:`encode_initiation`)."""
    data = RESPONSE_HEADER.pack(VERSION, TYPE_RESPONSE, 0, sender_index, receiver_index) + noise
    return _with_mac(data, mac_key)


def encode_data_header(receiver_index: int, counter: int) -> bytes:
    return DATA_HEADER.pack(VERSION, TYPE_DATA, 0, receiver_index, counter)


def decode(datagram: bytes) -> Initiation | Response | CookieReply | DataHeader:
    """Classify and parse a datagram's outer framing (no cryptography)."""
    n = len(datagram)
    if n < 2:
        raise Truncated(f"datagram of {n} bytes")
    version, kind = datagram[0], datagram[1]
    if version != VERSION:
        raise DecodeError(f"unknown version {version}")
    if kind == TYPE_DATA:
        if n < DATA_OVERHEAD:
            raise Truncated(f"data datagram of {n} bytes")
        _, _, reserved, idx, counter = DATA_HEADER.unpack_from(datagram)
        if reserved:
            raise DecodeError("reserved bits set")
        return DataHeader(idx, counter)
    if kind == TYPE_INITIATION:
        if n < INITIATION_SIZE:
            raise Truncated(f"initiation of {n} bytes")
        if n > INITIATION_SIZE:
            raise DecodeError(f"initiation of {n} bytes")
        _, _, reserved, sender = INITIATION_HEADER.unpack_from(datagram)
        if reserved:
            raise DecodeError("reserved bits set")
        return Initiation(sender, bytes(datagram[INITIATION_HEADER.size : -2 * MAC_LEN]))
    if kind == TYPE_RESPONSE:
        if n < RESPONSE_SIZE:
            raise Truncated(f"response of {n} bytes")
        if n > RESPONSE_SIZE:
            raise DecodeError(f"response of {n} bytes")
        _, _, reserved, sender, receiver = RESPONSE_HEADER.unpack_from(datagram)
        if reserved:
            raise DecodeError("reserved bits set")
        return Response(sender, receiver, bytes(datagram[RESPONSE_HEADER.size : -MAC_LEN]))
    if kind == TYPE_COOKIE:
        if n < COOKIE_SIZE:
            raise Truncated(f"cookie reply of {n} bytes")
        if n > COOKIE_SIZE:
            raise DecodeError(f"cookie reply of {n} bytes")
        _, _, reserved, receiver = COOKIE_HEADER.unpack_from(datagram)
        if reserved:
            raise DecodeError("reserved bits set")
        start = COOKIE_HEADER.size
        return CookieReply(
            receiver,
            bytes(datagram[start : start + NONCE_LEN]),
            bytes(datagram[start + NONCE_LEN :]),
        )
    raise DecodeError(f"unknown datagram type {kind}")


# ---------------------------------------------------------------- bodies


def _bin_size(n: int) -> int:
    return n + (2 if n < 256 else 3 if n < 65536 else 5)


def _str_size(s: str) -> int:
    n = len(s.encode())
    return n + (1 if n < 32 else 2 if n < 256 else 3 if n < 65536 else 5)


#: upper bound of the body's outer array header
BODY_OVERHEAD = 5
#: array(3) + kind + msgs array header, plus the stream name
_MSGS_ENTRY_FIXED = 1 + 1 + 5
#: array(6) + kind + frag_id(<=9) + index(<=5) + count(<=5) + bin header(<=5)
_FRAG_ENTRY_FIXED = 1 + 1 + 9 + 5 + 5 + 5


#: smallest non-final fragment chunk any valid sender produces: the smallest
#: datagram (576) minus DATA_OVERHEAD gives a 544-byte budget, minus the body and
#: fragment framing with a 255-byte stream name (5 + 26 + 258) = 255.
MIN_FRAGMENT_CHUNK = 255
#: bookkeeping bytes charged per buffered fragment on top of its chunk, so the
#: memory bound also holds for many small parts
FRAGMENT_PART_OVERHEAD = 128


def fragment_chunk_size(budget: int, stream: str) -> int:
    """Payload bytes per fragment when bodies may be at most ``budget`` bytes."""
    return budget - BODY_OVERHEAD - _FRAG_ENTRY_FIXED - _str_size(stream)


def pack_bodies(
    groups: list[tuple[str, list[bytes]]], budget: int, next_frag_id: int
) -> tuple[list[bytes], int]:
    """Pack ``(stream, messages)`` groups, in order, into msgpack bodies.

    Each returned body is at most ``budget`` bytes (one datagram's plaintext). Order
    of messages is preserved within and across groups. A message too large for one
    body is split into fragments carrying ``frag_id = next_frag_id, +1, ...``.
    Returns ``(bodies, next_frag_id)``. Raises ValueError if ``budget`` is too small
    for any message framing (< 64).
    """
    if budget < 64:
        raise ValueError("budget too small")
    packb = msgpack.packb
    bodies: list[bytes] = []
    cur: list[list[Any]] = []
    full_room = budget - BODY_OVERHEAD
    room = full_room
    for stream, msgs in groups:
        entry_fixed = _MSGS_ENTRY_FIXED + _str_size(stream)
        i = 0
        n = len(msgs)
        while i < n:
            avail = room - entry_fixed
            used = 0
            j = i
            while j < n:
                size = len(msgs[j])
                c = size + (2 if size < 256 else 3 if size < 65536 else 5)
                if used + c > avail:
                    break
                used += c
                j += 1
            if j > i:
                cur.append([ENTRY_MESSAGES, stream, msgs[i:j]])
                room -= entry_fixed + used
                i = j
                continue
            message = msgs[i]
            if entry_fixed + _bin_size(len(message)) <= full_room:
                # fits an empty body: close the current one
                bodies.append(packb(cur))
                cur = []
                room = full_room
                continue
            chunk = fragment_chunk_size(budget, stream)
            count = -(-len(message) // chunk)
            if cur:
                bodies.append(packb(cur))
                cur = []
            fid = next_frag_id
            next_frag_id += 1
            whole = memoryview(message)  # pieces are packed from it, not copied first
            for k in range(count):
                piece = whole[k * chunk : (k + 1) * chunk]
                entry = [ENTRY_FRAGMENT, stream, fid, k, count, piece]
                if k < count - 1:
                    bodies.append(packb([entry]))
                else:
                    cur = [entry]
                    room = full_room - (_FRAG_ENTRY_FIXED + _str_size(stream) + len(piece))
            i += 1
    if cur:
        bodies.append(packb(cur))
    return bodies, next_frag_id


def unpack_body(body: bytes) -> list[list[Any]]:
    """Decode and validate a body; returns its entries (see module doc)."""
    try:
        entries = msgpack.unpackb(body, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises a zoo of types on garbage
        raise DecodeError(f"bad msgpack body: {type(exc).__name__}") from None
    if type(entries) is not list:
        raise DecodeError("body is not an array")
    for e in entries:
        if type(e) is not list or not e:
            raise DecodeError("entry is not a non-empty array")
        kind = e[0]
        if type(kind) is not int:
            raise DecodeError("entry kind is not an int")
        if kind == ENTRY_MESSAGES:
            if len(e) != 3 or type(e[1]) is not str or type(e[2]) is not list:
                raise DecodeError("bad messages entry")
            for m in e[2]:
                if type(m) is not bytes:
                    raise DecodeError("message is not bytes")
        elif kind == ENTRY_FRAGMENT:
            if (
                len(e) != 6
                or type(e[1]) is not str
                or type(e[2]) is not int
                or type(e[3]) is not int
                or type(e[4]) is not int
                or type(e[5]) is not bytes
            ):
                raise DecodeError("bad fragment entry")
            if e[2] < 0 or not 0 <= e[3] < e[4]:
                raise DecodeError("bad fragment numbering")
        else:
            raise DecodeError("unknown entry kind")
    return entries


class Reassembler:
    """Reassembles fragments from one peer with bounded memory.

    ``add(stream, frag_id, index, count, chunk, session)`` returns the whole message
    when its last missing fragment arrives, else None. Fragments only ever combine
    with fragments of the same ``session`` (any hashable; the node passes the
    receiving session's index) and ``(stream, frag_id)``; :meth:`drop_session`
    forgets a session's incomplete messages (the node calls it when the session is
    forgotten). Limits: at most ``max_message`` bytes per message (``count`` beyond
    ``max_message/min_chunk`` is refused with DecodeError), non-final chunks of at
    least ``min_part`` bytes (shorter ones are refused), at most ``max_bytes``
    buffered in total, counting ``FRAGMENT_PART_OVERHEAD`` per buffered part, and
    ``max_pending`` incomplete messages; when over a limit the oldest incomplete
    message is evicted (``evicted`` counts them). Duplicate fragments are ignored.
    """

    def __init__(
        self,
        max_message: int,
        max_bytes: int,
        max_pending: int = 64,
        min_chunk: int = 256,
        min_part: int = MIN_FRAGMENT_CHUNK,
    ) -> None:
        self.max_message = max_message
        self.max_bytes = max_bytes
        self.max_pending = max_pending
        self.max_count = max(1, -(-max_message // min_chunk))
        self.min_part = min_part
        self._pending: dict[tuple[object, str, int], tuple[int, dict[int, bytes]]] = {}
        self.buffered = 0
        self.evicted = 0

    def add(
        self,
        stream: str,
        frag_id: int,
        index: int,
        count: int,
        chunk: bytes,
        session: object = 0,
    ) -> bytes | None:
        if count > self.max_count or len(chunk) > self.max_message:
            raise DecodeError(f"fragment count {count} exceeds the limit")
        if index < count - 1 and len(chunk) < self.min_part:
            raise DecodeError(f"non-final fragment of {len(chunk)} bytes is too short")
        key = (session, stream, frag_id)
        slot = self._pending.get(key)
        if slot is None:
            slot = (count, {})
            self._pending[key] = slot
        elif slot[0] != count:
            raise DecodeError("fragment count changed")
        parts = slot[1]
        if index in parts:
            return None
        parts[index] = chunk
        self.buffered += len(chunk) + FRAGMENT_PART_OVERHEAD
        if len(parts) == count:
            del self._pending[key]
            data = b"".join(parts[k] for k in range(count))
            self.buffered -= len(data) + FRAGMENT_PART_OVERHEAD * count
            if len(data) > self.max_message:
                raise DecodeError("reassembled message exceeds the limit")
            return data
        while (
            self.buffered > self.max_bytes or len(self._pending) > self.max_pending
        ) and self._pending:
            self._evict(next(iter(self._pending)))
            self.evicted += 1
        return None

    def _evict(self, key: tuple[object, str, int]) -> None:
        _, parts = self._pending.pop(key)
        self.buffered -= sum(len(p) for p in parts.values()) + FRAGMENT_PART_OVERHEAD * len(parts)

    def drop_session(self, session: object) -> None:
        """Forget every incomplete message of ``session`` (not counted as evictions)."""
        for key in [k for k in self._pending if k[0] == session]:
            self._evict(key)

    def clear(self) -> None:
        self._pending.clear()
        self.buffered = 0

    @property
    def pending(self) -> int:
        return len(self._pending)
