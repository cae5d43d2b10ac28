"""``netmesh publish / tail / channels``: real events in and out of a named cluster.

They are clients (:func:`netmesh.connect`): they work against any ``netmesh up
--name N`` (default ``default``) or node daemon of the same user.

* ``publish CHANNEL [FILE|-]``: one event per input line (``lines``: the line's bytes
  without its newline; ``jsonl``: the line, checked to be one JSON value; ``csv``: each
  row as one JSON object keyed by the header). Prints the last seq, the count and the
  rate. A malformed line stops it with a one-line error naming the line, after the
  lines before it were published and acknowledged. After a leader change the events
  the old leader had not acknowledged are sent again and counted (at-least-once: use
  an idempotent producer where duplicates matter, issue 12).
* ``tail CHANNEL --durable GROUP --ack``: as a member of a consumer group, acknowledging
  each event once printed; ``--durable`` without ``--ack`` is refused (exit 2): a member
  that never acknowledges would stall and have the group dead-letter the channel.
* ``tail CHANNEL [--from SEQ | --last N] [--follow]``: each payload on its own line
  exactly as published (``raw``), or one JSON object per event (``json``: seq and
  payload, as text when it is UTF-8, else base64). Without ``--follow`` it stops at the
  current end, so ``publish < f`` then ``tail --from 0`` reproduces ``f``.
* ``channels``: name, factor, ack mode, next_seq, commit and leader of every channel (the
  leader as ``0x<node id>`` with ``(node i)`` in a cluster, its UDP address from a
  daemon; ``--json`` has ``leader_id``/``leader_id_hex``/``leader_address`` too).
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import IO, Any, Literal

from netmesh.channel import ChannelName
from netmesh.cli.node_cmds import with_hex_ids
from netmesh.client.client import Client, ClientProducer, connect
from netmesh.errors import ChannelNotOpen, ConfigError, NetmeshError, NotLeader, PayloadTooLarge

Command = Callable[[str, str], argparse.ArgumentParser]
#: how a node daemon outside a channel's replica set names its leader (daemon.py)
OUTSIDE = "not a member "
BATCH = 512


def register(command: Command) -> None:
    """Add ``publish``, ``tail`` and ``channels``."""
    pub = command("publish", "publish one event per input line to a channel of a named cluster")
    pub.add_argument("channel", metavar="CHANNEL")
    pub.add_argument("file", nargs="?", default="-", metavar="FILE", help="input ('-': stdin)")
    pub.add_argument("--name", default="default", metavar="N", help="cluster name")
    pub.add_argument(
        "--format", choices=["lines", "jsonl", "csv"], default="lines", help="input format"
    )
    pub.set_defaults(func=cmd_publish)
    tail = command("tail", "print a channel's events (and follow it with --follow)")
    tail.add_argument("channel", metavar="CHANNEL")
    tail.add_argument("--name", default="default", metavar="N", help="cluster name")
    where = tail.add_mutually_exclusive_group()
    where.add_argument(
        "--from",
        dest="from_seq",
        type=_seq,
        default=None,
        metavar="SEQ",
        help="first seq (default: the current end with --follow, else 0)",
    )
    where.add_argument(
        "--last", type=_seq, default=None, metavar="N", help="start N events before the current end"
    )
    tail.add_argument("--follow", action="store_true", help="keep printing new events")
    tail.add_argument(
        "--durable",
        default=None,
        metavar="GROUP",
        help="read as a member of this consumer group (implies --follow; needs --ack)",
    )
    tail.add_argument(
        "--ack",
        action="store_true",
        help="with --durable (required there): acknowledge each event once printed; a"
        " member that never acknowledged would stall after max_ack_pending events and get"
        " them again every ack_wait until they are dead-lettered",
    )
    tail.add_argument("--format", choices=["raw", "json"], default="raw", help="output format")
    tail.set_defaults(func=cmd_tail)
    cons = command("consumers", "list a channel's consumer groups")
    cons.add_argument("channel", metavar="CHANNEL")
    cons.add_argument("--name", default="default", metavar="N", help="cluster name")
    cons.set_defaults(func=cmd_consumers)
    ch = command("channels", "list the channels of a named cluster")
    ch.add_argument("--name", default="default", metavar="N", help="cluster name")
    ch.add_argument("--json", action="store_true", help="one JSON object per channel")
    ch.set_defaults(func=cmd_channels)


def _seq(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


# -- publish --------------------------------------------------------------------------
def _open_input(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as exc:
        raise ConfigError(f"cannot read {path!r}: {exc.strerror or exc}") from None


def _events(fh: IO[bytes], fmt: str) -> Iterator[tuple[int, bytes]]:
    """(line number, payload) per input record; ConfigError naming a malformed line."""
    if fmt == "csv":
        text = io.TextIOWrapper(fh, encoding="utf-8", errors="strict", newline="")
        try:
            reader = csv.reader(text)
            header = next(reader, None)
            if header is None:
                return
            for row in reader:
                if len(row) != len(header):
                    raise ConfigError(
                        f"line {reader.line_num}: {len(row)} fields, the header has {len(header)}"
                    )
                obj = dict(zip(header, row, strict=True))
                yield reader.line_num, json.dumps(obj, separators=(",", ":")).encode()
        except UnicodeDecodeError as exc:
            raise ConfigError(f"input is not UTF-8 text: {exc}") from None
        except csv.Error as exc:
            raise ConfigError(f"line {reader.line_num}: {exc}") from None
        return
    for n, line in enumerate(fh, start=1):
        payload = line[:-1] if line.endswith(b"\n") else line
        if payload.endswith(b"\r"):
            payload = payload[:-1]
        if fmt == "jsonl":
            try:
                json.loads(payload)
            except ValueError as exc:
                raise ConfigError(f"line {n}: not JSON ({exc})") from None
        yield n, payload


class _Publisher:
    """Batches into a ClientProducer; resends what a leader change left unacknowledged."""

    def __init__(self, producer: ClientProducer) -> None:
        self.p = producer
        self.batch: list[bytes] = []
        self.lines: list[int] = []  # the input line of each batched event
        self.count = 0
        self.resent = 0
        self.last_seq: int | None = None

    def add(self, payload: bytes, line: int = 0) -> None:
        self.batch.append(payload)
        self.lines.append(line)
        if len(self.batch) >= BATCH:
            self.flush()

    def flush(self) -> None:
        pending, self.batch = self.batch, []
        lines, self.lines = self.lines, []
        for _attempt in range(20):
            if not pending:
                return
            try:
                self.p.append_batch(pending)
                self.last_seq = self.p.flush()
                self.count += len(pending)
                return
            except PayloadTooLarge as exc:  # the whole batch was refused: say so
                n = next((n for n, p in zip(lines, pending, strict=False) if len(p) > exc.limit), 0)
                raise BadInput(
                    f"line {n}: payload of {exc.size} bytes exceeds the channel's limit of"
                    f" {exc.limit} bytes; nothing of its batch (lines {lines[0]}-{lines[-1]})"
                    " was published"
                    + (f"; {_published(self.count, self.last_seq)} before" if self.count else "")
                ) from None
            except NotLeader as exc:
                if getattr(exc, "final", False):  # a node daemon whose leader is elsewhere
                    lost = min(len(pending), int(getattr(exc, "unacknowledged", len(pending))))
                    self.count += len(pending) - lost
                    raise
                lost = min(len(pending), int(getattr(exc, "unacknowledged", len(pending))))
                done = len(pending) - lost
                self.count += done
                pending = pending[done:]
                self.resent += lost
        raise NotLeader(self.p.channel)


def cmd_publish(args: argparse.Namespace) -> int:
    fh = _open_input(args.file)
    t0 = time.perf_counter()
    with connect(args.name) as cl:
        _channel_exists(cl, args.channel)
        with cl.producer(args.channel) as producer:
            pub = _Publisher(producer)
            try:
                for n, payload in _events(fh, args.format):
                    pub.add(payload, n)
            except NotLeader as exc:  # a daemon's leader moved to another host
                if pub.count:
                    last = f" (seqs up to {pub.last_seq})" if pub.last_seq is not None else ""
                    exc.args = (f"{exc}; {_published(pub.count, None)} before{last}",)
                raise
            except KeyboardInterrupt:  # Ctrl-C: how far it got, then exit 130
                print(f"netmesh publish: interrupted; {_published(pub.count, pub.last_seq)}",
                      file=sys.stderr)  # fmt: skip
                return 130
            except ConfigError as exc:
                pub.flush()
                if pub.count == 0:
                    raise  # nothing was published: a usage error (exit 2)
                n = pub.count
                last = f" (seqs up to {pub.last_seq})" if pub.last_seq is not None else ""
                raise BadInput(
                    f"{exc}; the {_events_text(n)} before it {'was' if n == 1 else 'were'}"
                    f" published{last}"
                ) from None
            finally:
                if fh is not sys.stdin.buffer:
                    fh.close()
            try:
                pub.flush()
            except NotLeader as exc:
                if pub.count:
                    exc.args = (f"{exc}; {_published(pub.count, None)} before",)
                raise
            except KeyboardInterrupt:  # Ctrl-C while the last batch was acknowledged
                print(f"netmesh publish: interrupted; {_published(pub.count, pub.last_seq)}",
                      file=sys.stderr)  # fmt: skip
                return 130
    took = max(time.perf_counter() - t0, 1e-9)
    last = "-" if pub.last_seq is None else str(pub.last_seq)
    note = f", {pub.resent} resent after a leader change" if pub.resent else ""
    print(
        f"published {_events_text(pub.count)} to {args.channel}: last seq {last},"
        f" {pub.count / took:,.0f} events/s{note}"
    )
    return 0


def _events_text(n: int) -> str:
    """``1 event``, ``2 events``."""
    return f"{n} event" + ("" if n == 1 else "s")


def _published(n: int, last_seq: int | None) -> str:
    """``3 events were published (seqs up to 41)`` / ``1 event was published``."""
    upto = "" if last_seq is None or n == 0 else f" (seqs up to {last_seq})"
    return f"{_events_text(n)} {'was' if n == 1 else 'were'} published{upto}"


class BadInput(NetmeshError):
    """Malformed input after some events were already published (exit 1, not 2: the
    message says how many went in)."""


# -- tail -----------------------------------------------------------------------------
def _channel_exists(cl: Client, channel: str) -> Any:
    ChannelName(channel)  # a malformed name is ChannelNameError (exit 2), not "not open"
    for info in cl.channels():
        if info.name == channel:
            return info
    names = ", ".join(i.name for i in cl.channels()) or "none"
    raise ChannelNotOpen(f"channel {channel!r} is not open in cluster {cl.name!r} (open: {names})")


def cmd_tail(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    if args.ack and args.durable is None:  # acknowledging is a consumer group's
        print("netmesh tail: error: --ack requires --durable GROUP", file=sys.stderr)
        return 2
    if args.durable is not None and not args.ack:
        # a group member that never acknowledges stalls, is redelivered every ack_wait
        # and dead-letters the channel (issue 12 trial): refuse it, like a usage error
        print(
            "netmesh tail: --durable needs --ack (a group member must acknowledge what it"
            " prints, or the group redelivers and dead-letters it)",
            file=sys.stderr,
        )
        return 2
    with connect(args.name) as cl:
        info = _channel_exists(cl, args.channel)
        if info.leader_text.startswith(OUTSIDE):  # a node daemon outside its replica set
            raise ChannelNotOpen(
                f"node daemon {args.name!r} does not hold {args.channel!r}"
                f" (its {info.leader_text[len(OUTSIDE) :].strip('()')})"
            )
        end = info.commit if info.ack == "quorum" else info.next_seq
        if args.last is not None:
            start: int | Literal["earliest", "latest"] = max(0, end - args.last)
        elif args.from_seq is not None:
            start = args.from_seq
        else:
            start = "latest" if args.follow else 0
        if args.durable is not None:
            with cl.subscribe(args.channel, durable=args.durable) as sub:
                for ev in sub:
                    _write(out, ev.entry.seq, ev.payload, args.format)
                    out.flush()
                    if args.ack:
                        sub.ack(ev)
            return 0
        if args.follow:
            with cl.subscribe(args.channel, from_seq=start) as sub:
                for ev in sub:
                    _write(out, ev.entry.seq, ev.payload, args.format)
                    if not sub._buf:
                        out.flush()
            return 0
        assert isinstance(start, int)
        seq = start
        while seq < end:
            events = cl.read_range(args.channel, seq, min(end, seq + 65536))
            if not events:
                break
            for ev in events:
                _write(out, ev.entry.seq, ev.payload, args.format)
            seq = events[-1].entry.seq + 1
        out.flush()
    return 0


def _write(out: IO[bytes], seq: int, payload: bytes, fmt: str) -> None:
    if fmt == "raw":
        out.write(payload + b"\n")
        return
    try:
        obj: dict[str, Any] = {"seq": seq, "payload": payload.decode("utf-8")}
    except UnicodeDecodeError:
        obj = {"seq": seq, "payload_b64": base64.b64encode(payload).decode()}
    out.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")


# -- consumers ------------------------------------------------------------------------
def cmd_consumers(args: argparse.Namespace) -> int:
    with connect(args.name) as cl:
        _channel_exists(cl, args.channel)
        groups = cl.consumers(args.channel)
    print(
        f"{'group':<16} {'members':>7} {'pending':>8} {'acked through':>13} {'redelivered':>11}"
        f" {'dead':>6}"
    )
    for g in groups:
        print(
            f"{g['group']:<16} {g['members']:>7} {g['pending']:>8,} "
            f"{g['acknowledged_through']:>13,} {g['redelivered']:>11,} {g['dead_lettered']:>6,}"
        )
    return 0


# -- channels -------------------------------------------------------------------------
def cmd_channels(args: argparse.Namespace) -> int:
    with connect(args.name) as cl:
        infos = cl.channels()
    if args.json:
        for i in infos:
            print(json.dumps(with_hex_ids({**i.__dict__, "groups": list(i.groups)})))
        return 0
    rows = [(i, "-" if i.leader is None else i.leader_text) for i in infos]
    head = f"{'channel':<24} {'factor':>6} {'ack':<7} {'next_seq':>10} {'commit':>10}  leader"
    print(head)
    for i, leader in rows:
        print(f"{i.name:<24} {i.factor:>6} {i.ack:<7} {i.next_seq:>10,} {i.commit:>10,}  {leader}")
        for g in i.groups:
            print(
                f"  group {g['group']}: {g['members']} members, {g['pending']} pending,"
                f" acknowledged through {g['acknowledged_through']:,},"
                f" {g['redelivered']} redelivered, {g['dead_lettered']} dead-lettered"
            )
    return 0
