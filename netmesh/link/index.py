"""The index table between peers, sessions and addresses, pure (wireguard-go indextable.go).

A :class:`PeerIndex` is the one place that maps

* a node id to its peer object (``peer(node_id)``),
* one of our 32-bit receiver indices to the ``(peer, session)`` it belongs to
  (``session(index)``: the DATA fast path) or to the peer whose initiation used it
  (``pending(index)``: a handshake response names it),
* a peer's current address to its node id (``at(addr)``).

Rules
    1. An index is allocated once (:meth:`alloc`) and names at most one thing at a
       time: a pending initiation or a session. :meth:`release` frees it; every
       removal (``remove_session``, ``remove_pending``) releases it.
    2. ``remove_session(index, session)`` removes the entry only if it still holds
       ``session`` (a stale removal after the index was reused is a no-op).
    3. ``by_addr`` follows :meth:`rebind`; the owner calls it whenever a peer's address
       changes (authenticated input only, see ``netmesh.link.peer``).

Randomness is an input: ``randbits(32)`` proposes candidate indices (the shell passes
``secrets.randbits``); 0 is never handed out. The table is generic in its peer and
session types so it imports neither.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

P = TypeVar("P")
S = TypeVar("S")
Addr = tuple[str, int]


class PeerIndex(Generic[P, S]):
    """Peers by node id, sessions and pending initiations by index, node ids by address."""

    def __init__(self, randbits: Callable[[int], int]) -> None:
        self._randbits = randbits
        self._by_id: dict[int, P] = {}
        self._sessions: dict[int, tuple[P, S]] = {}
        self._pending: dict[int, P] = {}
        self._by_addr: dict[Addr, int] = {}
        self._used: set[int] = set()

    # ------------------------------------------------------------ peers
    def peer(self, node_id: int) -> P | None:
        return self._by_id.get(node_id)

    def add_peer(self, node_id: int, peer: P, addr: Addr | None = None) -> None:
        """Register ``peer``; LookupError if ``node_id`` already has one (a bug)."""
        if node_id in self._by_id:
            raise LookupError(f"peer {node_id:#x} already indexed")
        self._by_id[node_id] = peer
        if addr is not None:
            self._by_addr[addr] = node_id

    def remove_peer(self, node_id: int, peer: P, addr: Addr | None = None) -> bool:
        """Forget ``peer`` if it is the one indexed under ``node_id`` (rule 2's spirit)."""
        if self._by_id.get(node_id) is not peer:
            return False
        del self._by_id[node_id]
        if addr is not None and self._by_addr.get(addr) == node_id:
            del self._by_addr[addr]
        return True

    def rebind(self, node_id: int, old: Addr | None, new: Addr | None) -> None:
        """The address of ``node_id`` moved from ``old`` to ``new``."""
        if old == new:
            return
        if old is not None and self._by_addr.get(old) == node_id:
            del self._by_addr[old]
        if new is not None:
            self._by_addr[new] = node_id

    def at(self, addr: Addr) -> int | None:
        """Node id of the peer whose current address is ``addr``, if any."""
        return self._by_addr.get(addr)

    def peers(self) -> Iterator[P]:
        """A snapshot of every indexed peer (safe to mutate the table while iterating)."""
        return iter(list(self._by_id.values()))

    def node_ids(self) -> list[int]:
        return list(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    # ------------------------------------------------------------ indices
    def alloc(self) -> int:
        """A fresh non-zero 32-bit index not naming anything (rule 1)."""
        while True:
            i = self._randbits(32)
            if i and i not in self._used:
                self._used.add(i)
                return i

    def release(self, index: int) -> None:
        self._used.discard(index)

    def in_use(self, index: int) -> bool:
        return index in self._used

    # ------------------------------------------------------------ sessions
    def session(self, index: int) -> tuple[P, S] | None:
        return self._sessions.get(index)

    def add_session(self, index: int, peer: P, session: S) -> None:
        self._pending.pop(index, None)
        self._used.add(index)
        self._sessions[index] = (peer, session)

    def remove_session(self, index: int, session: S) -> bool:
        """Remove and release ``index`` if it still names ``session``; True if it did."""
        entry = self._sessions.get(index)
        if entry is None or entry[1] is not session:
            return False
        del self._sessions[index]
        self._used.discard(index)
        return True

    def session_count(self) -> int:
        return len(self._sessions)

    # ------------------------------------------------------------ pending initiations
    def pending(self, index: int) -> P | None:
        return self._pending.get(index)

    def add_pending(self, index: int, peer: P) -> None:
        self._used.add(index)
        self._pending[index] = peer

    def remove_pending(self, index: int, release: bool = True) -> None:
        """Forget the initiation under ``index`` (and free the index unless
        ``release`` is False: the index becomes the session's)."""
        self._pending.pop(index, None)
        if release:
            self._used.discard(index)
