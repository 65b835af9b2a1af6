"""The ChunkSource/DropSource contract, run against every implementation: the SQLite buffer
and the in-memory source the scheduler's unit tests use."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway import logs
from gateway.buffer import Buffer, ChunkSource, DropSource
from gateway.buffer.memory import MemorySource
from gateway.config import BufferSection
from gateway.metrics import Metrics
from gateway.model import Reading
from gateway.notices import DropRange


@dataclass
class Impl:
    source: ChunkSource
    drops: DropSource
    store: Callable[[Sequence[Reading]], Awaitable[None]]


def readings(n: int, device: str = "d1", start: int = 0) -> list[Reading]:
    return [Reading(device, "m", start + i, 1_700_000_000_000 + i, "V") for i in range(n)]


@pytest.fixture(params=["sqlite", "memory"])
async def impl(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Impl]:
    if request.param == "sqlite":
        buf = Buffer(BufferSection(path=tmp_path / "b.db"), chunk_max=10, metrics=Metrics(),
                     log=logs.get_logger())
        await buf.open()

        async def store(rs: Sequence[Reading]) -> None:
            buf.add(rs)
            await buf.flush()

        yield Impl(buf, buf, store)
        await buf.close()
    else:
        mem = MemorySource(chunk_max=10)

        async def store_mem(rs: Sequence[Reading]) -> None:
            mem.store(rs)

        yield Impl(mem, mem, store_mem)


async def returns_soon(aw: Awaitable[None], timeout: float = 0.5) -> bool:
    try:
        async with asyncio.timeout(timeout):
            await aw
        return True
    except TimeoutError:
        return False


async def test_seqs_start_at_one_and_follow_what_is_stored(impl: Impl) -> None:
    src = impl.source
    assert src.next_seq == 1
    await impl.store(readings(25, "d1"))
    await impl.store(readings(5, "d2"))
    assert src.next_seq == 31
    chunks = await src.read(0, None, 100)
    assert [(c.first, c.last, c.device, c.count) for c in chunks] == [
        (1, 10, "d1", 10), (11, 20, "d1", 10), (21, 25, "d1", 5), (26, 30, "d2", 5)]
    items = [json.loads("[" + c.body + "]") for c in chunks]
    assert [i["seq"] for part in items for i in part] == list(range(1, 31))


async def test_read_honours_start_stop_limit_and_device(impl: Impl) -> None:
    src = impl.source
    await impl.store(readings(30, "d1") + readings(10, "d2"))
    assert [c.first for c in await src.read(11, None, 100)] == [11, 21, 31]
    assert [c.first for c in await src.read(0, 21, 100)] == [1, 11]
    assert [c.first for c in await src.read(0, None, 2)] == [1, 11]
    assert [c.first for c in await src.read(0, None, 100, "d2")] == [31]
    assert [c.first for c in await src.read(0, 31, 100, "d2")] == []
    assert await src.read(41, None, 100) == []


async def test_wait_new_returns_once_per_store(impl: Impl) -> None:
    src = impl.source
    assert not await returns_soon(src.wait_new(), 0.1)  # nothing stored yet
    await impl.store(readings(3))
    assert await returns_soon(src.wait_new())
    assert not await returns_soon(src.wait_new(), 0.1)  # consumed
    waiter = asyncio.create_task(src.wait_new())
    await asyncio.sleep(0)
    await impl.store(readings(3))
    assert await returns_soon(waiter)


async def test_acknowledged_chunks_are_never_read_again(impl: Impl) -> None:
    src = impl.source
    await impl.store(readings(50))
    src.ack([1, 21])
    # before they are deleted: left out, and a full page still means "maybe more"
    assert [c.first for c in await src.read(0, None, 100)] == [11, 31, 41]
    assert [c.first for c in await src.read(0, None, 2)] == [11, 31]
    assert [c.first for c in await src.read(0, None, 3)] == [11, 31, 41]
    assert await src.settle() == 30
    assert [c.first for c in await src.read(0, None, 100)] == [11, 31, 41]


async def test_settle_counts_what_is_left_outside_some_devices(impl: Impl) -> None:
    src = impl.source
    await impl.store(readings(20, "d1") + readings(7, "d2"))
    assert await src.settle() == 27
    assert await src.settle(excluding=["d1"]) == 7
    assert await src.settle(excluding=["d1", "d2"]) == 0
    src.ack([c.first for c in await src.read(0, None, 100, "d2")])
    assert await src.settle() == 20
    assert await src.settle(excluding=["d1"]) == 0


async def test_drops_are_kept_until_their_notice_is_acknowledged(impl: Impl) -> None:
    drops = impl.drops
    assert await drops.pending_drops(10) == []
    assert not await returns_soon(drops.wait_drops(), 0.1)
    await drops.record_dropped([(5, 5), (6, 9)], "too_large")
    assert await returns_soon(drops.wait_drops())
    await drops.record_dropped([(20, 29)], "max_age")
    assert await drops.pending_drops(10) == [DropRange(5, 9, "too_large"),
                                             DropRange(20, 29, "max_age")]
    assert await drops.pending_drops(1) == [DropRange(5, 9, "too_large")]
    await drops.drops_sent([DropRange(5, 9, "too_large")])
    assert await drops.pending_drops(10) == [DropRange(20, 29, "max_age")]
