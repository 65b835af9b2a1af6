"""Subscriptions: monitored items with sampling interval and deadband, changes observed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from asyncua import ua
from emulators.opcua_server import PlantServer

from gateway.model import Reading
from tests.opcua.conftest import Drivers, node


async def test_changes_are_pushed_with_deadband(plant: PlantServer, drivers: Drivers) -> None:
    drv = await drivers.open(
        plant.url,
        [node("Double", deadband=1.0, sampling_interval="50ms"), node("Int32"),
         node("Broken"), {"name": "missing", "node": "ns=2;s=Plant.Nope"}],
        mode="subscribe", publishing_interval="50ms")
    seen: list[Reading] = []
    arrived = asyncio.Event()

    def emit(rs: Sequence[Reading]) -> None:
        seen.extend(rs)
        arrived.set()

    task = asyncio.create_task(drv.run(emit))  # type: ignore[attr-defined]
    try:
        async def until(pred: object) -> None:
            async with asyncio.timeout(5):
                while not pred():  # type: ignore[operator]
                    arrived.clear()
                    await arrived.wait()

        await until(lambda: {"double", "int32", "broken", "missing"} <= {r.metric for r in seen})
        first = {r.metric: r for r in seen}
        assert first["double"].value == 2.5 and first["int32"].value == -123456
        assert first["broken"].quality == "bad" and first["missing"].quality == "bad"
        seen.clear()
        await plant.set("Double", 2.9, ua.VariantType.Double)   # inside the deadband
        await plant.set("Int32", 41, ua.VariantType.Int32)
        await until(lambda: any(r.metric == "int32" for r in seen))
        await plant.set("Double", 4.0, ua.VariantType.Double)   # beyond it
        await until(lambda: any(r.metric == "double" for r in seen))
        assert [r.value for r in seen if r.metric == "double"] == [4.0]
        assert [r.value for r in seen if r.metric == "int32"] == [41]
        assert all(r.quality == "good" for r in seen)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_node_that_appears_later_joins_the_subscription(plant: PlantServer,
                                                                drivers: Drivers) -> None:
    drv = await drivers.open(plant.url, [node("Int32"), {"name": "later",
                                                         "path": "2:Plant/2:Later"}],
                             mode="subscribe", publishing_interval="50ms")
    drv.resolve_every = 0.2  # type: ignore[attr-defined]
    seen: list[Reading] = []
    arrived = asyncio.Event()

    def emit(rs: Sequence[Reading]) -> None:
        seen.extend(rs)
        arrived.set()

    task = asyncio.create_task(drv.run(emit))  # type: ignore[attr-defined]
    try:
        async with asyncio.timeout(5):
            while not any(r.metric == "later" for r in seen):
                arrived.clear()
                await arrived.wait()
        assert next(r.quality for r in seen if r.metric == "later") == "bad"
        await plant.add("Later", "ns=2;s=Plant.Later", 5, ua.VariantType.Int32)
        async with asyncio.timeout(5):
            while not any(r.metric == "later" and r.quality == "good" for r in seen):
                arrived.clear()
                await arrived.wait()
        assert [r.value for r in seen if r.metric == "later" and r.quality == "good"] == [5]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
