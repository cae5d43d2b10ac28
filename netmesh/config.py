"""Configuration value objects.

Every config is a frozen dataclass; ``validate()`` raises :class:`ConfigError` naming
the field and the rule. Constructors do not validate (so builders can be composed);
the code that consumes a config (``Redex.open_file``, ``MeshNode.create``) validates it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from netmesh.errors import ConfigError

FsyncPolicy = Literal["never", "batch", "interval"]
AckMode = Literal["leader", "quorum"]

DEFAULT_MAX_PAYLOAD = 1 << 20
MAX_REPLICATION_FACTOR = 16
#: the NIC peak when ``"auto"`` finds no link speed (1 Gbit/s, the reference's placeholder)
DEFAULT_NIC_PEAK_BYTES_PER_S = 125_000_000


class DefaultInt(int):
    """An int that remembers it is a field's default, not a value the caller chose.

    It behaves as a plain int everywhere (arithmetic, msgpack, equality); only
    :func:`is_default` tells them apart. ``Cluster`` uses it to give channels whose
    ``ReplicationConfig`` leaves ``heartbeat_ms`` unset the cluster's heartbeat while
    an explicit ``heartbeat_ms=500`` still wins.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return int.__repr__(self)


def is_default(value: object) -> bool:
    """Whether ``value`` is a field default left untouched (see :class:`DefaultInt`)."""
    return type(value) is DefaultInt


DEFAULT_HEARTBEAT_MS = DefaultInt(500)


@dataclass(frozen=True)
class PlacementStrategy:
    """Which nodes hold a replicated channel.

    ``pinned(ids)``: exactly these node ids, in this order. ``standard()``: the
    ``factor`` lowest node ids among the nodes that opened the channel (as their
    capability announcements say; ``netmesh.replication.placement``).
    ``colocation_strict(key)``: as standard, but only among the nodes that announced
    the chain ``key`` (``Redex.announce_chain``), even when fewer than ``factor``.
    """

    kind: Literal["standard", "pinned", "colocation_strict"] = "standard"
    nodes: tuple[int, ...] = ()
    #: the chain a ``colocation_strict`` channel must be colocated with
    key: str | None = None

    @classmethod
    def pinned(cls, nodes: list[int] | tuple[int, ...]) -> PlacementStrategy:
        return cls("pinned", tuple(int(n) for n in nodes))

    @classmethod
    def standard(cls) -> PlacementStrategy:
        return cls("standard", ())

    @classmethod
    def colocation_strict(cls, key: str) -> PlacementStrategy:
        """Only nodes that announced chain ``key`` hold the channel (upstream net-mesh's
        ``ColocationStrict`` with ``COLOCATE_WITH_STRICT_METADATA_KEY``)."""
        return cls("colocation_strict", (), str(key))


