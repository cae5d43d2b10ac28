"""Supervisor <-> node control protocol (pure framing, message shapes and error mapping).

Transport: the control connection, a stream socket (one end of a socketpair per node).
Each frame is ``length u32 LE | msgpack``.

* request:  ``[REQUEST, id, op, args]`` (id: int chosen by the supervisor, op: str,
  args: dict)
* response: ``[RESPONSE, id, ok, value]`` (ok True: value is the result; ok False:
  value is an error as :func:`error_value` encodes it)

A node answers every request exactly once, in any order; the supervisor matches by id
and gives up on a request after its timeout (the node is then reported unresponsive).
Ops are documented where they are handled (:mod:`netmesh.cluster.node_worker`).

Errors keep their type across the process boundary: a failed request carries the
exception's class name, its message and its public scalar attributes
(``{"type": "NotLeader", "message": "...", "attrs": {"channel": "c", "leader": 7}}``);
:func:`error_from_value` rebuilds the same :mod:`netmesh.errors` class on the
supervisor's side, or a :class:`~netmesh.errors.NodeError` naming the original type
when it is not a netmesh error (an OSError, a bug).
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from netmesh import errors
from netmesh.errors import DecodeError, NetmeshError, NodeError

REQUEST, RESPONSE = 0, 1
MAX_FRAME = 16 << 20
_LEN = struct.Struct("<I")
_SCALARS = (str, int, float, bool, bytes, type(None))


def encode(msg: list[Any]) -> bytes:
    """Frame one control message; ValueError if it exceeds ``MAX_FRAME`` bytes."""
    body: bytes = msgpack.packb(msg, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise ValueError(f"control message of {len(body)} bytes exceeds {MAX_FRAME}")
    return _LEN.pack(len(body)) + body


def request(req_id: int, op: str, args: dict[str, Any]) -> bytes:
    """A framed request ``[REQUEST, req_id, op, args]``."""
    return encode([REQUEST, req_id, op, args])


def response(req_id: int, ok: bool, value: Any) -> bytes:
    """A framed response; for ``ok=False`` pass ``error_value(exc)`` as ``value``."""
    return encode([RESPONSE, req_id, ok, value])


def error_value(exc: BaseException) -> dict[str, Any]:
    """``{"type", "message", "attrs"}`` of ``exc`` (attrs: its public scalar attributes)."""
    attrs = {
        k: v for k, v in vars(exc).items() if not k.startswith("_") and isinstance(v, _SCALARS)
    }
    return {"type": type(exc).__name__, "message": str(exc), "attrs": attrs}


def error_from_value(value: Any, where: str) -> NetmeshError:
    """The exception a failed response describes, its message prefixed by ``where``
    (e.g. ``"node 0 open_channel"``).

    A class of :mod:`netmesh.errors` comes back as itself (so ``except NotLeader``
    works across processes) with its attributes restored; anything else becomes a
    :class:`NodeError` whose message starts with the original type name.
    """
    if not isinstance(value, dict):  # defensive: an old or foreign node
        return NodeError(f"{where}: {value}")
    name = str(value.get("type", "Exception"))
    message = str(value.get("message", ""))
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, NetmeshError)):
        return NodeError(f"{where}: {name}: {message}")
    err: NetmeshError = cls.__new__(cls)
    Exception.__init__(err, f"{where}: {message}")
    attrs = value.get("attrs")
    if isinstance(attrs, dict):
        for k, v in attrs.items():
            if isinstance(k, str) and not k.startswith("_"):
                setattr(err, k, v)
    return err


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
    if not (isinstance(msg, list) and len(msg) == 4 and msg[0] in (REQUEST, RESPONSE)):
        raise DecodeError(f"bad control message shape: {msg!r:.80}")
    return msg
