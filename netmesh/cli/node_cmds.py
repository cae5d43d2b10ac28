"""``netmesh keygen / psk / node / node-status`` commands (node daemons, one per host).

* ``netmesh keygen --out node.key [--json]``: a new static X25519 keypair (mode 0600);
  prints the public key (hex, for the other nodes' ``[[peers]] public_key``) and the
  node id. ``netmesh keygen --show node.key`` prints them for an existing key file.
* ``netmesh psk --out cluster.psk``: a new 32-byte cluster PSK (64 hex digits, mode
  0600); copy the same file to every node.
* ``netmesh node --config node.toml``: run one node until SIGTERM
  (:mod:`netmesh.cluster.daemon`; SIGHUP reloads peers and channels).
* ``netmesh node-status TARGET``: one node's view. TARGET is the daemon's client
  socket (its ``[node] name``, or a path to the ``.sock``): channels with their ack mode,
  next_seq, commit and leader (``0x<16 hex>`` node id with ``(this node, addr)`` or its
  UDP address); or its metrics address ``host:port`` (``[node]
  metrics``): peers up/down and channels, read from ``/metrics``.

Existing key and PSK files are never overwritten without ``--force``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from netmesh.cluster import control, rundir
from netmesh.cluster.nodeconfig import format_node_id, load_psk
from netmesh.errors import ConfigError, DecodeError, NodeUnresponsive
from netmesh.identity import EntityKeypair

Command = Callable[[str, str], argparse.ArgumentParser]
ADDR = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$")
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def register(command: Command) -> None:
    """Add this module's subcommands (``command(name, help)`` makes a subparser)."""
    kg = command("keygen", "make a node key file (mode 0600); print its public key and node id")
    what = kg.add_mutually_exclusive_group(required=True)
    what.add_argument("--out", metavar="FILE", help="write a new key here")
    what.add_argument("--show", metavar="FILE", help="print the public key of an existing key")
    kg.add_argument(
        "--json",
        action="store_true",
        help='one JSON object {"public_key", "node_id" (int), "node_id_hex" (0x<16 hex>)}',
    )
    kg.add_argument("--force", action="store_true", help="replace an existing --out file")
    kg.set_defaults(func=cmd_keygen)

    ps = command("psk", "make a cluster pre-shared key file (mode 0600; same on every node)")
    ps.add_argument("--out", metavar="FILE", required=True, help="write the PSK here")
    ps.add_argument("--force", action="store_true", help="replace an existing file")
    ps.set_defaults(func=cmd_psk)

    nd = command("node", "run one node daemon from a TOML file until SIGTERM (SIGHUP: reload)")
    nd.add_argument("--config", metavar="FILE", required=True, help="node configuration (TOML)")
    nd.add_argument(
        "--log-level",
        default=os.environ.get("NETMESH_LOG", "INFO").upper(),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log level (stderr)",
    )
    nd.set_defaults(func=cmd_node)

    st = command(
        "node-status",
        "one node daemon's view: TARGET = its client socket name or path, or its metrics host:port",
    )
    st.add_argument("target", metavar="TARGET", help="socket name / .sock path / host:port")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.set_defaults(func=cmd_node_status)


# -- keys ----------------------------------------------------------------------------
def _refuse_existing(path: str, force: bool) -> None:
    if os.path.lexists(path) and not force:
        raise ConfigError(f"{path} exists; not overwriting it without --force")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ConfigError(f"{path}: directory {parent} does not exist")


def cmd_keygen(args: argparse.Namespace) -> int:
    if args.show:
        try:
            kp = EntityKeypair.load(args.show)
        except FileNotFoundError:
            raise ConfigError(f"{args.show}: no such key file") from None
    else:
        _refuse_existing(args.out, args.force)
        kp = EntityKeypair.generate().save(args.out)
    if args.json:
        print(
            json.dumps(
                {
                    "public_key": kp.public_key.hex(),
                    "node_id": kp.node_id,
                    "node_id_hex": format_node_id(kp.node_id),
                }
            )
        )
    else:
        print(f"public_key {kp.public_key.hex()}")
        print(f"node_id    {kp.node_id} ({kp.node_id:#018x})")
    return 0


def cmd_psk(args: argparse.Namespace) -> int:
    _refuse_existing(args.out, args.force)
    text = (os.urandom(32).hex() + "\n").encode()
    tmp = f"{args.out}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, args.out)
    load_psk(args.out)  # what a node will read back
    print(f"wrote {args.out} (32 bytes as hex, mode 0600): copy it to every node")
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    from netmesh.cluster import daemon

    return daemon.run(args.config, args.log_level)


# -- status --------------------------------------------------------------------------
def cmd_node_status(args: argparse.Namespace) -> int:
    target = args.target
    if "/" not in target and ADDR.match(target) and not target.endswith(".sock"):
        view = _from_metrics(target)
    else:
        view = _from_socket(target)
    if args.json:
        print(json.dumps(with_hex_ids(view), sort_keys=True))
        return 0
    _print_view(view)
    return 0


