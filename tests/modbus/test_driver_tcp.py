"""The driver against the pymodbus-based meter emulator over TCP."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from emulators.modbus_meter import MeterEmulator, points_of

from gateway.errors import DeviceConfigError, TransientError

from .conftest import Rig, tcp

ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")
EXACT: dict[str, Any] = {
    "int16": -12345, "uint16": 54321, "int32": -1234567890, "uint32": 3456789012,
    "int64": -1234567890123456789, "uint64": 12345678901234567890,
    "float32": 230.5, "float64": -1234.5678,
}
WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4,
         "float32": 2, "float64": 4}


def every_type_and_order() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Registers of every type in every order, back to back in both register tables."""
    regs: list[dict[str, Any]] = []
    values: dict[str, Any] = {}
    address = {"holding": 100, "input": 0}
    for table in ("holding", "input"):
        for order in ORDERS:
            for dtype, value in EXACT.items():
                name = f"{table}_{dtype}_{order}"
                regs.append({"name": name, "table": table, "address": address[table],
                             "type": dtype, "order": order})
                values[name] = value if table == "holding" else (
                    -value if dtype.startswith(("int", "float")) else value // 3)
                address[table] += WIDTH[dtype]
    regs += [
        {"name": "scaled", "table": "holding", "address": 300, "type": "uint16",
         "scale": 0.1, "unit": "V"},
        {"name": "scaled_offset", "table": "holding", "address": 301, "type": "int16",
         "scale": 0.01, "offset": -40},
        {"name": "near_float", "table": "holding", "address": 302, "type": "float32"},
        {"name": "serial", "table": "holding", "address": 304, "type": "string", "count": 5},
        {"name": "serial_swapped", "table": "holding", "address": 309, "type": "string",
         "count": 3, "order": "BADC"},
        {"name": "alarm", "table": "holding", "address": 312, "type": "bit", "bit": 5},
        {"name": "relay", "table": "coil", "address": 3},
        {"name": "relay2", "table": "coil", "address": 17},
        {"name": "door", "table": "discrete", "address": 0},
        {"name": "door2", "table": "discrete", "address": 9},
    ]
    values.update({"scaled": 230.4, "scaled_offset": -12.34, "near_float": 49.99,
                   "serial": "SN-4711", "serial_swapped": "AB12", "alarm": True,
                   "relay": True, "relay2": False, "door": False, "door2": True})
    return regs, values


async def test_every_type_and_word_order_exactly(rig: Rig) -> None:
    regs, values = every_type_and_order()
    emu = MeterEmulator(points_of(regs), [7], values=values)
    port = await emu.start_tcp()
    try:
        d = await rig.driver(transport=tcp(port), unit=7, registers=regs)
        readings = await d.poll()
        got = {r.metric: r.value for r in readings}
        assert got == values
        assert all(r.quality == "good" and r.device == "m1" for r in readings)
        assert {r.metric: r.unit for r in readings}["scaled"] == "V"
        # holding (two reads: the values, then 300..312), input, coils, discrete
        assert [r.describe() for r in d.plan_now()] == [
            "coil 3..17", "discrete 0..9", "holding 100..179", "holding 300..312",
            "input 0..79"]
        assert rig.sample("parkgate_modbus_requests_per_poll", device="m1") == 5
    finally:
        await emu.stop()


async def test_values_change_between_polls_and_timestamps_come_from_the_clock(
        rig: Rig) -> None:
    emu = MeterEmulator("eastron-sdm630", [1], refresh=0.0)
    port = await emu.start_tcp()
    try:
        d = await rig.driver(transport=tcp(port), profile="eastron-sdm630")
        first = {r.metric: r for r in await d.poll()}
        await asyncio.sleep(0.3)
        second = {r.metric: r for r in await d.poll()}
        assert 220 < first["voltage_l1"].value < 240  # type: ignore[operator]
        assert 49.9 < first["frequency"].value < 50.1  # type: ignore[operator]
        # energy only rises (by less than float32 resolves at 12 MWh over 0.3 s)
        assert second["energy_import"].value >= first["energy_import"].value  # type: ignore[operator]
        assert first["voltage_l1"].value != second["voltage_l1"].value
        assert second["voltage_l1"].ts >= first["voltage_l1"].ts
        assert len(first) == 36
        assert rig.sample("parkgate_modbus_requests_per_poll", device="m1") == 4
    finally:
        await emu.stop()


async def test_rejected_register_is_isolated_and_the_split_remembered(rig: Rig) -> None:
    regs = [{"name": f"r{a}", "table": "input", "address": a, "type": "float32"}
            for a in range(0, 40, 2)]
    emu = MeterEmulator(points_of(regs), [1], values={f"r{a}": float(a) for a in range(0, 40, 2)},
                        faults={("input", 14): 2})
    port = await emu.start_tcp()
    try:
        d = await rig.driver(transport=tcp(port), registers=regs)
        readings = {r.metric: r for r in await d.poll()}
        assert readings["r14"].quality == "bad"
        assert readings["r14"].value is None
        assert all(r.quality == "good" and r.value == float(r.metric[1:])
                   for name, r in readings.items() if name != "r14")
        assert len(readings) == 20
        assert rig.sample("parkgate_modbus_exceptions_total", device="m1", code="2") >= 2
        assert rig.sample("parkgate_modbus_bad_registers", device="m1") == 1
        learning = rig.sample("parkgate_modbus_requests_per_poll", device="m1")
        assert learning > 3  # the failed read plus the bisection
        # the next poll goes straight to the remembered split: before, the bad one, after
        assert [r.describe() for r in d.plan_now()] == ["input 0..13", "input 14..15",
                                                        "input 16..39"]
        mark = len(emu.requests)
        readings2 = {r.metric: r for r in await d.poll()}
        assert [(q.address, q.count) for q in emu.requests_since(mark)] == [
            (0, 14), (14, 2), (16, 24)]
        assert rig.sample("parkgate_modbus_requests_per_poll", device="m1") == 3
        assert readings2["r14"].quality == "bad"
        assert readings2["r16"].value == 16.0
        # the meter is fixed (firmware update): the register reads again, and is merged back
        emu.faults.clear()
        readings3 = {r.metric: r for r in await d.poll()}
        assert readings3["r14"].value == 14.0
        assert readings3["r14"].quality == "good"
        assert rig.sample("parkgate_modbus_bad_registers", device="m1") == 0
        assert [r.describe() for r in d.plan_now()] == ["input 0..39"]
    finally:
        await emu.stop()


async def test_rejected_gap_is_learned_as_a_cut(rig: Rig) -> None:
    regs = [{"name": "a", "table": "holding", "address": 0, "type": "uint16"},
            {"name": "b", "table": "holding", "address": 5, "type": "uint16"}]
    emu = MeterEmulator(points_of(regs), [1], values={"a": 1, "b": 2}, strict_gaps=True)
    port = await emu.start_tcp()
    try:
        d = await rig.driver(transport=tcp(port), registers=regs)
        assert {r.metric: r.value for r in await d.poll()} == {"a": 1, "b": 2}
        assert [r.describe() for r in d.plan_now()] == ["holding 0", "holding 5"]
        mark = len(emu.requests)
        await d.poll()
        assert len(emu.requests_since(mark)) == 2
    finally:
        await emu.stop()


async def test_a_map_the_device_rejects_entirely_is_a_config_error(rig: Rig) -> None:
    regs = [{"name": "a", "table": "holding", "address": 0, "type": "uint16"}]
    emu = MeterEmulator(points_of(regs), [1], values={"a": 1})
    port = await emu.start_tcp()
    try:
        d = await rig.driver(transport=tcp(port),
                             registers=[{"name": "x", "table": "holding", "address": 500},
                                        {"name": "y", "table": "holding", "address": 502}])
        with pytest.raises(DeviceConfigError, match="rejects every register"):
            await d.poll()
    finally:
        await emu.stop()


async def test_fast_and_slow_groups(rig: Rig) -> None:
    regs = [{"name": "power", "table": "input", "address": 0, "type": "float32"},
            {"name": "energy", "table": "input", "address": 100, "type": "float32",
             "interval": "300ms"}]
    emu = MeterEmulator(points_of(regs), [1], values={"power": 1.5, "energy": 2.5})
    port = await emu.start_tcp()
    try:
        d = await rig.driver(transport=tcp(port), interval="100ms", registers=regs)
        names = [sorted(r.metric for r in await d.poll()) for _ in range(6)]
        assert names == [["energy", "power"], ["power"], ["power"],
                         ["energy", "power"], ["power"], ["power"]]
    finally:
        await emu.stop()


async def test_devices_behind_one_gateway_share_one_connection(rig: Rig) -> None:
    emu = MeterEmulator("eastron-sdm120", [1, 2, 3])
    port = await emu.start_tcp()
    try:
        ds = [await rig.driver(f"m{u}", transport=tcp(port), unit=u, profile="eastron-sdm120")
              for u in (1, 2, 3)]
        assert len(rig.pool) == 2  # one connection, and the decoders the meters share
        results = await asyncio.gather(*(d.poll() for d in ds))
        assert [len(r) for r in results] == [14, 14, 14]
        assert {r.device for rs in results for r in rs} == {"m1", "m2", "m3"}
        assert {q.unit for q in emu.requests} == {1, 2, 3}
    finally:
        await emu.stop()


async def test_devices_disagreeing_about_a_shared_link_are_told(rig: Rig) -> None:
    await rig.driver("a", transport=tcp(1502), registers=[{"name": "v", "ref": 40001}])
    with pytest.raises(DeviceConfigError, match=r"delay: 0\.0 vs 0\.05"):
        await rig.driver("b", transport=tcp(1502, delay="50ms"),
                         registers=[{"name": "v", "ref": 40001}])


async def test_server_goes_away_and_comes_back(rig: Rig) -> None:
    emu = MeterEmulator("eastron-sdm120", [1], values={"voltage": 231.0})
    port = await emu.start_tcp()
    d = await rig.driver(transport=tcp(port, reconnect_max="500ms", connect_timeout="1s"),
                         profile="eastron-sdm120", request_timeout="300ms", retries=0)
    assert {r.metric: r.value for r in await d.poll()}["voltage"] == 231.0
    await emu.stop()
    kinds = []
    for _ in range(4):
        with pytest.raises(TransientError) as info:
            await d.poll()
        kinds.append(info.value.kind)
        await asyncio.sleep(0.2)
    assert kinds == ["disconnected"] * 4, kinds
    assert rig.sample("parkgate_modbus_link_up", bus=f"tcp://127.0.0.1:{port}") == 0
    await emu.start_tcp(port=port)
    try:
        for _ in range(30):  # backoff is capped at 500 ms
            try:
                readings = await d.poll()
                break
            except TransientError:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("never reconnected")
        assert {r.metric: r.value for r in readings}["voltage"] == 231.0
        assert rig.sample("parkgate_modbus_reconnects_total",
                          bus=f"tcp://127.0.0.1:{port}") == 1
        assert rig.sample("parkgate_modbus_link_up", bus=f"tcp://127.0.0.1:{port}") == 1
    finally:
        await emu.stop()


async def test_rtu_framing_over_tcp(rig: Rig) -> None:
    emu = MeterEmulator("chint-dtsu666", [5], values={"voltage_l1": 229.9,
                                                       "frequency": 50.01})
    port = await emu.start_tcp(rtu_framing=True)
    try:
        d = await rig.driver(transport={"type": "rtu-over-tcp", "host": "127.0.0.1",
                                        "port": port, "delay": "5ms"},
                             unit=5, profile="chint-dtsu666")
        got = {r.metric: r.value for r in await d.poll()}
        assert (got["voltage_l1"], got["frequency"]) == (229.9, 50.01)
        assert len(got) == 24
    finally:
        await emu.stop()


async def test_a_silent_unit_costs_its_timeout_and_raises(rig: Rig) -> None:
    emu = MeterEmulator("eastron-sdm120", [1])
    port = await emu.start_tcp()
    try:
        d = await rig.driver(transport=tcp(port), unit=9, profile="eastron-sdm120",
                             request_timeout="200ms", retries=1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TransientError, match=r"unit 9 did not answer input 0\.\.37") as info:
            await d.poll()
        assert info.value.kind == "timeout"
        assert 0.35 < loop.time() - started < 1.0  # two attempts of the first read only
        assert rig.sample("parkgate_modbus_request_errors_total", device="m1",
                          kind="timeout") == 2
    finally:
        await emu.stop()


class FallsSilentAfterAnException(MeterEmulator):
    """Answers the first rejected read, then never again (a meter that crashes)."""

    async def _action(self, unit: int, fc: int, start: int, address: int, count: int,
                      registers: list[int], set_values: Any) -> Any:
        code = await super()._action(unit, fc, start, address, count, registers, set_values)
        if code is not None:  # after this reply has gone out
            asyncio.get_running_loop().call_soon(self.answering.discard, unit)
        return code


async def test_meter_going_silent_while_a_read_is_split(rig: Rig) -> None:
    regs = [{"name": f"r{a}", "table": "input", "address": a, "type": "uint16"}
            for a in range(8)]
    emu = FallsSilentAfterAnException(points_of(regs), [1], faults={("input", 5): 2})
    port = await emu.start_tcp()
    try:
        d = await rig.driver(transport=tcp(port), registers=regs, request_timeout="100ms",
                             retries=0)
        readings = await d.poll()  # the device answered (exception 2), then fell silent
        assert len(readings) == 8
        assert {r.quality for r in readings} == {"bad"}
        assert rig.sample("parkgate_modbus_bad_registers", device="m1") == 0  # nothing learnt
        with pytest.raises(TransientError):
            await d.poll()
    finally:
        await emu.stop()
