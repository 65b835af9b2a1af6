"""The BACnet driver under the real supervisor: a device that dies and restarts recovers,
with the error counted by kind and `device_up` following it, and its COV re-subscribed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway import logs
from gateway.driver import discover_drivers
from gateway.metrics import Metrics
from gateway.model import Reading
from gateway.supervisor import Supervisor
from tests.support import metric_value

from .conftest import Rig


async def until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not pred():
            await asyncio.sleep(0.05)


async def test_device_restart_under_the_supervisor(rig: Rig) -> None:
    dev = await rig.device()
    got: list[Reading] = []
    metrics = Metrics()
    sup = Supervisor(discover_drivers(), got.extend, metrics, logs.get_logger())
    opts = rig.options(dev, "ahu", interval="300ms", timeout="2s")

    def m(name: str, **labels: str) -> float:
        return metric_value(metrics, name, device="ahu", **labels)

    def last(metric: str) -> Reading | None:
        return next((r for r in reversed(got) if r.metric == metric), None)

    async with asyncio.TaskGroup() as tg:
        sup.bind(tg)
        await sup.apply([opts])
        try:
            await until(lambda: m("parkgate_bacnet_cov_subscriptions") == 4)
            assert m("parkgate_device_up") == 1
            dev.set("analog-value,2", 24.0)
            await until(lambda: (r := last("setpoint")) is not None and r.value == 24.0)

            await dev.stop()
            await until(lambda: m("parkgate_poll_errors_total", kind="timeout") >= 1)
            assert m("parkgate_device_up") == 0
            await dev.start()  # a restart: it remembers values, not subscriptions
            await until(lambda: m("parkgate_device_up") == 1
                        and m("parkgate_bacnet_cov_subscriptions") == 4)
            n = len(got)
            dev.set("analog-value,2", 17.5)
            await until(lambda: (r := last("setpoint")) is not None and r.value == 17.5)
            assert any(r.metric == "setpoint" and r.value == 17.5 for r in got[n:])
        finally:
            await sup.stop_all()
    assert len(sup.resources) == 0, "the BACnet port is released with the last device"
