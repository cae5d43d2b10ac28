"""``netmesh node --config node.toml``: one long-lived node per host, from a config file.

One process, one asyncio loop: the same :class:`~netmesh.cluster.node_worker.NodeService`
a supervisor drives (one MeshNode, one Redex, ring drainers, subscription pumps), here
driven in-process, plus

* **peers** (``[[peers]]``): every peer is allowed to handshake with us, and a task per
  peer keeps connecting to it while it is not up, with exponential back-off
  (``BACKOFF_MIN_S`` doubling up to ``BACKOFF_MAX_S``, jittered); one log line per
  peer state change (up, down, unreachable). A peer that restarts is back as soon as
  either side's handshake gets through (MeshNode also probes peers it had, see
  ``netmesh.link.peer``); a restarted daemon connects to every peer at once;
* **channels** (``[[channels]]``) opened at start, persisted under ``data_dir``, and
  only from there: a client's ``open_channel`` is refused (ConfigError: daemon channels
  come from the config file, SIGHUP reloads it), since a channel opened on one daemon
  would be known to that daemon only. Standard placement is
  ``PlacementStrategy.standard()`` (:mod:`netmesh.replication.placement`): every daemon
  opens and announces the channel, the ``factor`` lowest node ids among those that
  announced it hold it, the others stay Idle (open, storing nothing, appends refused
  with NotLeader). Placement settings (``Redex.set_placement_policy``): the configured
  peers' announcements are retained while they are down (a crashed host stays a
  member; only removing it from the config removes it), a set smaller than a majority
  of ``factor`` is never formed (a lone restarted daemon waits for its peers), and
  announcements go out at most once per ``[node] announce_interval_ms``;
* **membership**: add a host by starting it with a config that lists the others and
  adding it to theirs + SIGHUP (the others only accept handshakes from configured
  peers, so reload is the route, not discovery); remove one by SIGTERM and removing it
  from the others' configs + SIGHUP. Each standard channel's set follows; quorum
  channels change one node at a time and a newcomer catches up as a learner before it
  counts (issue 13 §3, ``placement.quorum_change``);
* **clients** (``netmesh.connect(name)``, ``netmesh publish/tail/channels``): a
  :class:`~netmesh.cluster.clients.ClientServer` on ``$NETMESH_RUN_DIR/<name>.sock``
  serving :class:`DaemonBackend` (this node only: producers attach here, so publish
  through the daemon of the channel's leader: a replica refuses a producer with one
  NotLeader line naming the leader's node id and UDP address, :meth:`Daemon.not_leader`;
  subscriptions and reads are served from this node's replica);
* **metrics** (``[node] metrics = "host:port"``): Prometheus text format 0.0.4 on
  ``http://host:port/metrics`` (stdlib HTTP server, one thread).

Shared memory: the client rings' names carry this daemon's run prefix
``netmesh-<pid>-<token>``, owned by ``flock`` on ``$NETMESH_RUN_DIR/<prefix>.lock`` for
the daemon's life (:func:`netmesh.cluster.supervisor.claim_run`); a daemon or cluster
starting later removes the names of runs whose lock is free (a SIGKILLed daemon's).

Signals: SIGTERM or SIGINT stop cleanly (clients dropped and their shared memory
unlinked, files fsynced and closed, sessions closed, socket and name removed, exit 0);
SIGHUP re-reads the file and applies ``[[peers]]`` and ``[[channels]]`` changes
(added peers are connected, removed ones blocked; added channels opened, removed ones
closed; a changed ``[node]`` section or a changed open channel needs a restart and is
logged as such; a file with errors is refused and the running configuration kept).

Exit codes: 0 clean stop, 1 could not start (address in use, name taken, data
directory locked), 2 bad configuration (one line naming the key).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http.server
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from netmesh.cluster import nodeconfig, rundir
from netmesh.cluster.clients import ClientServer
from netmesh.cluster.node_worker import NodeService, replication_to_dict
from netmesh.cluster.nodeconfig import (
    ChannelConfig,
    NodeConfig,
    PeerConfig,
    describe_node,
    format_addr,
    format_node_id,
)
from netmesh.cluster.supervisor import claim_run, remove_stale_names
from netmesh.config import DEFAULT_MAX_PAYLOAD, ReplicationConfig
from netmesh.errors import (
    ChannelNotOpen,
    Closed,
    ConfigError,
    HandshakeError,
    LogLocked,
    NameTaken,
    NetmeshError,
    NodeUnresponsive,
    NotLeader,
)
from netmesh.identity import EntityKeypair
from netmesh.link.node import PEER_EVENTS
from netmesh.replication.roles import ReplicaRole
from netmesh.ring.shm import unlink_ring

log = logging.getLogger("netmesh.node")

BACKOFF_MIN_S = 0.25
BACKOFF_MAX_S = 5.0
PEER_POLL_S = 0.2
RING_BYTES = 1 << 22
LOCK_FILE = "node.lock"


class StartError(NetmeshError):
    """The daemon could not start (address in use, name taken, data dir locked)."""


class Daemon:
    """One node daemon (module doc). ``run()`` returns the exit code."""

    def __init__(self, cfg: NodeConfig, keypair: EntityKeypair, psk: bytes) -> None:
        self.cfg = cfg
        self.keypair = keypair
        self.psk = psk
        self.me = keypair.node_id
        self.prefix = f"netmesh-{os.getpid()}-{secrets.token_hex(4)}"
        self.service: NodeService | None = None
        self.clients: ClientServer | None = None
        self.http: http.server.ThreadingHTTPServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stopping = False
        self.peer_tasks: dict[int, asyncio.Task[None]] = {}
        self.peer_state: dict[int, str] = {}
        self.peer_wake: dict[int, asyncio.Event] = {}
        self.names: set[str] = set()
        self._names_lock = threading.Lock()
        self._stop = asyncio.Event()
        self._lock_fd = -1
        self._run_lock: tuple[str, int] | None = None
        self._claim: rundir.Claim | None = None
        self._http_running = False
        self._created_data_dir = False
        self._started = False

    # -- lifetime --------------------------------------------------------------------
    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        for sig, fn in (
            (signal.SIGTERM, self.request_stop),
            (signal.SIGINT, self.request_stop),
            (signal.SIGHUP, self.request_reload),
        ):
            self.loop.add_signal_handler(sig, fn)
        try:
            await self.start()
            log.info(
                "node %s up: mesh %s, clients %r%s, %d peers, %d channels",
                format_node_id(self.me),
                self.cfg.node.bind_text,
                self.cfg.node.name,
                f", metrics http://{format_addr(self.cfg.node.metrics)}/metrics"
                if self.cfg.node.metrics
                else "",
                len(self.cfg.peers),
                len(self.open_channels()),
            )
            await self._stop.wait()
            log.info("node %s stopping", format_node_id(self.me))
        finally:
            await self.close()
        log.info("node %s stopped", format_node_id(self.me))
        return 0

    async def start(self) -> None:
        """Start-up, conflicts first (:meth:`preflight`: nothing is opened while another
        process could still be in the way), then the mesh, channels, peers, clients."""
        node = self.cfg.node
        self.preflight()
        # our shm names belong to us while we hold this lock (the supervisor's rule), and
        # names of daemons or clusters that died (their lock free) are removed
        self._run_lock = claim_run(self.prefix)
        remove_stale_names()
        self.service = NodeService()
        try:
            await self.service.op_init(
                index=0,
                private_key=self.keypair.private_key,
                psk=self.psk,
                bind=node.bind_text,
                heartbeat_interval=node.keepalive_ms / 1000,
                session_timeout=node.session_timeout_ms / 1000,
                max_datagram=node.max_datagram,
                data_dir=node.data_dir,
            )
        except OSError as exc:
            raise StartError(f"cannot bind node.bind {node.bind_text}: {exc.strerror}") from None
        self.service.redex.set_placement_policy(
            retain=[p.node_id for p in self.cfg.peers],
            min_announce_interval=node.announce_interval_ms / 1000,
            form_majority=True,
        )
        mesh = self.service._node()
        mesh.subscribe(PEER_EVENTS, self._on_peer_event)
        for p in self.cfg.peers:
            mesh.add_allowed_peer(p.node_id, p.public_key)
        for ch in self.cfg.channels:
            self._open(ch)
        for p in self.cfg.peers:
            self._watch(p)
        claim, self._claim = self._claim, None
        self.clients = ClientServer(DaemonBackend(self), node.name, claim=claim)
        if self.http is not None:
            threading.Thread(
                target=self.http.serve_forever, name="metrics-http", daemon=True
            ).start()
            self._http_running = True
        self._started = True

    def preflight(self) -> None:
        """Every start conflict, checked before anything is opened; StartError (exit 1,
        one line) and nothing left behind when one is found:

        * ``[node] name`` served by a live process (a daemon or ``netmesh up``): the name
          is taken here (:func:`netmesh.cluster.rundir.claim` without listening) and
          held until the client socket listens, at the end of start-up;
        * ``[node] bind`` (UDP) in use: a probe socket is bound and closed (the mesh binds
          it for real a moment later; a process that takes it in between is reported by
          that bind);
        * ``[node] metrics`` (TCP) in use: its server is bound here, served at the end;
        * ``[node] data_dir`` used by another running node: ``flock`` on its
          ``node.lock`` (created with the directory if need be; a directory created here
          is removed again if start-up fails).
        """
        node = self.cfg.node
        try:
            self._claim = rundir.claim(node.name, listen=False)
        except NameTaken as exc:
            raise StartError(f"node.name: {exc}") from None
        family = socket.AF_INET6 if ":" in node.bind[0] else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(node.bind)
            except OSError as exc:
                raise StartError(
                    f"node.bind {node.bind_text}: {exc.strerror or exc}"
                    + (" (another process uses it)" if exc.errno == errno.EADDRINUSE else "")
                ) from None
        if node.metrics is not None:
            self.http = self._metrics_server(node.metrics)
        if not os.path.isdir(node.data_dir):
            try:
                os.makedirs(node.data_dir, mode=0o700)
            except OSError as exc:
                raise ConfigError(
                    f"node.data_dir: {node.data_dir}: {exc.strerror or exc}"
                ) from None
            self._created_data_dir = True
        self._lock_data_dir(node.data_dir)

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        assert self.loop is not None
        self.loop.call_soon(self.reload)

    async def close(self) -> None:
        """Clients first (their rings are detached through the running loop), then
        metrics, peers, channels (fsynced), the mesh; every shm name is unlinked and
        every lock file this daemon created is removed (run lock, name lock, data_dir
        lock; a data_dir created by a start-up that failed goes too)."""
        if self.clients is not None:  # told while the node runs: Closed, within 1 s
            await asyncio.to_thread(self.clients.stopping)
        self.stopping = True
        if self.clients is not None:
            await asyncio.to_thread(self.clients.close)
        if self._claim is not None:
            self._claim.close()
            self._claim = None
        if self.http is not None:
            await asyncio.to_thread(self._close_http, self.http, self._http_running)
            self.http = None
        tasks = list(self.peer_tasks.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self.peer_tasks.clear()
        if self.service is not None:
            await self.service.close()
        with self._names_lock:
            names, self.names = list(self.names), set()
        for n in names:
            unlink_ring(n)
        if self._run_lock is not None:
            path, fd = self._run_lock
            self._run_lock = None
            rundir.release_lock(path, fd)
        if self._lock_fd >= 0:
            rundir.release_lock(os.path.join(self.cfg.node.data_dir, LOCK_FILE), self._lock_fd)
            self._lock_fd = -1
        if self._created_data_dir and not self._started:
            shutil.rmtree(self.cfg.node.data_dir, ignore_errors=True)

    def _lock_data_dir(self, data_dir: str) -> None:
        path = os.path.join(data_dir, LOCK_FILE)
        try:
            self._lock_fd = rundir.take_lock(path, f"node.data_dir {data_dir}")
        except BlockingIOError as exc:
            holder = getattr(exc, "holder", "?")
            raise StartError(
                f"node.data_dir: {data_dir} is used by another running node (pid {holder})"
            ) from None
        except OSError as exc:
            raise ConfigError(f"node.data_dir: {path}: {exc.strerror or exc}") from None

    # -- names (shared memory of client rings) -----------------------------------------
    def name(self, *parts: object) -> str:
        n = "/" + "-".join([self.prefix, *map(str, parts)])
        with self._names_lock:
            self.names.add(n)
        return n

    def forget_name(self, name: str) -> None:
        with self._names_lock:
            self.names.discard(name)

    # -- channels --------------------------------------------------------------------
    def _svc(self) -> NodeService:
        if self.service is None:
            raise NodeUnresponsive("node is not started")
        return self.service

    def open_channels(self) -> list[str]:
        return [str(f.name) for f in self._svc().redex.open_files()]

    def _open(self, ch: ChannelConfig) -> None:
        """Open a configured channel (a pinned one this node is not in: logged, left
        closed)."""
        repl = self.cfg.resolve(ch, self.me)
        pinned = repl is not None and repl.placement.kind == "pinned"
        if pinned and repl is not None and self.me not in repl.placement.nodes:
            log.info("channel %s: this node is not in its pinned placement", ch.name)
            return
        self.open_channel(ch.name, repl, ch.options_dict())

    def open_channel(
        self, name: str, repl: ReplicationConfig | None, options: dict[str, Any]
    ) -> None:
        """Open ``name`` here as configured (idempotent)."""
        svc = self._svc()
        if svc.redex.get_file(name) is not None:
            return  # already open (config and a client both asked)
        svc.op_open_channel(name, replication_to_dict(repl), options)
        log.info(
            "channel %s open: %s, next_seq %d",
            name,
            "local" if repl is None else _describe(repl),
            svc.redex.get_file(name).next_seq,  # type: ignore[union-attr]
        )

    def placement_retain(self) -> None:
        """Placement keeps the configured peers' announcements (module doc)."""
        self._svc().redex.set_placement_policy(retain=[p.node_id for p in self.cfg.peers])

    def node_index(self, node_id: int | None) -> int | None:
        """0 for this node, i for ``peers[i - 1]``, None if unknown (the ``leader``
        field of a channel row; users see :meth:`describe`)."""
        if node_id is None:
            return None
        if node_id == self.me:
            return 0
        for i, p in enumerate(self.cfg.peers, start=1):
            if p.node_id == node_id:
                return i
        return None

    def address_of(self, node_id: int | None) -> str | None:
        """The UDP address of this node or of a configured peer (None if unknown)."""
        if node_id == self.me:
            return self.cfg.node.bind_text
        for p in self.cfg.peers:
            if p.node_id == node_id:
                return format_addr(p.address)
        return None

    def describe(self, node_id: int | None) -> str:
        """A node as users see it (:func:`netmesh.cluster.nodeconfig.describe_node`):
        ``0x… (this node, 10.0.0.1:7411)`` or ``0x… (10.0.0.2:7411)``."""
        return describe_node(node_id, address=self.address_of(node_id), this=node_id == self.me)

    def channel_rows(self) -> list[dict[str, Any]]:
        """One row per open channel: name, factor, ack, leader (index: 0 this node, i
        ``peers[i - 1]``), leader_id, leader_address (UDP), leader_text (the user-facing
        form), next_seq, commit."""
        svc = self._svc()
        out = []
        for f in svc.redex.open_files():
            outside: tuple[int, ...] | None = None  # the replicas, when not one of them
            coord = svc.redex.replication_coordinator_for(f.name)
            rt = svc.redex.replication_runtime(f.name)
            leader_id: int | None = self.me
            row: dict[str, Any] = {
                "name": str(f.name),
                "factor": 1,
                "ack": "local",
                "next_seq": f.next_seq,
                "commit": f.next_seq,
            }
            repl = f.config.replication
            if repl is not None and rt is None:  # placement left this node Idle
                leader_id = None
                row.update(factor=repl.factor, ack=repl.ack, commit=0)
                outside = self.replicas_of(str(f.name))
            elif coord is not None and rt is not None:
                cfg = rt.coord.config
                leader_id = self.me if coord.role == ReplicaRole.LEADER else coord.leader_id
                row.update(
                    factor=cfg.effective_factor(),
                    ack=cfg.ack,
                    commit=coord.commit_seq if cfg.ack == "quorum" else f.next_seq,
                )
            row.update(
                leader=self.node_index(leader_id),
                leader_id=leader_id,
                leader_address=self.address_of(leader_id),
                leader_text=self.describe(leader_id),
            )
            if outside is not None:  # not "unknown": this node does not hold it
                replicas = ", ".join(self.describe(m) for m in outside) or "none announced"
                row["leader_text"] = f"not a member (replicas: {replicas})"
            out.append(row)
        return out

    def replicas_of(self, channel: str) -> tuple[int, ...]:
        """The replica set of ``channel`` for a node outside it: the set most of its
        peers announce they run it with, else the set placement resolves from their
        announcements (:func:`netmesh.replication.placement.resolve`); () if unknown."""
        from netmesh.replication.placement import resolve

        svc = self._svc()
        view = svc.redex.placement_view()
        counts: dict[tuple[int, ...], int] = {}
        for ann in view.values():
            members = ann.members_of(channel)
            if members:
                counts[members] = counts.get(members, 0) + 1
        if counts:
            return max(counts, key=lambda m: (counts[m], m))
        f = svc.redex.get_file(channel)
        repl = None if f is None else f.config.replication
        if repl is None:
            return ()
        resolved = resolve(repl.placement, repl.factor, channel, view.values())
        return () if self.me in resolved else resolved  # not settled yet: unknown

    def check_holds(self, channel: str) -> None:
        """ChannelNotOpen, one line naming this daemon and the channel's replicas, when
        ``channel`` is open here but placement left this node outside its replica set
        (Idle): its file holds nothing current, so a read from it would answer stale
        events or silence (README, Running on several machines)."""
        svc = self._svc()
        f = svc.redex.get_file(channel)
        if f is None or f.config.replication is None:
            return
        if svc.redex.replication_runtime(channel) is not None:
            return
        members = self.replicas_of(channel)
        where = ", ".join(self.describe(m) for m in members) or "none announced yet"
        raise ChannelNotOpen(
            f"node daemon {self.cfg.node.name!r} does not hold {channel!r} (its replicas:"
            f" {where}): read it through the node daemon of a replica's host"
        )

    def not_leader(self, exc: NotLeader, channel: str) -> NotLeader:
        """``exc`` (a refused producer on this daemon) with a message naming the leader
        and where to publish instead: producers do not follow a leader to another host
        (README, Running on several machines)."""
        lead = exc.leader
        here = f"node daemon {self.cfg.node.name!r} ({format_node_id(self.me)})"
        if lead is None or lead == self.me:
            where = (
                "it knows no leader (an election is running, too few daemons are up, or this"
                " host does not hold the channel): retry, or publish through the daemon of"
                " the leader's host"
            )
        else:
            where = (
                f"its leader is {self.describe(lead)}: publish through the node daemon on that host"
            )
        err = NotLeader(channel, lead)
        err.args = (f"{here} does not lead channel {channel!r}; {where}",)
        return err

    # -- peers -----------------------------------------------------------------------
    def _watch(self, peer: PeerConfig) -> None:
        assert self.loop is not None
        self.peer_tasks[peer.node_id] = self.loop.create_task(
            self._keep_connected(peer), name=f"peer-{peer.node_id:x}"
        )

    def _on_peer_event(self, node_id: int, event: bytes) -> None:
        """MeshNode peer events: log the change now, wake the peer's task."""
        peer = next((p for p in self.cfg.peers if p.node_id == node_id), None)
        if peer is None:
            return
        self._peer_changed(peer, "up" if event == b"up" else "down")
        wake = self.peer_wake.get(node_id)
        if wake is not None:
            wake.set()

    def _peer_changed(self, peer: PeerConfig, state: str, detail: str = "") -> None:
        if self.peer_state.get(peer.node_id) == state:
            return
        self.peer_state[peer.node_id] = state
        addr = format_addr(peer.address)
        if state == "up":
            log.info("peer %s (%s) up", format_node_id(peer.node_id), addr)
        else:
            log.warning(
                "peer %s (%s) %s%s; retrying", format_node_id(peer.node_id), addr, state, detail
            )

    async def _keep_connected(self, peer: PeerConfig) -> None:
        """Connect to ``peer`` whenever it is not up; back off while it stays away."""
        mesh = self._svc()._node()
        delay = BACKOFF_MIN_S
        wake = self.peer_wake[peer.node_id] = asyncio.Event()
        while not self.stopping:
            wake.clear()
            if mesh.peer_is_up(peer.node_id):
                self._peer_changed(peer, "up")
                delay = BACKOFF_MIN_S
                await self._nap(wake, PEER_POLL_S)
                continue
            if self.peer_state.get(peer.node_id) == "up":
                self._peer_changed(peer, "down")
            try:
                addr = await self._resolve(peer.address)
                await mesh.connect(addr, peer.public_key, peer.node_id)
            except (HandshakeError, OSError) as exc:
                if mesh.peer_is_up(peer.node_id):
                    continue  # it came up through its own handshake meanwhile
                if self.peer_state.get(peer.node_id) in (None, "up"):
                    hint = "; host down, or it rejects our psk/public key (see its log)"
                    self._peer_changed(peer, "unreachable", f" ({exc}{hint})")
                await self._nap(wake, delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, BACKOFF_MAX_S)
            except Closed:
                return
            except Exception:  # a bug must not end the reconnection of this peer
                log.exception("peer %s: connection attempt failed", format_node_id(peer.node_id))
                await self._nap(wake, BACKOFF_MAX_S)

    @staticmethod
    async def _nap(wake: asyncio.Event, seconds: float) -> None:
        """Sleep ``seconds`` or until ``wake`` is set (a peer event)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), seconds)

    async def _resolve(self, addr: tuple[str, int]) -> tuple[str, int]:
        assert self.loop is not None
        infos = await self.loop.getaddrinfo(addr[0], addr[1], type=socket.SOCK_DGRAM)
        bind_v6 = ":" in self.cfg.node.bind[0]
        for family, _, _, _, sockaddr in infos:
            if (family == socket.AF_INET6) == bind_v6:
                return str(sockaddr[0]), int(sockaddr[1])
        raise OSError(f"no {'IPv6' if bind_v6 else 'IPv4'} address for {addr[0]}")

    # -- reload ----------------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP: apply ``[[peers]]`` and ``[[channels]]`` changes (module doc)."""
        if self.stopping:
            return
        try:
            new = nodeconfig.load(self.cfg.path)
            for i, p in enumerate(new.peers):
                if p.node_id == self.me:
                    raise ConfigError(f"peers[{i}].public_key: is this node's own key")
        except ConfigError as exc:
            log.error("reload refused, configuration unchanged: %s", exc)
            return
        old = self.cfg
        if new.node != old.node:
            log.warning("reload: [node] changes take effect at the next restart")
            new = NodeConfig(new.path, old.node, new.peers, new.channels)
        self.cfg = new
        mesh = self._svc()._node()
        old_peers = {p.node_id: p for p in old.peers}
        new_peers = {p.node_id: p for p in new.peers}
        moved = len(set(old_peers) ^ set(new_peers))
        if moved > 1:  # tests/replication/test_adversary_forms.py (the strict xfail)
            log.warning(
                "reload: %d hosts added or removed at once; quorum membership changes one"
                " host at a time: add or remove one, reload every host, then the next (a"
                " quorum channel with no set yet could otherwise form two)",
                moved,
            )
        for nid, p in new_peers.items():
            if nid not in old_peers or old_peers[nid].address != p.address:
                mesh.unblock_peer(nid)
                mesh.add_allowed_peer(nid, p.public_key)
                task = self.peer_tasks.pop(nid, None)
                if task is not None:
                    task.cancel()
                self.peer_state.pop(nid, None)
                self._watch(p)
                log.info("reload: peer %s at %s added", format_node_id(nid), format_addr(p.address))
        for nid in set(old_peers) - set(new_peers):
            task = self.peer_tasks.pop(nid, None)
            if task is not None:
                task.cancel()
            self.peer_state.pop(nid, None)
            mesh.block_peer(nid)
            log.info("reload: peer %s removed (its traffic is dropped)", format_node_id(nid))
        self.placement_retain()  # a removed host's announcement is dropped: sets re-resolve
        old_ch = {c.name: c for c in old.channels}
        new_ch = {c.name: c for c in new.channels}
        for name, ch in new_ch.items():
            if name not in old_ch:
                try:
                    self._open(ch)
                except (NetmeshError, OSError) as exc:  # locked, corrupt, unreadable
                    log.error("reload: channel %s not opened: %s", name, exc)
            elif ch != old_ch[name]:
                log.warning("reload: channel %s changed; takes effect at the next restart", name)
        for name in set(old_ch) - set(new_ch):
            self._svc().op_close_channel(name)
            log.info("reload: channel %s closed", name)
        log.info("reload: %d peers, %d channels", len(new.peers), len(self.open_channels()))

    # -- metrics ---------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The node's metrics (``NodeService.snapshot`` plus the configured peers)."""
        snap = self._svc().snapshot()
        mesh = self._svc()._node()
        snap["name"] = self.cfg.node.name
        snap["bind"] = self.cfg.node.bind_text
        snap["configured_peers"] = [
            {
                "node_id": p.node_id,
                "address": format_addr(p.address),
                "up": mesh.peer_is_up(p.node_id),
            }
            for p in self.cfg.peers
        ]
        return snap

    def on_loop(self, fn: Callable[[], Any], timeout: float = 5.0) -> Any:
        """Run ``fn`` on the daemon's loop from another thread; its result."""
        assert self.loop is not None

        async def job() -> Any:
            return fn()

        fut = asyncio.run_coroutine_threadsafe(job(), self.loop)
        try:
            return fut.result(timeout)
        except FutureTimeout:
            fut.cancel()
            raise NodeUnresponsive("the node's loop did not answer in time") from None

    def _metrics_server(self, addr: tuple[str, int]) -> http.server.ThreadingHTTPServer:
        """The /metrics server, bound (StartError when the address is in use), not yet
        serving: :meth:`start` starts its thread once the node runs."""
        daemon = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "see /metrics")
                    return
                try:
                    body = prometheus_text(daemon.on_loop(daemon.snapshot)).encode()
                except NetmeshError as exc:
                    self.send_error(503, str(exc))
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("metrics: " + format, *args)

        server_cls = http.server.ThreadingHTTPServer
        if ":" in addr[0]:

            class V6(http.server.ThreadingHTTPServer):
                address_family = socket.AF_INET6

            server_cls = V6
        try:
            server = server_cls(addr, Handler)
        except OSError as exc:
            raise StartError(
                f"node.metrics {format_addr(addr)}: {exc.strerror or exc}"
                + (" (another process uses it)" if exc.errno == errno.EADDRINUSE else "")
            ) from None
        server.daemon_threads = True
        return server

    @staticmethod
    def _close_http(server: http.server.ThreadingHTTPServer, running: bool) -> None:
        if running:
            server.shutdown()  # waits for serve_forever: only when it runs
        server.server_close()


