"""Faults: a node deleted while polled, a server restart (polled and subscribed)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from asyncua import ua
from emulators.opcua_server import PlantServer
from structlog.testing import capture_logs

from drivers.opcua import OpcUaDriver
from gateway.errors import DeviceConfigError, TransientError
from gateway.model import Reading
from tests.opcua.conftest import Drivers, node


async def reopen(drivers: Drivers, url: str, nodes: list[dict[str, object]],
                 **cfg: object) -> OpcUaDriver:
    """What the supervisor does after a failure: a new driver, opened until it works."""
    for _ in range(100):
        drv = drivers.make(url, nodes, **cfg)
        try:
            await drv.open()
            return drv
        except TransientError:
            await drv.close()
            await asyncio.sleep(0.1)
    raise AssertionError("the driver never reconnected")


async def test_node_deleted_while_polled(plant: PlantServer, drivers: Drivers) -> None:
    nodes = [node("Double"), node("Int32"), {"name": "by_path", "path": "2:Plant/2:Int16"}]
    drv = await drivers.open(plant.url, nodes)
    first = await drv.poll()  # type: ignore[attr-defined]
    assert [r.quality for r in first] == ["good"] * 3
    await plant.delete("Int32")
    await plant.delete("Int16")
    with capture_logs() as logs:
        got = {r.metric: r for r in await drv.poll()}  # type: ignore[attr-defined]
        again = {r.metric: r for r in await drv.poll()}  # type: ignore[attr-defined]
    assert got["double"].quality == "good" and got["double"].value == 2.5
    assert (got["int32"].quality, got["int32"].value) == ("bad", None)
    assert got["by_path"].quality == "bad"
    assert again["double"].quality == "good" and again["int32"].quality == "bad"
    warned = [e for e in logs if e["log_level"] == "warning"]
    # one clear line per node, not one per poll
    assert sorted(e["node"] for e in warned) == ["by_path", "int32"], warned
    assert all("BadNodeIdUnknown" in e["status"] for e in warned)
    assert "ns=2;s=Plant.Int32" in {e["where"] for e in warned}
    assert all("gone from the server" in e["event"] for e in warned)
    # re-created under another NodeId: the path finds it again, the NodeId stays bad
    await plant.add("Int16", "ns=2;i=4711", 77, ua.VariantType.Int16)
    with capture_logs() as logs:
        back = {r.metric: r for r in await drv.poll()}  # type: ignore[attr-defined]
    assert (back["by_path"].value, back["by_path"].quality) == (77, "good")
    assert back["int32"].quality == "bad"
    assert [(e["event"], e["node"]) for e in logs] == [("node reads again", "by_path")]


async def test_every_node_unknown_is_a_config_error(plant: PlantServer,
                                                   drivers: Drivers) -> None:
    drv = await drivers.open(plant.url, [{"name": "a", "node": "ns=7;s=Nope"}])
    with pytest.raises(DeviceConfigError, match="wrong namespace index"):
        await drv.poll()  # type: ignore[attr-defined]


async def test_polled_server_restart_recovers(plant: PlantServer, drivers: Drivers) -> None:
    nodes = [node("Double")]
    drv = await drivers.open(plant.url, nodes)
    assert (await drv.poll())[0].value == 2.5  # type: ignore[attr-defined]
    await plant.stop()
    with pytest.raises(TransientError):  # noqa: PT012 - a poll in flight may still be answered
        for _ in range(50):
            await drv.poll()  # type: ignore[attr-defined]
            await asyncio.sleep(0.05)
    await drv.close()
    down = drivers.make(plant.url, nodes)
    with pytest.raises(TransientError, match="refused"):
        await down.open()
    await plant.start()
    drv = await reopen(drivers, plant.url, nodes)
    assert [r.quality for r in await drv.poll()] == ["good"]  # type: ignore[attr-defined]


async def collect(drv: OpcUaDriver, until: int, timeout: float = 10.0
                  ) -> tuple[list[Reading], BaseException | None]:
    """Readings a subscribed driver emits until `until` arrived or it raised."""
    out: list[Reading] = []
    done = asyncio.Event()

    def emit(rs: Sequence[Reading]) -> None:
        out.extend(rs)
        if len(out) >= until:
            done.set()

    task = asyncio.create_task(drv.run(emit))  # type: ignore[attr-defined]
    waiter = asyncio.create_task(done.wait())
    await asyncio.wait({task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    error = task.exception() if task.done() else None
    for t in (task, waiter):
        t.cancel()
    await asyncio.gather(task, waiter, return_exceptions=True)
    return out, error


async def test_subscription_recreated_after_restart(plant: PlantServer,
                                                    drivers: Drivers) -> None:
    nodes = [node("Double"), node("Int32")]
    cfg = {"mode": "subscribe", "publishing_interval": "100ms", "keepalive": "1s"}
    drv = await drivers.open(plant.url, nodes, **cfg)
    first, error = await collect(drv, 2)
    assert error is None and {r.metric for r in first} == {"double", "int32"}
    # the server goes away under a running subscription: run() ends with a TransientError
    readings: list[Reading] = []
    task = asyncio.create_task(drv.run(readings.extend))  # type: ignore[attr-defined]
    await asyncio.sleep(0.3)
    await plant.stop()
    with pytest.raises(TransientError):
        await asyncio.wait_for(task, 10)
    await drv.close()
    await plant.start()
    await plant.set("Double", 7.5, ua.VariantType.Double)
    drv = await reopen(drivers, plant.url, nodes, **cfg)
    again, error = await collect(drv, 2)
    assert error is None
    # the first values after the reconnect arrive: the current value of every item
    assert {r.metric: r.value for r in again} == {"double": 7.5, "int32": -123456}

