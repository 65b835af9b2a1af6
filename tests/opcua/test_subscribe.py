"""Subscriptions: monitored items with sampling interval and deadband, changes observed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

from asyncua import ua
from emulators.opcua_server import PlantServer

from gateway.model import Reading
from tests.opcua.conftest import Drivers, node


class Emitted:
    """What a running driver emitted, with a wait for a condition on it."""

    def __init__(self) -> None:
        self.seen: list[Reading] = []
        self._arrived = asyncio.Event()

    def __call__(self, rs: Sequence[Reading]) -> None:
        self.seen.extend(rs)
        self._arrived.set()

    async def until(self, pred: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not pred():
                self._arrived.clear()
                await self._arrived.wait()


@contextlib.asynccontextmanager
async def running(drv: object) -> AsyncIterator[Emitted]:
    """`drv.run()` as a task for the block, emitting into the yielded `Emitted`."""
    emitted = Emitted()
    task = asyncio.create_task(drv.run(emitted))  # type: ignore[attr-defined]
    try:
        yield emitted
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_changes_are_pushed_with_deadband(plant: PlantServer, drivers: Drivers) -> None:
    drv = await drivers.open(
        plant.url,
        [node("Double", deadband=1.0, sampling_interval="50ms"), node("Int32"),
         node("Broken"), {"name": "missing", "node": "ns=2;s=Plant.Nope"}],
        mode="subscribe", publishing_interval="50ms")
    async with running(drv) as out:
        seen = out.seen
        await out.until(lambda: {"double", "int32", "broken", "missing"}
                        <= {r.metric for r in seen})
        first = {r.metric: r for r in seen}
        assert first["double"].value == 2.5 and first["int32"].value == -123456
        assert first["broken"].quality == "bad" and first["missing"].quality == "bad"
        seen.clear()
        await plant.set("Double", 2.9, ua.VariantType.Double)   # inside the deadband
        await plant.set("Int32", 41, ua.VariantType.Int32)
        await out.until(lambda: any(r.metric == "int32" for r in seen))
        await plant.set("Double", 4.0, ua.VariantType.Double)   # beyond it
        await out.until(lambda: any(r.metric == "double" for r in seen))
        assert [r.value for r in seen if r.metric == "double"] == [4.0]
        assert [r.value for r in seen if r.metric == "int32"] == [41]
        assert all(r.quality == "good" for r in seen)


async def test_a_node_that_appears_later_joins_the_subscription(plant: PlantServer,
                                                                drivers: Drivers) -> None:
    drv = await drivers.open(plant.url, [node("Int32"), {"name": "later",
                                                         "path": "2:Plant/2:Later"}],
                             mode="subscribe", publishing_interval="50ms")
    drv.resolve_every = 0.2  # type: ignore[attr-defined]
    async with running(drv) as out:
        seen = out.seen
        await out.until(lambda: any(r.metric == "later" for r in seen))
        assert next(r.quality for r in seen if r.metric == "later") == "bad"
        await plant.add("Later", "ns=2;s=Plant.Later", 5, ua.VariantType.Int32)
        await out.until(lambda: any(r.metric == "later" and r.quality == "good" for r in seen))
        assert [r.value for r in seen if r.metric == "later" and r.quality == "good"] == [5]
