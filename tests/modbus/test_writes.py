"""Writes (the device side of commands) against the pymodbus-based emulator over TCP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from emulators.modbus_meter import WRITE_FCS, MeterEmulator, Request, points_of

from drivers.modbus import ModbusDriver
from gateway.errors import DeviceRejected, VerifyFailed, WriteRefused

from .conftest import PLC_POINTS, PLC_VALUES, Rig, tcp

CONFIG = [  # what the gateway is told
    {"name": "setpoint", "table": "holding", "address": 30, "type": "int16", "scale": 0.1,
     "unit": "°C", "write": {"min": -20, "max": 80}},
    {"name": "flow_sp", "table": "holding", "address": 40, "type": "float32", "order": "CDAB",
     "write": {"max": 500}},
    {"name": "alarm_ack", "table": "holding", "address": 50, "type": "bit", "bit": 3,
     "write": {}},
    {"name": "pump_on", "table": "coil", "address": 2, "write": {}},
    {"name": "flags", "table": "holding", "address": 50, "type": "uint16"},
    {"name": "temp", "table": "input", "address": 0, "type": "int16", "scale": 0.1},
]


@pytest.fixture
async def plc() -> AsyncIterator[tuple[MeterEmulator, int]]:
    emu = MeterEmulator(points_of(PLC_POINTS), [1, 2], values=PLC_VALUES)
    port = await emu.start_tcp()
    yield emu, port
    await emu.stop()


async def driver(rig: Rig, port: int, registers: list[dict[str, Any]] | None = None,
                 **cfg: Any) -> ModbusDriver:
    return await rig.driver(transport=tcp(port), registers=registers or CONFIG, **cfg)


def writes_on_the_wire(emu: MeterEmulator) -> int:
    return sum(n for fc, n in emu.frames_in.items() if fc in WRITE_FCS)


async def test_writable_lists_only_points_with_a_write_block(rig: Rig, plc: Any) -> None:
    d = await driver(rig, plc[1])
    assert set(d.writable()) == {"setpoint", "flow_sp", "alarm_ack", "pump_on"}
    assert d.writable()["setpoint"].max == 80


async def test_a_scaled_int16_setpoint_is_written_with_fc06_and_read_back(
        rig: Rig, plc: Any) -> None:
    emu, port = plc
    d = await driver(rig, port)
    assert await d.write("setpoint", 21.5) == 21.5
    assert emu.writes == [Request(1, "holding", 30, 1, (215,), 6)]
    assert await d.write("setpoint", -5.5) == -5.5
    assert emu.writes[-1].values == (65536 - 55,)
    got = {r.metric: r.value for r in await d.poll()}
    assert got["setpoint"] == -5.5  # the poll sees what was written
    assert got["temp"] == 21.3


async def test_a_float32_in_cdab_order_is_written_with_fc16(rig: Rig, plc: Any) -> None:
    emu, port = plc
    d = await driver(rig, port)
    assert await d.write("flow_sp", 230.5) == 230.5
    assert emu.writes == [Request(1, "holding", 40, 2, (0x8000, 0x4366), 16)]
    assert (await d.read_point("flow_sp")).value == 230.5


async def test_a_coil_is_switched_with_fc05(rig: Rig, plc: Any) -> None:
    emu, port = plc
    d = await driver(rig, port)
    assert await d.write("pump_on", True) is True
    assert (await d.read_point("pump_on")).value is True
    assert await d.write("pump_on", 0) is False
    assert [(r.fc, r.address, r.values) for r in emu.writes] == [(5, 2, (True,)),
                                                                (5, 2, (False,))]


async def test_one_bit_of_a_holding_register_leaves_the_other_bits_alone(
        rig: Rig, plc: Any) -> None:
    emu, port = plc
    d = await driver(rig, port)
    assert await d.write("alarm_ack", True) is True
    assert emu.writes == [Request(1, "holding", 50, 1, (0xA5A9,), 6)]
    assert (await d.read_point("flags")).value == 0xA5A9
    assert await d.write("alarm_ack", False) is False
    assert (await d.read_point("flags")).value == 0xA5A1


async def test_a_read_modify_write_is_not_interleaved_with_polls_on_the_bus(
        rig: Rig, plc: Any) -> None:
    """A second meter behind the same connection polls flat out during the bit writes."""
    emu, port = plc
    d = await driver(rig, port)
    other = await rig.driver("m2", transport=tcp(port), unit=2,
                             registers=[r for r in CONFIG if "write" not in r])
    stop = asyncio.Event()

    async def poll_flat_out() -> int:
        n = 0
        while not stop.is_set():
            await other.poll()
            n += 1
        return n

    poller = asyncio.create_task(poll_flat_out())
    for i in range(10):
        await d.write("alarm_ack", i % 2 == 0)
    stop.set()
    assert await poller > 0
    seq = emu.requests
    writes = [i for i, r in enumerate(seq) if r.values is not None]
    assert len(writes) == 10
    for i in writes:  # read, write, verifying read: back to back, all of unit 1
        assert [(r.unit, r.table, r.address, r.values is None) for r in seq[i - 1:i + 2]] == [
            (1, "holding", 50, True), (1, "holding", 50, False), (1, "holding", 50, True)]
    assert any(r.unit == 2 for r in seq[writes[0]:writes[-1]])  # the poller did run between


@pytest.mark.parametrize(("point", "value", "words"), [
    ("setpoint", 4000, "outside int16 (-32768..32767) after scale 0.1"),
    ("setpoint", -3276.9, "outside int16"),
    ("setpoint", float("nan"), "cannot be written"),
    ("setpoint", "21.5", "takes a number"),
    ("setpoint", True, "takes a number"),
    ("flow_sp", 1e39, "does not fit a float32"),
    ("pump_on", 2, "takes true/false or 1/0"),
    ("alarm_ack", "on", "takes true/false or 1/0"),
    ("flags", 1, "not a writable register"),
    ("temp", 1, "not a writable register"),
    ("nonesuch", 1, "no such register"),
])
async def test_what_cannot_be_encoded_is_refused_and_nothing_reaches_the_device(
        rig: Rig, plc: Any, point: str, value: Any, words: str) -> None:
    emu, port = plc
    d = await driver(rig, port)
    await d.poll()  # the link is up and the emulator has seen traffic
    before = len(emu.requests)
    with pytest.raises(WriteRefused, match=words.replace("(", r"\(").replace(")", r"\)")):
        await d.write(point, value)
    assert emu.requests[before:] == []
    assert emu.writes == []
    assert writes_on_the_wire(emu) == 0


async def test_an_exception_reply_is_device_rejected_with_its_code(rig: Rig, plc: Any) -> None:
    emu, port = plc
    regs = [*CONFIG, {"name": "ghost", "table": "holding", "address": 1000, "write": {}}]
    d = await driver(rig, port, registers=regs)
    with pytest.raises(DeviceRejected) as caught:
        await d.write("ghost", 7)
    assert caught.value.code == 2
    assert "exception 2 (illegal data address) for a write of holding 1000" in str(caught.value)
    assert writes_on_the_wire(emu) == 1  # it did reach the device, which said no
    emu.faults[("holding", 30)] = 4
    with pytest.raises(DeviceRejected) as caught:
        await d.write("setpoint", 22)
    assert caught.value.code == 4
    assert rig.sample("parkgate_modbus_requests_total", device="m1") == 2


async def test_a_device_that_alters_a_write_fails_verification(rig: Rig, plc: Any) -> None:
    emu, port = plc
    d = await driver(rig, port)

    def off_by_one(request: Request, values: list[Any]) -> None:
        if request.table == "holding":
            values[0] += 1
        else:
            values[0] = False  # a coil that will not switch on

    emu.on_write = off_by_one
    with pytest.raises(VerifyFailed, match=r"wrote \[215\] to holding 30, read back \[216\]"):
        await d.write("setpoint", 21.5)
    with pytest.raises(VerifyFailed, match="wrote True to coil 2, read back False"):
        await d.write("pump_on", True)


async def test_verify_false_writes_without_reading_back(rig: Rig, plc: Any) -> None:
    emu, port = plc
    regs = [{**CONFIG[0], "write": {"verify": False}}]
    d = await driver(rig, port, registers=regs)
    before = len(emu.requests)
    assert await d.write("setpoint", 30) is None
    assert [r.values for r in emu.requests[before:]] == [(300,)]


async def test_read_point_reads_one_point_now(rig: Rig, plc: Any) -> None:
    emu, port = plc
    d = await driver(rig, port)
    r = await d.read_point("temp")
    assert (r.device, r.metric, r.value, r.unit, r.quality) == ("m1", "temp", 21.3, None, "good")
    assert emu.requests[-1] == Request(1, "input", 0, 1, None, 4)
    with pytest.raises(WriteRefused, match="no such register"):
        await d.read_point("nonesuch")


async def test_write_multiple_uses_fc16_and_fc15_for_single_values(rig: Rig, plc: Any) -> None:
    emu, port = plc
    d = await driver(rig, port, write_multiple=True)
    assert await d.write("setpoint", 21.5) == 21.5
    assert await d.write("pump_on", True) is True
    assert await d.write("alarm_ack", True) is True
    assert [(r.fc, r.address, r.values) for r in emu.writes] == [
        (16, 30, (215,)), (15, 2, (True,)), (16, 50, (0xA5A9,))]
