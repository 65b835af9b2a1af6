"""Fixtures for the Modbus driver: driver contexts, emulators, and a loop in a thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import pytest

from drivers.modbus import ModbusDriver, ModbusOptions
from gateway.driver import ResourcePool
from gateway.metrics import Metrics
from tests.support import driver_context as make_ctx
from tests.support import metric_value as sample

T = TypeVar("T")
PLC_POINTS = [  # what the emulated PLC of the write tests holds (tests/commands too)
    {"name": "setpoint", "table": "holding", "address": 30, "type": "int16", "scale": 0.1},
    {"name": "flow_sp", "table": "holding", "address": 40, "type": "float32", "order": "CDAB"},
    {"name": "flags", "table": "holding", "address": 50, "type": "uint16"},
    {"name": "pump_on", "table": "coil", "address": 2},
    {"name": "temp", "table": "input", "address": 0, "type": "int16", "scale": 0.1},
]
PLC_VALUES = {"setpoint": 20.0, "flow_sp": 1.5, "flags": 0xA5A1, "pump_on": False, "temp": 21.3}


class Rig:
    """Drivers sharing one resource pool and one metrics registry, closed at the end."""

    def __init__(self) -> None:
        self.pool = ResourcePool()
        self.metrics = Metrics()
        self.drivers: list[ModbusDriver] = []

    async def driver(self, name: str = "m1", **cfg: Any) -> ModbusDriver:
        opts = ModbusOptions.model_validate({"name": name, "driver": "modbus", "unit": 1, **cfg})
        d = ModbusDriver(opts, make_ctx(name, self.pool, self.metrics))
        self.drivers.append(d)
        await d.open()
        return d

    def sample(self, name: str, **labels: str) -> float:
        return sample(self.metrics, name, **labels)

    async def close(self) -> None:
        for d in self.drivers:
            await d.close()


@pytest.fixture
async def rig() -> Any:
    r = Rig()
    yield r
    await r.close()


def tcp(port: int, **extra: Any) -> dict[str, Any]:
    """A `transport:` for the emulator on 127.0.0.1."""
    return {"type": "tcp", "host": "127.0.0.1", "port": port, **extra}


class LoopThread:
    """An event loop in a thread, for emulators beside synchronous code (CLI, gateway)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def call(self, fn: Callable[[], T]) -> T:
        async def wrap() -> T:
            return fn()
        return self.run(wrap())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()
