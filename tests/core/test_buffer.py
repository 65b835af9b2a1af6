"""The durable buffer against real SQLite files."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest

from gateway import logs
from gateway.buffer import Buffer, ChunkEncoder
from gateway.config import BufferSection
from gateway.metrics import Metrics
from gateway.model import Reading


def make(path: Path, **kw: object) -> Buffer:
    cfg = BufferSection(path=path, **kw)  # type: ignore[arg-type]
    return Buffer(cfg, chunk_max=100, metrics=Metrics(), log=logs.get_logger())


def readings(n: int, device: str = "d1", start: int = 0) -> list[Reading]:
    return [Reading(device, f"m{i % 7}", start + i, 1_700_000_000_000 + i, "V")
            for i in range(n)]


async def all_items(buf: Buffer) -> list[dict[str, object]]:
    chunks = await buf.fetch(0, None, 100_000)
    return [item for c in chunks for item in json.loads("[" + c.body + "]")]


def sample(buf: Buffer, name: str, **labels: str) -> float:
    value = buf.metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


async def test_seq_assigned_in_order_and_kept_across_reopen(tmp_path: Path) -> None:
    buf = make(tmp_path / "b.db")
    await buf.open()
    buf.add(readings(250, "d1"))
    buf.add(readings(30, "d2"))
    await buf.flush()
    items = await all_items(buf)
    assert [i["seq"] for i in items] == list(range(1, 281))
    assert [i["value"] for i in items if i["device"] == "d1"] == list(range(250))
    chunks = await buf.fetch(0, None, 100)
    assert [c.count for c in chunks] == [100, 100, 50, 30]  # chunk_max 100, one device each
    await buf.close()

    again = make(tmp_path / "b.db")
    await again.open()
    assert again.next_seq == 281
    assert (await again.stats()).readings == 280  # nothing acknowledged: all resent
    again.add(readings(5))
    await again.flush()
    assert [i["seq"] for i in await all_items(again)][-5:] == [281, 282, 283, 284, 285]
    await again.close()


async def test_ack_deletes_only_acknowledged_chunks(tmp_path: Path) -> None:
    buf = make(tmp_path / "b.db")
    await buf.open()
    buf.add(readings(300))
    await buf.flush()
    chunks = await buf.fetch(0, None, 10)
    buf.ack([chunks[0].first, chunks[2].first])
    await buf.flush()
    left = await buf.fetch(0, None, 10)
    assert [c.first for c in left] == [chunks[1].first]
    stats = await buf.stats()
    assert stats.readings == 100
    assert sample(buf, "parkgate_buffer_readings") == 100
    await buf.close()


async def test_readings_outside_counts_other_devices(tmp_path: Path) -> None:
    """What the shutdown drain asks when only refused devices' readings may be left."""
    buf = make(tmp_path / "b.db")
    await buf.open()
    buf.add(readings(250, "d1"))
    buf.add(readings(30, "d2"))
    await buf.flush()
    assert await buf.readings_outside([]) == 280
    assert await buf.readings_outside(["d1"]) == 30
    assert await buf.readings_outside(["d1", "d2", "gone"]) == 0
    await buf.close()


async def test_deleted_buffer_restarts_above_every_issued_seq(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    buf = make(path)
    await buf.open()
    buf.add(readings(500))
    await buf.flush()
    issued = buf.next_seq - 1
    await buf.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)

    fresh = make(path)
    await fresh.open()
    assert fresh.next_seq > issued
    fresh.add(readings(1))
    await fresh.flush()
    assert (await all_items(fresh))[0]["seq"] > issued  # type: ignore[operator]
    await fresh.close()


async def test_corrupt_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    buf = make(path)
    await buf.open()
    buf.add(readings(400))
    await buf.flush()
    issued = buf.next_seq - 1
    await buf.close()
    data = bytearray(path.read_bytes())
    data[0:100] = b"\xff" * 100  # destroy the header
    path.write_bytes(bytes(data))

    again = make(path)
    await again.open()
    assert sample(again, "parkgate_buffer_corruptions_total") == 1
    aside = list(tmp_path.glob("b.db.corrupt-*"))
    assert aside, "the corrupt file must be kept for inspection"
    assert again.next_seq > issued
    again.add(readings(3))
    await again.flush()
    assert (await again.stats()).readings == 3
    await again.close()


async def test_size_cap_drops_oldest_and_counts(tmp_path: Path) -> None:
    buf = make(tmp_path / "b.db", max_bytes="64KiB")
    await buf.open()
    for i in range(20):
        buf.add(readings(100, start=i * 100))
        await buf.flush()
    stats = await buf.stats()
    assert stats.bytes <= 64 * 1024
    dropped = sample(buf, "parkgate_buffer_dropped_total", reason="max_bytes")
    assert dropped > 0
    assert stats.readings + dropped == 2000  # every reading is either kept or counted
    items = await all_items(buf)
    assert items[-1]["value"] == 1999  # the newest are kept
    assert [i["seq"] for i in items] == sorted(i["seq"] for i in items)  # type: ignore[type-var]
    await buf.close()


async def test_max_age_drops_old_chunks(tmp_path: Path) -> None:
    buf = make(tmp_path / "b.db", max_age="1ms")
    await buf.open()
    buf.add(readings(10))
    await buf.flush()
    import asyncio

    await asyncio.sleep(0.01)
    buf.add(readings(1))
    await buf.flush()
    assert sample(buf, "parkgate_buffer_dropped_total", reason="max_age") >= 10
    await buf.close()


