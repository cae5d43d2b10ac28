"""Frames of a subscription ring (node -> subscriber), pure.

Each ring record is one msgpack array:

* ``[EVENTS, first_seq, [payload, ...], last_term]``: consecutive events from
  ``first_seq``; ``last_term``: the term the last of them was written in (a subscriber
  that moves to another node after a failure names it, so the node can tell whether
  its history still holds what was delivered);
* ``[TRUNCATED, seq]``: replication removed events from ``seq`` on that this
  subscription had already delivered (leader mode only; quorum delivers only
  committed events, which are never truncated);
* ``[LAGGED, first_retained_seq]``: retention removed events the subscriber needed;
* ``[END, next_seq]``: a bounded read (``read_range``) is complete;
* ``[FAILED, error]``: the node stopped serving (the error as
  :func:`netmesh.cluster.control.error_value` encodes it);
* ``[GROUP, [[seq, delivery_count, payload], ...]]``: events a consumer group's
  dispatcher hands to one member (:mod:`netmesh.cluster.groups`), not contiguous.

One msgpack call per batch, on both sides.
"""

from __future__ import annotations

from typing import Any

import msgpack

from netmesh.errors import DecodeError

EVENTS, TRUNCATED, LAGGED, END, FAILED, GROUP = 0, 1, 2, 3, 4, 5


def events(first_seq: int, payloads: list[bytes], last_term: int) -> bytes:
    out: bytes = msgpack.packb([EVENTS, first_seq, payloads, last_term], use_bin_type=True)
    return out


def control(kind: int, value: Any) -> bytes:
    out: bytes = msgpack.packb([kind, value], use_bin_type=True)
    return out


def decode(frame: bytes) -> list[Any]:
    """One frame; DecodeError for anything that is not a frame of this protocol."""
    try:
        msg = msgpack.unpackb(frame, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise DecodeError(f"bad subscription frame: {exc}") from None
    if (
        not isinstance(msg, list)
        or not msg
        or msg[0] not in (EVENTS, TRUNCATED, LAGGED, END, FAILED, GROUP)
    ):
        raise DecodeError("bad subscription frame: unknown kind")
    if msg[0] == EVENTS and (
        len(msg) != 4
        or not isinstance(msg[1], int)
        or not isinstance(msg[2], list)
        or not isinstance(msg[3], int)
    ):
        raise DecodeError("bad subscription frame: EVENTS needs [0, seq, [payloads], term]")
    return msg
