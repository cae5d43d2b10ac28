"""The one-event fast path of RedexFile.append (issue 17 §3) keeps every check of
append_batch: size limit, closed, refusal, idempotence envelope, listener, tails,
terms, retention, copies of mutable payloads."""

from __future__ import annotations

import asyncio

import pytest

from netmesh.config import RedexFileConfig
from netmesh.errors import Closed, NotLeader, PayloadTooLarge
from netmesh.log.file import ENVELOPE, RedexFile


def test_fast_appends_match_the_batch_path() -> None:
    f, g = RedexFile("fast/a"), RedexFile("fast/b")
    events = [bytes([i % 256]) * (i % 50) for i in range(500)]
    assert [f.append(e) for e in events] == list(range(500))
    g.append_batch(events)
    assert f.read_payloads(0, 500) == g.read_payloads(0, 500)
    assert f.retained_bytes == g.retained_bytes and len(f) == len(g) == 500
    assert f.epochs == g.epochs == ((0, 0),)
    assert [e.entry.payload_len for e in f.read_range(490, 500)] == list(map(len, events[490:]))


def test_the_size_limit_and_a_closed_file_still_refuse() -> None:
    f = RedexFile("fast/c", RedexFileConfig(max_payload=10))
    f.append(b"x")  # on the fast path from here
    with pytest.raises(PayloadTooLarge):
        f.append(b"y" * 11)
    assert f.next_seq == 1
    f.close()
    with pytest.raises(Closed):
        f.append(b"z")


def test_a_refusal_set_after_fast_appends_is_raised() -> None:
    f = RedexFile("fast/d")
    f.append(b"a")
    f.refusal = NotLeader("fast/d", 7)
    with pytest.raises(NotLeader):
        f.append(b"b")
    f.refusal = None
    assert f.append(b"c") == 1


def test_the_listener_is_called_and_terms_are_stamped() -> None:
    f = RedexFile("fast/e")
    f.append(b"a")
    calls: list[int] = []

    def listener() -> None:
        calls.append(f.next_seq)

    f.on_append = listener
    f.append(b"b")
    f.append(b"c")  # pending: one call per burst
    assert calls == [2]
    f.on_append = None
    f.append_term = 5
    f.append(b"d")
    f.append(b"e")
    assert f.epochs == ((0, 0), (5, 3)) and f.term_at(4) == 5


def test_idempotence_envelopes_and_mutable_payloads() -> None:
    f = RedexFile("fast/f", RedexFileConfig(idempotence=True))
    f.append(b"a")
    raw, _ = f.read_payloads(0, 1)
    assert len(raw[0]) == ENVELOPE.size + 1 and f.read_published(0, 1)[0] == [b"a"]
    g = RedexFile("fast/g")
    g.append(b"warm")
    buf = bytearray(b"abc")
    g.append(buf)  # type: ignore[arg-type]
    buf[0] = ord("X")
    assert g.read_payloads(1, 2)[0] == [b"abc"], "a mutable payload is copied"


def test_retention_still_applies_to_single_appends() -> None:
    f = RedexFile("fast/h", RedexFileConfig(retention_max_events=3))
    for i in range(10):
        f.append(b"%d" % i)
    assert f.first_retained_seq == 7 and f.read_payloads(0, 10)[0] == [b"7", b"8", b"9"]


def test_a_tail_waiting_is_woken_by_single_appends() -> None:
    async def main() -> list[bytes]:
        f = RedexFile("fast/i")
        f.append(b"0")
        got: list[bytes] = []

        async def follow() -> None:
            async for ev in f.tail(0):
                got.append(ev.payload)
                if len(got) == 3:
                    return

        task = asyncio.create_task(follow())
        await asyncio.sleep(0)  # the tail backfills and waits
        f.append(b"1")
        await asyncio.sleep(0)
        f.append(b"2")
        await asyncio.wait_for(task, 5)
        return got

    assert asyncio.run(main()) == [b"0", b"1", b"2"]
