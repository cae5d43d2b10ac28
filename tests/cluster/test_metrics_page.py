"""Metrics pages on real shared memory (issue 15 §4): any number of channels (the page
grows and readers remap), channel entries rewritten only when they change, refresh
within a CPU budget, and snapshots that say when they are stale."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from netmesh.cluster.metrics_page import PAGE_BYTES, W_WRITES, MetricsPage, SnapshotWriter
from netmesh.cluster.snapshot import STALE_MIN_S, is_stale, node_entry, with_totals


@pytest.fixture
def pages() -> Iterator[tuple[MetricsPage, MetricsPage]]:
    writer = MetricsPage.create(f"/netmesh-test-{secrets.token_hex(4)}-metrics")
    reader = MetricsPage.attach(writer.name)
    try:
        yield writer, reader
    finally:
        reader.close()
        writer.close()
        import posix_ipc

        posix_ipc.unlink_shared_memory(writer.name)


@dataclass
class Chan:
    name: str
    next_seq: int = 0


def test_a_snapshot_larger_than_the_page_grows_it_and_readers_follow(
    pages: tuple[MetricsPage, MetricsPage],
) -> None:
    writer, reader = pages
    channels = {f"channel-number-{i:06d}": {"next_seq": i, "term": 3} for i in range(20_000)}
    assert writer.write({"node": 0, "channels": channels}, now=5.0)
    assert writer.size > PAGE_BYTES and writer.dropped == 0
    got = reader.read()
    assert got is not None and got["channels"] == channels and got["node"] == 0
    assert reader.size == writer.size and reader.heartbeat == 5.0
    assert got["heartbeat_at"] == 5.0


def test_only_changed_channels_are_rebuilt_and_the_blob_rewritten_on_change(
    pages: tuple[MetricsPage, MetricsPage],
) -> None:
    writer, reader = pages
    sw = SnapshotWriter(writer, period=0.1, budget=1.0, share=1.0)
    chans = [Chan(f"c{i}") for i in range(1000)]
    built: list[str] = []

    def entry(c: Chan) -> dict[str, int]:
        built.append(c.name)
        return {"next_seq": c.next_seq}

    def publish(now: float) -> None:
        assert sw.publish({"node": 1}, chans, lambda c: c.name, lambda c: c.next_seq, entry, now)

    publish(1.0)
    assert len(built) == 1000 and writer._words[W_WRITES] == 1
    built.clear()
    publish(1.1)  # nothing changed: no entry rebuilt, the channels blob not rewritten
    assert built == [] and writer._words[W_WRITES] == 1
    got = reader.read()
    assert got is not None and reader.heartbeat == 1.1  # but the heartbeat advanced
    chans[7].next_seq = 42
    publish(1.2)
    assert built == ["c7"] and writer._words[W_WRITES] == 2
    got = reader.read()
    assert got is not None and got["channels"]["c7"] == {"next_seq": 42}
    assert got["channels_sampled_since"] == 1.2  # every entry refreshed at 1.2
    del chans[7]  # a closed channel leaves the page
    publish(1.3)
    got = reader.read()
    assert got is not None and "c7" not in got["channels"] and len(got["channels"]) == 999


def test_refresh_stays_within_its_budget_and_covers_every_channel_in_passes(
    pages: tuple[MetricsPage, MetricsPage],
) -> None:
    writer, reader = pages
    # 16 entries per publish at least, a pass as soon as the previous one is done
    sw = SnapshotWriter(writer, period=0.1, budget=0.0, share=1.0)
    chans = [Chan(f"c{i}") for i in range(64)]
    built: list[str] = []

    def entry(c: Chan) -> dict[str, int]:
        built.append(c.name)
        return {"next_seq": c.next_seq}

    for k in range(4):
        sw.publish({}, chans, lambda c: c.name, lambda c: None, entry, now=float(k))
        # at most 16 new channels and 16 of the pass per publish: the budget holds
        assert len(built) <= 32 * (k + 1)
    got = reader.read()
    assert got is not None and len(got["channels"]) == 64
    assert got["channels_sampled_since"] == 0.0  # the pass begun at 0.0 covered all 64
    assert set(built) == {c.name for c in chans}


def test_staleness_is_reported_not_hidden() -> None:
    assert is_stale(None, 0.1, 10.0)
    assert not is_stale(10.0, 0.1, 10.0 + STALE_MIN_S / 2)
    assert is_stale(10.0, 0.1, 10.0 + STALE_MIN_S + 0.01)
    assert not is_stale(10.0, 1.0, 15.0)  # ten periods of 1 s
    proc = {"cpu_percent": 0.0, "rss_bytes": 0}
    page = {"heartbeat_at": 100.0, "period": 0.1, "channels": {}}
    fresh = node_entry(0, 1, 2, True, None, page, proc, now=100.05)
    old = node_entry(1, 1, 2, True, None, page, proc, now=103.0)
    dead = node_entry(2, 1, 2, False, -9, page, proc, now=100.05)
    unknown = node_entry(3, 1, 2, True, None, page, proc)
    assert fresh["stale"] is False and fresh["age_s"] == pytest.approx(0.05)
    assert old["stale"] is True and old["age_s"] == pytest.approx(3.0)
    assert dead["stale"] is True
    assert unknown["stale"] is None
    assert with_totals([fresh, old, dead])["totals"]["stale"] == 2


def test_passes_are_paced_to_their_cpu_share(pages: tuple[MetricsPage, MetricsPage]) -> None:
    writer, reader = pages
    sw = SnapshotWriter(writer, period=0.1, budget=1.0, share=1e-6)
    chans = [Chan(f"c{i}") for i in range(100)]
    built: list[str] = []

    def entry(c: Chan) -> dict[str, int]:
        built.append(c.name)
        return {"next_seq": c.next_seq}

    sw.publish({}, chans, lambda c: c.name, lambda c: c.next_seq, entry, now=1.0)
    assert len(built) == 100
    chans[0].next_seq = 1
    # the pass cost >= 1 us at a share of 1e-6: no new pass for a second or more
    sw.publish({"n": 1}, chans, lambda c: c.name, lambda c: c.next_seq, entry, now=1.5)
    assert len(built) == 100
    got = reader.read()
    assert got is not None and got["n"] == 1 and reader.heartbeat == 1.5  # top and heartbeat
    assert got["channels"]["c0"] == {"next_seq": 0}


def test_a_channel_opened_between_passes_is_on_the_page_at_once(
    pages: tuple[MetricsPage, MetricsPage],
) -> None:
    writer, reader = pages
    sw = SnapshotWriter(writer, period=0.1, budget=1.0, share=1e-6)  # passes far apart
    chans = [Chan(f"c{i}") for i in range(100)]

    def publish(now: float) -> dict:
        sw.publish({}, chans, lambda c: c.name, lambda c: c.next_seq, lambda c: {}, now=now)
        got = reader.read()
        assert got is not None
        return got["channels"]

    assert len(publish(1.0)) == 100
    chans.append(Chan("new"))
    assert "new" in publish(1.1)
