"""Broadcast time sync (0x08): the frame, the driver on a pty bus, and the CLI over TCP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from emulators.dlt645_meter import Meter, MeterBus
from emulators.line_sensor import LoopThread, PtyPort
from pydantic import ValidationError

from drivers.dlt645 import Dlt645Driver, Dlt645Options
from drivers.dlt645.frame import broadcast_time, decode
from gateway.cli import main
from gateway.errors import WriteRefused
from tests.dlt645.conftest import A1, A2


def test_the_frame_is_yymmddhhmmss_in_bcd_lowest_byte_first() -> None:
    raw = broadcast_time(datetime(2026, 11, 30, 9, 45, 7))  # noqa: DTZ001 - a meter's clock
    body = bytes([0x68, *[0x99] * 6, 0x68, 0x08, 0x06,
                  0x07 + 0x33, 0x45 + 0x33, 0x09 + 0x33, 0x30 + 0x33, 0x11 + 0x33, 0x26 + 0x33])
    assert raw == b"\xfe\xfe\xfe\xfe" + body + bytes([sum(body) % 256, 0x16])
    frame = decode(raw)
    assert (frame.address, frame.control, frame.data.hex()) == (
        "999999999999", 0x08, "074509301126")
    with pytest.raises(ValueError, match=r"years 2000\.\.2099"):
        broadcast_time(datetime(2100, 1, 1))  # noqa: DTZ001


def close_to(clock: datetime | None, expected: datetime) -> bool:
    return clock is not None and abs(clock - expected) <= timedelta(seconds=2)


async def test_sync_time_sets_every_meter_on_the_bus_and_polls_go_on(
        port: PtyPort, bus: MeterBus, make_driver: Callable[..., Dlt645Driver]) -> None:
    driver = make_driver({"transport": {"type": "serial", "port": port.path, "parity": "N",
                                        "delay": "5ms"},
                          "address": A1, "items": ["voltage_a"], "time_zone": "Asia/Shanghai"})
    await driver.open()
    try:
        assert driver.writable() == {}
        await driver.sync_time()
        now = datetime.now(ZoneInfo("Asia/Shanghai")).replace(tzinfo=None)
        readings = await driver.poll()  # the bus is free again and nobody answered the sync
        assert [(r.metric, r.value) for r in readings] == [("voltage_a", 231.4)]
        for _ in range(50):
            if all(m.time_syncs for m in bus.meters):
                break
            await asyncio.sleep(0.01)
        assert [m.time_syncs for m in bus.meters] == [1, 1]
        assert all(close_to(m.clock, now) for m in bus.meters), [m.clock for m in bus.meters]
        assert bus.meter(A2).requests == 0  # it set its clock but was never asked anything
        reading = await driver.read_point("voltage_a")
        assert (reading.metric, reading.value, reading.unit) == ("voltage_a", 231.4, "V")
        with pytest.raises(WriteRefused, match="no such item"):
            await driver.read_point("voltage_b")
    finally:
        await driver.close()


def test_an_unknown_time_zone_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="unknown time zone 'Mars/Olympus'"):
        Dlt645Options.model_validate({"name": "m", "driver": "dlt645", "address": A1,
                                      "items": ["voltage_a"], "time_zone": "Mars/Olympus",
                                      "transport": {"type": "tcp", "host": "h", "port": 1}})


def test_cli_sync_time_over_a_device_server(capsys: pytest.CaptureFixture[str]) -> None:
    loop = LoopThread()
    bus = MeterBus(Meter(A1))
    try:
        tcp = loop.run(bus.serve_tcp())
        code = main(["dlt645", "sync-time", "--tcp", f"127.0.0.1:{tcp}", "--time-zone", "UTC"])
        doc: dict[str, Any] = json.loads(capsys.readouterr().out)
        assert code == 0
        now = datetime.now(UTC).replace(tzinfo=None)
        assert close_to(datetime.fromisoformat(doc["time"]), now)
        assert doc["frame"].startswith("fe fe fe fe 68 99 99 99 99 99 99 68 08 06")
        for _ in range(100):
            if bus.meters[0].time_syncs:
                break
            loop.run(asyncio.sleep(0.01))
        assert close_to(bus.meters[0].clock, now)
    finally:
        loop.run(bus.stop())
        loop.close()
