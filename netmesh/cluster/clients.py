"""Serving clients: the Unix socket a named cluster answers ``netmesh.connect`` on.

A :class:`ClientServer` runs in the supervisor's process (``Cluster(name=...)``,
``netmesh up --name``), on the socket of :mod:`netmesh.cluster.rundir`. Each client
connection is served by its own thread; requests and answers use the control framing
(:mod:`netmesh.cluster.control`: ``length u32 | msgpack``, errors keep their class).
Bulk data never crosses this socket: producers and subscribers get shared-memory rings
to the node that serves them, and the socket only sets them up and moves them when a
leader changes or a node dies.

Ops (args -> result):

=====================  ===================================================================
``hello``              -> {name, nodes, pid, version, serves ("cluster"/"node"), node_id}
``channels``           -> [{name, factor, ack, leader (index), leader_id, leader_address,
                       leader_text (the user-facing form), next_seq, commit}]
``open_channel``       name, replication (dict or None), options -> None
``producer``           channel, capacity -> {ring, node, max_payload}: a ring attached to
                       the channel's leader (node 0 for an unreplicated channel)
``subscribe``          channel, from_seq (>= 0, or "earliest"/"latest"), end_seq (None:
                       follow), exclude [node] -> {ring, node}: a ring fed by a node that
                       holds the channel (the leader when it can)
``release``            ring[, seen] -> None: detach and remove a ring of this connection
                       (``seen``: a group member's unacknowledged seqs its application
                       was handed; its other events in flight do not count as delivered)
``node_alive``         node, pid (optional) -> bool: the node runs (and, with ``pid``, is
                       still the process the ring was attached to: a restarted node
                       does not serve the old rings)
``subscribe_group``    channel, durable, ack_wait, max_deliver, dead_letter,
                       max_ack_pending -> {ring}: a member of the consumer group
                       (:mod:`netmesh.cluster.groups`)
``ack``                ring, seqs -> None: the member acknowledges these events
``groups``             channel -> [{group, members, pending, acknowledged_through, ...}]
=====================  ===================================================================

Everything a connection set up is released when it closes (a client that died), so
nothing is left in ``/dev/shm``. A peer of another uid is refused (``SO_PEERCRED``) and
counted in ``refused_peers``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

import netmesh
from netmesh.channel import ChannelName
from netmesh.cluster import control, rundir
from netmesh.cluster.groups import DEFAULT_MAX_ACK_PENDING, Group, StateStore
from netmesh.cluster.node_worker import replication_from_dict
from netmesh.cluster.nodeconfig import describe_node
from netmesh.config import DEFAULT_MAX_PAYLOAD
from netmesh.errors import ChannelNotOpen, Closed, ConfigError, DecodeError, NodeUnresponsive
from netmesh.replication.roles import ReplicaRole
from netmesh.ring.shm import ShmRing

if TYPE_CHECKING:
    from netmesh.cluster.cluster import Cluster

log = logging.getLogger(__name__)

SUB_RING_MIN = 4 << 20


class ClientBackend(Protocol):
    """What a :class:`ClientServer` serves: a supervised :class:`ClusterBackend`, or a
    node daemon serving its own node (issue 13)."""

    ring_bytes: int

    def nodes(self) -> int: ...
    def channel_list(self) -> list[dict[str, Any]]: ...
    def open_channel(self, name: str, replication: Any, options: dict[str, Any]) -> None: ...
    def is_open(self, channel: str) -> bool: ...
    def max_payload(self, channel: str) -> int: ...
    def serving_node(self, channel: str, exclude: list[int]) -> int: ...
    def call(self, node: int, op: str, timeout: float = 10.0, **args: Any) -> Any: ...
    def node_alive(self, node: int) -> bool: ...
    def new_name(self, *parts: object) -> str: ...
    def forget_name(self, name: str) -> None: ...


class ClientServer:
    """Serves ``backend`` (:class:`ClusterBackend` for a Cluster) to clients under
    ``name`` until :meth:`close`."""

    def __init__(
        self, backend: ClientBackend, name: str, claim: rundir.Claim | None = None
    ) -> None:
        """Serve under ``name``; ``claim``: the name already taken by the caller
        (:func:`netmesh.cluster.rundir.claim`, ``listen=False`` or not), else taken here
        (NameTaken when a live process serves it). The claim is released by
        :meth:`close`, or here if listening fails."""
        self.backend = backend
        self.claim = rundir.claim(name) if claim is None else claim
        try:
            self.listener = self.claim.listen()
        except BaseException:
            self.claim.close()
            raise
        self.name = name
        self.refused_peers = 0
        self.connections = 0
        self._lock = threading.RLock()  # one cluster request at a time
        self._closed = False
        #: set by :meth:`stopping`: every request is answered with Closed(this)
        self.stopped: str | None = None
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._ring_no = 0
        self._groups: dict[tuple[str, str], Group] = {}
        self._member_of: dict[str, Group] = {}  # member ring -> its group
        self._stores: dict[str, StateStore] = {}  # channel -> its groups' state channel
        self._accept = threading.Thread(target=self._serve, name=f"clients-{name}", daemon=True)
        self._accept.start()

    # -- lifetime --------------------------------------------------------------------
    def stopping(self, timeout: float = 1.0) -> None:
        """A clean stop begins: answer every request with Closed("cluster 'N' stopped")
        -- a waiting subscriber asks every ``LIVENESS_S`` (0.25 s) whether its node
        runs -- and wait up to ``timeout`` s for the clients to hang up. A client only
        told by a closed socket (NodeUnresponsive) retries it as a failover for 30 s."""
        self.stopped = f"cluster {self.name!r} stopped"
        deadline = time.monotonic() + timeout
        while self._conns and time.monotonic() < deadline:
            time.sleep(0.01)  # polls the connection threads' bookkeeping, not a sync

    def close(self) -> None:
        """Stop accepting, drop every connection (releasing its rings), free the name."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.claim.close()
        for conn in list(self._conns):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._accept.join(2)
        for t in self._threads:
            t.join(2)
        for group in list(self._groups.values()):
            group.close()
        self._groups.clear()
        for store in list(self._stores.values()):
            store.close()
        self._stores.clear()

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if rundir.peer_uid(conn) != os.getuid():
                self.refused_peers += 1
                log.warning("client of another uid refused on %s", self.name)
                conn.close()
                continue
            self.connections += 1
            self._conns.add(conn)
            t = threading.Thread(target=self._connection, args=(conn,), daemon=True)
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
            t.start()

    def _connection(self, conn: socket.socket) -> None:
        rings: dict[str, tuple[int, ShmRing]] = {}
        decoder = control.FrameDecoder()
        try:
            while True:
                data = conn.recv(1 << 16)
                if not data:
                    return
                for msg in decoder.feed(data):
                    if msg[0] != control.REQUEST:
                        raise DecodeError("a client sent something other than a request")
                    _, req_id, op, args = msg
                    try:
                        value = self._handle(op, args, rings)
                        reply = control.response(req_id, True, value)
                    except Exception as exc:  # every error goes back as itself
                        reply = control.response(req_id, False, control.error_value(exc))
                    conn.sendall(reply)
        except (OSError, DecodeError) as exc:
            if not self._closed:
                log.info("client connection on %s ended: %s", self.name, exc)
        finally:
            for ring in list(rings):
                self._release(ring, rings)
            self._conns.discard(conn)
            conn.close()

    # -- ops -------------------------------------------------------------------------
    def _handle(self, op: str, args: dict[str, Any], rings: dict[str, tuple[int, ShmRing]]) -> Any:
        if self._closed:
            raise NodeUnresponsive(f"cluster {self.name!r} is stopping")
        if self.stopped is not None:  # final: clients do not retry it as a failover
            raise Closed(self.stopped)
        b = self.backend
        with self._lock:
            if op == "hello":
                return {
                    "name": self.name,
                    "nodes": b.nodes(),
                    "pid": os.getpid(),
                    "version": netmesh.__version__,
                    # "node": a node daemon serving its own node (node_id), whose
                    # producers cannot follow a leader to another host; "cluster": every
                    # node of a supervised cluster
                    "serves": getattr(b, "serves", "cluster"),
                    "node_id": getattr(b, "node_id", None),
                }
            if op == "channels":
                out = b.channel_list()
                for ch in out:  # consumer groups, with their members and counts
                    ch["groups"] = [
                        g.info() for (name, _), g in self._groups.items() if name == ch["name"]
                    ]
                return out
            if op == "open_channel":
                b.open_channel(
                    str(ChannelName(args["name"])),
                    replication_from_dict(args.get("replication")),
                    args.get("options") or {},
                )
                return None
            if op == "producer":
                if args.get("idempotent"):
                    channel = self._channel(args["channel"])
                    opts: dict[str, Any] = getattr(b, "channel_options_of", lambda _c: {})(channel)
                    if not opts.get("idempotence"):
                        raise ConfigError(
                            f"an idempotent producer needs channel {channel!r} opened with"
                            " idempotence=True"
                        )
                return self._producer(args["channel"], args.get("capacity"), rings)
            if op == "subscribe":
                return self._subscribe(args, rings)
            if op == "release":
                seen = args.get("seen")
                self._release(args["ring"], rings, None if seen is None else list(seen))
                return None
            if op == "node_alive":
                node = int(args["node"])
                alive = b.node_alive(node)
                pid = args.get("pid")
                return alive and (pid is None or self._node_pid(node) in (pid, None))
            if op == "subscribe_group":
                return self._subscribe_group(args, rings)
            if op == "ack":
                group = self._member_of.get(args["ring"])
                if group is not None:
                    group.ack(args["ring"], list(args["seqs"]))
                return None
            if op == "groups":
                channel = self._channel(args["channel"])
                self._drop_failed_groups(channel)  # stopped here: they run elsewhere now
                return [g.info() for (ch, _), g in self._groups.items() if ch == channel]
        raise ConfigError(f"unknown client request {op!r}")

    def _channel(self, name: Any) -> str:
        cname = str(ChannelName(name))
        if not self.backend.is_open(cname):
            raise ChannelNotOpen(f"channel {cname!r} is not open in cluster {self.name!r}")
        return cname

    def _new_ring(self, node: int, capacity: int) -> tuple[str, ShmRing]:
        self._ring_no += 1
        name = self.backend.new_name("client", node, self._ring_no)
        return name, ShmRing.create(name, capacity)

    def _producer(
        self, channel: Any, capacity: int | None, rings: dict[str, tuple[int, ShmRing]]
    ) -> dict[str, Any]:
        channel = self._channel(channel)
        node = self.backend.serving_node(channel, [])
        name, ring = self._new_ring(node, capacity or self.backend.ring_bytes)
        try:
            self.backend.call(node, "attach_ring", ring=name, channel=channel)
        except BaseException:
            self._drop(name, ring)
            raise
        rings[name] = (node, ring)
        return {
            "ring": name,
            "node": node,
            "pid": self._node_pid(node),
            "max_payload": self.backend.max_payload(channel),
        }

    def _subscribe(
        self, args: dict[str, Any], rings: dict[str, tuple[int, ShmRing]]
    ) -> dict[str, Any]:
        channel = self._channel(args["channel"])
        from_seq = args.get("from_seq", 0)
        if not (
            from_seq in ("earliest", "latest") or (isinstance(from_seq, int) and from_seq >= 0)
        ):
            raise ConfigError(
                f"from_seq must be a seq >= 0, 'earliest' or 'latest', got {from_seq!r}"
            )
        node = self.backend.serving_node(channel, list(args.get("exclude") or []))
        capacity = max(SUB_RING_MIN, 4 * (self.backend.max_payload(channel) + 64))
        capacity = (capacity + 7) // 8 * 8
        name, ring = self._new_ring(node, capacity)
        try:
            self.backend.call(
                node,
                "subscribe",
                ring=name,
                channel=channel,
                from_seq=from_seq,
                end_seq=args.get("end_seq"),
                history=args.get("history"),
            )
        except BaseException:
            self._drop(name, ring)
            raise
        rings[name] = (node, ring)
        return {"ring": name, "node": node, "pid": self._node_pid(node)}

    def _subscribe_group(
        self, args: dict[str, Any], rings: dict[str, tuple[int, ShmRing]]
    ) -> dict[str, Any]:
        channel = self._channel(args["channel"])
        durable = str(args["durable"])
        rundir.check_name(durable)
        ack_wait, max_deliver = float(args.get("ack_wait", 30.0)), int(args.get("max_deliver", 5))
        if not ack_wait > 0 or max_deliver < 1:
            raise ConfigError("ack_wait must be > 0 and max_deliver >= 1")
        got = args.get("max_ack_pending")
        max_ack_pending = DEFAULT_MAX_ACK_PENDING if got is None else int(got)
        if max_ack_pending < 1:
            raise ConfigError(f"max_ack_pending must be >= 1, got {max_ack_pending}")
        host_check = getattr(self.backend, "check_group_host", None)
        if host_check is not None:  # a node daemon: the group runs where its state is led
            host_check(channel)
        self._drop_failed_groups(channel)
        group = self._groups.get((channel, durable))
        if group is None:
            dlq = str(ChannelName(args.get("dead_letter") or f"{channel}.dlq"))
            store = self._stores.get(channel)
            if store is None:
                store = StateStore(self.backend, channel, self._new_ring, self._drop)
                self._stores[channel] = store
            group = Group(
                self.backend,
                channel,
                durable,
                ack_wait,
                max_deliver,
                dlq,
                self._new_ring,
                self._drop,
                store,
            )
            self._groups[(channel, durable)] = group
        name, ring = self._new_ring(-1, 8 << 20)  # this process produces into it
        rings[name] = (-1, ring)
        self._member_of[name] = group
        group.join(name, ring, max_ack_pending)
        return {"ring": name, "node": -1}

    def _drop_failed_groups(self, channel: str) -> None:
        """Forget the stopped groups of ``channel`` (their members got the error); with
        none left running, its state is read again at the next start (another daemon
        may have written it meanwhile)."""
        for key, g in list(self._groups.items()):
            if key[0] == channel and g.failed is not None:
                del self._groups[key]
                g.close()
        if not any(key[0] == channel for key in self._groups):
            store = self._stores.pop(channel, None)
            if store is not None:
                store.close()

    def _node_pid(self, node: int) -> int | None:
        """The process serving ``node`` now (None when the backend cannot tell)."""
        pid_of = getattr(self.backend, "node_pid", None)
        return None if pid_of is None else pid_of(node)

    def _release(
        self, name: str, rings: dict[str, tuple[int, ShmRing]], seen: list[int] | None = None
    ) -> None:
        """Detach and remove a ring. A group member's unacknowledged events go to the
        other members; ``seen`` (a clean close): the ones its application was handed,
        the rest do not count as deliveries (:meth:`Group.leave`)."""
        entry = rings.pop(name, None)
        if entry is None:
            return
        group = self._member_of.pop(name, None)
        if group is not None:
            group.leave(name, seen)
        node, ring = entry
        if node >= 0 and self.backend.node_alive(node):
            with contextlib.suppress(Exception):
                self.backend.call(node, "detach_ring", timeout=5.0, ring=name)
        self._drop(name, ring)

    def _drop(self, name: str, ring: ShmRing) -> None:
        ring.close()
        ring.unlink()
        self.backend.forget_name(name)