@dataclass(frozen=True)
class ReplicationConfig:
    """How a channel is replicated.

    factor: number of holders (1..16); for pinned placement the pinned list's length.
    heartbeat_ms: leader heartbeat period (50..300000 ms, default 500); silence
        detection is ``missed_heartbeats`` x this. Left unset, a ``Cluster`` uses its
        own ``heartbeat_ms``.
    placement: see :class:`PlacementStrategy`.
    leader_pinned: node id that wins elections whenever it is healthy (must be in a
        pinned set).
    replication_budget_fraction: share of ``nic_peak_bytes_per_s`` the leader may spend
        answering SyncRequests, in (0, 1].
    nic_peak_bytes_per_s: NIC capacity in bytes/s the budget is a share of (its burst
        is one second of budget). ``"auto"`` (default): what the OS reports for the
        interface the node is bound to (``/sys/class/net/<iface>/speed``), unlimited
        on loopback, ``DEFAULT_NIC_PEAK_BYTES_PER_S`` (125 MB/s) when the speed is
        unknown (:mod:`netmesh.replication.nic`); ``None``: unlimited (no budget); a
        positive int: that many bytes/s.
    missed_heartbeats: heartbeats of silence before a replica becomes Candidate (>= 2).
    ack: ``"leader"`` (append returns once the leader holds it; availability first,
        elections need only reachable members) or ``"quorum"`` (append returns once a
        majority holds it; elections need a majority of votes).
    sync_chunk_bytes: max payload bytes per SyncResponse request.
    """

    factor: int = 3
    heartbeat_ms: int = DEFAULT_HEARTBEAT_MS
    placement: PlacementStrategy = field(default_factory=PlacementStrategy.standard)
    leader_pinned: int | None = None
    replication_budget_fraction: float = 0.5
    nic_peak_bytes_per_s: int | Literal["auto"] | None = "auto"
    missed_heartbeats: int = 3
    ack: AckMode = "leader"
    sync_chunk_bytes: int = 256 * 1024

    def effective_factor(self) -> int:
        """Number of holders: the pinned list's length with pinned placement, else
        ``factor``."""
        if self.placement.kind == "pinned":
            return len(self.placement.nodes)
        return self.factor

    def validate(self) -> None:
        if not 1 <= self.factor <= MAX_REPLICATION_FACTOR:
            raise ConfigError(f"factor must be in 1..{MAX_REPLICATION_FACTOR}, got {self.factor}")
        if not 50 <= self.heartbeat_ms <= 300_000:
            raise ConfigError(f"heartbeat_ms must be in 50..300000, got {self.heartbeat_ms}")
        f = self.replication_budget_fraction
        if not (math.isfinite(f) and 0 < f <= 1):
            raise ConfigError(f"replication_budget_fraction must be in (0, 1], got {f}")
        peak = self.nic_peak_bytes_per_s
        if (
            peak is not None
            and peak != "auto"
            and (isinstance(peak, bool) or not isinstance(peak, int) or peak <= 0)
        ):
            raise ConfigError(
                f"nic_peak_bytes_per_s must be a positive int, 'auto' or None: {peak!r}"
            )
        if self.missed_heartbeats < 2:
            raise ConfigError(f"missed_heartbeats must be >= 2, got {self.missed_heartbeats}")
        if self.ack not in ("leader", "quorum"):
            raise ConfigError(f"ack must be 'leader' or 'quorum', got {self.ack!r}")
        if self.sync_chunk_bytes < 1024:
            raise ConfigError("sync_chunk_bytes must be >= 1024")
        nodes = self.placement.nodes
        if self.placement.kind == "pinned":
            if not nodes:
                raise ConfigError("pinned placement needs at least one node id")
            if len(nodes) > MAX_REPLICATION_FACTOR:
                raise ConfigError(f"pinned set larger than {MAX_REPLICATION_FACTOR}")
            if len(set(nodes)) != len(nodes):
                raise ConfigError(f"pinned set has duplicate node ids: {list(nodes)}")
            if self.leader_pinned is not None and self.leader_pinned not in nodes:
                raise ConfigError(f"leader_pinned {self.leader_pinned} is not in the pinned set")
        if self.placement.kind == "colocation_strict" and not self.placement.key:
            raise ConfigError("colocation_strict placement needs a non-empty chain key")


