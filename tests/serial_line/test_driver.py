"""The serial driver against line-sensor and NMEA emulators on real ptys."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from emulators.line_sensor import LineSensor, PtyPort
from emulators.nmea_source import NmeaSource, gga, rmc, sentence

from drivers.serial_line import SerialDriver
from gateway.driver import ResourcePool
from gateway.errors import DeviceConfigError, TransientError
from gateway.metrics import Metrics
from gateway.model import Reading
from tests.support import driver_context as make_ctx
from tests.support import metric_value as sample

KV = {"type": "kv", "fields": {"T": {"metric": "temperature", "unit": "°C"},
                               "H": {"metric": "humidity", "unit": "%"}}}


class Run:
    """`driver.run(emit)` in a task, collecting readings."""

    def __init__(self, driver: SerialDriver) -> None:
        self.driver = driver
        self.readings: list[Reading] = []
        self._changed = asyncio.Event()
        self.task = asyncio.create_task(driver.run(self.emit))

    def emit(self, readings: Sequence[Reading]) -> None:
        self.readings.extend(readings)
        self._changed.set()

    async def wait(self, pred: Callable[[list[Reading]], bool], timeout: float = 3.0) -> None:
        async with asyncio.timeout(timeout):
            while not pred(self.readings):
                if self.task.done():
                    self.task.result()
                    raise AssertionError("run() returned")
                self._changed.clear()
                await asyncio.wait([asyncio.create_task(self._changed.wait()), self.task],
                                   return_when=asyncio.FIRST_COMPLETED)

    def latest(self, metric: str) -> Reading:
        return [r for r in self.readings if r.metric == metric][-1]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TransientError):
            await self.task


@contextlib.asynccontextmanager
async def running(driver: SerialDriver) -> AsyncIterator[Run]:
    await driver.open()
    run = Run(driver)
    try:
        yield run
    finally:
        await run.stop()
        await driver.close()


async def test_stream_kv_values_and_units(port: PtyPort, make_driver: Any) -> None:
    sensor = await LineSensor(port, values={"T": 21.5, "H": 45.25}, period=0.02).start()
    driver = make_driver({"port": port.path, "baudrate": 19200, "parser": KV})
    try:
        async with running(driver) as run:
            await run.wait(lambda rs: len(rs) >= 4)
            t, h = run.latest("temperature"), run.latest("humidity")
            assert (t.value, t.unit, t.quality) == (21.5, "°C", "good")
            assert (h.value, h.unit) == (45.25, "%")
            assert t.device == "s1"
            assert abs(t.ts - driver.ctx.clock()) < 5000
        m = driver.ctx.metrics
        assert sample(m, "parkgate_serial_lines_total", device="s1") >= 2
        assert sample(m, "parkgate_serial_port_opens_total", device="s1") == 1
    finally:
        await sensor.stop()


@pytest.mark.parametrize(("fmt", "parser"), [
    ("csv", {"type": "csv", "columns": {0: {"metric": "temperature", "unit": "°C"},
                                        1: {"metric": "humidity", "unit": "%"}}}),
    ("json", {"type": "json", "fields": {"T": {"metric": "temperature", "unit": "°C"},
                                         "H": {"metric": "humidity", "unit": "%"}}}),
    ("kv", {"type": "regex", "pattern": r"T=(?P<T>-?[0-9.]+),H=(?P<H>[0-9.]+)",
            "fields": {"T": {"metric": "temperature", "unit": "°C"},
                       "H": {"metric": "humidity", "unit": "%", "scale": 0.01}}}),
])
async def test_stream_other_parsers(port: PtyPort, make_driver: Any, fmt: str,
                                    parser: dict[str, Any]) -> None:
    sensor = await LineSensor(port, values={"T": -3.75, "H": 61.0}, fmt=fmt,
                              period=0.02).start()
    driver = make_driver({"port": port.path, "parser": parser})
    try:
        async with running(driver) as run:
            await run.wait(lambda rs: len(rs) >= 2)
            assert run.latest("temperature").value == -3.75
            expected = 0.61 if parser["type"] == "regex" else 61.0
            assert run.latest("humidity").value == expected
            assert run.latest("humidity").unit == "%"
    finally:
        await sensor.stop()


async def test_nmea_position_speed_and_units(port: PtyPort, make_driver: Any) -> None:
    source = await NmeaSource(port, lat=-33.8568, lon=151.2153, alt=58.2, speed_kn=10.0,
                              course=271.5, period=0.03).start()
    driver = make_driver({
        "port": port.path, "baudrate": 4800,
        "parser": {"type": "nmea", "fields": {
            "latitude": {}, "longitude": {}, "altitude": {}, "satellites": {},
            "speed_knots": {"metric": "speed", "unit": "km/h", "scale": 1.852},
            "course": {}}}})
    try:
        async with running(driver) as run:
            await run.wait(lambda rs: {"speed", "altitude"} <= {r.metric for r in rs})
            lat, lon = run.latest("latitude"), run.latest("longitude")
            assert lat.value == pytest.approx(-33.8568, abs=1e-6)
            assert lat.unit == "deg"
            assert lon.value == pytest.approx(151.2153, abs=1e-6)
            assert lon.unit == "deg"
            assert (run.latest("altitude").value, run.latest("altitude").unit) == (58.2, "m")
            assert run.latest("satellites").value == 8
            assert (run.latest("speed").value, run.latest("speed").unit) == (18.52, "km/h")
            assert run.latest("course").value == 271.5
        assert sample(driver.ctx.metrics, "parkgate_serial_parse_errors_total",
                      device="s1", kind="checksum") == 0
    finally:
        await source.stop()


async def test_bad_input_is_counted_never_fatal(port: PtyPort, make_driver: Any) -> None:
    source = NmeaSource(port, lat=29.5, lon=106.5, period=None)
    await source.start()
    driver = make_driver({"port": port.path, "parser": {"type": "nmea", "sentences": ["GGA"]}})
    good = sentence(gga(29.5, 106.5, 300.0))
    async with running(driver) as run:
        source.send_raw(good)
        await run.wait(lambda rs: any(r.metric == "altitude" for r in rs))
        source.send_raw(b"\x00\x13\xff\xfe\x80 line noise\r\n")            # noise
        source.send_raw(b"$GPGGA,123519.00,2930.0000,N,106")               # cut short ...
        source.send_raw(sentence(gga(29.5, 106.5, 301.0)))                 # ... by this one
        source.send_raw(sentence(gga(29.5, 106.5, 302.0), bad_checksum=True))
        source.send_raw(b"$GPGGA,1,2,3*7F\r\n")                              # bad checksum
        source.send_raw(b"$GP" + b"x" * 3000 + b"\r\n")                      # far too long
        source.send_raw(sentence(rmc(29.5, 106.5, 1.0, 2.0)))              # not asked for
        source.send_raw(sentence(gga(29.5, 106.5, 303.0)))
        await run.wait(lambda rs: any(r.value == 303.0 for r in rs))
        alts = [r.value for r in run.readings if r.metric == "altitude"]
        assert alts == [300.0, 301.0, 303.0]
        assert not run.task.done()
    m = driver.ctx.metrics

    def errors(kind: str) -> float:
        return sample(m, "parkgate_serial_parse_errors_total", device="s1", kind=kind)

    assert errors("partial") == 1
    assert errors("checksum") == 2
    assert errors("noise") >= 1
    assert errors("overflow") == 1
    assert sample(m, "parkgate_serial_lines_ignored_total", device="s1") == 1
    assert sample(m, "parkgate_serial_lines_total", device="s1") == 3
    await source.stop()


async def test_silent_sensor_marks_device_down_then_recovers(port: PtyPort,
                                                             make_driver: Any) -> None:
    sensor = await LineSensor(port, period=0.02).start()
    driver = make_driver({"port": port.path, "silence": "300ms", "parser": KV})
    await driver.open()
    try:
        run = Run(driver)
        await run.wait(lambda rs: len(rs) >= 2)
        sensor.silent = True
        sensor.send_raw(b"T=21.")  # and the last line never ends
        with pytest.raises(TransientError) as err:
            await asyncio.wait_for(run.task, 2.0)
        assert err.value.kind == "silent"
        m = driver.ctx.metrics
        assert sample(m, "parkgate_serial_silences_total", device="s1") == 1
        assert sample(m, "parkgate_serial_parse_errors_total", device="s1", kind="partial") == 1
        # what the supervisor does next: close, open again, run again
        await driver.close()
        sensor.silent = False
        await driver.open()
        run = Run(driver)
        await run.wait(lambda rs: len(rs) >= 2)
        await run.stop()
    finally:
        await driver.close()
        await sensor.stop()


async def test_unplug_and_replug_reopens_by_symlink(port: PtyPort, make_driver: Any) -> None:
    sensor = await LineSensor(port, values={"T": 20.0, "H": 40.0}, period=0.02).start()
    driver = make_driver({"port": port.path, "parser": KV})
    first_pty = port.slave_name
    await driver.open()
    try:
        run = Run(driver)
        await run.wait(lambda rs: len(rs) >= 2)
        sensor.unplug()
        with pytest.raises(TransientError) as err:
            await asyncio.wait_for(run.task, 2.0)
        assert err.value.kind == "disconnected"
        await driver.close()
        with pytest.raises(TransientError) as err:
            await driver.open()
        assert err.value.kind == "unplugged"
        await driver.close()
        sensor.values = {"T": 22.0, "H": 41.0}
        sensor.replug()
        assert port.slave_name != first_pty or port.plugged
        await driver.open()
        run = Run(driver)
        await run.wait(lambda rs: len(rs) >= 2)
        assert run.latest("temperature").value == 22.0
        await run.stop()
        assert sample(driver.ctx.metrics, "parkgate_serial_port_opens_total", device="s1") == 2
    finally:
        await driver.close()
        await sensor.stop()


async def test_poll_mode_sends_command_and_times_out_when_silent(port: PtyPort,
                                                                 make_driver: Any) -> None:
    sensor = await LineSensor(port, values={"T": 19.5, "H": 50.0}, command=b"R").start()
    driver = make_driver({"port": port.path, "mode": "poll", "command": r"R\r\n",
                          "interval": "50ms", "timeout": "300ms", "parser": KV})
    await driver.open()
    try:
        run = Run(driver)
        await run.wait(lambda rs: len(rs) >= 6)
        assert run.latest("temperature").value == 19.5
        assert sensor.commands >= 3
        sensor.silent = True
        with pytest.raises(TransientError) as err:
            await asyncio.wait_for(run.task, 2.0)
        assert err.value.kind == "timeout"
        assert sample(driver.ctx.metrics, "parkgate_serial_silences_total", device="s1") == 1
    finally:
        await driver.close()
        await sensor.stop()


async def test_poll_devices_share_one_port(port: PtyPort, make_driver: Any) -> None:
    sensor = await LineSensor(port, command=b"R").start()
    pool, metrics = ResourcePool(), Metrics()
    cfg = {"port": port.path, "mode": "poll", "command": "R\r\n", "interval": "30ms",
           "parser": KV}
    a = make_driver({**cfg, "name": "a"}, make_ctx("a", pool, metrics))
    b = make_driver({**cfg, "name": "b"}, make_ctx("b", pool, metrics))
    await a.open()
    await b.open()
    assert len(pool) == 1
    ra, rb = Run(a), Run(b)
    try:
        await ra.wait(lambda rs: len(rs) >= 4)
        await rb.wait(lambda rs: len(rs) >= 4)
        assert {r.device for r in ra.readings} == {"a"}
        assert {r.device for r in rb.readings} == {"b"}
    finally:
        await ra.stop()
        await rb.stop()
        await a.close()
        await b.close()
        await sensor.stop()
    assert len(pool) == 0
    streamer = make_driver({"port": port.path, "parser": KV, "name": "c"},
                           make_ctx("c", pool, metrics))
    other = make_driver({**cfg, "name": "d", "baudrate": 1200}, make_ctx("d", pool, metrics))
    await streamer.open()
    with pytest.raises(DeviceConfigError):
        await other.open()
    await other.close()
    await streamer.close()
    assert len(pool) == 0


async def test_rs485_mode_on_a_plain_tty_is_a_config_error(port: PtyPort,
                                                           make_driver: Any) -> None:
    driver = make_driver({"port": port.path, "rs485": {}, "parser": KV})
    with pytest.raises(DeviceConfigError):
        await driver.open()
    await driver.close()
