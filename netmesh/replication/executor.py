"""The ONE executor of coordinator outputs (pure: storage and network come in as objects).

Theory of operation
-------------------
:class:`~netmesh.replication.coordinator.ReplicationCoordinator` returns work; this
module does it, in list order, before the next input (etcd's Ready loop, ``doc.go``
steps 1-4, flattened). The same :class:`OutputExecutor` runs in the node
(``ChannelRuntime``: a :class:`~netmesh.log.file.RedexFile` and a MeshNode) and in the
simulation (``SimCluster``: an in-memory log and a simulated network), so every
simulated seed exercises the code that ships (DESIGN.md, "the simulator runs the
shipped shell"; wireguard-go runs one test over fake and real sockets).

Outputs and what executing them means:

* ``Apply`` -> :meth:`LogStorage.append` (the first event must get ``first_seq``;
  the log records the batch's ``term``);
* ``ApplyRecords`` -> ``append_records(first_seq, count, records, runs)`` of a storage
  that offers ``read_records``/``append_records`` (a RedexFile on disk): the leader's
  batch records, checked and appended as they are (OutOfOrder refuses the chunk);
* ``Truncate`` -> :meth:`LogStorage.truncate`; a log that then ends anywhere but
  ``from_seq`` is resynced (rule 2);
* ``ResetLog`` -> :meth:`LogStorage.reset` (a replica behind the leader's retained
  head restarts its log there; a storage that cannot raises NotImplementedError,
  which is counted in ``gaps_unfilled`` and resynced: the coordinator has already
  backed off, so nothing spins);
* ``SaveHardState`` -> :meth:`LogStorage.save_hard_state` (durable before anything
  after it leaves the node);
* ``Send`` -> the ``send(to, msg)`` callable (network errors are the callable's to
  count; a lost datagram is normal);
* ``ServeSync`` -> for a request, ``read_records(from_seq, max_bytes, tail)`` when
  the storage has it and ``from_seq`` starts a record (whole records, handed to
  :meth:`~ReplicationCoordinator.serve_records`); else ``read_bytes(from_seq, end,
  max_bytes)`` when the storage has it (already trimmed; a RedexFile answers with one
  :class:`~netmesh.log.packed.PackedPayloads`, no object per event) or
  :meth:`LogStorage.read`, trimmed to ``max_bytes`` (at least one event), handed back to
  :meth:`~ReplicationCoordinator.serve` (with the retained head when retention already
  dropped ``from_seq``); its outputs run next, before the rest of the list;
* ``CommitAdvanced`` -> :meth:`LogStorage.set_retention_floor` with the coordinator's
  ``retention_floor`` (quorum mode: retention never removes events a majority does
  not hold yet), then :meth:`ExecutorHooks.on_commit`;
* ``RoleChanged`` -> :meth:`ExecutorHooks.on_role`.

Rules:

1. **Fail-stop storage** (h11's ERROR state; etcd and PostgreSQL treat a failed fsync
   as fatal). Any exception a storage call raises, except :class:`OutOfOrder` (below)
   and :class:`Closed`, moves the executor to FAILED: the rest of the list is dropped
   (an Ack or a vote must not leave after a log change or a save that did not
   happen), the coordinator is told (:meth:`~ReplicationCoordinator.storage_failed`:
   role FAILED, it sends nothing more), ``storage_errors`` counts it,
   :meth:`ExecutorHooks.on_failed` is called once (the shell logs it once), and every
   later :meth:`run` does nothing. Only a reopen (a new coordinator and executor over
   the recovered log) leaves FAILED. Exceptions from ``send`` and the hooks are the
   shell's own bugs (or the simulation's invariant checks) and propagate.
2. ``OutOfOrder`` from an append (or a truncate that left another end) means the
   coordinator's idea of the log's end is stale (a local append raced a role change):
   the rest of the list is dropped and the coordinator is told the real ``next_seq``
   (:meth:`~ReplicationCoordinator.applied`); the next input retries. Counted in
   ``resyncs``. (The coordinator has already planned the outputs after a Truncate on
   the truncated log, so it is told only when the log disagrees: telling it the
   intermediate end would undo the Apply that follows.)
3. **Durability before acknowledgement** (Raft §5.3: a follower answers only after its
   log is on stable storage; etcd sends a Ready's messages after persisting its
   entries). A storage that writes before it syncs (group commit: ``durable_seq`` below
   ``next_seq`` for a moment, see :mod:`netmesh.log.commit`) makes the executor hold
   every Send that claims a durable log position -- an ``Ack`` and the ``tail_seq`` of
   a non-leader ``Heartbeat`` -- until ``durable_seq`` reaches it; held Sends leave in
   order when the storage calls back (``watch_durable``). Other Sends (a SyncRequest
   for the next chunk) go at once, so catch-up overlaps the fsync. A failed sync fails
   the executor (rule 1) and drops what it held. A storage without ``durable_seq`` is
   durable when a call returns.
4. **Crash points.** ``hooks.crash_point(when, out)`` is asked before (``"before"``)
   and after (``"after"``) every output. ``True`` means the process died there: the
   executor stops for good (``crashed``), leaving storage exactly as a power cut at
   that boundary would. The simulation places crashes at every output boundary
   through it; the runtime never crashes on purpose.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Literal, Protocol, TypeVar

from netmesh.errors import Closed, OutOfOrder
from netmesh.log.hardstate import Epoch, HardState
from netmesh.replication.coordinator import (
    Apply,
    ApplyRecords,
    CommitAdvanced,
    Output,
    ReplicationCoordinator,
    ResetLog,
    RoleChanged,
    SaveHardState,
    Send,
    ServeSync,
    Truncate,
)
from netmesh.replication.messages import Ack, Heartbeat, Message
from netmesh.replication.roles import ReplicaRole

#: events read per ServeSync before trimming to ``max_bytes`` (a 1 MiB push of 64 B
#: events is 16384 of them)
READ_CHUNK = 16384

CrashPoint = Literal["before", "after"]


class LogStorage(Protocol):
    """What the executor needs from a channel's log and hard state.

    Every method may raise OSError (or a netmesh error the shell's storage uses, e.g.
    StorageFailed); see rule 1 of the module docstring for what follows.
    """

    @property
    def next_seq(self) -> int:
        """Seq the next appended event gets (= events ever held)."""
        ...

    @property
    def epochs(self) -> tuple[Epoch, ...] | None:
        """``(term, first_seq)`` runs of the held events, rebuilt from the log's own
        records on open; None for a log that does not record terms."""
        ...

    def append(self, first_seq: int, payloads: Sequence[bytes], term: int) -> None:
        """Append ``payloads`` written in ``term``; the first gets ``first_seq`` (else
        raise OutOfOrder)."""
        ...

    def truncate(self, from_seq: int) -> int:
        """Drop events with seq >= ``from_seq``; return how many were dropped."""
        ...

    def read(self, from_seq: int, end_seq: int) -> tuple[list[bytes], int]:
        """Held payloads with ``from_seq <= seq < end_seq`` and the seq of the first one
        (above ``from_seq`` when retention dropped the head)."""
        ...

    def save_hard_state(self, state: HardState) -> None:
        """Persist ``state`` durably (temp file, fsync, rename, fsync the directory)."""
        ...

    def reset(self, first_seq: int, prev_term: int) -> None:
        """Discard every event; the next one appended gets ``first_seq``; the event
        before it had term ``prev_term``. NotImplementedError if the log cannot."""
        ...

    def set_retention_floor(self, seq: int | None) -> None:
        """Retention must keep every event with seq >= ``seq`` (None: no floor)."""
        ...


class ExecutorHooks:
    """Notifications from the executor to its shell; every method defaults to a no-op."""

    def crash_point(self, when: CrashPoint, out: Output) -> bool:
        """Return True to die at this output boundary (simulation only)."""
        return False

    def on_apply(self, out: Apply) -> None:
        """Called before ``out`` is appended (the runtime's latency probe reads it)."""

    def on_truncated(self, from_seq: int, dropped: int) -> None:
        """``dropped`` divergent events from ``from_seq`` on were discarded."""

    def on_behind_retention(self, to: int, from_seq: int, head: int) -> None:
        """Follower ``to`` asked from ``from_seq``, below the retained head ``head``."""

    def on_gap(self, out: ResetLog, skipped: int, done: bool) -> None:
        """This replica restarts its log at ``out.first_seq`` (``done``), skipping
        ``skipped`` events it never held, or could not (its log cannot restart)."""

    def on_commit(self, commit_seq: int) -> None:
        """Events below ``commit_seq`` are held by a majority."""

    def on_role(self, change: RoleChanged) -> None:
        """The coordinator changed role."""

    def on_failed(self, exc: BaseException, out: Output | None) -> None:
        """Storage failed executing ``out`` (None: outside the executor, e.g. a local
        append); called once, when the executor stops."""

    def on_resync(self, exc: BaseException, out: Output) -> None:
        """``out`` met a log whose end moved (rule 2); the coordinator was resynced."""


class OutputExecutor:
    """Executes one channel's coordinator outputs over ``storage`` and ``send``.

    Args:
        coord: the channel's coordinator (its ``serve``/``applied``/``storage_failed``
            inputs are called back from here).
        storage: the log and hard state (:class:`LogStorage`).
        send: ``send(to_node_id, message)``; encoding and transport are its business.
        clock: current time in seconds (the coordinator's clock).
        hooks: notifications (:class:`ExecutorHooks`; default: none).
    """

    def __init__(
        self,
        coord: ReplicationCoordinator,
        storage: LogStorage,
        send: Callable[[int, Message], None],
        clock: Callable[[], float],
        hooks: ExecutorHooks | None = None,
    ) -> None:
        self.coord = coord
        self.storage = storage
        self.send = send
        self.clock = clock
        self.hooks = hooks or ExecutorHooks()
        #: the storage error that stopped this executor (rule 1), or None
        self.failed: BaseException | None = None
        #: a crash point fired (rule 3): nothing more runs
        self.crashed = False
        self.storage_errors = 0
        self.resyncs = 0
        self.behind_retention = 0
        self.gaps_unfilled = 0
        #: Sends waiting for durability (rule 3): (durable seq needed, send), in order
        self._held: deque[tuple[int, Send]] = deque()
        self.held_total = 0
        storage.set_retention_floor(coord.retention_floor)
        watch = getattr(storage, "watch_durable", None)
        if watch is not None:
            watch(self.durable_advanced)

    @property
    def stopped(self) -> bool:
        return self.failed is not None or self.crashed

    def run(self, outputs: Sequence[Output]) -> None:
        """Execute ``outputs`` in order (and the outputs their execution produces)."""
        pending: deque[Output] = deque(outputs)
        hooks = self.hooks
        while pending and not self.stopped:
            out = pending.popleft()
            if hooks.crash_point("before", out):
                self.crashed = True
                return
            try:
                more = self._execute(out)
            except Closed:
                return  # the channel is closing: nothing after this matters
            except OutOfOrder as exc:
                self.resyncs += 1
                hooks.on_resync(exc, out)
                pending = deque(self.coord.applied(self.storage.next_seq, self.storage.epochs))
                continue
            except _StorageError as err:  # fail-stop (rule 1)
                self._fail(err.cause, out)
                return
            if hooks.crash_point("after", out):
                self.crashed = True
                return
            pending.extendleft(reversed(more))

    def _execute(self, out: Output) -> list[Output]:
        """Do one output; return the outputs it produced (to run next)."""
        storage = self.storage
        if isinstance(out, Send):
            need = _claims_durable(out.msg)
            if self._held or (need is not None and need > _durable(storage)):
                if need is None:
                    self.send(out.to, out.msg)  # claims nothing: no need to wait
                else:
                    self._held.append((need, out))
                    self.held_total += 1
                    self.durable_advanced()
            else:
                self.send(out.to, out.msg)
        elif isinstance(out, Apply):
            self.hooks.on_apply(out)
            _store(storage.append, out.first_seq, out.payloads, out.term)
        elif isinstance(out, ApplyRecords):
            _store(_append_records(storage), out.first_seq, out.count, out.records, out.runs)
        elif isinstance(out, SaveHardState):
            _store(storage.save_hard_state, out.state)
        elif isinstance(out, Truncate):
            dropped = _store(storage.truncate, out.from_seq)
            if self._held:  # claims beyond the new end will never hold: drop them, or
                # they block every later Ack and heartbeat behind them (rule 3 is FIFO)
                self._held = deque(h for h in self._held if h[0] <= out.from_seq)
            if dropped:
                self.hooks.on_truncated(out.from_seq, dropped)
            if self.storage.next_seq != out.from_seq:  # e.g. retention held a later head
                raise OutOfOrder(
                    f"truncated to {out.from_seq}, the log ends at {self.storage.next_seq}"
                )
        elif isinstance(out, ServeSync):
            return self._serve(out)
        elif isinstance(out, ResetLog):
            return self._reset(out)
        elif isinstance(out, CommitAdvanced):
            _store(storage.set_retention_floor, self.coord.retention_floor)
            self.hooks.on_commit(out.commit_seq)
        elif isinstance(out, RoleChanged):
            self.hooks.on_role(out)
        return []

    def _reset(self, out: ResetLog) -> list[Output]:
        skipped = out.first_seq - self.storage.next_seq
        try:
            _store(self.storage.reset, out.first_seq, out.prev_term)
        except NotImplementedError:
            self.gaps_unfilled += 1
            self.hooks.on_gap(out, skipped, done=False)
            return self.coord.applied(self.storage.next_seq, self.storage.epochs)
        self.hooks.on_gap(out, skipped, done=True)
        return []

    def _serve(self, out: ServeSync) -> list[Output]:
        read_records = getattr(self.storage, "read_records", None)
        if read_records is not None and out.request_id:  # raw catch-up (issue 15 §5)
            got = _store(read_records, out.from_seq, out.max_bytes, self.coord.tail_seq)
            if got is not None:
                count, records, payload_bytes = got
                return self.coord.serve_records(out, count, records, payload_bytes, self.clock())
        read_bytes = getattr(self.storage, "read_bytes", None)
        payloads: Sequence[bytes]
        if read_bytes is not None:  # reads what the chunk sends (trimmed), packed
            payloads, first = _store(
                read_bytes, out.from_seq, out.from_seq + READ_CHUNK, out.max_bytes
            )
        else:
            payloads, first = _store(self.storage.read, out.from_seq, out.from_seq + READ_CHUNK)
        if first != out.from_seq:
            self.behind_retention += 1
            self.hooks.on_behind_retention(out.to, out.from_seq, first)
            return self.coord.serve(out, [], self.clock(), head=first)
        if read_bytes is None:
            size, n = 0, 0
            for p in payloads:
                size += len(p)
                if n and size > out.max_bytes:
                    break
                n += 1
            payloads = payloads[:n]
        return self.coord.serve(out, payloads, self.clock())

    def durable_advanced(self) -> None:
        """The storage's ``durable_seq`` moved (or it failed): send the held Sends it
        now covers, in order (rule 3); a failed storage stops the executor."""
        held = self._held
        if not held:
            return
        if self.stopped:
            held.clear()
            return
        failed = getattr(self.storage, "failed", None)
        if failed is not None:
            held.clear()
            self._fail(failed, None)
            return
        durable = _durable(self.storage)
        while held and held[0][0] <= durable:
            out = held.popleft()[1]
            self.send(out.to, out.msg)

    def fail(self, exc: BaseException) -> None:
        """Storage failed outside the executor (the shell's own append path): stop the
        same way (rule 1). No-op once stopped."""
        if not self.stopped:
            self._fail(exc, None)

    def _fail(self, exc: BaseException, out: Output | None) -> None:
        self.failed = exc
        self._held.clear()  # nothing claims durability after a failed storage
        self.storage_errors += 1
        self.hooks.on_failed(exc, out)
        for note in self.coord.storage_failed(self.clock()):
            if isinstance(note, RoleChanged):
                self.hooks.on_role(note)


def _append_records(storage: LogStorage) -> Callable[..., None]:
    """``storage.append_records(first_seq, count, records, runs)``: the checked raw
    append (OutOfOrder refuses a chunk whose CRCs, seqs or terms do not hold, and the
    coordinator is resynced, rule 2). A storage without it never asked for records."""
    op: Callable[..., None] | None = getattr(storage, "append_records", None)
    if op is None:
        raise OutOfOrder("this log takes no raw records")
    return op


def _claims_durable(msg: Message) -> int | None:
    """The log position ``msg`` tells its receiver is durable here, or None (rule 3)."""
    if isinstance(msg, Ack):
        return msg.tail_seq
    if isinstance(msg, Heartbeat) and msg.role is not ReplicaRole.LEADER:
        return msg.tail_seq
    return None


def _durable(storage: LogStorage) -> int:
    d: int | None = getattr(storage, "durable_seq", None)
    return storage.next_seq if d is None else d


class _StorageError(Exception):
    """Carries an exception a storage call raised (rule 1), apart from the shell's own
    (hooks and ``send`` raise only bugs, which propagate to the caller)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(repr(cause))
        self.cause = cause


_T = TypeVar("_T")


def _store(op: Callable[..., _T], *args: object) -> _T:
    """Call a storage operation; anything it raises but OutOfOrder (rule 2), Closed and
    NotImplementedError (a log that cannot restart) is a storage failure."""
    try:
        return op(*args)
    except (OutOfOrder, Closed, NotImplementedError):
        raise
    except Exception as exc:
        raise _StorageError(exc) from exc