@dataclass(frozen=True)
class RedexFileConfig:
    """How one event file is stored.

    path: directory for segment files; None keeps the file in memory only.
    fsync: ``"never"`` (the OS decides; a crash of the machine may lose the tail),
        ``"batch"`` (fsync after every append/append_batch: acknowledged = durable),
        ``"interval"`` (fsync at most every ``fsync_interval_s`` on append).
    max_payload: largest accepted event payload in bytes (default 1 MiB).
    segment_bytes: a new segment file starts once the current one exceeds this.
    retention_max_events / retention_max_bytes: keep only the newest events (applied
        after each append batch; whole segments are deleted on disk).
    retention_max_age_s: drop events older than this many seconds (by the append time
        recorded in each batch record; checked on append and by ``expire()``), at the
        granularity of the sparse index (about ``index_interval_bytes`` of records).
    cache_bytes: persisted files serve reads from their segment files (``pread``); the
        most recent ``cache_bytes`` of payloads are also kept in memory (default 8 MiB).
    index_interval_bytes: a persisted file keeps one in-memory index entry (seq, offset,
        time: 24 bytes) per this many bytes of records (default 4096, like Kafka's
        ``index.interval.bytes``), plus 4 bytes per retained event (its length).
    idempotence: accept idempotent producers (issue 12): every stored event carries
        a 20-byte envelope (producer id, batch sequence, index) and the file refuses a
        batch it already holds (:meth:`RedexFile.append_idempotent`); readers get the
        payloads as published (:meth:`RedexFile.read_published`).
    replication: replicate this channel (needs ``Redex.enable_replication``).
    """

    path: str | None = None
    fsync: FsyncPolicy = "never"
    fsync_interval_s: float = 0.05
    max_payload: int = DEFAULT_MAX_PAYLOAD
    segment_bytes: int = 64 << 20
    retention_max_events: int | None = None
    retention_max_bytes: int | None = None
    retention_max_age_s: float | None = None
    cache_bytes: int = 8 << 20
    index_interval_bytes: int = 4096
    idempotence: bool = False
    replication: ReplicationConfig | None = None

    def validate(self) -> None:
        if self.fsync not in ("never", "batch", "interval"):
            raise ConfigError(f"fsync must be never|batch|interval, got {self.fsync!r}")
        if self.fsync_interval_s <= 0:
            raise ConfigError("fsync_interval_s must be positive")
        if not 1 <= self.max_payload <= 1 << 30:
            raise ConfigError(f"max_payload must be in 1..2^30, got {self.max_payload}")
        if self.segment_bytes < 4096:
            raise ConfigError("segment_bytes must be >= 4096")
        if self.retention_max_events is not None and self.retention_max_events < 1:
            raise ConfigError("retention_max_events must be >= 1")
        if self.retention_max_bytes is not None and self.retention_max_bytes < 1:
            raise ConfigError("retention_max_bytes must be >= 1")
        if self.retention_max_age_s is not None and not self.retention_max_age_s > 0:
            raise ConfigError("retention_max_age_s must be positive")
        if self.cache_bytes < 0:
            raise ConfigError("cache_bytes must be >= 0")
        if not 64 <= self.index_interval_bytes <= 1 << 30:
            raise ConfigError("index_interval_bytes must be in 64..2^30")
        if self.replication is not None:
            self.replication.validate()
            if self.replication.ack == "quorum" and self.path is not None and self.fsync != "batch":
                # a follower's ack counts toward the majority: it must be durable
                raise ConfigError("ack='quorum' on a persisted file needs fsync='batch'")