class DaemonBackend:
    """A node daemon's own node as a :class:`~netmesh.cluster.clients.ClientBackend`.

    Node index 0 is this node (the only one it serves); indexes ``1..`` in
    ``channels()`` name ``peers[i - 1]`` of the configuration. Calls run on the
    daemon's loop (``run_coroutine_threadsafe``) from the client threads.
    """

    serves = "node"  # ``hello`` tells clients: one node, producers do not move hosts

    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self.ring_bytes = RING_BYTES

    @property
    def node_id(self) -> int:
        return self.d.me

    def nodes(self) -> int:
        return 1 + len(self.d.cfg.peers)

    def channel_list(self) -> list[dict[str, Any]]:
        return list(self.d.on_loop(self.d.channel_rows))

    def open_channel(self, name: str, replication: Any, options: dict[str, Any]) -> None:
        """Refused: a channel opened through one daemon would be known to it alone."""
        raise ConfigError(
            f"channel {name!r}: a node daemon's channels come from the [[channels]] table of"
            f" its config file ({self.d.cfg.path}; SIGHUP to reload), not from clients"
        )

    def is_open(self, channel: str) -> bool:
        return bool(self.d.on_loop(lambda: self.d._svc().redex.get_file(channel) is not None))

    def max_payload(self, channel: str) -> int:
        def get() -> int:
            f = self.d._svc().redex.get_file(channel)
            if f is None:
                raise ChannelNotOpen(f"channel {channel!r} is not open on this node")
            return int(f.config.max_payload)

        return int(self.d.on_loop(get) or DEFAULT_MAX_PAYLOAD)

    def serving_node(self, channel: str, exclude: list[int]) -> int:
        if self.d.stopping:
            raise NodeUnresponsive(f"node {self.d.cfg.node.name!r} is stopping")
        return 0

    def call(self, node: int, op: str, timeout: float = 10.0, **args: Any) -> Any:
        if node != 0 or self.d.stopping or self.d.loop is None:
            raise NodeUnresponsive(f"node {node} is not served here")
        if op == "subscribe":  # tail, read_range, subscribe: only from a replica
            self.d.on_loop(lambda: self.d.check_holds(str(args.get("channel"))))
        fut = asyncio.run_coroutine_threadsafe(self.d._svc().call_op(op, args), self.d.loop)
        try:
            return fut.result(timeout)
        except FutureTimeout:
            fut.cancel()
            raise NodeUnresponsive(f"node did not answer {op!r} within {timeout}s") from None
        except NotLeader as exc:
            if op != "attach_ring":
                raise
            raise self.d.not_leader(exc, str(args.get("channel"))) from None

    def node_alive(self, node: int) -> bool:
        return node == 0 and not self.d.stopping

    def check_group_host(self, channel: str) -> None:
        """The consumer groups of ``channel`` run here only if this daemon leads
        ``<channel>.consumers``, where they write their state: so each group has one
        dispatcher in the cluster (issue 12 trial §4; as a producer on a follower is
        refused, README "Running on several machines").

        Raises ConfigError (``<channel>.consumers`` is not in [[channels]]), NotLeader
        (another daemon leads it: ``final`` set, ``.leader`` its node id, the message
        names it and its address; no leader known: not final, retry)."""
        state = f"{channel}.consumers"
        row = next((r for r in self.channel_list() if r["name"] == state), None)
        if row is None:
            raise ConfigError(
                f"durable subscriptions to {channel!r} need channels {state!r} and"
                f" '{channel}.dlq' (or the dead_letter channel named) in [[channels]] of"
                f" {self.d.cfg.path}, with the replication of {channel!r}; SIGHUP to reload"
            )
        lead = row["leader_id"]
        if lead == self.d.me:
            return
        here = f"node daemon {self.d.cfg.node.name!r} ({format_node_id(self.d.me)})"
        err = NotLeader(state, lead)
        if lead is None:
            where = (
                "it knows no leader (an election is running, too few daemons are up, or this"
                " host does not hold it): retry, or subscribe through the daemon of its"
                " leader's host"
            )
        else:
            where = (
                f"its leader is {self.d.describe(lead)}: subscribe with durable= through the"
                " node daemon on that host"
            )
            err.final = True  # type: ignore[attr-defined]
        err.args = (
            f"{here} does not lead {state!r}, where the consumer groups of {channel!r} run;"
            f" {where}",
        )
        raise err

    def new_name(self, *parts: object) -> str:
        return self.d.name(*parts)

    def forget_name(self, name: str) -> None:
        self.d.forget_name(name)


