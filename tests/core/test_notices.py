"""Drop notices in the buffer: ranges recorded with the drop, coalesced, forgotten on PUBACK."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from pathlib import Path

from gateway import logs, notices
from gateway.buffer import SCHEMA_VERSION, Buffer
from gateway.config import BufferSection
from gateway.ingest.payload import DropNotice, classify
from gateway.metrics import Metrics
from gateway.model import Reading
from gateway.notices import DropRange as R


def make(path: Path, **kw: object) -> Buffer:
    cfg = BufferSection(path=path, **kw)  # type: ignore[arg-type]
    return Buffer(cfg, chunk_max=100, metrics=Metrics(), log=logs.get_logger())


def readings(n: int, start: int = 0) -> list[Reading]:
    return [Reading("d1", "m", start + i, 1_700_000_000_000 + i, "V") for i in range(n)]


def seqs(ranges: list[R]) -> set[int]:
    return {s for r in ranges for s in range(r.first, r.last + 1)}


def test_coalesce_joins_adjacent_and_overlapping_ranges_of_one_reason() -> None:
    got = notices.coalesce([R(11, 20, "max_bytes"), R(1, 10, "max_bytes"),
                            R(30, 40, "max_bytes"), R(35, 50, "max_bytes"),
                            R(21, 25, "max_age"), R(52, 60, "max_bytes")])
    assert got == [R(1, 20, "max_bytes"), R(21, 25, "max_age"), R(30, 50, "max_bytes"),
                   R(52, 60, "max_bytes")]
    assert notices.coalesce([]) == []
    # interleaved reasons: each reason's run still joins across the other's
    assert notices.coalesce([R(1, 5, "a"), R(3, 3, "b"), R(6, 9, "a")]) == [
        R(1, 9, "a"), R(3, 3, "b")]


def test_subtract_leaves_what_is_left_to_announce() -> None:
    assert notices.subtract([R(1, 100, "x")], [R(1, 50, "x")]) == [R(51, 100, "x")]
    assert notices.subtract([R(1, 100, "x")], [R(10, 20, "x"), R(30, 40, "x")]) == [
        R(1, 9, "x"), R(21, 29, "x"), R(41, 100, "x")]
    assert notices.subtract([R(1, 10, "x")], [R(1, 10, "y")]) == [R(1, 10, "x")]
    assert notices.subtract([R(5, 10, "x")], [R(1, 20, "x")]) == []


def test_record_coalesces_with_stored_ranges_and_ack_subtracts() -> None:
    db = sqlite3.connect(":memory:")
    notices.create_table(db)
    notices.record(db, [R(1, 10, "max_bytes")])
    sent = notices.pending(db, 100)  # a notice of 1-10 goes out ...
    notices.record(db, [R(11, 30, "max_bytes"), R(31, 40, "max_age")])  # ... drops meanwhile
    assert notices.pending(db, 100) == [R(1, 30, "max_bytes"), R(31, 40, "max_age")]
    notices.acknowledged(db, sent)  # its PUBACK: only 1-10 is forgotten, not the grown row
    assert notices.pending(db, 100) == [R(11, 30, "max_bytes"), R(31, 40, "max_age")]
    notices.record(db, [R(50, 60, "max_bytes"), R(41, 49, "max_bytes")])
    assert notices.pending(db, 100) == [R(11, 30, "max_bytes"), R(31, 40, "max_age"),
                                        R(41, 60, "max_bytes")]
    assert notices.pending(db, 1) == [R(11, 30, "max_bytes")]
    notices.acknowledged(db, notices.pending(db, 100))
    assert notices.pending(db, 100) == []


def test_payload_is_what_the_ingest_reads() -> None:
    ranges = [R(1, 10, "max_bytes"), R(20, 20, "max_age")]
    payload = notices.encode("gw-1", "site-a", ranges)
    assert json.loads(payload) == {"v": 1, "gateway": "gw-1", "site": "site-a", "dropped": [
        {"first": 1, "last": 10, "reason": "max_bytes"},
        {"first": 20, "last": 20, "reason": "max_age"}]}
    assert classify(payload) == DropNotice("gw-1", [(1, 10, "max_bytes"), (20, 20, "max_age")])
    full = notices.encode("g" * 256, "s" * 256,
                          [R(2**62 + i * 3, 2**62 + i * 3 + 1, "max_bytes")
                           for i in range(notices.MAX_RANGES)])
    assert len(full) < 16_384  # a full notice fits any broker's packet limit
    assert notices.notice_topic("parkgate/{site}/{gateway}/{device}", "s", "g") == \
        "parkgate/s/g/dropped"


async def test_size_cap_records_exactly_the_dropped_seqs(tmp_path: Path) -> None:
    buf = make(tmp_path / "b.db", max_bytes="64KiB")
    await buf.open()
    for i in range(20):
        buf.add(readings(100, start=i * 100))
        await buf.flush()
    assert buf.drops_changed.is_set()
    kept = {c_seq for c in await buf.fetch(0, None, 100_000)
            for c_seq in range(c.first, c.last + 1)}
    ranges = await buf.pending_drops(1000)
    dropped = buf.metrics.registry.get_sample_value("parkgate_buffer_dropped_total",
                                                    {"reason": "max_bytes"})
    assert ranges == [R(1, ranges[0].last, "max_bytes")]  # oldest first, one coalesced range
    assert seqs(ranges) == set(range(1, 2001)) - kept
    assert len(seqs(ranges)) == dropped
    await buf.close()
    again = make(tmp_path / "b.db", max_bytes="64KiB")  # durable: still there after reopen
    await again.open()
    assert await again.pending_drops(1000) == ranges
    await again.drops_sent(ranges)
    assert await again.pending_drops(1000) == []
    await again.close()


async def test_max_age_drops_are_recorded_with_their_reason(tmp_path: Path) -> None:
    buf = make(tmp_path / "b.db", max_age="1ms")
    await buf.open()
    buf.add(readings(10))
    await buf.flush()
    await asyncio.sleep(0.01)
    buf.add(readings(1))
    await buf.flush()
    (got,) = await buf.pending_drops(10)  # the 11th may be older than 1 ms by then too
    assert (got.first, got.reason) == (1, "max_age") and got.last >= 10
    assert got.count == buf.metrics.registry.get_sample_value(
        "parkgate_buffer_dropped_total", {"reason": "max_age"})
    await buf.close()


async def test_record_dropped_is_durable_and_coalesces_a_repeat(tmp_path: Path) -> None:
    buf = make(tmp_path / "b.db")
    await buf.open()
    assert not buf.drops_changed.is_set()
    await buf.record_dropped([], "too_large")
    assert not buf.drops_changed.is_set()
    await buf.record_dropped([(5, 5), (7, 9)], "too_large")
    assert buf.drops_changed.is_set()
    # the chunk was sent again after a crash before its ack: the same seqs, recorded once
    await buf.record_dropped([(5, 5), (6, 6)], "too_large")
    await buf.close()
    again = make(tmp_path / "b.db")
    await again.open()
    assert await again.pending_drops(10) == [R(5, 9, "too_large")]
    await again.close()


async def test_schema_1_buffer_is_migrated_with_its_readings(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE chunks (first INTEGER PRIMARY KEY, last INTEGER NOT NULL,"
               " device TEXT NOT NULL, accepted INTEGER NOT NULL, body TEXT NOT NULL)")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    db.execute("INSERT INTO chunks VALUES (1, 1, 'd1', 1, '{\"seq\":1}')")
    db.execute("INSERT INTO meta VALUES ('next_seq', 2)")
    db.execute("PRAGMA user_version=1")
    db.close()
    buf = make(path)
    await buf.open()
    assert (await buf.stats()).readings == 1
    assert await buf.pending_drops(10) == []
    await buf.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    assert db.execute("SELECT count(*) FROM dropped").fetchone()[0] == 0
    db.close()


async def test_sender_caps_ranges_per_notice_and_keeps_refused_ones(tmp_path: Path) -> None:
    buf = make(tmp_path / "b.db")
    await buf.open()
    # every other run of 100 seqs dropped: 250 ranges that cannot coalesce, > MAX_RANGES
    firsts = list(range(1, 50_000, 200))
    await buf.record_dropped([(f, f + 99) for f in firsts[:100]], "too_large")
    await buf.record_dropped([(f, f + 99) for f in firsts[100:]], "max_age")
    assert len(await buf.pending_drops(1000)) == 250
    sent: list[tuple[str, dict[str, object]]] = []
    answers = ["Quota exceeded"]  # the broker refuses the first one

    async def publish(topic: str, payload: bytes) -> str | None:
        sent.append((topic, json.loads(payload)))
        return answers.pop() if answers else None

    metrics = buf.metrics
    sender = notices.NoticeSender(buf, "t/s/g/dropped", gateway="g", site="s",
                                  log=logs.get_logger(), sent=metrics.uplink_drop_notices)
    task = asyncio.create_task(sender.run(publish))
    try:
        async with asyncio.timeout(10):
            while await buf.pending_drops(1):
                await asyncio.sleep(0.05)
        assert [len(m["dropped"]) for _t, m in sent] == [  # type: ignore[arg-type]
            notices.MAX_RANGES, notices.MAX_RANGES, 250 - notices.MAX_RANGES]
        assert sent[0] == sent[1]  # the refused notice went again, unchanged
        assert metrics.registry.get_sample_value("parkgate_uplink_drop_notices_total") == 2
        got = {s for _t, m in sent[1:] for r in m["dropped"]  # type: ignore[attr-defined]
               for s in range(r["first"], r["last"] + 1)}
        assert len(got) == 250 * 100
        # a new drop wakes the sender
        await buf.record_dropped([(101, 200)], "too_large")
        async with asyncio.timeout(5):
            while len(sent) < 4:
                await asyncio.sleep(0.05)
        assert sent[3][1]["dropped"] == [{"first": 101, "last": 200, "reason": "too_large"}]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await buf.close()


async def test_sender_stops_when_its_publish_swallows_the_cancellation(tmp_path: Path) -> None:
    """The PUBACK and the stop in one loop iteration: aiomqtt's wait_for (3.11) returns the
    ack and drops the cancellation; the sender records the notice and still ends."""
    buf = make(tmp_path / "b.db")
    await buf.open()
    await buf.record_dropped([(5, 9)], "too_large")
    acks: list[asyncio.Future[None]] = []

    async def publish(topic: str, payload: bytes) -> str | None:
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        acks.append(ack)
        await asyncio.wait_for(ack, 10)  # as aiomqtt waits for a PUBACK
        return None

    sender = notices.NoticeSender(buf, "t/s/g/dropped", gateway="g", site="s",
                                  log=logs.get_logger(), sent=buf.metrics.uplink_drop_notices)
    task = asyncio.create_task(sender.run(publish))
    try:
        async with asyncio.timeout(5):
            while not acks:
                await asyncio.sleep(0.01)
        acks[0].set_result(None)
        task.cancel()  # no await in between
        done, _ = await asyncio.wait({task}, timeout=3.0)
        assert task in done, "the sender went on waiting for drops after it was cancelled"
        assert task.cancelled()
        if sys.version_info < (3, 12):  # the ack got through: the notice is not sent twice
            assert await buf.pending_drops(10) == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await buf.close()