@dataclass(frozen=True)
class MeshNodeConfig:
    """Settings of one MeshNode (encrypted UDP endpoint).

    bind: ``"host:port"`` to bind (port 0 picks a free one).
    psk: 32-byte pre-shared key, mixed into every handshake (Noise psk2).
    heartbeat_interval: seconds between keepalives to each peer (default 1.0).
    session_timeout: seconds of silence after which a peer is reported down (default 5.0).
    handshake_retries: attempts per connect before ``HandshakeError`` (default 3).
    handshake_timeout: seconds to wait for a handshake response per attempt (default 2.0).
    max_datagram: largest UDP payload sent (default 1400, fits a 1500 MTU; 576..65000).
    recv_buffer / send_buffer: SO_RCVBUF / SO_SNDBUF in bytes (default 4 MiB each).
    allowed_peers: node id -> static public key of peers that may handshake with a
        started node without a prior ``accept`` (restarted nodes rejoin this way).
    rekey_after_time: seconds after which the initiator of a session starts a new
        handshake (default 120, WireGuard's REKEY_AFTER_TIME); the old session keeps
        working until the new one is confirmed. Sessions are refused after 1.5x this.
    max_message: largest message ``send`` accepts, in bytes; larger than one datagram
        means fragments (default 16 MiB).
    reassembly_bytes: per-peer memory for incomplete fragmented messages (default
        32 MiB); beyond it the oldest incomplete message is dropped.
    handshake_rate: initiations per second (node-wide, burst of the same size) that
        get past the mac1 check to the Diffie-Hellman work without a cookie (default
        1000); beyond it the node is under load and answers with cookie replies.
    handshake_rate_per_source: initiations per second per source IP (burst of the same
        size), counted apart for initiations without and with a valid cookie (mac2)
        (default 20, WireGuard's per-IP limit); see ``netmesh.link.cookie``.
    clock_file: where the handshake clock persists (``netmesh.identity.HandshakeClock``);
        default: next to the key file when the keypair was loaded from one, else in
        memory only.
    min_announce_interval: seconds between two capability announcements a node
        broadcasts (open channels and placement metadata, used by standard and
        colocation_strict placement); changes inside the window go out together at
        its end (default 10, upstream net-mesh's ``with_min_announce_interval``).
    """

    bind: str = "127.0.0.1:0"
    psk: bytes = b""
    heartbeat_interval: float = 1.0
    session_timeout: float = 5.0
    handshake_retries: int = 3
    handshake_timeout: float = 2.0
    max_datagram: int = 1400
    recv_buffer: int = 4 << 20
    send_buffer: int = 4 << 20
    allowed_peers: dict[int, bytes] = field(default_factory=dict)
    rekey_after_time: float = 120.0
    max_message: int = 16 << 20
    reassembly_bytes: int = 32 << 20
    handshake_rate: float = 1000.0
    handshake_rate_per_source: float = 20.0
    clock_file: str | None = None
    min_announce_interval: float = 10.0

    def host_port(self) -> tuple[str, int]:
        host, sep, port = self.bind.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"bind must be 'host:port', got {self.bind!r}")
        return host, int(port)

    def validate(self) -> None:
        self.host_port()
        if not isinstance(self.psk, bytes | bytearray) or len(self.psk) != 32:
            raise ConfigError("psk must be exactly 32 bytes")
        if self.heartbeat_interval <= 0:
            raise ConfigError("heartbeat_interval must be positive")
        if self.session_timeout <= self.heartbeat_interval:
            raise ConfigError("session_timeout must exceed heartbeat_interval")
        if self.handshake_retries < 1:
            raise ConfigError("handshake_retries must be >= 1")
        if self.handshake_timeout <= 0:
            raise ConfigError("handshake_timeout must be positive")
        if not 576 <= self.max_datagram <= 65000:
            raise ConfigError(f"max_datagram must be in 576..65000, got {self.max_datagram}")
        if self.recv_buffer < 65536 or self.send_buffer < 65536:
            raise ConfigError("socket buffers must be >= 65536 bytes")
        for nid, pub in self.allowed_peers.items():
            if len(pub) != 32:
                raise ConfigError(f"allowed_peers[{nid}] public key must be 32 bytes")
        if self.rekey_after_time <= self.handshake_timeout:
            raise ConfigError("rekey_after_time must exceed handshake_timeout")
        if not 1 <= self.max_message <= 1 << 30:
            raise ConfigError(f"max_message must be in 1..2^30, got {self.max_message}")
        if self.reassembly_bytes < self.max_message:
            raise ConfigError("reassembly_bytes must be >= max_message")
        if not (math.isfinite(self.handshake_rate) and self.handshake_rate >= 1):
            raise ConfigError(f"handshake_rate must be >= 1, got {self.handshake_rate}")
        per_source = self.handshake_rate_per_source
        if not (math.isfinite(per_source) and per_source >= 1):
            raise ConfigError(f"handshake_rate_per_source must be >= 1, got {per_source}")
        if not (math.isfinite(self.min_announce_interval) and self.min_announce_interval >= 0):
            raise ConfigError(
                f"min_announce_interval must be >= 0 seconds, got {self.min_announce_interval}"
            )