# -- Prometheus ----------------------------------------------------------------------
_ROLE_NAMES = [r.name for r in ReplicaRole]


def prometheus_text(snap: dict[str, Any]) -> str:
    """Prometheus text exposition (0.0.4) of :meth:`Daemon.snapshot`: one HELP and TYPE
    line per family, ``*_total`` families are counters, the rest gauges; the channel
    role is a state set; unknown values (None) are left out."""
    families: dict[str, tuple[str, str, list[str]]] = {}

    def sample(name: str, help_text: str, labels: dict[str, str], value: Any) -> None:
        if value is None or isinstance(value, bool | str):
            value = int(value) if isinstance(value, bool) else None
        if value is None:
            return
        kind = "counter" if name.endswith("_total") else "gauge"
        fam = families.setdefault(name, (kind, help_text, []))
        text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        fam[2].append(f"{name}{{{text}}} {float(value)!r}")

    node = {"node_id": format_node_id(snap.get("node_id") or 0), "name": str(snap.get("name", ""))}
    sample("netmesh_node_up", "1 while the node daemon runs", node, 1)
    peers = snap.get("configured_peers", [])
    sample("netmesh_node_peers_configured", "peers in the configuration file", node, len(peers))
    sample(
        "netmesh_node_peers_up", "configured peers with a live session", node,
        sum(1 for p in peers if p["up"]),
    )  # fmt: skip
    for p in peers:
        labels = {**node, "peer": format_node_id(p["node_id"]), "address": p["address"]}
        sample("netmesh_peer_up", "1 if the peer has a live session", labels, int(p["up"]))
    for k, v in sorted(snap.get("counters", {}).items()):
        sample(f"netmesh_node_{k}_total", f"node counter {k.replace('_', ' ')}", node, v)
    mesh = snap.get("mesh", {})
    for k, v in sorted(mesh.items()):
        if k == "drops" and isinstance(v, dict):
            for reason, n in sorted(v.items()):
                sample(
                    "netmesh_mesh_drops_total",
                    "datagrams or messages dropped, by reason",
                    {**node, "reason": reason},
                    n,
                )
        elif k == "peers_up":
            sample("netmesh_mesh_peers_up", "peers with a live session", node, v)
        elif isinstance(v, int | float):
            sample(f"netmesh_mesh_{k}_total", f"mesh counter {k.replace('_', ' ')}", node, v)
    for ch, m in sorted(snap.get("channels", {}).items()):
        labels = {**node, "channel": ch}
        role = m.get("role")
        if isinstance(role, str) and role in _ROLE_NAMES:
            for r in _ROLE_NAMES:
                sample(
                    "netmesh_channel_role",
                    "1 for the role this node has for the channel (state set)",
                    {**labels, "role": r},
                    int(r == role),
                )
        for k, v in sorted(m.items()):
            if k in ("role", "channel") or isinstance(v, bool) or not isinstance(v, int | float):
                continue
            sample(f"netmesh_channel_{k}", f"channel metric {k.replace('_', ' ')}", labels, v)
    lines: list[str] = []
    for name, (kind, help_text, samples) in families.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _ids(ids: tuple[int, ...]) -> str:
    return "[" + ", ".join(format_node_id(i) for i in ids) + "]"


