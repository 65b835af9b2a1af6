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
from gateway.buffer import seqfile as buffer_module
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
    stats = await buf.stats()
    assert (stats.readings, stats.chunks) == (280, 4)
    assert stats.oldest_age_seconds is not None and 0 <= stats.oldest_age_seconds < 60
    await asyncio.sleep(0.02)  # at least 10 ms old: seconds, not milliseconds
    await buf.refresh_gauges()
    assert 0.01 <= sample(buf, "parkgate_buffer_oldest_age_seconds") < 60
    # the uplink's reads: a range, and one device's chunks (a re-read after a refusal)
    assert [c.first for c in await buf.fetch(101, 251, 100)] == [101, 201]
    assert [(c.device, c.first) for c in await buf.fetch(0, None, 100, "d2")] == [("d2", 251)]
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
    # chunks of 10 readings (~1 KB): small next to the cap, so the hysteresis shows
    buf = Buffer(BufferSection(path=tmp_path / "b.db", max_bytes="64KiB"),  # type: ignore[arg-type]
                 chunk_max=10, metrics=Metrics(), log=logs.get_logger())
    await buf.open()
    dropped_before = 0.0
    for i in range(20):
        buf.add(readings(100, start=i * 100))
        await buf.flush()
        size = (await buf.stats()).bytes
        assert size <= 64 * 1024  # after every commit, not only at the end
        dropped_now = sample(buf, "parkgate_buffer_dropped_total", reason="max_bytes")
        if dropped_now > dropped_before:  # hysteresis: down to 95%, not one chunk per commit
            assert size <= 0.95 * 64 * 1024, (i, size)
        dropped_before = dropped_now
    stats = await buf.stats()
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
          Reading("d", "o", b"x", 7), Reading("d", "f", False, 8)]
    out = json.loads("[" + ChunkEncoder().encode(10, rs) + "]")
    assert out[0] == {"seq": 10, "device": "d", "metric": "m", "value": 1.5, "unit": "V",
                      "ts": 1, "quality": "good"}
    assert (out[1]["metric"], out[1]["value"], out[1]["quality"]) == ('q"x', None, "bad")
    assert (out[2]["value"], out[2]["quality"]) == (True, "uncertain")
    assert out[3]["value"] == "héllo"
    assert out[4]["value"] is None
    assert (out[5]["value"], out[5]["quality"]) == (None, "bad")
    assert out[6]["value"] == "b'x'"
    assert out[7]["value"] is False
    assert [o["seq"] for o in out] == list(range(10, 18))


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


def _mode(path: Path) -> int:
    return path.lstat().st_mode & 0o777


async def test_buffer_files_are_created_owner_only_outside_systemd(tmp_path: Path) -> None:
    """Readings may be private (meter data, locations): no other user reads the files.

    The umask is cleared so the test proves the buffer sets the mode itself, as it must
    when an engineer runs `parkgate run` from a shell rather than under the unit's UMask.
    """
    import os

    old = os.umask(0)
    try:
        buf = make(tmp_path / "b.db")
        await buf.open()
        buf.add(readings(10))
        await buf.flush()
        files = [tmp_path / n for n in ("b.db", "b.db-wal", "b.db-shm", "b.db.seq")]
        assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
        await buf.close()
    finally:
        os.umask(old)


async def test_seq_tmp_file_is_never_written_through_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "b.db.seq.tmp").symlink_to(victim)
    buf = make(tmp_path / "b.db")
    await buf.open()
    buf.add(readings(3))
    await buf.flush()
    await buf.close()
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "b.db.seq").is_symlink()
    assert int((tmp_path / "b.db.seq").read_text()) > 3  # the reservation was written
    assert _mode(tmp_path / "b.db.seq") == 0o600


def _stats_cli(tmp_path: Path, synchronous: str, capsys: pytest.CaptureFixture[str]
               ) -> dict[str, Any]:
    from gateway.cli import main

    cfg = tmp_path / "gw.yaml"
    cfg.write_text(json.dumps({
        "gateway": {"id": "gw", "site": "s"},
        "buffer": {"path": str(tmp_path / "b.db"), "synchronous": synchronous},
        "uplink": {"mqtt": {"brokers": ["mqtt://127.0.0.1:1"]}},
        "devices": [{"name": "d1", "driver": "sim"}]}))
    capsys.readouterr()
    assert main(["buffer", "stats", "-c", str(cfg)]) == 0
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    return doc


