"""The poll cursor: an opaque string holding each shard's position.

Shape (version 1): URL-safe base64 (no padding) of the JSON object
``{"v": 1, "p": {"<shard>": "<id>", ...}, "r": <next start shard>}``. ``p`` maps a shard to
the id (:attr:`StoredEvent.id`) of the last event consumed from it; a shard missing from
``p`` is read from its beginning. ``r`` rotates which shard a page starts with, so a busy
shard cannot starve the others. Same idea as the reference's base64 JSON map
(``mesh_spec.md`` §6.4). Pure: no IO.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field

from netmesh.errors import BadCursor

VERSION = 1


@dataclass(slots=True)
class Cursor:
    """Decoded cursor: ``positions`` shard -> last consumed id; ``start`` next first shard."""

    positions: dict[int, str] = field(default_factory=dict)
    start: int = 0

    def encode(self) -> str:
        """The opaque string form (round-trips through :func:`decode`)."""
        doc = {"v": VERSION, "p": {str(s): p for s, p in sorted(self.positions.items())}}
        if self.start:
            doc["r"] = self.start
        raw = json.dumps(doc, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode(cursor: str | None) -> Cursor:
    """Parse a cursor string; ``None`` or ``""`` is the beginning of every shard.

    Raises :class:`BadCursor` for anything this module did not produce.
    """
    if not cursor:
        return Cursor()
    if not isinstance(cursor, str):
        raise BadCursor(f"a cursor is a str, not {type(cursor).__name__}")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        doc = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise BadCursor(f"not a bus cursor: {cursor[:40]!r}") from exc
    if not isinstance(doc, dict) or doc.get("v") != VERSION:
        raise BadCursor(f"unknown cursor version in {cursor[:40]!r}")
    p, start = doc.get("p", {}), doc.get("r", 0)
    if not isinstance(p, dict) or not isinstance(start, int) or start < 0:
        raise BadCursor(f"malformed cursor {cursor[:40]!r}")
    positions: dict[int, str] = {}
    for s, pos in p.items():
        if not (isinstance(s, str) and s.isdigit() and isinstance(pos, str)):
            raise BadCursor(f"malformed cursor position {s!r}: {pos!r}")
        positions[int(s)] = pos
    return Cursor(positions, start)
