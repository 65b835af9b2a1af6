"""The DL/T 645 driver against the meter emulator on a real pty and over real TCP."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest
from emulators.dlt645_meter import Meter, MeterBus, frame
from emulators.line_sensor import PtyPort

from drivers.dlt645.frame import FrameError
from gateway.driver import ResourcePool
from gateway.errors import DeviceConfigError, TransientError
from gateway.metrics import Metrics
from tests.dlt645.conftest import A1, A2
from tests.support import driver_context as make_ctx
from tests.support import metric_value as sample

ITEMS = ["energy_total", "energy_import", "energy_import_t1", "energy_import_t2",
         "energy_import_t3", "energy_import_t4", "energy_export", "voltage_a", "voltage_b",
         "voltage_c", "current_a", "current_b", "current_c", "power_total", "power_a",
         "power_b", "power_c", "power_factor_total", "power_factor_a", "frequency",
         "meter_temperature"]
EXPECTED = {
    "energy_total": (12345.67, "kWh"), "energy_import": (12345.67, "kWh"),
    "energy_import_t1": (1234.56, "kWh"), "energy_import_t2": (5678.9, "kWh"),
    "energy_import_t3": (4321.0, "kWh"), "energy_import_t4": (1111.21, "kWh"),
    "energy_export": (0.42, "kWh"), "voltage_a": (231.4, "V"), "voltage_b": (230.8, "V"),
    "voltage_c": (229.9, "V"), "current_a": (5.123, "A"), "current_b": (-4.567, "A"),
    "current_c": (0.0, "A"), "power_total": (1.2345, "kW"), "power_a": (0.5, "kW"),
    "power_b": (-0.25, "kW"), "power_c": (0.9845, "kW"), "power_factor_total": (0.987, None),
    "power_factor_a": (-0.5, None), "frequency": (50.01, "Hz"),
    "meter_temperature": (-12.5, "°C"),
}


def serial(port: PtyPort, **kw: Any) -> dict[str, Any]:
    # Linux ptys refuse even parity (tcsetattr EINVAL), so the tests run 8N1
    return {"type": "serial", "port": port.path, "parity": "N", "delay": "5ms", **kw}


def values(readings: Any) -> dict[str, tuple[Any, str | None, str]]:
    return {r.metric: (r.value, r.unit, r.quality) for r in readings}


async def test_reads_every_item_with_its_scale_and_unit(port: PtyPort, bus: MeterBus,
                                                        make_driver: Any) -> None:
    driver = make_driver({"transport": serial(port), "address": "12345678", "items": ITEMS})
    await driver.open()
    try:
        readings = await driver.poll()
    finally:
        await driver.close()
    assert values(readings) == {k: (v, u, "good") for k, (v, u) in EXPECTED.items()}
    assert {r.device for r in readings} == {"m1"}
    m = driver.ctx.metrics
    assert sample(m, "parkgate_dlt645_requests_total", device="m1") == len(ITEMS)
    assert sample(m, "parkgate_dlt645_request_duration_seconds_count", device="m1") == len(ITEMS)
    assert bus.meter(A1).requests == len(ITEMS)
    assert bus.meter(A2).requests == 0


async def test_over_tcp_with_raw_di_and_scale(make_driver: Any) -> None:
    bus = MeterBus(Meter(A2, values={0x02010100: 228.6, 0x02020100: 1.25, 0x0280000A: 4321}))
    tcp_port = await bus.serve_tcp()
    driver = make_driver({
        "transport": {"type": "tcp", "host": "127.0.0.1", "port": tcp_port},
        "address": A2,
        "items": ["02010100", {"item": "current_a", "metric": "current_primary", "scale": 40},
                  {"item": "0280000A", "metric": "run_minutes", "unit": "min"}]})
    await driver.open()
    try:
        first = await driver.poll()
        bus.meter(A2).values[0x02010100] = 229.1
        second = await driver.poll()
    finally:
        await driver.close()
        await bus.stop()
    assert values(first) == {"voltage_a": (228.6, "V", "good"),
                             "current_primary": (50.0, "A", "good"),
                             "run_minutes": (4321, "min", "good")}
    assert values(second)["voltage_a"] == (229.1, "V", "good")


async def test_exception_reply_is_one_bad_reading(port: PtyPort, bus: MeterBus,
                                                  make_driver: Any) -> None:
    driver = make_driver({"transport": serial(port), "address": A2,
                          "items": ["voltage_a", "phase_angle_a", "frequency"]})
    await driver.open()
    try:
        readings = await driver.poll()
    finally:
        await driver.close()
    assert values(readings) == {"voltage_a": (228.6, "V", "good"),
                                "phase_angle_a": (None, "deg", "bad"),
                                "frequency": (49.98, "Hz", "good")}
    m = driver.ctx.metrics
    assert sample(m, "parkgate_dlt645_exception_replies_total", device="m1",
                  error="no_data") == 1
    assert sample(m, "parkgate_dlt645_errors_total", device="m1", kind="exception") == 1


@pytest.mark.alone  # a 0.3-0.6 s latency window
async def test_dead_meter_costs_one_timeout_and_the_other_keeps_answering(
        port: PtyPort, bus: MeterBus, make_driver: Any) -> None:
    bus.meter(A2).responsive = False
    pool, metrics = ResourcePool(), Metrics()
    items = ["voltage_a", "voltage_b", "voltage_c", "current_a", "frequency"]
    live = make_driver({"name": "live", "transport": serial(port), "address": A1,
                        "items": items}, make_ctx("live", pool, metrics))
    dead = make_driver({"name": "dead", "transport": serial(port), "address": A2,
                        "items": items, "response_timeout": "300ms"},
                       make_ctx("dead", pool, metrics))
    await live.open()
    await dead.open()
    assert len(pool) == 1
    try:
        async def timed_dead() -> float:
            t0 = time.monotonic()
            with pytest.raises(TransientError) as err:
                await dead.poll()
            assert err.value.kind == "timeout"
            return time.monotonic() - t0

        async def live_polls() -> list[Any]:
            return [await live.poll() for _ in range(3)]

        took, live_results = await asyncio.gather(timed_dead(), live_polls())
        assert 0.3 <= took < 0.6  # one timeout for five items, plus the bus wait
        for readings in live_results:
            assert values(readings)["voltage_a"] == (231.4, "V", "good")
            assert all(r.quality == "good" for r in readings)
        t0 = time.monotonic()
        await live.poll()
        assert time.monotonic() - t0 < 0.3  # with the dead one idle, no waiting at all
    finally:
        await live.close()
        await dead.close()
    assert sample(metrics, "parkgate_dlt645_errors_total", device="dead", kind="timeout") == 1
    assert sample(metrics, "parkgate_dlt645_requests_total", device="dead") == 1
    assert sample(metrics, "parkgate_dlt645_bus_wait_seconds_count", bus=port.path) == 20
    assert len(pool) == 0


async def test_inter_request_delay_is_kept(port: PtyPort, make_driver: Any) -> None:
    times: list[float] = []
    bus = MeterBus(Meter(A1), reply_delay=0.0)
    original = bus.feed

    def stamp(data: bytes) -> list[bytes]:
        replies = original(data)
        times.extend(time.monotonic() for _ in replies)
        return replies

    bus.feed = stamp  # type: ignore[method-assign]
    await bus.serve_pty(port)
    driver = make_driver({"transport": serial(port, delay="80ms"), "address": A1,
                          "items": ["voltage_a", "voltage_b", "voltage_c"]})
    await driver.open()
    try:
        await driver.poll()
    finally:
        await driver.close()
        await bus.stop()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 2
    assert min(gaps) >= 0.08


@pytest.mark.parametrize("fault", ["noise", "split", "echo", "late"])
async def test_noise_split_replies_and_echo_are_handled(port: PtyPort, bus: MeterBus,
                                                        make_driver: Any, fault: str) -> None:
    if fault == "noise":
        bus.noise = b"\x00\x68\x13\xff\xfe"
    elif fault == "late":  # a reply to an earlier, abandoned request arrives first
        bus.noise = frame(A1, 0x91, bytes.fromhex("00 00 80 02") + b"\x00\x99")
    elif fault == "split":
        bus.split = True
    else:
        bus.echo = True
    driver = make_driver({"transport": serial(port), "address": A1,
                          "items": ["voltage_a", "current_b", "power_factor_a"]})
    await driver.open()
    try:
        readings = await driver.poll()
    finally:
        await driver.close()
    assert values(readings) == {"voltage_a": (231.4, "V", "good"),
                                "current_b": (-4.567, "A", "good"),
                                "power_factor_a": (-0.5, None, "good")}


async def test_bad_checksum_is_counted_and_raised(port: PtyPort, bus: MeterBus,
                                                  make_driver: Any) -> None:
    bus.corrupt = True
    driver = make_driver({"transport": serial(port), "address": A1,
                          "items": ["voltage_a", "frequency"]})
    await driver.open()
    try:
        with pytest.raises(FrameError) as err:
            await driver.poll()
        assert err.value.kind == "checksum"
        bus.corrupt = False
        assert values(await driver.poll())["frequency"] == (50.01, "Hz", "good")
    finally:
        await driver.close()
    assert sample(driver.ctx.metrics, "parkgate_dlt645_errors_total", device="m1",
                  kind="checksum") == 2


async def test_unplugged_adapter_heals_without_restarting(port: PtyPort, bus: MeterBus,
                                                          make_driver: Any) -> None:
    driver = make_driver({"transport": serial(port), "address": A1, "items": ["voltage_a"],
                          "response_timeout": "300ms"})
    await driver.open()
    try:
        assert values(await driver.poll())["voltage_a"][0] == 231.4
        bus.unplug()
        await asyncio.sleep(0.05)
        kinds = set()
        for _ in range(2):
            with pytest.raises(TransientError) as err:
                await driver.poll()
            kinds.add(err.value.kind)
        assert kinds <= {"disconnected", "unplugged", "timeout"}
        assert "unplugged" in kinds
        bus.meter(A1).values[0x02010100] = 232.0
        bus.replug()
        assert values(await driver.poll())["voltage_a"][0] == 232.0
    finally:
        await driver.close()


async def test_tcp_server_restart_reconnects(make_driver: Any) -> None:
    bus = MeterBus(Meter(A1))
    tcp_port = await bus.serve_tcp()
    driver = make_driver({"transport": {"type": "tcp", "host": "127.0.0.1", "port": tcp_port},
                          "address": A1, "items": ["frequency"], "response_timeout": "300ms"})
    await driver.open()
    try:
        assert values(await driver.poll())["frequency"][0] == 50.01
        await bus.stop()
        kinds = set()
        for _ in range(2):
            with pytest.raises(TransientError) as err:
                await driver.poll()
            kinds.add(err.value.kind)
        assert "connect" in kinds  # the server is gone: connection refused
        again = MeterBus(Meter(A1, values={0x02800002: 49.9}))
        await again.serve_tcp(port=tcp_port)
        assert values(await driver.poll())["frequency"][0] == 49.9
        await again.stop()
    finally:
        await driver.close()


async def test_shared_bus_must_agree(port: PtyPort, make_driver: Any) -> None:
    pool, metrics = ResourcePool(), Metrics()
    a = make_driver({"name": "a", "transport": serial(port), "address": A1,
                     "items": ["voltage_a"]}, make_ctx("a", pool, metrics))
    b = make_driver({"name": "b", "transport": serial(port, baudrate=9600), "address": A2,
                     "items": ["voltage_a"]}, make_ctx("b", pool, metrics))
    await a.open()
    with pytest.raises(DeviceConfigError):
        await b.open()
    await b.close()
    await a.close()
    assert len(pool) == 0