def _describe(repl: ReplicationConfig) -> str:
    if repl.placement.kind == "pinned":
        return f"{repl.ack} ack, holders {_ids(repl.placement.nodes)}"
    return f"{repl.ack} ack, {repl.placement.kind} placement, factor {repl.factor}"


# -- entry point ---------------------------------------------------------------------
def run(config_path: str, log_level: str = "INFO") -> int:
    """Load ``config_path`` and run the daemon until SIGTERM; the exit code. Every
    failure is one line on stderr (no traceback): 2 bad configuration, 1 start failed."""
    prog = "netmesh node"
    try:
        cfg = nodeconfig.load(config_path)
        keypair, psk = nodeconfig.load_secrets(cfg)
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s netmesh-node[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        return asyncio.run(Daemon(cfg, keypair, psk).run())
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except (StartError, LogLocked, NetmeshError) as exc:
        print(f"{prog}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file or directory the node cannot use
        where = f" {exc.filename}" if exc.filename else ""
        print(f"{prog}: error:{where} {exc.strerror or exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m netmesh.cluster.daemon")
    ap.add_argument("--config", required=True)
    ap.add_argument("--log-level", default=os.environ.get("NETMESH_LOG", "INFO"))
    args = ap.parse_args(argv)
    return run(args.config, args.log_level)


if __name__ == "__main__":
    sys.exit(main())
