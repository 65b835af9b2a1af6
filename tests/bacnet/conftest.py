"""Fixtures for the BACnet driver: simulated devices on loopback, drivers on one pool."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from emulators.bacnet_device import BacnetDevice

from drivers.bacnet import BacnetDriver, BacnetOptions
from gateway.driver import ResourcePool
from gateway.metrics import Metrics
from gateway.model import Reading
from tests.support import driver_context as make_ctx
from tests.support import metric_value as sample

OBJECTS = [
    {"name": "supply_temp", "object": "analog-input,1"},
    {"name": "setpoint", "object": "analog-value,2", "write": {"min": 5, "max": 30}},
    {"name": "valve", "object": "analog-output,3", "write": {}, "priority": 10},
    {"name": "enable", "object": "binary-value,4", "write": {}},
    {"name": "pump", "object": "binary-output,5", "write": {}},
    {"name": "mode", "object": "multi-state-value,6", "write": {}},
]


def free_udp_port() -> int:
    """A UDP port nobody holds on 127.0.0.1 right now (bacpypes3 binds with SO_REUSEPORT,
    so a port shared with a parallel test run would split its packets: never reuse one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Rig:
    """Simulated devices and drivers sharing one resource pool, all closed at the end."""

    def __init__(self) -> None:
        self.pool = ResourcePool()
        self.metrics = Metrics()
        self.port = free_udp_port()
        self.devices: list[BacnetDevice] = []
        self.drivers: list[BacnetDriver] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def device(self, device_id: int = 1001, **kw: Any) -> BacnetDevice:
        dev = BacnetDevice(f"127.0.0.1:{free_udp_port()}", device_id, **kw)
        self.devices.append(dev)
        return await dev.start()

    def options(self, dev: BacnetDevice, name: str = "ahu", **cfg: Any) -> BacnetOptions:
        doc = {"name": name, "driver": "bacnet", "address": dev.address,
               "network": {"address": "127.0.0.1", "port": self.port},
               "objects": OBJECTS, "request_timeout": "300ms", "retries": 0,
               "interval": "200ms", **cfg}
        return BacnetOptions.model_validate(doc)

    async def driver(self, dev: BacnetDevice, name: str = "ahu", **cfg: Any) -> BacnetDriver:
        d = BacnetDriver(self.options(dev, name, **cfg), make_ctx(name, self.pool, self.metrics))
        self.drivers.append(d)
        await asyncio.wait_for(d.open(), 5)
        return d

    def start(self, d: BacnetDriver) -> Sink:
        sink = Sink()
        task = asyncio.create_task(d.run(sink))
        sink.task = task
        task.add_done_callback(lambda _t: sink._event.set())
        self.tasks.append(task)
        return sink

    def sample(self, name: str, **labels: str) -> float:
        return sample(self.metrics, name, **labels)

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            # the task's own failure was asserted on by its test
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(t, 5)
        for d in self.drivers:
            await asyncio.wait_for(d.close(), 5)
        for dev in self.devices:
            await dev.stop()
        assert len(self.pool) == 0, "the BACnet port must be released by the last driver"


class Sink:
    """What a driver emitted, with a wait for a condition on it."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.task: asyncio.Task[None] | None = None
        self._event = asyncio.Event()

    def __call__(self, readings: Sequence[Reading]) -> None:
        self.readings.extend(readings)
        self._event.set()

    def last(self, metric: str) -> Reading | None:
        return next((r for r in reversed(self.readings) if r.metric == metric), None)

    async def wait(self, pred: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not pred():
                if self.task is not None and self.task.done():
                    self.task.result()  # surfaces the driver's error
                    raise AssertionError("driver stream ended")
                self._event.clear()
                await self._event.wait()

    async def value(self, metric: str, want: Any, timeout: float = 5.0) -> Reading:
        await self.wait(lambda: (r := self.last(metric)) is not None and r.value == want,
                        timeout)
        reading = self.last(metric)
        assert reading is not None
        return reading


@pytest.fixture
async def rig() -> Any:
    r = Rig()
    yield r
    await r.close()