class ClusterBackend:
    """A supervised :class:`~netmesh.cluster.cluster.Cluster` as a client backend."""

    def __init__(self, cluster: Cluster) -> None:
        self.c = cluster
        self.ring_bytes = cluster.ring_bytes

    def nodes(self) -> int:
        return self.c.size

    def is_open(self, channel: str) -> bool:
        return channel in self.c.channels

    def open_channel(self, name: str, replication: Any, options: dict[str, Any]) -> None:
        self.c.open_channel(name, replication, **options)

    def max_payload(self, channel: str) -> int:
        opts = self.c.channel_options.get(channel, {})
        return int(opts.get("max_payload", DEFAULT_MAX_PAYLOAD))

    def call(self, node: int, op: str, timeout: float = 10.0, **args: Any) -> Any:
        return self.c.sup.call(node, op, timeout=timeout, **args)

    def node_alive(self, node: int) -> bool:
        w = self.c.sup.workers.get(node)
        return bool(w is not None and w.alive())

    def new_name(self, *parts: object) -> str:
        return self.c.sup.name(*parts)

    def node_pid(self, node: int) -> int | None:
        w = self.c.sup.workers.get(node)
        return w.proc.pid if w is not None and w.alive() else None

    def replication_of(self, channel: str) -> Any:
        return self.c.channels.get(channel)

    def channel_options_of(self, channel: str) -> dict[str, Any]:
        return dict(self.c.channel_options.get(channel, {}))

    def forget_name(self, name: str) -> None:
        self.c.sup.forget_name(name)

    def serving_node(self, channel: str, exclude: list[int]) -> int:
        c = self.c
        if c.channels[channel] is None:
            return 0  # an unreplicated channel lives on each node apart: node 0's
        alive = [i for i in c.running() if c._holds(i, channel) and i not in exclude]
        with contextlib.suppress(TimeoutError):
            lead = c.wait_for_leader(channel, timeout=5.0)
            if lead in alive:
                return lead
        if not alive:
            raise NodeUnresponsive(f"no running node holds {channel!r}")
        return alive[0]

    def channel_list(self) -> list[dict[str, Any]]:
        c = self.c
        snap = c.metrics()
        out = []
        for name, cfg in c.channels.items():
            leader, next_seq, commit = None, 0, 0
            for n in snap["nodes"]:
                ch = n.get("channels", {}).get(name)
                if not n.get("alive") or not ch:
                    continue
                next_seq = max(next_seq, int(ch.get("next_seq", 0)))
                commit = max(commit, int(ch.get("commit_seq", 0) or 0))
                if ch.get("role") in (ReplicaRole.LEADER, "LEADER"):
                    leader = n["node"]
            quorum = cfg is not None and cfg.ack == "quorum"
            index = leader if cfg else 0
            leader_id = None if index is None else c.node_ids[index]
            out.append(
                {
                    "name": name,
                    "factor": cfg.factor if cfg else 1,
                    "ack": cfg.ack if cfg else "local",
                    "leader": index,
                    "leader_id": leader_id,
                    "leader_address": None,
                    "leader_text": describe_node(leader_id, index=index),
                    "next_seq": next_seq,
                    "commit": commit if quorum else next_seq,
                }
            )
        return out