@pytest.mark.parametrize("synchronous", ["full", "normal"])
@pytest.mark.parametrize("deleted", [False, True])
async def test_buffer_stats_prints_the_next_seq_the_agent_will_use(
        tmp_path: Path, synchronous: str, deleted: bool,
        capsys: pytest.CaptureFixture[str]) -> None:
    """With synchronous=normal, or a deleted database, the agent resumes above the `.seq`
    reservation; `buffer stats` once printed the database's own figure instead."""
    buf = make(tmp_path / "b.db", synchronous=synchronous)
    await buf.open()
    buf.add(readings(5))
    await buf.flush()
    await buf.close()
    if deleted:
        for name in ("b.db", "b.db-wal", "b.db-shm"):
            (tmp_path / name).unlink(missing_ok=True)
    printed = _stats_cli(tmp_path, synchronous, capsys)["next_seq"]
    agent = make(tmp_path / "b.db", synchronous=synchronous)
    await agent.open()
    assert printed == agent.next_seq
    assert agent.next_seq == (6 if synchronous == "full" and not deleted else 1_000_001)
    await agent.close()


async def test_seq_reservation_always_covers_every_seq_handed_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One commit can hand out more seqs than the margin reserved ahead: the side file
    must still cover the last of them, or a deleted database would reuse them."""
    monkeypatch.setattr(buffer_module, "SEQ_RESERVE", 10)
    buf = make(tmp_path / "b.db", commit_readings=1000)
    await buf.open()
    for n in (5, 100, 7):
        buf.add(readings(n))
        await buf.flush()
        reserved = int((tmp_path / "b.db.seq").read_text())
        assert reserved >= buf.next_seq, (reserved, buf.next_seq)
    await buf.close()


async def test_seq_tmp_file_refuses_a_symlink_planted_after_the_cleanup(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race the flags close: a link planted between removing a leftover and opening."""
    import os

    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    real_open = os.open

    def open_after_a_plant(path: Any, flags: int, mode: int = 0o777) -> int:
        if str(path).endswith(".seq.tmp"):
            os.symlink(victim, path)
        return real_open(path, flags, mode)

    buf = make(tmp_path / "b.db")
    monkeypatch.setattr(buffer_module.os, "open", open_after_a_plant)
    with pytest.raises(OSError, match="exists"):
        await buf.open()  # the first reservation is written at open
    monkeypatch.undo()
    assert victim.read_text() == "precious\n"
    await buf.close()


async def test_a_flush_cancelled_while_encoding_keeps_every_reading(tmp_path: Path) -> None:
    """Shutdown may cancel the commit task mid-encoding or while SQLite commits in its
    thread: the readings it took go back in front of those still waiting, or are committed
    before the cancel ends the task; none lost, none replaced, order and seqs kept."""
    buf = make(tmp_path / "b.db", commit_readings=500)
    await buf.open()
    buf.add([r for i in range(4) for r in readings(300, f"d{i}", start=1000 * i)])
    task = asyncio.create_task(buf.flush())
    for _ in range(3):  # into the encoding loop or the SQLite commit
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert buf.unflushed_acks() == set()
    await buf.flush()
    items = await all_items(buf)
    for i in range(4):
        assert [x["value"] for x in items if x["device"] == f"d{i}"] == \
            list(range(1000 * i, 1000 * i + 300))
    assert [x["seq"] for x in items] == list(range(1, 1201))
    await buf.close()


async def test_acks_wait_for_the_next_commit_and_are_reported_until_then(
        tmp_path: Path) -> None:
    buf = make(tmp_path / "b.db")
    await buf.open()
    assert buf.unflushed_acks() == set()
    buf.add(readings(150))
    await buf.flush()
    firsts = [c.first for c in await buf.fetch(0, None, 10)]
    buf.ack(firsts[:1])
    assert buf.unflushed_acks() == {1}
    await buf.flush()
    assert buf.unflushed_acks() == set()
    stats = await buf.stats()
    assert (stats.readings, stats.chunks) == (50, 1)
    await buf.close()
