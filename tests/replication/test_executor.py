"""The one output executor: order, ServeSync round trip, fail-stop storage, resync on a
moved log end, crash points at output boundaries (tested with the simulation's storage)."""

from __future__ import annotations

import pathlib
import re

import pytest

from netmesh.config import PlacementStrategy, ReplicationConfig
from netmesh.log.hardstate import HardState
from netmesh.replication.coordinator import (
    Apply,
    Output,
    ReplicationCoordinator,
    RoleChanged,
    SaveHardState,
    Send,
)
from netmesh.replication.executor import CrashPoint, ExecutorHooks, OutputExecutor
from netmesh.replication.messages import Message
from netmesh.replication.roles import ReplicaRole, TransitionSignal
from netmesh.testing.sim import MemoryStorage

A, B = 10, 20
R, S = ReplicaRole, TransitionSignal


class Recorder(ExecutorHooks):
    def __init__(self, crash_at: tuple[CrashPoint, type] | None = None) -> None:
        self.crash_at = crash_at
        self.seen: list[tuple[str, object]] = []

    def crash_point(self, when: CrashPoint, out: Output) -> bool:
        self.seen.append((when, type(out)))
        return self.crash_at == (when, type(out))

    def on_failed(self, exc: BaseException, out: Output | None) -> None:
        self.seen.append(("failed", type(out)))

    def on_role(self, change: RoleChanged) -> None:
        self.seen.append(("role", change.new))


class FailingStorage(MemoryStorage):
    def __init__(self, fail: str) -> None:
        super().__init__()
        self.fail = fail
        self.calls = 0

    def save_hard_state(self, state: HardState) -> None:
        self.calls += 1
        if self.fail == "save":
            raise OSError(28, "No space left on device")
        super().save_hard_state(state)


def leader_executor(
    storage: MemoryStorage, hooks: ExecutorHooks
) -> tuple[OutputExecutor, list[tuple[int, Message]]]:
    cfg = ReplicationConfig(factor=2, heartbeat_ms=100, placement=PlacementStrategy.pinned([A, B]))
    coord = ReplicationCoordinator(A, cfg, [A, B])
    sent: list[tuple[int, Message]] = []
    ex = OutputExecutor(coord, storage, lambda to, m: sent.append((to, m)), lambda: 0.0, hooks)
    return ex, sent


def campaign(ex: OutputExecutor) -> list[Output]:
    c = ex.coord
    out = c.transition_to(R.REPLICA, S.CAPABILITY_SELECTED, 0.0)
    return out + c.transition_to(R.CANDIDATE, S.MISSED_HEARTBEATS, 0.0)


def test_save_precedes_sends_and_everything_runs_in_order() -> None:
    hooks = Recorder()
    storage = MemoryStorage()
    ex, sent = leader_executor(storage, hooks)
    outs = campaign(ex)
    kinds = [type(o) for o in outs]
    assert kinds.index(SaveHardState) < kinds.index(Send)
    ex.run(outs)
    assert storage.hard_state.term == ex.coord.term and storage.hard_state.voted_for == A
    assert [m for _, m in sent] and not ex.stopped
    befores = [k for w, k in hooks.seen if w == "before"]
    assert befores == kinds, "every output meets a crash point before it, in order"


def test_a_failed_save_stops_the_channel_and_nothing_is_sent() -> None:
    hooks = Recorder()
    storage = FailingStorage("save")
    ex, sent = leader_executor(storage, hooks)
    ex.run(campaign(ex))
    assert sent == [], "the vote request must not leave after a save that failed"
    assert isinstance(ex.failed, OSError) and ex.storage_errors == 1
    assert ex.coord.role is R.FAILED
    assert ("failed", SaveHardState) in hooks.seen and ("role", R.FAILED) in hooks.seen
    calls = storage.calls
    ex.run(ex.coord.tick(10.0))  # FAILED: no timer runs, nothing is written or sent
    ex.run(campaign_again := [SaveHardState(HardState(99))])
    assert campaign_again and storage.calls == calls and sent == []
    assert [w for w, _ in hooks.seen].count("failed") == 1, "logged once"


@pytest.mark.parametrize("when", ["before", "after"])
def test_crash_point_stops_at_the_boundary(when: CrashPoint) -> None:
    hooks = Recorder(crash_at=(when, SaveHardState))
    storage = MemoryStorage()
    ex, sent = leader_executor(storage, hooks)
    ex.run(campaign(ex))
    assert ex.crashed and sent == []
    saved = storage.hard_state
    assert (saved is not None and saved.term > 0) is (when == "after")


def test_out_of_order_apply_resyncs_the_coordinator() -> None:
    storage = MemoryStorage(log=[b"x", b"y"])
    ex, _ = leader_executor(storage, ExecutorHooks())
    ex.run([Apply(0, (b"a",), 0)])  # the log moved on under the coordinator
    assert ex.resyncs == 1 and not ex.stopped
    assert ex.coord.tail_seq == 2 and storage.log == [b"x", b"y"]


def test_one_implementation_of_output_execution() -> None:
    """Only executor.py dispatches on output types (grep for the pattern); the
    coordinator, which builds the outputs, only orders them for durability."""
    root = pathlib.Path(__file__).resolve().parents[2] / "netmesh"
    pattern = re.compile(r"isinstance\(\w+, (Apply|Truncate|SaveHardState|ServeSync|Send)\b")
    owners = sorted(
        str(p.relative_to(root)) for p in root.rglob("*.py") if pattern.search(p.read_text())
    )
    assert owners == ["replication/coordinator.py", "replication/executor.py"], owners
    coord = (root / "replication/coordinator.py").read_text()
    assert len(pattern.findall(coord)) == 2  # _order_for_durability: Truncate | Apply


def test_a_hook_exception_is_a_bug_not_a_storage_failure() -> None:
    """Only storage calls fail the channel; the shell's own exceptions (or the
    simulation's invariant checks in hooks) propagate to the caller."""

    class Broken(ExecutorHooks):
        def on_role(self, change: RoleChanged) -> None:
            raise AssertionError("invariant")

    ex, _ = leader_executor(MemoryStorage(), Broken())
    with pytest.raises(AssertionError, match="invariant"):
        ex.run(campaign(ex))
    assert ex.failed is None and ex.storage_errors == 0
