"""Writes over RTU on a pty null-modem line, beside another meter polled on the same bus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from emulators.modbus_meter import MeterEmulator, Request, SerialLine, points_of

from gateway.errors import DeviceRejected, WriteRefused

from .conftest import PLC_POINTS, PLC_VALUES, Rig
from .test_writes import CONFIG


@pytest.fixture
async def line(tmp_path: Path) -> AsyncIterator[SerialLine]:
    ln = SerialLine(tmp_path / "by-id")
    yield ln
    ln.close()


async def test_writes_over_rtu_share_the_bus_with_polls(rig: Rig, line: SerialLine) -> None:
    emu = MeterEmulator(points_of(PLC_POINTS), [1, 2], values=PLC_VALUES)
    await emu.start_rtu(line.server_path)
    rtu = {"type": "rtu", "port": line.device_path, "baudrate": 9600, "delay": "5ms"}
    try:
        d = await rig.driver("m1", transport=rtu, unit=1, registers=CONFIG)
        other = await rig.driver("m2", transport=rtu, unit=2,
                                 registers=[r for r in CONFIG if "write" not in r])
        polls = asyncio.gather(*(other.poll() for _ in range(5)))
        assert await d.write("setpoint", 21.5) == 21.5
        assert await d.write("alarm_ack", True) is True
        assert await d.write("flow_sp", 230.5) == 230.5
        assert await d.write("pump_on", True) is True
        assert all({r.metric: r.value for r in rs} == {"flags": 0xA5A1, "temp": 21.3}
                   for rs in await polls)
        assert [(r.unit, r.fc, r.address, r.values) for r in emu.writes] == [
            (1, 6, 30, (215,)), (1, 6, 50, (0xA5A9,)), (1, 16, 40, (0x8000, 0x4366)),
            (1, 5, 2, (True,))]
        assert (await d.read_point("flags")).value == 0xA5A9
        before = len(emu.requests)
        with pytest.raises(WriteRefused):
            await d.write("setpoint", 3500)
        assert emu.requests[before:] == []
        emu.faults[("coil", 2)] = 3
        with pytest.raises(DeviceRejected) as caught:
            await d.write("pump_on", False)
        assert caught.value.code == 3
        assert emu.writes[-1] == Request(1, "coil", 2, 1, (False,), 5)
    finally:
        await emu.stop()