async def test_disk_full_keeps_readings_and_recovers(tmp_path: Path) -> None:
    buf = make(tmp_path / "b.db")
    await buf.open()
    buf.add(readings(10))
    await buf.flush()
    store = buf._store
    pages = await buf._call(lambda: store.db.execute("PRAGMA page_count").fetchone()[0])  # type: ignore[union-attr]
    await buf._call(lambda: store.db.execute(f"PRAGMA max_page_count={pages}"))  # type: ignore[union-attr]
    buf.add(readings(5000, start=10))
    await buf.flush()
    assert sample(buf, "parkgate_buffer_write_errors_total") >= 1
    assert (await buf.stats()).pending == 5000  # kept in memory, not lost
    assert (await buf.stats()).readings == 10
    # polls go on while writes fail: no backpressure wait until the next retry
    buf.add(readings(buf.high_water, start=5010))
    async with asyncio.timeout(1):
        await buf.wait_for_room()
    total = 5010 + buf.high_water
    await buf._call(lambda: store.db.execute("PRAGMA max_page_count=1000000"))  # type: ignore[union-attr]
    await buf.flush()
    items = await all_items(buf)
    assert [i["value"] for i in items] == list(range(total))
    assert [i["seq"] for i in items] == list(range(1, total + 1))
    await buf.close()


def test_encoder_matches_json_and_handles_odd_values() -> None:
    rs = [Reading("d", "m", 1.5, 1, "V"), Reading("d", 'q"x', math.nan, 2),
          Reading("d", "b", True, 3, None, "uncertain"), Reading("d", "s", "héllo", 4),
          Reading("d", "n", None, 5, quality="bad"), Reading("d", "i", -math.inf, 6),
          Reading("d", "o", b"x", 7)]
    out = json.loads("[" + ChunkEncoder().encode(10, rs) + "]")
    assert out[0] == {"seq": 10, "device": "d", "metric": "m", "value": 1.5, "unit": "V",
                      "ts": 1, "quality": "good"}
    assert (out[1]["metric"], out[1]["value"], out[1]["quality"]) == ('q"x', None, "bad")
    assert (out[2]["value"], out[2]["quality"]) == (True, "uncertain")
    assert out[3]["value"] == "héllo"
    assert out[4]["value"] is None
    assert (out[5]["value"], out[5]["quality"]) == (None, "bad")
    assert out[6]["value"] == "b'x'"
    assert [o["seq"] for o in out] == list(range(10, 17))


@pytest.mark.parametrize("synchronous", ["full", "normal"])
async def test_wal_mode_and_schema_version(tmp_path: Path, synchronous: str) -> None:
    import sqlite3

    buf = make(tmp_path / "b.db", synchronous=synchronous)
    await buf.open()
    buf.add(readings(3))
    await buf.flush()
    db = sqlite3.connect(tmp_path / "b.db")
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    finally:
        db.close()
    await buf.close()


async def test_malformed_readings_from_a_buggy_driver_do_not_stop_the_buffer(
        tmp_path: Path) -> None:
    buf = make(tmp_path / "b.db")
    await buf.open()
    buf.add([Reading("d", "ok", 1.5, None), Reading("d", ["list"], 1, 5)])  # type: ignore[arg-type]
    buf.add([Reading("e", "m", 2, 6, None, "excellent")])  # type: ignore[arg-type]
    buf.add(readings(3, "f"))
    await buf.flush()
    items = await all_items(buf)  # valid JSON throughout
    assert [(i["device"], i["quality"]) for i in items] == [
        ("d", "bad"), ("d", "bad"), ("e", "bad"), ("f", "good"), ("f", "good"), ("f", "good")]
    assert items[1]["metric"] == "['list']"
    assert isinstance(items[0]["ts"], int)
    await buf.close()


async def test_flush_ends_while_readings_keep_arriving(tmp_path: Path) -> None:
    """Readings that arrive during every commit must not hold a flush (or its lock) forever.

    When `flush()` waited for an empty queue, the commit loop held the flush lock for as
    long as devices produced faster than one commit took, and everything else that flushed
    waited: bench/pipeline.py at full speed delivered nothing. Here each SQLite commit (in
    the buffer's thread) lets 100 new readings arrive on the loop, as a flood does.
    """
    buf = make(tmp_path / "b.db", commit_readings=500)
    await buf.open()
    loop = asyncio.get_running_loop()
    store = buf._store
    commit = store.commit
    arrived = [0]

    def commit_during_a_flood(*args: Any) -> Any:
        loop.call_soon_threadsafe(buf.add, readings(100, start=arrived[0]))
        arrived[0] += 100
        return commit(*args)

    store.commit = commit_during_a_flood  # type: ignore[method-assign]
    buf.add(readings(2000))
    async with asyncio.timeout(10):
        await buf.flush()
    stats = await buf.stats()
    assert stats.next_seq > 2000  # what was pending at the start is committed
    assert stats.pending > 0  # what arrived meanwhile waits for the next commit
    store.commit = commit  # type: ignore[method-assign]
    await buf.flush()
    assert (await buf.stats()).pending == 0
    await buf.close()
