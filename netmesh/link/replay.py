"""Sliding anti-replay window over 64-bit counters (RFC 6479), pure.

A ring of ``BLOCKS`` 64-bit words; the window covers the ``WINDOW_SIZE`` counters
below the greatest counter seen. Moving the window forward only clears the blocks
it passes over (RFC 6479 section 3), so the cost does not depend on the jump size.
"""

from __future__ import annotations

BLOCK_BITS = 64
BLOCKS = 64  # power of two
WINDOW_SIZE = (BLOCKS - 1) * BLOCK_BITS  # 4032 counters
_MASK = BLOCKS - 1


class ReplayWindow:
    """Accepts each counter at most once, and nothing older than the window.

    ``check_and_update(counter)`` returns True the first time a counter below
    ``limit`` is seen and still within ``WINDOW_SIZE`` of the greatest counter seen;
    it returns False (and changes nothing) otherwise. Call it only after the packet
    authenticated, so forged packets never move the window. ``check(counter)`` is the
    same test without the update: call it *before* decrypting so a replayed datagram
    costs no AEAD work.
    """

    __slots__ = ("_last", "_ring", "limit")

    def __init__(self, limit: int = (1 << 64) - 1) -> None:
        self._ring = [0] * BLOCKS
        self._last = 0
        self.limit = limit

    def check(self, counter: int) -> bool:
        """Whether ``check_and_update(counter)`` would accept ``counter`` (read-only)."""
        if counter >= self.limit or counter < 0:
            return False
        last = self._last
        if counter > last:
            return True
        if last - counter > WINDOW_SIZE:
            return False
        return not self._ring[(counter >> 6) & _MASK] & (1 << (counter & 63))

    def check_and_update(self, counter: int) -> bool:
        if counter >= self.limit or counter < 0:
            return False
        block = counter >> 6
        last = self._last
        ring = self._ring
        if counter > last:
            current = last >> 6
            diff = block - current
            if diff > BLOCKS:
                diff = BLOCKS
            for i in range(current + 1, current + diff + 1):
                ring[i & _MASK] = 0
            self._last = counter
        elif last - counter > WINDOW_SIZE:
            return False
        block &= _MASK
        bit = 1 << (counter & 63)
        old = ring[block]
        if old & bit:
            return False
        ring[block] = old | bit
        return True

    @property
    def greatest(self) -> int:
        return self._last
