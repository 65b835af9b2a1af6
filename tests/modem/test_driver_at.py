"""The modem driver (source: at) against the Quectel emulator on a real pty."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from emulators.quectel_modem import QuectelModem

from drivers.modem import ModemDriver, ModemOptions
from gateway.backoff import Backoff
from gateway.driver import ResourcePool
from gateway.errors import DeviceConfigError, TransientError
from gateway.metrics import Metrics
from gateway.model import Reading
from tests.modem.conftest import build_driver, make_ctx, sample

EXPECTED: dict[str, dict[str, tuple[Any, str | None]]] = {
    "lte": {
        "state": ("NOCONN", None), "technology": ("LTE", None),
        "operator": ("CHINA MOBILE", None), "operator_code": ("46001", None),
        "registration": ("home", None), "registered": (1, None),
        "rsrp": (-100, "dBm"), "rsrq": (-12, "dB"), "sinr": (2, "dB"), "rssi": (-68, "dBm"),
        "cell_id": ("5F1EA15", None), "band": ("B3", None), "temperature": (43.0, "°C"),
    },
    "nsa": {
        "state": ("NOCONN", None), "technology": ("NR5G-NSA", None),
        "operator": ("CHINA MOBILE", None), "operator_code": ("46001", None),
        "registration": ("home", None), "registered": (1, None),
        "rsrp": (-99, "dBm"), "rsrq": (-12, "dB"), "sinr": (2, "dB"), "rssi": (-67, "dBm"),
        "nr_rsrp": (-71, "dBm"), "nr_rsrq": (-11, "dB"), "nr_sinr": (33, "dB"),
        "cell_id": ("5F1EA15", None), "band": ("B3+n78", None), "temperature": (43.0, "°C"),
    },
    "sa": {
        "state": ("NOCONN", None), "technology": ("NR5G-SA", None),
        "operator": ("CHINA MOBILE", None), "operator_code": ("46001", None),
        "registration": ("home", None), "registered": (1, None),
        "rsrp": (-107, "dBm"), "rsrq": (-13, "dB"), "sinr": (2, "dB"), "rssi": (-73, "dBm"),
        "nr_rsrp": (-107, "dBm"), "nr_rsrq": (-13, "dB"), "nr_sinr": (2, "dB"),
        "cell_id": ("19013B004", None), "band": ("n78", None), "temperature": (43.0, "°C"),
    },
}
GAUGES = {  # (rsrp lte, rsrp nr, rsrq lte, rsrq nr, sinr lte, sinr nr, rssi)
    "lte": (-100, None, -12, None, 2, None, -68),
    "nsa": (-99, -71, -12, -11, 2, 33, -67),
    "sa": (None, -107, None, -13, None, 2, -73),
}


def by_metric(readings: list[Reading] | Any) -> dict[str, tuple[Any, str | None]]:
    return {r.metric: (r.value, r.unit) for r in readings}


def at_driver(modem: QuectelModem, **cfg: Any) -> ModemDriver:
    return build_driver({"source": "at", "port": modem.path, "command_timeout": "500ms", **cfg})


def gauges(metrics: Metrics, device: str = "modem") -> tuple[float | None, ...]:
    g = "parkgate_modem_signal_"
    return (sample(metrics, g + "rsrp_dbm", device=device, rat="lte"),
            sample(metrics, g + "rsrp_dbm", device=device, rat="nr"),
            sample(metrics, g + "rsrq_db", device=device, rat="lte"),
            sample(metrics, g + "rsrq_db", device=device, rat="nr"),
            sample(metrics, g + "sinr_db", device=device, rat="lte"),
            sample(metrics, g + "sinr_db", device=device, rat="nr"),
            sample(metrics, g + "rssi_dbm", device=device))


@pytest.mark.parametrize("mode", ["lte", "nsa", "sa"])
async def test_each_mode_values_units_and_gauges(modem: QuectelModem, mode: str) -> None:
    modem.mode = mode
    driver = at_driver(modem)
    metrics = driver.ctx.metrics
    await driver.open()
    try:
        readings = list(await driver.poll())
    finally:
        await driver.close()
    assert by_metric(readings) == EXPECTED[mode]
    assert all(r.device == "modem" and r.quality == "good" and r.ts > 0 for r in readings)
    # gauges were set during the poll; close() removed them again
    assert gauges(metrics) == (None,) * 7


@pytest.mark.parametrize("mode", ["lte", "nsa", "sa"])
async def test_gauges_while_open(modem: QuectelModem, mode: str) -> None:
    modem.mode = mode
    driver = at_driver(modem)
    m = driver.ctx.metrics
    await driver.open()
    try:
        await driver.poll()
        assert gauges(m) == GAUGES[mode]
        assert sample(m, "parkgate_modem_temperature_celsius", device="modem") == 43.0
        assert sample(m, "parkgate_modem_registered", device="modem") == 1.0
        exp = EXPECTED[mode]
        assert sample(m, "parkgate_modem_info", device="modem", technology=exp["technology"][0],
                      operator="CHINA MOBILE", band=exp["band"][0],
                      cell_id=exp["cell_id"][0]) == 1.0
    finally:
        await driver.close()


async def test_mode_changes_move_gauges_and_info(modem: QuectelModem) -> None:
    driver = at_driver(modem)
    m = driver.ctx.metrics
    await driver.open()
    try:
        await driver.poll()
        modem.mode = "nsa"
        await driver.poll()
        assert gauges(m) == GAUGES["nsa"]
        modem.mode = "lte"
        modem.state = "CONNECT"
        got = by_metric(await driver.poll())
        assert got["state"] == ("CONNECT", None)
        assert gauges(m) == GAUGES["lte"]  # the NR series are gone again
        info = next(s for s in m.registry.collect() if s.name == "parkgate_modem_info")
        assert [(s.labels["technology"], s.labels["band"]) for s in info.samples] == [
            ("LTE", "B3")]
    finally:
        await driver.close()


async def test_searching_and_limited_service(modem: QuectelModem) -> None:
    modem.mode = "search"
    driver = at_driver(modem)
    m = driver.ctx.metrics
    await driver.open()
    try:
        got = by_metric(await driver.poll())
        assert got == {"state": ("SEARCH", None), "registration": ("searching", None),
                       "registered": (0, None), "temperature": (43.0, "°C")}
        assert sample(m, "parkgate_modem_registered", device="modem") == 0.0
        assert gauges(m) == (None,) * 7
        modem.mode = "limsrv"
        got = by_metric(await driver.poll())
        assert (got["state"], got["registration"], got["registered"]) == (
            ("LIMSRV", None), ("denied", None), (0, None))
        assert (got["rsrp"], got["rssi"], got["technology"]) == (
            (-118, "dBm"), (-90, "dBm"), ("LTE", None))
        assert "operator" not in got
    finally:
        await driver.close()


@pytest.mark.parametrize(("command", "answer", "missing"), [
    ("AT+QTEMP", "ERROR", {"temperature"}),
    ("AT+QTEMP", "+CME ERROR: 100", {"temperature"}),
    ('AT+QENG="SERVINGCELL"', "+CME ERROR: 4",
     {"state", "rsrp", "rsrq", "sinr", "cell_id", "band", "operator_code"}),
    ("AT+COPS?", "+CME ERROR: 30", {"operator"}),
])
async def test_one_command_refused_others_reported(modem: QuectelModem, command: str,
                                                   answer: str, missing: set[str]) -> None:
    modem.errors[command] = answer
    driver = at_driver(modem)
    m = driver.ctx.metrics
    await driver.open()
    try:
        got = by_metric(await driver.poll())
        await driver.poll()
    finally:
        await driver.close()
    expected = {k: v for k, v in EXPECTED["lte"].items() if k not in missing}
    if command.startswith("AT+QENG"):
        expected["rssi"] = (-67, "dBm")  # AT+CSQ 23 instead of the serving cell's RSSI
    assert got == expected
    sent = 'AT+QENG="servingcell"' if command.startswith("AT+QENG") else command
    assert sample(m, "parkgate_modem_at_errors_total", device="modem", command=sent) == 2.0


async def test_ec25_lte_only_module(tmp_path: Path) -> None:
    modem = await QuectelModem("lte", link=tmp_path / "ec25", model="EC25").start()
    driver = at_driver(modem)
    m = driver.ctx.metrics
    try:
        await driver.open()
        got = by_metric(await driver.poll())
    finally:
        await driver.close()
        await modem.stop()
    # EC2x prints LTE SINR in 1/5 dB from -20: 11 -> -17.8; AT+QTEMP: <pmic>,<xo>,<pa>
    assert (got["sinr"], got["temperature"], got["registration"]) == (
        (-17.8, "dB"), (32.0, "°C"), ("home", None))
    assert sample(m, "parkgate_modem_at_errors_total", device="modem",
                  command="AT+C5GREG?") == 1.0


async def test_lte_sinr_option_overrides_model(modem: QuectelModem) -> None:
    driver = at_driver(modem, lte_sinr="db")
    await driver.open()
    try:
        assert by_metric(await driver.poll())["sinr"] == (11, "dB")
    finally:
        await driver.close()


@pytest.mark.parametrize("echo", [True, False])
async def test_urcs_interleaved_with_every_response(modem: QuectelModem, echo: bool) -> None:
    modem.echo = echo
    modem.mode = "nsa"
    modem.urcs = ['+QIURC: "pdpdeact",1', "RING", "+CREG: 1", "RDY",
                  '+CEREG: 1,"DE10","5F1EA15",7', '+QIND: "csq",23,99']
    driver = at_driver(modem)
    await driver.open()
    try:
        for _ in range(3):
            assert by_metric(await driver.poll()) == EXPECTED["nsa"]
        assert driver._at is not None
        assert driver._at.engine.urcs >= 3 * 8 * 6
    finally:
        await driver.close()


async def test_stray_ok_before_a_reply_is_not_taken_for_it(tmp_path: Path) -> None:
    # As if a late reply of an earlier command arrived in between. (An OK *inside* a
    # multi-line answer cannot be told from the real end, so the EC25's one-line answers.)
    modem = await QuectelModem("lte", link=tmp_path / "ec25", model="EC25").start()
    modem.urcs = ["OK"]
    driver = at_driver(modem)
    try:
        await driver.open()
        got = by_metric(await driver.poll())
    finally:
        await driver.close()
        await modem.stop()
    assert got == {**EXPECTED["lte"], "sinr": (-17.8, "dB"), "temperature": (32.0, "°C")}


async def poll_until_ok(driver: ModemDriver, within: float) -> tuple[list[Reading], int]:
    """Poll until a poll succeeds; returns its readings and the failed polls before it."""
    deadline = time.monotonic() + within
    failures = 0
    while True:
        try:
            return list(await driver.poll()), failures
        except TransientError:
            failures += 1
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_slow_reply_beyond_timeout_then_recovery(modem: QuectelModem) -> None:
    modem.mode = "nsa"
    modem.delays['AT+QENG="SERVINGCELL"'] = 1.2
    driver = at_driver(modem, command_timeout="300ms")
    m = driver.ctx.metrics
    await driver.open()
    try:
        with pytest.raises(TransientError) as failed:
            await driver.poll()
        assert failed.value.kind == "timeout"
        assert 'AT+QENG="servingcell"' in str(failed.value)
        assert sample(m, "parkgate_modem_registered", device="modem") is None  # cleared
        modem.delays.clear()
        readings, failures = await poll_until_ok(driver, within=10)
        assert failures <= 2  # the module is still busy with the slow command, then fine
        assert by_metric(readings) == EXPECTED["nsa"]
        for _ in range(3):  # and no reply is shifted onto the next command afterwards
            assert by_metric(await driver.poll()) == EXPECTED["nsa"]
    finally:
        await driver.close()


async def test_poll_cancelled_mid_command_then_recovery(modem: QuectelModem) -> None:
    modem.delays["AT+CSQ"] = 0.6
    driver = at_driver(modem, command_timeout="2s")
    await driver.open()
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):  # the supervisor's poll timeout
                await driver.poll()
        modem.delays.clear()
        readings, _ = await poll_until_ok(driver, within=10)
        assert by_metric(readings) == EXPECTED["lte"]
        assert by_metric(await driver.poll()) == EXPECTED["lte"]
    finally:
        await driver.close()


async def test_port_goes_away_and_comes_back(modem: QuectelModem) -> None:
    driver = at_driver(modem)
    await driver.open()
    try:
        assert driver._at is not None
        engine = driver._at.engine
        engine.backoff = Backoff(base=0.05, cap=0.4)
        assert by_metric(await driver.poll()) == EXPECTED["lte"]
        modem.unplug()
        assert not Path(modem.path).exists()
        kinds = []
        polls = 0
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # a poll loop while the modem is gone
            polls += 1
            with pytest.raises(TransientError) as gone:
                await driver.poll()
            kinds.append(gone.value.kind)
            await asyncio.sleep(0.02)
        assert set(kinds) == {"disconnected"}
        assert engine.backoff.attempts < polls / 2  # backed off, not one open per poll
        modem.mode = "sa"
        modem.replug()
        readings, _ = await poll_until_ok(driver, within=5)
        assert by_metric(readings) == EXPECTED["sa"]
        assert (engine.opens, modem.ports_opened) == (2, 2)
    finally:
        await driver.close()


async def test_open_fails_while_port_missing(tmp_path: Path) -> None:
    driver = build_driver({"source": "at", "port": str(tmp_path / "nothing")})
    with pytest.raises(TransientError) as exc:
        await driver.open()
    assert exc.value.kind == "disconnected"
    assert "cannot open AT port" in str(exc.value)
    await driver.close()
    assert len(driver.ctx.resources) == 0


async def test_two_devices_share_one_port(modem: QuectelModem) -> None:
    pool, metrics = ResourcePool(), Metrics()
    modem.mode = "nsa"
    drivers = [build_driver({"source": "at", "port": modem.path},
                            make_ctx(name, pool, metrics)) for name in ("modem-a", "modem-b")]
    for d in drivers:
        await d.open()
    assert len(pool) == 1
    try:
        results = await asyncio.gather(*(d.poll() for d in drivers for _ in range(3)))
        for readings in results:
            got = by_metric(readings)
            assert got == EXPECTED["nsa"]
        assert sample(metrics, "parkgate_modem_signal_rsrp_dbm", device="modem-b",
                      rat="nr") == -71.0
    finally:
        for d in drivers:
            await d.close()
    assert len(pool) == 0


def test_options_validation() -> None:
    with pytest.raises(ValueError, match="source: at needs port"):
        ModemOptions.model_validate({"name": "m", "driver": "modem", "source": "at"})
    with pytest.raises(ValueError, match="port: is for source: at"):
        ModemOptions.model_validate({"name": "m", "driver": "modem", "port": "/dev/ttyUSB2"})
    with pytest.raises(ValueError, match="lte_sinr"):
        ModemOptions.model_validate({"name": "m", "driver": "modem", "source": "at",
                                     "port": "/dev/ttyUSB2", "lte_sinr": "percent"})
    o = ModemOptions.model_validate({"name": "m", "driver": "modem"})
    assert (o.source, o.interval, o.timeout, o.signal_refresh) == ("modemmanager", 30.0,
                                                                   15.0, 10.0)


async def test_port_taken_by_another_driver_or_baudrate(modem: QuectelModem) -> None:
    class Other:
        async def aclose(self) -> None:
            pass

    pool = ResourcePool()
    await pool.acquire(("serial", modem.path), Other)
    driver = build_driver({"source": "at", "port": modem.path}, make_ctx("modem", pool))
    with pytest.raises(DeviceConfigError, match="already used by a device of another driver"):
        await driver.open()
    await driver.close()
    assert len(pool) == 1  # only the other driver's reference is left
    await pool.release(("serial", modem.path))

    first = build_driver({"source": "at", "port": modem.path}, make_ctx("modem-a", pool))
    second = build_driver({"source": "at", "port": modem.path, "baudrate": 9600},
                          make_ctx("modem-b", pool))
    await first.open()
    with pytest.raises(DeviceConfigError, match="at 115200 baud, this one asks for 9600"):
        await second.open()
    await second.close()
    await first.close()
    assert len(pool) == 0
