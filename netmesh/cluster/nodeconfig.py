"""A node daemon's configuration file (TOML, read with the standard library's ``tomllib``).

::

    [node]
    bind = "127.0.0.2:7411"          # UDP address of the encrypted mesh (host:port)
    key_file = "node.key"            # `netmesh keygen --out node.key` (mode 0600)
    psk_file = "cluster.psk"         # `netmesh psk --out cluster.psk` (mode 0600)
    data_dir = "data"                # event files, hard state, handshake clock
    name = "n2"                      # client socket name: netmesh.connect("n2")
    metrics = "127.0.0.2:9411"       # optional: Prometheus text on http://ADDR/metrics
    keepalive_ms = 250               # optional: link keepalive period (default 250)
    session_timeout_ms = 2000        # optional: a silent peer is down after this (2000)
    max_datagram = 1400              # optional: largest UDP payload sent (fits a 1500 MTU;
                                     # 8972 for 9000-byte jumbo frames)
    announce_interval_ms = 1000      # optional: at most one placement announcement per
                                     # this period (default 1000; upstream's
                                     # min_announce_interval)

    [[peers]]                        # every other node of the cluster
    address = "127.0.0.1:7411"       # its [node] bind
    public_key = "<64 hex digits>"   # `netmesh keygen` prints it; node id derived

    [[channels]]
    name = "orders"
    factor = 3                       # holders (default: 3, at most the nodes configured)
    ack = "quorum"                   # "leader" (default) or "quorum"
    placement = "standard"           # or a list of holders: public keys (hex) or node ids
    leader_pinned = "<hex or id>"    # optional, must be one of a pinned list
    heartbeat_ms = 150               # leader heartbeat (default 500)
    replicated = true                # false: a local channel of this node only
    max_payload = 1048576            # also retention_max_events, retention_max_bytes,
                                     # retention_max_age_s, fsync, segment_bytes

Relative paths are relative to the directory of the configuration file. Every error
is one :class:`~netmesh.errors.ConfigError` line naming the key, e.g.
``node.toml: peers[1].public_key: must be 64 hex digits (32 bytes), got 'abc'``:
unknown sections and keys, missing keys, wrong types, bad values. :func:`load_secrets`
reads the key and PSK files and refuses them when the group or others may read them
(like ssh and WireGuard refuse such private keys).

``placement = "standard"`` is upstream net-mesh's standard placement
(``PlacementStrategy.standard()``, :mod:`netmesh.replication.placement`): every daemon
opens the channel and announces it; the ``factor`` lowest node ids among the nodes that
announced it hold it (the others stay Idle and store nothing). Adding a host (its
config lists the others, theirs get it by SIGHUP) or removing one (SIGTERM it, remove
it from the others' configs, SIGHUP) changes the set; a quorum channel changes it one
node at a time, a new member catching up as a learner first. A peer that is down but
still configured stays a candidate (``Redex.set_placement_policy(retain=...)``), and
a set smaller than a majority of ``factor`` is never formed, so a crash or a partition
does not shrink a set the way removing the host does.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from netmesh.channel import ChannelName
from netmesh.cluster.rundir import NAME_RULE
from netmesh.config import (
    MAX_REPLICATION_FACTOR,
    PlacementStrategy,
    RedexFileConfig,
    ReplicationConfig,
)
from netmesh.errors import ChannelNameError, ConfigError
from netmesh.identity import EntityKeypair, node_id_of, read_private_file

NODE_KEYS = {
    "bind": True,  # key -> required
    "key_file": True,
    "psk_file": True,
    "data_dir": True,
    "name": False,
    "metrics": False,
    "keepalive_ms": False,
    "session_timeout_ms": False,
    "max_datagram": False,
    "announce_interval_ms": False,
}
PEER_KEYS = {"address": True, "public_key": True}
CHANNEL_KEYS = {
    "name": True,
    "factor": False,
    "ack": False,
    "placement": False,
    "leader_pinned": False,
    "heartbeat_ms": False,
    "replicated": False,
    "max_payload": False,
    "retention_max_events": False,
    "retention_max_bytes": False,
    "retention_max_age_s": False,
    "fsync": False,
    "segment_bytes": False,
}
#: channel keys that are RedexFileConfig fields (the rest describe replication)
FILE_KEYS = (
    "max_payload",
    "retention_max_events",
    "retention_max_bytes",
    "retention_max_age_s",
    "fsync",
    "segment_bytes",
)
DEFAULT_NAME = "default"
DEFAULT_KEEPALIVE_MS = 250
DEFAULT_SESSION_TIMEOUT_MS = 2000
DEFAULT_MAX_DATAGRAM = 1400
DEFAULT_ANNOUNCE_INTERVAL_MS = 1000


@dataclass(frozen=True)
class NodeSection:
    """``[node]``: paths are absolute (resolved against the config file's directory)."""

    bind: tuple[str, int]
    key_file: str
    psk_file: str
    data_dir: str
    name: str = DEFAULT_NAME
    metrics: tuple[str, int] | None = None
    keepalive_ms: int = DEFAULT_KEEPALIVE_MS
    session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS
    max_datagram: int = DEFAULT_MAX_DATAGRAM
    announce_interval_ms: int = DEFAULT_ANNOUNCE_INTERVAL_MS

    @property
    def bind_text(self) -> str:
        return format_addr(self.bind)


@dataclass(frozen=True)
class PeerConfig:
    """One ``[[peers]]`` entry; ``node_id`` is derived from ``public_key``."""

    address: tuple[str, int]
    public_key: bytes
    node_id: int


@dataclass(frozen=True)
class ChannelConfig:
    """One ``[[channels]]`` entry.

    ``replication`` is None for ``replicated = false``; placement is
    ``PlacementStrategy.standard()`` or ``pinned(ids)`` as written (module doc).
    ``options``: RedexFileConfig fields as sorted (key, value) pairs.
    """

    name: str
    replication: ReplicationConfig | None
    options: tuple[tuple[str, Any], ...] = ()

    def options_dict(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass(frozen=True)
class NodeConfig:
    """A whole configuration file (``path``: where it was read from, absolute)."""

    path: str
    node: NodeSection
    peers: tuple[PeerConfig, ...] = ()
    channels: tuple[ChannelConfig, ...] = field(default_factory=tuple)

    def node_ids(self, me: int) -> list[int]:
        """Every node id of the cluster as this file sees it, sorted."""
        return sorted({me, *(p.node_id for p in self.peers)})

    def resolve(self, channel: ChannelConfig, me: int) -> ReplicationConfig | None:
        """The channel's replication as the daemon opens it (None: not replicated):
        standard placement stays ``standard()`` (resolved from announcements at run
        time, module doc), its factor capped at the configured nodes. Raises
        ConfigError if a pinned id is neither this node nor a configured peer."""
        repl = channel.replication
        if repl is None:
            return None
        known = set(self.node_ids(me))
        if repl.placement.kind == "pinned":
            unknown = [n for n in repl.placement.nodes if n not in known]
            if unknown:
                raise ConfigError(
                    f"channel {channel.name!r}: placement names node"
                    f" {format_node_id(unknown[0])}, which is neither this node nor one of its"
                    " peers"
                )
            return repl
        factor = min(repl.factor, len(known))
        return repl if factor == repl.factor else dataclasses.replace(repl, factor=factor)


# -- loading -------------------------------------------------------------------------
def load(path: str | os.PathLike[str]) -> NodeConfig:
    """Read and check a configuration file. Raises ConfigError (one line, naming the
    file and the key) for anything wrong, including a file that cannot be read."""
    name = os.path.abspath(os.fspath(path))
    try:
        with open(name, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{name}: no such configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{name}: not valid TOML: not UTF-8") from None
    try:
        return parse(raw, os.path.dirname(name), name)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def parse(raw: dict[str, Any], base_dir: str, path: str = "<config>") -> NodeConfig:
    """Check a parsed TOML document (relative paths against ``base_dir``)."""
    _keys("", raw, {"node": True, "peers": False, "channels": False})
    node_raw = _table("node", raw["node"])
    node = _node(node_raw, base_dir)
    peers_raw = _array("peers", raw.get("peers", []))
    peers = tuple(_peer(f"peers[{i}]", _table(f"peers[{i}]", p)) for i, p in enumerate(peers_raw))
    seen: dict[int, int] = {}
    addrs: dict[tuple[str, int], int] = {}
    for i, p in enumerate(peers):
        if p.node_id in seen:
            raise ConfigError(f"peers[{i}].public_key: same key as peers[{seen[p.node_id]}]")
        if p.address in addrs:
            raise ConfigError(f"peers[{i}].address: same address as peers[{addrs[p.address]}]")
        if p.address == node.bind:
            raise ConfigError(f"peers[{i}].address: is this node's own node.bind")
        seen[p.node_id] = i
        addrs[p.address] = i
    chans_raw = _array("channels", raw.get("channels", []))
    nodes = 1 + len(peers)
    channels: list[ChannelConfig] = []
    names: dict[str, int] = {}
    for i, c in enumerate(chans_raw):
        ch = _channel(f"channels[{i}]", _table(f"channels[{i}]", c), nodes)
        if ch.name in names:
            raise ConfigError(f"channels[{i}].name: {ch.name!r} is also channels[{names[ch.name]}]")
        names[ch.name] = i
        channels.append(ch)
    return NodeConfig(path, node, peers, tuple(channels))


def load_secrets(cfg: NodeConfig) -> tuple[EntityKeypair, bytes]:
    """The node's keypair and the cluster PSK, read from the files ``cfg`` names.

    ConfigError (naming ``node.key_file`` / ``node.psk_file``) if a file is missing,
    malformed, or readable by the group or others; also if a peer has this node's key.
    """
    try:
        kp = EntityKeypair.load(cfg.node.key_file)
    except FileNotFoundError:
        raise ConfigError(
            f"node.key_file: {cfg.node.key_file} does not exist (make one with"
            f" `netmesh keygen --out {cfg.node.key_file}`)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"node.key_file: {cfg.node.key_file}: {exc.strerror or exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"node.key_file: {exc}") from None
    for i, p in enumerate(cfg.peers):
        if p.node_id == kp.node_id:
            raise ConfigError(f"peers[{i}].public_key: is this node's own key")
    return kp, load_psk(cfg.node.psk_file)


def load_psk(path: str) -> bytes:
    """A PSK file: 32 raw bytes or 64 hex digits (and a newline), mode 0600 or stricter."""
    try:
        data = read_private_file(path, "PSK file", "the cluster key", 200)
    except FileNotFoundError:
        raise ConfigError(
            f"node.psk_file: {path} does not exist (make one with `netmesh psk --out {path}`"
            " and copy it to every node)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"node.psk_file: {path}: {exc.strerror or exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"node.psk_file: {exc}") from None
    if len(data) == 32:
        return data
    text = data.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            pass
    raise ConfigError(f"node.psk_file: {path} must hold 32 bytes (raw or as 64 hex digits)")


# -- sections ------------------------------------------------------------------------
def _node(raw: dict[str, Any], base: str) -> NodeSection:
    _keys("node.", raw, NODE_KEYS)
    bind = parse_addr("node.bind", _str("node.bind", raw["bind"]), allow_port0=True)
    metrics = None
    if "metrics" in raw:
        metrics = parse_addr("node.metrics", _str("node.metrics", raw["metrics"]))
    name = _str("node.name", raw.get("name", DEFAULT_NAME))
    if not NAME_RULE.fullmatch(name):
        raise ConfigError(
            f"node.name: {name!r} must be 1-64 characters of A-Z a-z 0-9 . _ -, starting with"
            " a letter or digit"
        )
    keepalive = _int("node.keepalive_ms", raw.get("keepalive_ms", DEFAULT_KEEPALIVE_MS), 10)
    timeout = _int(
        "node.session_timeout_ms", raw.get("session_timeout_ms", DEFAULT_SESSION_TIMEOUT_MS), 50
    )
    if timeout <= keepalive:
        raise ConfigError(
            f"node.session_timeout_ms: {timeout} must exceed node.keepalive_ms ({keepalive})"
        )
    return NodeSection(
        bind=bind,
        key_file=_path("node.key_file", raw["key_file"], base),
        psk_file=_path("node.psk_file", raw["psk_file"], base),
        data_dir=_path("node.data_dir", raw["data_dir"], base),
        name=name,
        metrics=metrics,
        keepalive_ms=keepalive,
        session_timeout_ms=timeout,
        max_datagram=_int(
            "node.max_datagram", raw.get("max_datagram", DEFAULT_MAX_DATAGRAM), 576, 65000
        ),
        announce_interval_ms=_int(
            "node.announce_interval_ms",
            raw.get("announce_interval_ms", DEFAULT_ANNOUNCE_INTERVAL_MS),
            10,
            60_000,
        ),
    )


def _peer(where: str, raw: dict[str, Any]) -> PeerConfig:
    _keys(f"{where}.", raw, PEER_KEYS)
    addr = parse_addr(f"{where}.address", _str(f"{where}.address", raw["address"]))
    pub = parse_public_key(f"{where}.public_key", raw["public_key"])
    return PeerConfig(addr, pub, node_id_of(pub))


def _channel(where: str, raw: dict[str, Any], nodes: int) -> ChannelConfig:
    _keys(f"{where}.", raw, CHANNEL_KEYS)
    try:
        name = str(ChannelName(_str(f"{where}.name", raw["name"])))
    except ChannelNameError as exc:
        raise ConfigError(f"{where}.name: {exc}") from None
    options: dict[str, Any] = {}
    for key in ("max_payload", "retention_max_events", "retention_max_bytes", "segment_bytes"):
        if key in raw:
            options[key] = _int(f"{where}.{key}", raw[key], 1)
    if "retention_max_age_s" in raw:
        options["retention_max_age_s"] = _number(
            f"{where}.retention_max_age_s", raw["retention_max_age_s"]
        )
    if "fsync" in raw:
        options["fsync"] = _choice(f"{where}.fsync", raw["fsync"], ("never", "batch", "interval"))
    replicated = raw.get("replicated", True)
    if not isinstance(replicated, bool):
        raise ConfigError(f"{where}.replicated: must be true or false, got {replicated!r}")
    repl_keys: list[str] = [k for k in ("factor", "ack", "placement", "leader_pinned") if k in raw]
    if not replicated:
        if repl_keys or "heartbeat_ms" in raw:
            key = (repl_keys or ["heartbeat_ms"])[0]
            raise ConfigError(f"{where}.{key}: means nothing with replicated = false")
        _check_file(where, options, None)
        return ChannelConfig(name, None, tuple(sorted(options.items())))
    repl = _replication(where, raw, nodes)
    _check_file(where, options, repl)
    return ChannelConfig(name, repl, tuple(sorted(options.items())))


def _replication(where: str, raw: dict[str, Any], nodes: int) -> ReplicationConfig:
    ack = _choice(f"{where}.ack", raw.get("ack", "leader"), ("leader", "quorum"))
    kw: dict[str, Any] = {"ack": ack}
    if "heartbeat_ms" in raw:
        kw["heartbeat_ms"] = _int(f"{where}.heartbeat_ms", raw["heartbeat_ms"], 50, 300_000)
    placement = raw.get("placement", "standard")
    if placement == "standard":
        factor = _int(
            f"{where}.factor", raw.get("factor", min(3, nodes)), 1, MAX_REPLICATION_FACTOR
        )
        if factor > nodes:
            raise ConfigError(
                f"{where}.factor: {factor} holders, but only {nodes} nodes are configured"
                " (this node and its peers)"
            )
        kw["factor"] = factor
        kw["placement"] = PlacementStrategy.standard()
    elif isinstance(placement, list) and placement:
        ids = [_node_ref(f"{where}.placement[{i}]", v) for i, v in enumerate(placement)]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"{where}.placement: names a node twice")
        if "factor" in raw and _int(f"{where}.factor", raw["factor"], 1) != len(ids):
            raise ConfigError(f"{where}.factor: must equal the length of {where}.placement")
        kw["factor"] = len(ids)
        kw["placement"] = PlacementStrategy.pinned(ids)
    else:
        raise ConfigError(
            f'{where}.placement: must be "standard" or a non-empty list of public keys (hex)'
            f" or node ids, got {placement!r}"
        )
    if "leader_pinned" in raw:
        lead = _node_ref(f"{where}.leader_pinned", raw["leader_pinned"])
        if kw["placement"].kind != "pinned" or lead not in kw["placement"].nodes:
            raise ConfigError(f"{where}.leader_pinned: must be one of {where}.placement's list")
        kw["leader_pinned"] = lead
    cfg = ReplicationConfig(**kw)
    try:
        cfg.validate()
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return cfg


def _check_file(where: str, options: dict[str, Any], repl: ReplicationConfig | None) -> None:
    # a daemon always persists (path set), so this is the check open_channel will make
    opts = {"fsync": "batch", **options}
    try:
        RedexFileConfig(path="/", replication=repl, **opts).validate()
    except ConfigError as exc:
        msg = str(exc)
        key = next((k for k in (*FILE_KEYS, "ack") if msg.startswith(k)), None)
        if key == "ack" or "quorum" in msg:
            raise ConfigError(f"{where}.fsync: {msg}") from None
        raise ConfigError(f"{where}.{key}: {msg}" if key else f"{where}: {msg}") from None


# -- values --------------------------------------------------------------------------
def parse_addr(key: str, text: str, allow_port0: bool = False) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"{key}: must be 'host:port', got {text!r}")
    p = int(port)
    if not (0 if allow_port0 else 1) <= p <= 65535:
        raise ConfigError(f"{key}: port must be in 1..65535, got {p}")
    return host, p


def format_addr(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_node_id(node_id: int) -> str:
    """The one user-facing form of a node: its node id as ``0x`` and 16 hex digits,
    as ``netmesh keygen`` prints it (``0x00c0ffee00c0ffee``). Where more is known it is
    followed by a qualifier in parentheses (``(node 2)``: index of a local cluster;
    ``(this node)``, ``(10.0.0.1:7411)``: a daemon's view); see :func:`describe_node`."""
    return f"{node_id:#018x}"


def describe_node(
    node_id: int | None,
    *,
    index: int | None = None,
    address: str | None = None,
    this: bool = False,
) -> str:
    """:func:`format_node_id` with what else is known, for messages and tables:
    ``0x… (node 2)``, ``0x… (this node)``, ``0x… (10.0.0.2:7411)``; ``"unknown"`` for
    None."""
    if node_id is None:
        return "unknown"
    extra = [
        *(["this node"] if this else []),
        *([f"node {index}"] if index is not None else []),
        *([address] if address else []),
    ]
    text = format_node_id(node_id)
    return f"{text} ({', '.join(extra)})" if extra else text


def parse_public_key(key: str, value: Any) -> bytes:
    """A public key as 64 hex digits."""
    if isinstance(value, str):
        text = value.strip()
        if len(text) == 64:
            try:
                return bytes.fromhex(text)
            except ValueError:
                pass
    raise ConfigError(f"{key}: must be 64 hex digits (32 bytes), got {value!r}")


def _node_ref(key: str, value: Any) -> int:
    """A node named by its public key (hex) or its node id (integer)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 64:
        return value
    if isinstance(value, str) and len(value.strip()) == 64:
        return node_id_of(parse_public_key(key, value))
    raise ConfigError(f"{key}: must be a public key (64 hex digits) or a node id, got {value!r}")


def _keys(prefix: str, raw: dict[str, Any], schema: dict[str, bool]) -> None:
    for k in raw:
        if k not in schema:
            where = f"[{prefix[:-1]}]" if prefix else "top level"
            raise ConfigError(f"{prefix}{k}: unknown key (known in {where}: {', '.join(schema)})")
    for k, required in schema.items():
        if required and k not in raw:
            raise ConfigError(f"{prefix}{k}: missing")


def _table(key: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: must be a table, got {type(value).__name__}")
    return value


def _array(key: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{key}: must be an array of tables ([[{key}]]), got {value!r}")
    return value


def _str(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: must be a non-empty string, got {value!r}")
    return value


def _path(key: str, value: Any, base: str) -> str:
    text = os.path.expanduser(_str(key, value))
    return os.path.normpath(os.path.join(base, text))


def _int(key: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ConfigError(f"{key}: must be {bound}, got {value}")
    return value


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{key}: must be a positive number, got {value!r}")
    return float(value)


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{key}: must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return str(value)
