"""Majority arithmetic for quorum commit and elections (tiny, pure, obviously correct)."""

from __future__ import annotations

from collections.abc import Iterable


def majority(n: int) -> int:
    """Smallest number of members that is more than half of ``n``."""
    return n // 2 + 1


def committed_seq(matches: Iterable[int]) -> int:
    """Highest exclusive seq held by a majority, given each member's held tail (self included)."""
    ordered = sorted(matches, reverse=True)
    if not ordered:
        return 0
    return ordered[majority(len(ordered)) - 1]


def vote_outcome(granted: int, rejected: int, n: int) -> bool | None:
    """True: a majority granted; False: a majority can no longer grant; None: pending."""
    need = majority(n)
    if granted >= need:
        return True
    if n - rejected < need:
        return False
    return None
