"""Cluster: a local replicated netmesh, one OS process per node (the supervisor API).

::

    with Cluster(nodes=3, heartbeat_ms=150) as c:
        c.open_channel("orders", ReplicationConfig(factor=3))
        with c.producer(node=0, channel="orders") as p:
            p.append_batch(batch); last = p.flush()
        c.wait_until(lambda: c.next_seq(1, "orders") == last + 1)
        c.kill(0); c.restart(0); c.partition([0], [1, 2]); c.heal()

Startup: every node process binds 127.0.0.1:0 and reports its identity; the
supervisor then tells each node all peers (allow-list) and which to handshake with
(the one with the smaller node id initiates). A restarted node keeps its keypair (and,
with ``data_dir``, its event files) and handshakes with every running peer itself.
Channels opened with :meth:`open_channel` are reopened on restart.

Errors: arguments are checked where they enter, before any process is asked, and a
bad one raises :class:`~netmesh.errors.ConfigError` naming the argument (a node index
out of range, a factor larger than the cluster, a negative ``start``...). An error a
node raises comes back as the same :mod:`netmesh.errors` class, its message starting
with ``"node <index> <request>: "`` (see :mod:`netmesh.cluster.control`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from netmesh.channel import ChannelName
from netmesh.cluster import rundir
from netmesh.cluster.clients import ClientServer, ClusterBackend
from netmesh.cluster.metrics_page import MetricsPage
from netmesh.cluster.node_worker import FILE_OPTIONS, replication_to_dict
from netmesh.cluster.producer import Producer
from netmesh.cluster.snapshot import node_entry, with_totals
from netmesh.cluster.supervisor import Supervisor
from netmesh.config import (
    DEFAULT_MAX_PAYLOAD,
    MeshNodeConfig,
    PlacementStrategy,
    RedexFileConfig,
    ReplicationConfig,
    is_default,
)
from netmesh.errors import (
    ChannelNotOpen,
    ConfigError,
    LogLocked,
    NetmeshError,
    NodeUnresponsive,
    NotLeader,
)
from netmesh.identity import EntityKeypair
from netmesh.replication.roles import ReplicaRole
from netmesh.ring import layout
from netmesh.ring.shm import ShmRing
from netmesh.testing.wait import wait_until

log = logging.getLogger(__name__)

#: payload bytes per control answer of :meth:`Cluster.read_range` (frames are <= 16 MiB)
READ_PAGE_BYTES = 4 << 20
#: the transport's largest message (``MeshNodeConfig.max_message``, 16 MiB), which every
#: SyncResponse must fit: replication sends at least one whole event per response and
#: never splits an event (``replication/executor.py`` ``_serve``)
TRANSPORT_MAX_MESSAGE = MeshNodeConfig(psk=bytes(32)).max_message
#: bytes of a SyncResponse around its payloads (msgpack framing, terms, seqs, epochs)
SYNC_RESPONSE_HEADROOM = 64 << 10
#: the largest event a replicated channel can carry: one event per SyncResponse
REPLICATED_MAX_PAYLOAD = TRANSPORT_MAX_MESSAGE - SYNC_RESPONSE_HEADROOM
RestartPolicy = Literal["never", "on-failure"]
T = TypeVar("T")


class Cluster:
    """Supervisor of ``nodes`` node processes on loopback; see the module doc.

    nodes: number of node processes (>= 1). psk: 32 bytes shared by the nodes
        (default: random). heartbeat_ms: default leader heartbeat of the cluster's
        replicated channels (50..300000; a ``ReplicationConfig`` that sets its own
        wins). data_dir: a writable directory for identities and event files (None:
        memory only). ring_bytes: capacity of each producer ring (multiple of 8,
        >= 4096). mesh_heartbeat / session_timeout: seconds between link keepalives /
        of silence before a peer is down. max_datagram: largest UDP payload
        (576..65000). restart_policy: ``"never"`` or ``"on-failure"`` (see
        :meth:`check_nodes`). start: start the processes now. name: serve clients
        (``netmesh.connect(name)``) on a socket in the run directory while running
        (:mod:`netmesh.cluster.clients`); NameTaken if a live cluster has that name.

    Raises ConfigError naming the argument; nothing is started then.
    """

    def __init__(
        self,
        nodes: int = 3,
        psk: bytes | None = None,
        heartbeat_ms: int = 150,
        data_dir: str | None = None,
        ring_bytes: int = 1 << 22,
        mesh_heartbeat: float = 0.25,
        session_timeout: float = 2.0,
        max_datagram: int = 65000,
        restart_policy: RestartPolicy = "never",
        start: bool = True,
        name: str | None = None,
    ) -> None:
        _check_args(
            nodes, psk, heartbeat_ms, ring_bytes, mesh_heartbeat, session_timeout, max_datagram
        )
        if restart_policy not in ("never", "on-failure"):
            raise ConfigError(
                f"restart_policy must be 'never' or 'on-failure', got {restart_policy!r}"
            )
        if data_dir is not None:
            check_data_dir(data_dir)
        if name is not None:
            rundir.check_name(name)
        self.name = name
        self.client_server: ClientServer | None = None
        self.size = nodes
        self.restart_policy = restart_policy
        #: nodes that died without being asked, as (node, exit code, monotonic time)
        self.crashes: list[tuple[int, int, float]] = []
        self._down_on_purpose: set[int] = set()
        self.psk = psk or secrets.token_bytes(32)
        self.heartbeat_ms = heartbeat_ms
        self.data_dir = data_dir
        self.ring_bytes = ring_bytes
        self.mesh_heartbeat = mesh_heartbeat
        self.session_timeout = session_timeout
        # loopback carries 64 KiB datagrams; fewer, larger datagrams mean fewer AEAD
        # calls and syscalls per event (pass 1400 to model an Ethernet MTU). 65000, not
        # 32 KiB: a push of 500 x 64 B (~33 KB) is one datagram, not two fragments
        # (the follower woke twice and reassembled; issue 17 §3)
        self.max_datagram = max_datagram
        #: the data_dir's lock (path, fd): one Cluster per data_dir at a time
        self._data_lock: tuple[str, int] | None = None
        if data_dir is not None:
            self._data_lock = lock_data_dir(data_dir)
        try:
            self.sup = Supervisor()
        except BaseException:
            self._release_data_dir()
            raise
        try:
            self.keys = [self._keypair(i) for i in range(nodes)]
        except BaseException:
            self.sup.close()
            self._release_data_dir()
            raise
        self.node_ids = [k.node_id for k in self.keys]
        self.info: dict[int, dict[str, Any]] = {}
        self.channels: dict[str, ReplicationConfig | None] = {}
        self.channel_options: dict[str, dict[str, Any]] = {}
        self.pages: dict[int, MetricsPage] = {}
        self.producers: dict[str, tuple[int, ShmRing, Producer]] = {}
        self.producer_processes: list[ProducerProcess] = []
        #: node index -> node ids it drops all traffic to and from (partitions)
        self.blocked: dict[int, set[int]] = {i: set() for i in range(nodes)}
        #: one-way link cuts (a, b): a's datagrams to b are dropped
        self.cuts: set[tuple[int, int]] = set()
        # (i, j): i came up while j was unreachable, so i handshakes with j on heal()
        self._unlinked: set[tuple[int, int]] = set()
        # rings are marked closed from the supervisor's exit watcher threads
        self._rings_lock = threading.RLock()
        self.sup.on_exit = self._on_node_exit
        self._ring_no = 0
        if start:
            try:
                self.start()
            except BaseException:
                self.close()
                raise

    def _keypair(self, i: int) -> EntityKeypair:
        if self.data_dir is None:
            return EntityKeypair.generate()
        path = os.path.join(self.data_dir, f"node{i}", "node.key")
        if os.path.exists(path):
            return EntityKeypair.load(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        kp = EntityKeypair.generate()
        kp.save(path)
        return kp

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        for i in range(self.size):
            self._spawn(i)
        peers = [self._peer_entry(i) for i in range(self.size)]
        for initiate_pass in (False, True):  # allow-lists everywhere first, then handshakes
            for i in range(self.size):
                me = self.node_ids[i]
                initiate = [p["node_id"] for p in peers if p["node_id"] > me]
                self.sup.call(
                    i,
                    "connect",
                    timeout=15,
                    peers=[p for p in peers if p["node_id"] != me],
                    initiate=initiate if initiate_pass else [],
                )
        self.wait_until(self._fully_connected, timeout=10, message="full mesh")
        if self.name is not None and self.client_server is None:
            self.client_server = ClientServer(ClusterBackend(self), self.name)

    def _spawn(self, i: int) -> None:
        self.sup.spawn(i)
        page = self.pages.get(i)
        if page is None:
            page = self.pages[i] = MetricsPage.create(self.sup.name("metrics", i))
        data_dir = os.path.join(self.data_dir, f"node{i}") if self.data_dir else None
        self.info[i] = self.sup.call(
            i,
            "init",
            timeout=20,
            index=i,
            private_key=self.keys[i].private_key,
            psk=self.psk,
            heartbeat_interval=self.mesh_heartbeat,
            session_timeout=self.session_timeout,
            max_datagram=self.max_datagram,
            data_dir=data_dir,
            metrics_page=page.name,
        )
        self.info[i]["alive"] = True

    def _peer_entry(self, i: int) -> dict[str, Any]:
        return {
            "node_id": self.node_ids[i],
            "public_key": self.keys[i].public_key,
            "addr": self.info[i]["addr"],
        }

    def _fully_connected(self) -> bool:
        for i in self.running():
            others = {self.node_ids[j] for j in self.running() if j != i}
            m = self.pages[i].read()
            if m is None or not others <= set(m.get("peers", [])):
                return False
        return True

    def running(self) -> list[int]:
        """Indexes of the node processes that run now."""
        return [
            i for i in range(self.size) if i in self.sup.workers and self.sup.exit_code(i) is None
        ]

    def check_nodes(self) -> list[tuple[int, int]]:
        """Report nodes that died without being asked since the last check, as
        (node, exit code); with ``restart_policy="on-failure"`` restart them.

        Call it periodically (``netmesh up`` does, every 100 ms). A restart that is
        refused (a quorum member without ``data_dir``) is logged and left to you.
        """
        found = []
        for i in range(self.size):
            code = self.sup.exit_code(i)
            if code is None or i in self._down_on_purpose or not self.info[i]["alive"]:
                continue
            self.info[i]["alive"] = False
            self._drop_producers(i)
            self.crashes.append((i, code, time.monotonic()))
            found.append((i, code))
            log.warning("node %d exited with code %d", i, code)
            if self.restart_policy == "on-failure":
                try:
                    self.restart(i)
                except NetmeshError as exc:
                    log.error("node %d not restarted: %s", i, exc)
        return found

    def _node(self, i: int) -> int:
        """``i`` if it is a node index of this cluster, else ConfigError."""
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.size:
            raise ConfigError(f"node must be a node index in 0..{self.size - 1}, got {i!r}")
        return i

    def _open(self, channel: str) -> str:
        """``channel`` if it was opened on this cluster, else ChannelNotOpen."""
        if channel not in self.channels:
            raise ChannelNotOpen(f"channel {channel!r} was not opened on this cluster")
        return channel

    def kill(self, i: int) -> int | None:
        """SIGKILL node ``i``; its producers become unusable. Returns the exit code."""
        self._node(i)
        self._down_on_purpose.add(i)
        return self._gone(i, self.sup.kill(i))

    def stop(self, i: int) -> int | None:
        """Stop node ``i`` gracefully (shutdown request, then SIGTERM/SIGKILL)."""
        self._node(i)
        self._down_on_purpose.add(i)
        return self._gone(i, self.sup.stop(i))

    def _gone(self, i: int, code: int | None) -> int | None:
        self.info[i]["alive"] = False
        self._drop_producers(i)
        return code

    def restart(self, i: int) -> None:
        """Start node ``i`` again with its identity (and data with ``data_dir``),
        reopen its channels and handshake with every running peer it can reach.

        Works in any partition or cut state: the partitions and cuts in force apply to
        the new process before it talks to anyone; peers it cannot reach now learn its
        new address when it handshakes with them on :meth:`heal`. Raises NetmeshError
        (still running), ConfigError (quorum member without ``data_dir``), or the
        error a node raised opening a channel."""
        if self.sup.exit_code(self._node(i)) is None:
            raise NetmeshError(f"node {i} is still running")
        if self.data_dir is None and any(
            cfg is not None and cfg.ack == "quorum" and self._holds(i, name)
            for name, cfg in self.channels.items()
        ):
            # Raft's rule: a member that forgot its log and votes could elect a leader
            # without a committed event. Like etcd, refuse rather than risk it.
            raise ConfigError(
                f"node {i} holds ack='quorum' channels and would restart "
                "without its log and votes: use Cluster(data_dir=...)"
            )
        self._spawn(i)
        self._down_on_purpose.discard(i)
        # its link faults first (a partition or cut in force applies to the new
        # process too), then handshakes with the peers it can reach; the others
        # learn its new address when it handshakes with them after heal()
        self._apply_links(i)
        for a, b in self.cuts:
            if b == i and a != i and a in self.running():
                self._apply_links(a)  # the cut follows the new address
        others = [j for j in self.running() if j != i]
        reachable = [j for j in others if self._reachable(i, j)]
        for j in others:
            self._unlinked.discard((j, i))
            if j in reachable:
                self._unlinked.discard((i, j))
            else:
                self._unlinked.add((i, j))
        peers = [self._peer_entry(j) for j in range(self.size) if j != i]
        try:
            self.sup.call(
                i,
                "connect",
                timeout=15,
                peers=peers,
                initiate=[self.node_ids[j] for j in reachable],
            )
        except NetmeshError as exc:  # e.g. a peer frozen: retried on heal()
            log.warning("node %d: not every handshake completed at restart: %s", i, exc)
            self._unlinked.update((i, j) for j in reachable)
        for name, cfg in self.channels.items():
            if self._holds(i, name):
                self._reopen(i, name, cfg)

    def _reopen(self, i: int, name: str, cfg: ReplicationConfig | None) -> None:
        """``open_channel`` on a restarted node. Reopening a large log takes a while
        (issue 17 §3), so it waits as long as the node makes progress -- its CPU time
        grows between 10 s attempts -- not a fixed 10 s; reopening an open channel is
        idempotent, so a retry only returns sooner. Raises NodeUnresponsive when the
        node died or made no progress for a whole attempt."""
        import psutil

        proc = psutil.Process(self.info[i]["pid"])

        def cpu() -> float:
            t = proc.cpu_times()
            return float(t.user + t.system)

        last = cpu()
        while True:
            try:
                self.sup.call(
                    i,
                    "open_channel",
                    name=name,
                    replication=replication_to_dict(cfg),
                    options=self.channel_options.get(name, {}),
                )
                return
            except NodeUnresponsive:
                if self.sup.exit_code(self._node(i)) is not None:
                    raise
                try:
                    now = cpu()
                except psutil.Error:
                    raise NodeUnresponsive(f"node {i} exited while reopening {name!r}") from None
                if now - last < 0.1:  # idle for a whole attempt: stuck, not busy
                    raise
                log.info("node %d still reopening %r (%.1f s of CPU so far)", i, name, now)
                last = now

    def close(self) -> None:
        """Stop every node and remove every shared-memory object; idempotent."""
        if self.client_server is not None:
            # clients are told first (Closed: "cluster 'N' stopped"), within a second,
            # while their nodes still run; then their rings go, then the nodes
            self.client_server.stopping()
            self.client_server.close()
            self.client_server = None
        for handle in list(self.producer_processes):
            handle.kill()
        for key in list(self.producers):
            self._close_producer(key)
        for page in self.pages.values():
            page.close()
        self.pages.clear()
        self.sup.close()
        self._release_data_dir()

    def _release_data_dir(self) -> None:
        if self._data_lock is not None:
            rundir.release_lock(*self._data_lock)
            self._data_lock = None

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- channels and data -----------------------------------------------------------
    def open_channel(
        self, name: str, replication: ReplicationConfig | None = None, **options: Any
    ) -> None:
        """Open ``name``: without replication on every node, else on the members only:
        the first ``factor`` nodes unless ``replication.placement`` is pinned already.
        A ``replication`` that leaves ``heartbeat_ms`` unset gets the cluster's.

        ``options``: event-file settings, the RedexFileConfig fields but ``path`` and
        ``replication`` (``max_payload``, ``retention_*``, ``fsync``, ``segment_bytes``...).

        Raises ChannelNameError (bad name), ConfigError (an unknown or invalid option,
        a factor larger than the cluster, pinned ids that are not its nodes), or the
        error a node raised. A refused channel leaves no trace: it is closed again on
        the nodes that had opened it and is not reopened by :meth:`restart`.
        Opening an open channel with the same configuration is a no-op (like etcd's
        idempotent puts: a script run twice works); with another one it is ConfigError.
        """
        ChannelName(name)
        unknown = sorted(set(options) - FILE_OPTIONS)
        if unknown:
            raise ConfigError(
                f"unknown channel option(s) {unknown}; valid: {', '.join(sorted(FILE_OPTIONS))}"
            )
        RedexFileConfig(**options).validate()
        if replication is not None:
            replication = self._placed(replication)
            RedexFileConfig(replication=replication, **options).validate()
            check_replicable(options.get("max_payload", DEFAULT_MAX_PAYLOAD))
        if name in self.channels:
            if self.channels[name] == replication and self.channel_options[name] == options:
                return  # the same channel again (a script run twice): nothing to do
            raise ConfigError(
                f"channel {name!r} is already open on this cluster with another"
                " configuration (close it first, or open it as it is)"
            )
        holders = [
            i
            for i in self.running()
            if replication is None or self.node_ids[i] in replication.placement.nodes
        ]
        opened: list[int] = []
        try:
            for i in holders:
                self.sup.call(
                    i,
                    "open_channel",
                    name=name,
                    replication=replication_to_dict(replication),
                    options=options,
                )
                opened.append(i)
        except BaseException:
            for i in opened:  # leave no trace of a refused channel
                try:
                    self.sup.call(i, "close_channel", name=name, timeout=5)
                except NetmeshError as exc:
                    log.warning("node %d: could not close refused channel %r: %s", i, name, exc)
            raise
        self.channels[name] = replication
        self.channel_options[name] = options

    def _placed(self, cfg: ReplicationConfig) -> ReplicationConfig:
        """``cfg`` with the cluster's heartbeat if unset and placement pinned to node ids:
        the first ``factor`` nodes unless pinned already. ConfigError if it does not fit."""
        if is_default(cfg.heartbeat_ms):
            cfg = dataclasses.replace(cfg, heartbeat_ms=self.heartbeat_ms)
        if cfg.placement.kind == "pinned":
            strangers = [n for n in cfg.placement.nodes if n not in self.node_ids]
            if strangers:
                raise ConfigError(
                    f"placement pins node ids {[hex(n) for n in strangers]} that are "
                    "not nodes of this cluster (see Cluster.node_ids)"
                )
        elif cfg.factor > self.size:
            raise ConfigError(
                f"factor {cfg.factor} is larger than the cluster ({self.size} nodes): "
                "a channel cannot have more copies than there are nodes"
            )
        else:
            members = self.node_ids[: cfg.factor]
            cfg = dataclasses.replace(cfg, placement=PlacementStrategy.pinned(members))
        cfg.validate()
        return cfg

    def _holds(self, i: int, name: str) -> bool:
        """Whether node ``i`` holds channel ``name`` (every node, or the pinned members)."""
        cfg = self.channels.get(name)
        return cfg is None or self.node_ids[i] in cfg.placement.nodes

    def producer(self, node: int, channel: str, capacity: int | None = None) -> Producer:
        """A producer appending to ``channel`` on ``node`` through a new shm ring of
        ``capacity`` bytes (default ``ring_bytes``).

        Raises ConfigError (bad node or capacity), ChannelNotOpen, NotLeader (the node
        is a replica that knows another node leads; refusals the node only learns
        later are raised by ``flush``), NodeUnresponsive.
        """
        self._node(node)
        self._open(channel)
        if capacity is not None:
            _check_ring_bytes("capacity", capacity)
        self._ring_no += 1
        name = self.sup.name("ring", node, self._ring_no)
        ring = ShmRing.create(name, capacity or self.ring_bytes)
        try:
            self.sup.call(node, "attach_ring", ring=name, channel=channel)
        except BaseException as exc:
            ring.close()
            ring.unlink()
            self.sup.forget_name(name)
            if isinstance(exc, NotLeader) and exc.leader in self.node_ids:
                exc.args = (f"{exc} (node {self.node_ids.index(exc.leader)})",)
            raise
        max_payload = self.channel_options.get(channel, {}).get("max_payload", DEFAULT_MAX_PAYLOAD)
        prod = Producer(
            name,
            channel,
            on_close=lambda p: self._close_producer(p.ring_name),
            max_payload=max_payload,
        )
        self.producers[name] = (node, ring, prod)
        return prod

    def spawn_producer(
        self,
        node: int,
        channel: str,
        events: int,
        batch: int = 64,
        size: int = 64,
        rate: int = 0,
    ) -> ProducerProcess:
        """Start a producer *process* (``python -m netmesh.cluster.producer_worker``) appending
        ``events`` generated events of ``size`` bytes, ``batch`` per append, at most
        ``rate`` events/s (0: unpaced) to ``channel`` on ``node``; see ProducerProcess.
        Raises like :meth:`producer`, ConfigError for a negative count."""
        self._node(node)
        self._open(channel)
        for field_name, value, low in (
            ("events", events, 0),
            ("batch", batch, 1),
            ("size", size, 0),
            ("rate", rate, 0),
        ):
            if value < low:
                raise ConfigError(f"{field_name} must be >= {low}, got {value}")
        self._ring_no += 1
        name = self.sup.name("ring", node, self._ring_no)
        ring = ShmRing.create(name, self.ring_bytes)
        try:
            self.sup.call(node, "attach_ring", ring=name, channel=channel)
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-P",
                    "-m",
                    "netmesh.cluster.producer_worker",
                    "--ring",
                    name,
                    "--channel",
                    channel,
                    "--events",
                    str(events),
                    "--batch",
                    str(batch),
                    "--size",
                    str(size),
                    "--rate",
                    str(rate),
                    "--parent-pid",
                    str(os.getpid()),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,  # the terminal's Ctrl-C is the supervisor's
            )
        except BaseException:
            ring.close()
            ring.unlink()
            self.sup.forget_name(name)
            raise
        handle = ProducerProcess(self, node, name, ring, proc)
        self.producer_processes.append(handle)
        return handle

    def _close_producer(self, name: str) -> None:
        entry = self.producers.get(name)
        if entry is None:
            return
        node, ring, prod = entry
        if self.sup.exit_code(node) is None:
            try:
                self.sup.call(node, "detach_ring", ring=name, timeout=5)
            except NetmeshError:
                log.warning("node %d did not detach ring %s", node, name)
        prod.close()  # idempotent; on the user's own close this is a no-op
        with self._rings_lock:
            self.producers.pop(name, None)
            ring.close()
        ring.unlink()
        self.sup.forget_name(name)

    def _drop_producers(self, node: int) -> None:
        """The node is gone: its producers' rings say so (their owners, maybe other
        threads, get RingClosed from then on and close them); the names are unlinked
        now, the mappings live until each producer closes."""
        with self._rings_lock:
            for name, (n, ring, _prod) in list(self.producers.items()):
                if n == node:
                    del self.producers[name]
                    ring.close_consumer()
                    ring.close()
                    ring.unlink()
                    self.sup.forget_name(name)
            for handle in self.producer_processes:
                if handle.node == node:
                    handle.node_gone()

    def _on_node_exit(self, index: int, pid: int) -> None:
        """Supervisor watcher thread: worker ``pid`` of node ``index`` exited (killed by
        us, crashed, or killed by anyone). Its producers, in this process or in
        producer processes, get RingClosed at once: the Cluster created their rings,
        so it marks them closed (mappings and names are released by the owner)."""
        with self._rings_lock:
            w = self.sup.workers.get(index)
            if w is None or w.pid != pid:
                return  # an earlier incarnation; its rings are gone already
            for n, ring, _prod in list(self.producers.values()):
                if n == index:
                    ring.close_consumer()
            for handle in self.producer_processes:
                if handle.node == index:
                    handle.node_gone()

    def append(self, node: int, channel: str, payloads: list[bytes], timeout: float = 10.0) -> int:
        """Append through the control connection (slow path); returns the first seq.

        Acknowledged like the ring path: on an ``ack="quorum"`` channel it returns only
        once a majority holds the events. Raises NotLeader (the node does not lead, or
        lost leadership before a majority held them: they may or may not survive),
        NodeUnresponsive (no commit within ``timeout`` s), ChannelNotOpen, ConfigError.
        """
        self._node(node)
        return int(
            self.sup.call(
                node,
                "append",
                timeout=timeout + 5.0,
                channel=self._open(channel),
                payloads=payloads,
                wait_s=timeout,
            )
        )

    def next_seq(self, node: int, channel: str) -> int:
        """The seq the next event appended on ``node`` gets (= events it holds, counting
        from 0). ChannelNotOpen if the channel is not open there."""
        self._node(node)
        return int(self.sup.call(node, "next_seq", channel=self._open(channel)))

    def read_range(self, node: int, channel: str, start: int, end: int) -> list[bytes]:
        """Payloads of seqs ``start`` to ``end`` (exclusive) held by ``node``, fetched in
        pages of at most ``READ_PAGE_BYTES`` (so any range fits the control frames).
        ConfigError unless 0 <= start <= end."""
        self._node(node)
        if not 0 <= start <= end:
            raise ConfigError(f"read_range needs 0 <= start <= end, got start={start} end={end}")
        name = self._open(channel)
        out: list[bytes] = []
        seq = start
        while seq < end:
            page, first = self.sup.call(
                node,
                "read_page",
                channel=name,
                start=seq,
                end=end,
                max_bytes=READ_PAGE_BYTES,
                timeout=30,
            )
            if not page:
                break
            if not out:
                seq = first  # retention may have removed the head of the range
            out += page
            seq += len(page)
        return out

    def role(self, node: int, channel: str) -> ReplicaRole | None:
        """The :class:`ReplicaRole` of ``node`` for ``channel`` (None: not replicated).
        ChannelNotOpen if the channel is not open on that node."""
        self._node(node)
        name = self.sup.call(node, "role", channel=self._open(channel))
        return None if name is None else ReplicaRole[name]

    def leader(self, channel: str) -> int | None:
        """Index of the one running node that reports LEADER for ``channel``, else None."""
        self._open(channel)
        leaders = [
            i
            for i in self.running()
            if self._holds(i, channel) and self._role_or_none(i, channel) == ReplicaRole.LEADER
        ]
        return leaders[0] if len(leaders) == 1 else None

    def wait_for_leader(self, channel: str, timeout: float = 10.0) -> int:
        """Poll until exactly one running node leads ``channel``; its index.
        TimeoutError at the deadline."""
        found: list[int] = []

        def one_leader() -> bool:
            lead = self.leader(channel)
            if lead is not None:
                found.append(lead)
            return lead is not None

        self.wait_until(one_leader, timeout=timeout, message=f"a leader of {channel!r}")
        return found[-1]

    def _role_or_none(self, i: int, channel: str) -> ReplicaRole | None:
        try:
            return self.role(i, channel)
        except (NodeUnresponsive, ChannelNotOpen):  # down, or restarting (not reopened yet)
            return None

    # -- faults ----------------------------------------------------------------------
    def partition(self, *groups: list[int]) -> None:
        """Drop all traffic between nodes of different groups (both directions); nodes
        in no group keep talking to each other. Replaces the previous partition (cuts
        stay). ConfigError if a node index is out of range or in two groups."""
        group_of: dict[int, int] = {}
        for g, members in enumerate(groups):
            for i in members:
                self._node(i)
                if i in group_of:
                    raise ConfigError(f"node {i} is in two partition groups: {list(groups)}")
                group_of[i] = g
        for i in range(self.size):
            self.blocked[i] = {
                self.node_ids[j]
                for j in range(self.size)
                if j != i and group_of.get(j) != group_of.get(i)
            }
        for i in self.running():
            self._apply_links(i)

    def cut(self, a: int, b: int, both: bool = False) -> None:
        """Cut the link from node ``a`` to node ``b`` at the link level: every datagram
        ``a`` sends to ``b`` is dropped, ``b``'s still reach ``a`` (``both=True``: both
        directions). Cuts add up; :meth:`heal` undoes them. ConfigError for a bad index
        or ``a == b``."""
        self._node(a)
        self._node(b)
        if a == b:
            raise ConfigError(f"cut needs two different nodes, got {a} and {b}")
        self.cuts.add((a, b))
        if both:
            self.cuts.add((b, a))
        for i in {a, b} if both else {a}:
            if i in self.running():
                self._apply_links(i)

    def heal(self) -> None:
        """Undo every :meth:`partition` and :meth:`cut`: each running node unblocks every
        other node, and a node that came up while a peer was unreachable handshakes
        with it now (that peer only knew its old address). Connections then come up
        within a handshake; :meth:`wait_connected` waits for them."""
        self.blocked = {i: set() for i in range(self.size)}
        self.cuts.clear()
        running = self.running()
        for i in running:
            self._apply_links(i)
        for i, j in sorted(self._unlinked):
            if i not in running or j not in running:
                continue
            try:
                self.sup.call(
                    i,
                    "connect",
                    timeout=15,
                    peers=[self._peer_entry(j)],
                    initiate=[self.node_ids[j]],
                )
                self._unlinked.discard((i, j))
            except NetmeshError as exc:
                log.warning("node %d: handshake with node %d after heal failed: %s", i, j, exc)

    def _reachable(self, i: int, j: int) -> bool:
        """Whether a handshake between nodes ``i`` and ``j`` can complete now."""
        return (
            self.node_ids[j] not in self.blocked[i]
            and self.node_ids[i] not in self.blocked[j]
            and (i, j) not in self.cuts
            and (j, i) not in self.cuts
        )

    def _apply_links(self, i: int) -> None:
        """Make node ``i``'s blocks and cuts exactly what this Cluster says: new blocks
        first, then lifted ones, so no datagram slips through a partition change."""
        blocked = sorted(self.blocked[i])
        self.sup.call(i, "block", node_ids=blocked)
        free = [n for n in self.node_ids if n != self.node_ids[i] and n not in self.blocked[i]]
        self.sup.call(i, "unblock", node_ids=free)
        targets = sorted(b for a, b in self.cuts if a == i)
        self.sup.call(
            i,
            "cut",
            node_ids=[self.node_ids[b] for b in targets],
            addrs=[self.info[b]["addr"] for b in targets if b in self.info],
        )

    def connected(self) -> bool:
        """Whether every pair of running nodes that no partition or cut separates has a
        live session (read from the metrics pages, so up to one period old)."""
        run = self.running()
        for i in run:
            m = self.pages[i].read()
            up = set(m.get("peers", [])) if m else set()
            if any(self._reachable(i, j) and self.node_ids[j] not in up for j in run if j != i):
                return False
        return True

    def wait_connected(self, timeout: float = 10.0) -> None:
        """Poll :meth:`connected` until true; TimeoutError at the deadline."""
        self.wait_until(self.connected, timeout=timeout, message="every reachable link up")

    # -- observation -----------------------------------------------------------------
    def wait_until(
        self,
        predicate: Callable[[], T],
        timeout: float = 5.0,
        interval: float = 0.005,
        message: str = "condition",
    ) -> T:
        """Poll ``predicate`` until truthy (see netmesh.testing.wait); TimeoutError."""
        return wait_until(predicate, timeout, interval, message)

    def metrics(self, fresh: bool = False) -> dict[str, Any]:
        """Every node's metrics plus psutil figures, and cluster totals.

        By default each node's shared-memory metrics page is read without asking the
        node; ``fresh=True`` asks running nodes over the control connection instead.
        Each node entry says how old its figures are (``age_s``) and whether they are
        ``stale`` (the node stopped refreshing its page: frozen, stuck, dead, or the page
        could not be written; :mod:`netmesh.cluster.snapshot`); ``totals["stale"]``
        counts such nodes. On a node with many channels, channel entries are refreshed
        round-robin within a CPU budget: each is at least as fresh as
        ``channels_sampled_since`` (the node's monotonic clock).
        """
        now = time.monotonic()
        nodes = [
            node_entry(
                i,
                self.node_ids[i],
                self.info.get(i, {}).get("pid"),
                self.sup.exit_code(i) is None,
                self.sup.exit_code(i),
                self._node_metrics(i, fresh),
                self.sup.process_stats(i),
                now,
            )
            for i in range(self.size)
        ]
        return with_totals(nodes)

    def _node_metrics(self, i: int, fresh: bool) -> dict[str, Any] | None:
        if fresh and self.sup.exit_code(i) is None:
            try:
                return dict(self.sup.call(i, "metrics", timeout=5))
            except NetmeshError:
                pass
        return self.pages[i].read() if i in self.pages else None


class ProducerProcess:
    """A running ``netmesh.cluster.producer_worker`` process and its ring (owned by the Cluster)."""

    def __init__(
        self,
        cluster: Cluster,
        node: int,
        ring_name: str,
        ring: ShmRing,
        proc: subprocess.Popen[str],
    ) -> None:
        self.cluster = cluster
        self.node = node
        self.ring_name = ring_name
        self.ring = ring
        self.proc = proc
        self._done = False

    def node_gone(self) -> None:
        """The node exited: the process's appends and flush raise RingClosed."""
        with self.cluster._rings_lock:
            if not self._done:
                self.ring.close_consumer()

    def wait(self, timeout: float = 120.0) -> dict[str, Any]:
        """Wait for the process; its JSON result. NetmeshError if it failed."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        finally:
            self._release()
        if self.proc.returncode != 0:
            raise NetmeshError(f"producer process exited {self.proc.returncode}: {err.strip()}")
        return dict(json.loads(out))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()
        self._release()

    def _release(self) -> None:
        if self._done:
            return
        c = self.cluster
        with c._rings_lock:
            self._done = True
        if c.sup.exit_code(self.node) is None:
            try:
                c.sup.call(self.node, "detach_ring", ring=self.ring_name, timeout=5)
            except NetmeshError:
                log.warning("node %d did not detach ring %s", self.node, self.ring_name)
        with c._rings_lock:
            self.ring.close()
        self.ring.unlink()
        c.sup.forget_name(self.ring_name)
        if self in c.producer_processes:
            c.producer_processes.remove(self)


def _check_args(
    nodes: int,
    psk: bytes | None,
    heartbeat_ms: int,
    ring_bytes: int,
    mesh_heartbeat: float,
    session_timeout: float,
    max_datagram: int,
) -> None:
    """ConfigError naming the first bad ``Cluster`` argument."""
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise ConfigError(f"nodes must be an int >= 1, got {nodes!r}")
    if isinstance(psk, str):
        raise ConfigError(
            "psk must be 32 bytes, got a str: pass bytes (e.g. bytes.fromhex(hex_psk) "
            "or secrets.token_bytes(32))"
        )
    if psk is not None and (not isinstance(psk, bytes | bytearray) or len(psk) != 32):
        raise ConfigError(f"psk must be exactly 32 bytes, got {len(psk)} bytes")
    if not 50 <= heartbeat_ms <= 300_000:
        raise ConfigError(f"heartbeat_ms must be in 50..300000, got {heartbeat_ms}")
    _check_ring_bytes("ring_bytes", ring_bytes)
    if not mesh_heartbeat > 0:
        raise ConfigError(f"mesh_heartbeat must be positive, got {mesh_heartbeat}")
    if not session_timeout > mesh_heartbeat:
        raise ConfigError(
            f"session_timeout ({session_timeout}) must exceed mesh_heartbeat ({mesh_heartbeat})"
        )
    if not 576 <= max_datagram <= 65000:
        raise ConfigError(f"max_datagram must be in 576..65000, got {max_datagram}")


def check_replicable(max_payload: int) -> None:
    """ConfigError unless every event of ``max_payload`` bytes can be replicated.

    Replication carries events in SyncResponses of at most the transport's message cap
    (``MeshNodeConfig.max_message``, 16 MiB) and never splits one event across
    responses, so a replicated channel accepts at most ``REPLICATED_MAX_PAYLOAD`` bytes
    per event (the cap minus ``SYNC_RESPONSE_HEADROOM`` for the response's framing).
    A larger ``max_payload`` would acknowledge events no replica can ever receive.
    """
    if max_payload > REPLICATED_MAX_PAYLOAD:
        raise ConfigError(
            f"max_payload {max_payload} bytes exceeds what replication can carry: one event "
            f"per SyncResponse, and a SyncResponse must fit the transport's message cap "
            f"(max_message {TRANSPORT_MAX_MESSAGE} bytes) with {SYNC_RESPONSE_HEADROOM} "
            f"bytes of framing, so at most {REPLICATED_MAX_PAYLOAD} bytes per event"
        )


def _check_ring_bytes(name: str, value: int) -> None:
    if value < layout.MIN_CAPACITY or value % layout.ALIGN:
        raise ConfigError(
            f"{name} must be a multiple of {layout.ALIGN} and >= {layout.MIN_CAPACITY}, got {value}"
        )


#: the lock file in a Cluster's data_dir (held while the Cluster runs)
DATA_DIR_LOCK = "netmesh.lock"


def lock_data_dir(data_dir: str) -> tuple[str, int]:
    """Take ``<data_dir>/netmesh.lock`` (:func:`netmesh.cluster.rundir.take_lock`):
    (path, fd). Two clusters on one data_dir would run the same node keys and write the
    same event files; the second gets LogLocked naming the holder's pid. A lock left by
    a SIGKILLed run is taken over (one log line)."""
    path = os.path.join(data_dir, DATA_DIR_LOCK)
    try:
        fd = rundir.take_lock(path, f"data_dir {data_dir!r}")
    except BlockingIOError as exc:
        holder = getattr(exc, "holder", "?")
        raise LogLocked(
            f"data_dir {data_dir!r} is in use by another netmesh up or Cluster (pid {holder})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"data_dir {data_dir!r}: cannot lock it: {exc.strerror}") from None
    return path, fd


def check_data_dir(data_dir: str) -> None:
    """Create ``data_dir`` if needed; ConfigError unless it is a writable directory."""
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise ConfigError(f"data_dir {data_dir!r} is not a directory")
    try:
        os.makedirs(data_dir, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"data_dir {data_dir!r} cannot be created: {exc.strerror}") from None
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"data_dir {data_dir!r} is not writable")
