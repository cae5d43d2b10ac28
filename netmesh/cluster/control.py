"""Supervisor <-> node control protocol (pure framing and message shapes).

Transport: a stream socket (socketpair). Each frame is ``length u32 LE | msgpack``.

* request:  ``[REQUEST, id, op, args]`` (id: int chosen by the supervisor, op: str,
  args: dict)
* response: ``[RESPONSE, id, ok, value]`` (ok True: value is the result; ok False:
  value is ``"ErrorType: message"``)
* event:    ``[EVENT, 0, kind, data]`` (unsolicited, node -> supervisor, e.g. "hello")

A node answers every request exactly once, in any order; the supervisor matches by id
and gives up on a request after its timeout (the node is then reported unresponsive).
Ops are documented where they are handled (``workers/node.py``).
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from netmesh.errors import DecodeError

REQUEST, RESPONSE, EVENT = 0, 1, 2
MAX_FRAME = 16 << 20
_LEN = struct.Struct("<I")


def encode(msg: list[Any]) -> bytes:
    """Frame one control message."""
    body = msgpack.packb(msg, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise ValueError(f"control message of {len(body)} bytes exceeds {MAX_FRAME}")
    return _LEN.pack(len(body)) + body


def request(req_id: int, op: str, args: dict[str, Any]) -> bytes:
    return encode([REQUEST, req_id, op, args])


def response(req_id: int, ok: bool, value: Any) -> bytes:
    return encode([RESPONSE, req_id, ok, value])


def event(kind: str, data: Any) -> bytes:
    return encode([EVENT, 0, kind, data])


class FrameDecoder:
    """Accumulates stream bytes and yields whole control messages."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[list[Any]]:
        """Add bytes; return every complete message. Raises DecodeError on garbage."""
        self._buf += data
        out: list[list[Any]] = []
        while len(self._buf) >= _LEN.size:
            (n,) = _LEN.unpack_from(self._buf)
            if n > MAX_FRAME:
                raise DecodeError(f"control frame of {n} bytes exceeds {MAX_FRAME}")
            if len(self._buf) < _LEN.size + n:
                break
            body = bytes(self._buf[_LEN.size : _LEN.size + n])
            del self._buf[: _LEN.size + n]
            out.append(_check(body))
        return out


def _check(body: bytes) -> list[Any]:
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise DecodeError(f"bad control frame: {exc}") from None
    if not (isinstance(msg, list) and len(msg) == 4 and msg[0] in (REQUEST, RESPONSE, EVENT)):
        raise DecodeError(f"bad control message shape: {msg!r:.80}")
    return msg
