"""The one exception tree of netmesh.

Rule (h11 style): misuse of the API by *this* process raises a ``LocalProtocolError``
or a specific value error (``ChannelNameError``, ``PayloadTooLarge``...); garbage that
arrives from a peer is turned into a ``RemoteProtocolError`` subclass where it enters,
and the shell drops, logs and counts it instead of crashing.
"""

from __future__ import annotations


class NetmeshError(Exception):
    """Base of every error raised by netmesh."""


class ConfigError(NetmeshError, ValueError):
    """A configuration value is out of range or inconsistent; the message names the field."""


class ChannelNameError(NetmeshError, ValueError):
    """A channel name breaks the rules documented in :class:`netmesh.channel.ChannelName`."""


class PayloadTooLarge(NetmeshError, ValueError):
    """An event payload exceeds the configured ``max_payload`` (nothing was appended)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"payload of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class Closed(NetmeshError):
    """The file, ring, node or cluster was closed; the operation did not happen."""


class RingFull(NetmeshError):
    """``put_batch_nowait`` found too little free space; nothing of the batch was written."""


class RingClosed(Closed):
    """The other side of a shared-memory ring closed it."""


class LogCorrupt(NetmeshError):
    """A record in the middle of an event file fails its checksum or framing.

    Never raised for a torn tail (an incomplete last write), which is truncated and
    counted instead. ``path`` and ``offset`` name the bad record.
    """

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"{path}: corrupt record at offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class Lagged(NetmeshError):
    """A tail subscriber fell behind what the file still holds: events it needs were
    dropped by retention, or a divergent suffix it already saw was truncated by
    replication. Re-read from ``first_retained_seq`` (or a known good seq)."""


class OutOfOrder(NetmeshError):
    """An append carried a sequence number other than the file's ``next_seq``."""


class NotLeader(NetmeshError):
    """An append reached a replicated channel on a node that is not its leader.

    Nothing was appended; ``leader`` is the node id believed to lead, if known.
    """

    def __init__(self, channel: str, leader: int | None = None) -> None:
        # the user-facing form of a node: 0x + 16 hex digits (nodeconfig.format_node_id)
        where = f"; leader is {leader:#018x}" if leader is not None else ""
        super().__init__(f"this node is not the leader of {channel!r}{where}")
        self.channel = channel
        self.leader = leader


class TransportError(NetmeshError):
    """An OS-level socket error, translated once at the edge of the transport."""


class ProtocolError(NetmeshError):
    """Base of protocol errors (local misuse or remote garbage)."""


class LocalProtocolError(ProtocolError):
    """This process used a protocol object wrongly (a bug in the caller)."""


class InvalidTransition(LocalProtocolError):
    """A replica role transition that the transition table does not allow."""


class RemoteProtocolError(ProtocolError):
    """Bytes from a peer are not acceptable; the shell drops them and counts the reason."""


class DecodeError(RemoteProtocolError):
    """A datagram or message could not be decoded (truncated, garbage, wrong version)."""


class HandshakeError(RemoteProtocolError):
    """A handshake failed: wrong PSK, unexpected static key, tampering, or no answer."""


class AuthenticationError(RemoteProtocolError):
    """An AEAD tag did not verify (tampered datagram or wrong key)."""


class Replayed(RemoteProtocolError):
    """A datagram counter was already seen or is too old for the replay window."""


class NodeUnresponsive(NetmeshError):
    """A node process did not answer a control request within its timeout."""


class NodeError(NetmeshError):
    """A node process failed a control request with an error that is not a netmesh
    error (an OSError, a bug); the message names the node, the request and the
    original exception type. Netmesh errors cross the process boundary as themselves."""


class Truncated(NetmeshError):
    """Replication truncated events a subscriber had already received (a divergent,
    never-committed suffix of leader mode): the subscriber saw a history that is gone.

    ``seq`` is the first seq that was removed; re-read from it to follow the new history.
    """

    def __init__(self, channel: str, seq: int) -> None:
        super().__init__(f"{channel}: events from seq {seq} on were truncated by replication")
        self.channel = channel
        self.seq = seq


class StorageFailed(NetmeshError):
    """A write, fsync, truncate or rename of an event file failed. The file stops (fail-
    stop, like etcd and PostgreSQL after a failed fsync): nothing more is written and every
    later append raises this, until the file is closed and reopened (which recovers
    what is durable). ``cause`` is the OS error."""

    def __init__(self, channel: str, cause: BaseException) -> None:
        super().__init__(f"{channel}: storage failed, channel stopped: {cause}")
        self.channel = channel
        self.cause = cause


class LogLocked(NetmeshError):
    """Another process (or another open in this one) holds the event file's directory
    lock: two writers on one log would corrupt it."""


class ChannelNotOpen(NetmeshError, LookupError):
    """The channel named is not open on the node (or cluster) asked; the message names
    the channel and where it was looked up."""


class Backpressure(NetmeshError):
    """An :class:`netmesh.bus.EventBus` in ``backpressure="fail_producer"`` mode refused an
    event: the shard's ring is full, or its backend has been unreachable for longer than
    the bus's ``retry_for``. Nothing of the event was accepted (it is counted in
    ``stats().dropped``); ``shard`` names the shard and ``reason`` is ``"ring_full"`` or
    ``"backend_down"``."""

    def __init__(self, shard: int, reason: str) -> None:
        super().__init__(f"event bus shard {shard} refused the event: {reason}")
        self.shard = shard
        self.reason = reason


class BadCursor(NetmeshError, ValueError):
    """A poll cursor is not one this bus handed out (not base64 JSON of the documented
    shape, or an unknown version)."""


class FilterError(NetmeshError, ValueError):
    """A poll filter breaks the grammar of :mod:`netmesh.bus.filter`; the message names
    the offending part."""


class AdapterError(NetmeshError):
    """An event bus adapter's backend failed a call (connection refused or lost, timeout,
    an error reply). Raised at the adapter's edge in place of the client library's own
    exceptions; ``cause`` is the original. The bus retries ``on_batch`` on it."""

    def __init__(self, adapter: str, message: str, cause: BaseException | None = None) -> None:
        super().__init__(f"{adapter}: {message}")
        self.adapter = adapter
        self.cause = cause


class AdapterNotAvailable(NetmeshError, NotImplementedError):
    """The adapter asked for is not built yet; the message names the issue that adds it."""


class NameTaken(NetmeshError):
    """Another live cluster or node daemon of this user serves that name already."""


class ClusterNotFound(NetmeshError):
    """No cluster or node daemon serves that name (``netmesh.connect``): nothing listens
    on its socket in the run directory."""
