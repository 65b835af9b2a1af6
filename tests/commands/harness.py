"""A real supervisor running sim devices, for executor and service tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from drivers.sim import SimDriver, SimOptions
from gateway import logs
from gateway.driver import DeviceOptions, DriverInfo
from gateway.metrics import Metrics
from gateway.model import Reading
from gateway.supervisor import Supervisor

DRIVERS = {"sim": DriverInfo("sim", SimDriver)}


def boiler(**kw: Any) -> SimOptions:
    """A sim device with the writable points of the issue: setpoint, pump, mode."""
    return SimOptions.model_validate({
        "name": "boiler", "driver": "sim", "interval": "1h", "points": 0, "timeout": "1s",
        "variables": [
            {"name": "setpoint", "initial": 20.0, "unit": "°C",
             "write": {"min": 5, "max": 80, "min_interval": "0.5s"}},
            {"name": "pump_on", "initial": False, "write": {}},
            {"name": "mode", "initial": "auto", "write": {"values": ["auto", "manual"]}},
            {"name": "steps", "initial": 0, "write": {"verify": False}},
            {"name": "valve", "initial": 0, "write": {}, "reject_code": 2},
            {"name": "drifty", "initial": 1, "write": {}, "drift": True},
            {"name": "flow", "initial": 3.5},
        ], **kw})


class Rig:
    """The supervisor, what it emitted, its metrics."""

    def __init__(self, sup: Supervisor, got: list[Reading], metrics: Metrics) -> None:
        self.sup = sup
        self.got = got
        self.metrics = metrics

    def driver(self, name: str) -> SimDriver:
        d = self.sup.driver(name)
        assert isinstance(d, SimDriver)
        return d

    async def up(self, *names: str) -> None:
        async with asyncio.timeout(5):
            while not all(self.sup.driver(n) is not None for n in names):
                await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def rig(devices: Sequence[DeviceOptions]) -> AsyncIterator[Rig]:
    got: list[Reading] = []
    metrics = Metrics()
    sup = Supervisor(DRIVERS, got.extend, metrics, logs.get_logger())
    async with asyncio.TaskGroup() as tg:
        sup.bind(tg)
        await sup.apply(devices)
        r = Rig(sup, got, metrics)
        await r.up(*(d.name for d in devices))
        try:
            yield r
        finally:
            await sup.stop_all()