#: JSON keys holding a node id (an int): each gets a ``<key>_hex`` sibling
HEX_KEYS = ("node_id", "leader_id", "peer_id")


def with_hex_ids(value: Any) -> Any:
    """``value`` (JSON-shaped) with ``node_id_hex``/``leader_id_hex`` beside every int
    ``node_id``/``leader_id``: the ``0x<16 hex>`` form the README, logs and tables use
    (:func:`~netmesh.cluster.nodeconfig.format_node_id`); the int stays for programs."""
    if isinstance(value, list):
        return [with_hex_ids(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: with_hex_ids(v) for k, v in value.items()}
    for key in HEX_KEYS:
        v = value.get(key)
        if isinstance(v, int) and not isinstance(v, bool):
            out[f"{key}_hex"] = format_node_id(v)
    return out


def _from_socket(target: str) -> dict[str, Any]:
    path = target if "/" in target or target.endswith(".sock") else rundir.socket_path(target)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5.0)
    try:
        s.connect(path)
    except OSError as exc:
        s.close()
        raise NodeUnresponsive(f"no node daemon answers on {path}: {exc.strerror}") from None
    decoder = control.FrameDecoder()
    try:
        out: dict[str, Any] = {"source": path}
        for req_id, op in enumerate(("hello", "channels"), start=1):
            s.sendall(control.request(req_id, op, {}))
            value = _answer(s, decoder, req_id, op)
            out["node" if op == "hello" else "channels"] = value
        return out
    except (OSError, DecodeError) as exc:
        raise NodeUnresponsive(f"{path}: {exc}") from None
    finally:
        s.close()


def _answer(s: socket.socket, decoder: control.FrameDecoder, req_id: int, op: str) -> Any:
    while True:
        data = s.recv(1 << 20)
        if not data:
            raise NodeUnresponsive("the node closed the connection")
        for msg in decoder.feed(data):
            if msg[0] == control.RESPONSE and msg[1] == req_id:
                if not msg[2]:
                    raise control.error_from_value(msg[3], op)
                return msg[3]


def _from_metrics(addr: str) -> dict[str, Any]:
    url = f"http://{addr}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5.0) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        raise NodeUnresponsive(f"no metrics at {url}: {exc}") from None
    peers: list[dict[str, Any]] = []
    channels: dict[str, dict[str, Any]] = {}
    node: dict[str, Any] = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if not m or line.startswith("#"):
            continue
        name, labels_text, value = m.groups()
        labels = dict(LABEL.findall(labels_text or ""))
        number = float(value)
        node.setdefault("node_id", labels.get("node_id"))
        node.setdefault("name", labels.get("name"))
        if name == "netmesh_peer_up":
            peers.append(
                {"node_id": labels["peer"], "address": labels["address"], "up": number == 1}
            )
        elif name == "netmesh_channel_role" and number == 1:
            channels.setdefault(labels["channel"], {})["role"] = labels["role"]
        elif name.startswith("netmesh_channel_") and "channel" in labels:
            key = name[len("netmesh_channel_") :]
            if key in ("term", "tail_seq", "next_seq", "commit_seq", "replica_lag_events"):
                channels.setdefault(labels["channel"], {})[key] = int(number)
    return {"source": url, "node": node, "peers": peers, "channels": channels}


def _print_view(view: dict[str, Any]) -> None:
    node = view.get("node", {})
    nid = node.get("node_id")
    ident = f" {format_node_id(nid)}" if isinstance(nid, int) else (f" {nid}" if nid else "")
    print(f"node {node.get('name')}{ident} ({view['source']})")
    if "peers" in view:
        for p in view["peers"]:
            print(f"  peer {p['node_id']} {p['address']:<22} {'up' if p['up'] else 'DOWN'}")
        rows = [
            [name, ch.get("role", "-"), ch.get("term", "-"), ch.get("next_seq", "-"),
             ch.get("commit_seq", "-")]
            for name, ch in sorted(view["channels"].items())
        ]  # fmt: skip
        _table(["channel", "role", "term", "next_seq", "commit"], rows)
    else:
        print(f"  pid {node.get('pid')}, {node.get('nodes')} nodes configured")
        rows = [
            [c["name"], c["ack"], c["factor"], c["next_seq"], c["commit"], _leader(c)]
            for c in view["channels"]
        ]
        _table(["channel", "ack", "factor", "next_seq", "commit", "leader"], rows)


def _leader(row: dict[str, Any]) -> str:
    """The leader of a channel row in the one user-facing form (``0x<16 hex>`` with
    ``(this node, addr)`` or ``(addr)``; "unknown")."""
    if row.get("leader_text"):
        return str(row["leader_text"])
    return "unknown" if row.get("leader_id") is None else format_node_id(row["leader_id"])


def _table(header: list[str], rows: list[list[Any]]) -> None:
    if not rows:
        print("  no channels open")
        return
    cells = [header, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
