"""Validated channel names.

Rules (checked in the constructor, violations raise :class:`ChannelNameError`):

* 1 to 255 bytes;
* one or more segments separated by ``/``; no empty segment (so no leading,
  trailing or doubled ``/``);
* each segment uses only ``A-Z a-z 0-9 . _ -`` and is not ``.`` or ``..``.
"""

from __future__ import annotations

import re

from netmesh.errors import ChannelNameError

MAX_CHANNEL_NAME_BYTES = 255
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


class ChannelName(str):
    """A channel name that is known to be valid; compares and hashes as ``str``."""

    __slots__ = ()

    def __new__(cls, value: str | ChannelName) -> ChannelName:
        if isinstance(value, ChannelName):
            return value
        if not isinstance(value, str):
            raise ChannelNameError(f"channel name must be str, not {type(value).__name__}")
        _check(value)
        return super().__new__(cls, value)


def _check(name: str) -> None:
    if not name:
        raise ChannelNameError("channel name is empty")
    if len(name.encode("utf-8")) > MAX_CHANNEL_NAME_BYTES:
        raise ChannelNameError(
            f"channel name is {len(name.encode())} bytes, the limit is {MAX_CHANNEL_NAME_BYTES}"
        )
    for i, seg in enumerate(name.split("/")):
        if not seg:
            raise ChannelNameError(f"channel name {name!r} has an empty segment (number {i})")
        if not _SEGMENT.fullmatch(seg):
            bad = next(c for c in seg if not _SEGMENT.fullmatch(c))
            raise ChannelNameError(
                f"channel name {name!r} contains {bad!r}; allowed: A-Z a-z 0-9 . _ - and / between"
                " segments"
            )
        if seg in (".", ".."):
            raise ChannelNameError(f"channel name {name!r} has a {seg!r} segment")
