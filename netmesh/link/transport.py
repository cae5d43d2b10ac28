"""UDP endpoint shell: an asyncio DatagramProtocol around one bound socket.

No protocol decisions live here. Every datagram is handed to ``on_datagram(data,
addr)`` as it arrives; OSError from the OS is turned into
:class:`~netmesh.errors.TransportError` at this edge (bind, sendto) or logged at
debug and counted (asynchronous ``error_received``, e.g. ICMP port unreachable).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from netmesh.errors import Closed, TransportError

log = logging.getLogger(__name__)

Addr = tuple[str, int]


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: UdpTransport) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        owner = self._owner
        owner.on_datagram(data, addr)
        owner.drain()
        if owner.on_batch_end is not None:
            owner.on_batch_end()

    def error_received(self, exc: Exception) -> None:
        self._owner.errors += 1
        log.debug("udp error received: %r", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._closed.set()


#: datagrams read per readiness event (asyncio's datagram transport reads one per
#: loop iteration; a busy loop - thousands of replicated channels - then lets the
#: socket's queue grow and heartbeats arrive late: read what is queued, bounded)
READ_BATCH = 64
#: the largest UDP payload (datagrams larger than the node's max_datagram are read
#: whole, then dropped as oversized by the node)
_MAX_UDP = 65536


class UdpTransport:
    """One bound UDP socket.

    ``on_datagram`` is called synchronously in the event loop for each datagram; it
    must not raise (the node catches everything it can provoke). Up to
    :data:`READ_BATCH` queued datagrams are handed over per readiness event, then
    ``on_batch_end()`` is called, if given (the node sends the replies they queued
    then, not a loop turn later).
    """

    def __init__(
        self,
        on_datagram: Callable[[bytes, Addr], None],
        on_batch_end: Callable[[], None] | None = None,
    ) -> None:
        self.on_datagram = on_datagram
        self.on_batch_end = on_batch_end
        self.errors = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._closed = asyncio.Event()
        self.local_addr: Addr = ("", 0)
        self._sock: socket.socket | None = None

    def drain(self) -> None:
        """Hand over up to ``READ_BATCH - 1`` more datagrams already queued."""
        for _ in range(READ_BATCH - 1):
            sock = self._sock
            if sock is None or self._transport is None:
                return
            try:
                data, addr = sock.recvfrom(_MAX_UDP)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP errors queued on the socket
                self.errors += 1
                log.debug("udp recvfrom failed: %r", exc)
                return
            self.on_datagram(data, addr)

    @classmethod
    async def bind(
        cls,
        host: str,
        port: int,
        on_datagram: Callable[[bytes, Addr], None],
        recv_buffer: int,
        send_buffer: int,
        on_batch_end: Callable[[], None] | None = None,
    ) -> UdpTransport:
        """Bind ``host:port`` (port 0: any free port); TransportError on OSError."""
        self = cls(on_datagram, on_batch_end)
        loop = asyncio.get_running_loop()
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            family, _, _, _, sockaddr = infos[0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
        except OSError as exc:
            raise TransportError(f"cannot create socket for {host}:{port}: {exc}") from exc
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
            sock.bind(sockaddr)
            sock.setblocking(False)
            transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        except OSError as exc:
            sock.close()
            raise TransportError(f"cannot bind {host}:{port}: {exc}") from exc
        self._transport = transport
        self._sock = sock
        name = sock.getsockname()
        self.local_addr = (name[0], name[1])
        return self

    def sendto(self, data: bytes, addr: Addr) -> None:
        """Queue one datagram (asyncio buffers it if the socket would block)."""
        t = self._transport
        if t is None:
            raise Closed("transport closed")
        try:
            t.sendto(data, addr)
        except OSError as exc:
            raise TransportError(f"sendto {addr}: {exc}") from exc

    def write_buffer_size(self) -> int:
        """Bytes asyncio holds because the socket would block (0 if the loop's
        datagram transport does not report it)."""
        t = self._transport
        size = getattr(t, "get_write_buffer_size", None)
        return int(size()) if size is not None else 0

    async def close(self) -> None:
        t = self._transport
        if t is None:
            return
        self._transport = None
        self._sock = None
        t.close()
        await self._closed.wait()
