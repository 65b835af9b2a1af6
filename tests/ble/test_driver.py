"""The BLE driver fed through bleak's own backend interface (fake scanner/client backends)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from drivers.ble import driver as driver_module
from drivers.ble.driver import BleDriver, Throttle, _error_kind
from drivers.ble.options import BleOptions
from drivers.ble.scanner import SharedScanner, classify
from gateway.backoff import Backoff
from gateway.driver import DriverContext, ResourcePool
from gateway.errors import TransientError
from gateway.metrics import Metrics
from gateway.model import Reading
from tests.ble import fakes
from tests.ble.conftest import by_id
from tests.support import ROOT

SCANNER = "tests.ble.fakes:ReplayScanner"
CLIENT = "tests.ble.fakes:FakeGattClient"
ENC_SERVICE_DATA = "41e445f3c9962b332211006c7c4519"  # bthome.io/encryption example


def make(cfg: dict[str, Any], pool: ResourcePool, metrics: Metrics) -> BleDriver:
    opts = BleOptions.model_validate({"driver": "ble", "scanner_backend": SCANNER,
                                      "client_backend": CLIENT, **cfg})
    ctx = DriverContext(device=opts.name, log=structlog.get_logger().bind(device=opts.name),
                        resources=pool, metrics=metrics)
    return BleDriver(opts, ctx)


async def run_until(drivers: Sequence[BleDriver],
                    done: Callable[[list[Reading]], bool], timeout: float = 5.0
                    ) -> list[Reading]:
    """Open the drivers, run them until `done(readings)`, close them; returns the readings."""
    got: list[Reading] = []
    for d in drivers:
        await d.open()
    tasks = [asyncio.create_task(d.run(got.extend)) for d in drivers]
    try:
        async with asyncio.timeout(timeout):
            while not done(got):
                await asyncio.sleep(0.01)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for d in drivers:
            await d.close()
    return got


def values(readings: list[Reading], device: str) -> dict[str, Any]:
    return {r.metric: r.value for r in readings if r.device == device}


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(f"parkgate_{name}", labels) or 0.0


async def test_two_sensors_share_one_scanner_and_decode_recorded_adverts(replay: Any) -> None:
    pvvx, ruuvi, beacon = by_id("pvvx_custom"), by_id("ruuvi_rawv2"), by_id("ibeacon")
    replay([pvvx["advert"], ruuvi["advert"], beacon["advert"]])
    pool, metrics = ResourcePool(), Metrics()
    drivers = [make({"name": "cold-room", "address": "a4:c1:38:02:83:f4"}, pool, metrics),
               make({"name": "tag-1", "address": "CD:D4:FA:*", "format": "ruuvi"}, pool,
                    metrics),
               make({"name": "gate-beacon", "ibeacon": {
                   "uuid": "E2C56DB5-DFFB-48D2-B060-D0F5A71096E0", "major": 100}}, pool,
                   metrics)]

    def all_in(got: list[Reading]) -> bool:
        return {"cold-room", "tag-1", "gate-beacon"} <= {r.device for r in got} and len(
            values(got, "tag-1")) > 5

    got = await run_until(drivers, all_in)
    assert fakes.ReplayScanner.starts == 1
    assert len(pool) == 0  # the last close released the shared scanner
    cold = values(got, "cold-room")
    assert cold["temperature"] == 17.05
    assert cold["humidity"] == 44.57
    assert cold["battery"] == 88
    assert cold["battery_voltage"] == 2.998
    assert cold["present"] == 1
    assert cold["rssi"] == -34
    tag = values(got, "tag-1")
    assert tag["temperature"] == 25.01
    assert tag["pressure"] == 1004.16
    assert tag["acceleration_z"] == 1.044
    assert tag["rssi"] == -68
    assert "humidity" in tag
    assert values(got, "gate-beacon") == {"present": 1, "rssi": -77, "measured_power": -59}
    units = {r.metric: r.unit for r in got if r.device == "tag-1"}
    assert units["temperature"] == "°C"
    assert units["rssi"] == "dBm"
    assert sample(metrics, "ble_present", device="cold-room") == 1
    assert sample(metrics, "ble_rssi_dbm", device="tag-1") == -68


async def test_unchanged_values_are_throttled_and_heartbeat(replay: Any) -> None:
    replay([by_id("atc1441")["advert"]], interval=0.01)
    pool, metrics = ResourcePool(), Metrics()
    quiet = make({"name": "quiet", "address": "A4:C1:38:02:83:F4", "min_interval": "10s",
                  "heartbeat": "10s"}, pool, metrics)
    got = await run_until([quiet], lambda g: len(g) >= 6)
    await asyncio.sleep(0)
    assert sorted(r.metric for r in got) == sorted(
        ["present", "rssi", "temperature", "humidity", "battery", "battery_voltage"])

    # the same advert replayed ~30 times in 0.3 s: nothing new until the heartbeat
    got2: list[Reading] = []
    d = make({"name": "quiet", "address": "A4:C1:38:02:83:F4", "min_interval": "10s",
              "heartbeat": "10s"}, pool, metrics)
    await d.open()
    task = asyncio.create_task(d.run(got2.extend))
    await asyncio.sleep(0.3)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await d.close()
    assert len(got2) == 6
    assert sample(metrics, "ble_adverts_total", adapter="default") >= 20

    beat = make({"name": "beat", "address": "A4:C1:38:02:83:F4", "heartbeat": "100ms"},
                pool, metrics)
    got3 = await run_until([beat], lambda g: sum(r.metric == "temperature" for r in g) >= 3)
    assert [r.value for r in got3 if r.metric == "temperature"][:3] == [16.2, 16.2, 16.2]


def test_throttle_reports_changes_at_most_every_min_interval() -> None:
    t = Throttle(min_interval=1.0, heartbeat=10.0)
    assert t.due("t", 20.0, 0.0)
    assert not t.due("t", 20.5, 0.5)  # changed, but too soon
    assert t.due("t", 20.5, 1.0)
    assert not t.due("t", 20.5, 5.0)  # unchanged, heartbeat not due
    assert t.due("t", 20.5, 11.0)


async def test_sensor_goes_absent_after_timeout_and_returns(replay: Any) -> None:
    replay([by_id("pvvx_custom_fw29")["advert"]], repeat=False)
    pool, metrics = ResourcePool(), Metrics()
    d = make({"name": "fridge", "address": "A4:C1:38:8D:18:B2", "timeout": "200ms"}, pool,
             metrics)
    got = await run_until([d], lambda g: any(r.metric == "present" and r.value == 0
                                             for r in g))
    presence = [r.value for r in got if r.metric == "present"]
    assert presence == [1, 0]
    assert values(got, "fridge")["temperature"] == 20.91
    assert sample(metrics, "ble_present", device="fridge") == 0


async def test_encrypted_bthome_through_the_driver(replay: Any) -> None:
    advert = {"address": "54:48:E6:8F:80:A5", "rssi": -55,
              "service_data": {"fcd2": ENC_SERVICE_DATA}}
    replay([advert])
    pool, metrics = ResourcePool(), Metrics()
    keyed = make({"name": "enc", "address": "54:48:E6:8F:80:A5",
                  "bindkey": "231d39c1d7cc1ab1aee224cd096db932"}, pool, metrics)
    got = await run_until([keyed], lambda g: "humidity" in values(g, "enc"))
    assert values(got, "enc")["temperature"] == 25.06
    assert values(got, "enc")["humidity"] == 50.55

    keyless = make({"name": "nokey", "address": "54:48:E6:8F:80:A5"}, pool, metrics)
    got = await run_until([keyless], lambda g: "rssi" in values(g, "nokey"))
    assert set(values(got, "nokey")) == {"present", "rssi"}
    assert sample(metrics, "ble_decode_errors_total", device="nokey",
                  reason="no_bindkey") >= 1


PLAINTEXT_FORGERY = "40023409"  # plaintext BTHome: 23.56 °C, as in issue 19


async def test_plaintext_advert_from_a_keyed_sensor_is_refused_not_emitted(
        replay: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # someone in radio range replays a plaintext advert with the keyed sensor's address,
    # interleaved with the sensor's own encrypted adverts
    forged = {"address": "54:48:E6:8F:80:A5", "rssi": -40,
              "service_data": {"fcd2": PLAINTEXT_FORGERY}}
    real = {"address": "54:48:E6:8F:80:A5", "rssi": -55,
            "service_data": {"fcd2": ENC_SERVICE_DATA}}
    replay([forged, real, forged, forged], interval=0.01)
    monkeypatch.setattr(driver_module, "REFUSED_LOG_INTERVAL", 3600.0)
    pool, metrics = ResourcePool(), Metrics()
    with capture_logs() as logs:
        keyed = make({"name": "enc", "address": "54:48:E6:8F:80:A5", "min_interval": "0s",
                      "bindkey": "231d39c1d7cc1ab1aee224cd096db932"}, pool, metrics)
        got = await run_until([keyed], lambda g: sample(
            metrics, "ble_adverts_refused_total", device="enc", reason="plaintext") >= 30)
    temps = [r.value for r in got if r.metric == "temperature"]
    assert temps
    assert set(temps) == {25.06}  # never the forged 23.56
    assert {r.value for r in got if r.metric == "rssi"} == {-55}  # nor its signal
    refusals = [e for e in logs if e["event"] == "ble advert refused"]
    assert len(refusals) == 1  # 30+ refused adverts, one log line per interval
    assert refusals[0]["reason"] == "plaintext"
    assert sample(metrics, "ble_decode_errors_total", device="enc", reason="other") == 0


async def test_refused_adverts_are_no_sign_of_life(replay: Any) -> None:
    # only forged plaintext adverts: nothing is emitted and the sensor goes absent
    forged = {"address": "54:48:E6:8F:80:A5", "rssi": -40,
              "service_data": {"fcd2": PLAINTEXT_FORGERY}}
    replay([forged], interval=0.01)
    pool, metrics = ResourcePool(), Metrics()
    keyed = make({"name": "enc", "address": "54:48:E6:8F:80:A5", "timeout": "300ms",
                  "bindkey": "231d39c1d7cc1ab1aee224cd096db932"}, pool, metrics)
    got = await run_until([keyed], bool)
    assert [(r.metric, r.value) for r in got] == [("present", 0)]
    assert sample(metrics, "ble_adverts_refused_total", device="enc",
                  reason="plaintext") >= 10
    assert sample(metrics, "ble_present", device="enc") == 0
    # a keyed sensor is an encrypted BTHome sensor: a Ruuvi advert with its address is no
    # reading of it either
    ruuvi = {"address": "54:48:E6:8F:80:A5", "rssi": -40,
             "manufacturer_data": {"0x0499": "0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"}}
    replay([ruuvi], interval=0.01)
    keyed = make({"name": "enc2", "address": "54:48:E6:8F:80:A5",
                  "bindkey": "231d39c1d7cc1ab1aee224cd096db932"}, pool, metrics)
    got = await run_until([keyed], lambda g: "rssi" in values(g, "enc2"))
    assert set(values(got, "enc2")) == {"present", "rssi"}


def _sealed(objects: str, counter: int, mac: str = "54:48:E6:8F:80:A5",
            key: str = "231d39c1d7cc1ab1aee224cd096db932") -> str:
    """Encrypted BTHome service data, as bthome.io/encryption builds it."""
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM

    ctr = counter.to_bytes(4, "little")
    nonce = bytes.fromhex(mac.replace(":", "")) + b"\xd2\xfc\x41" + ctr
    sealed = AESCCM(bytes.fromhex(key), tag_length=4).encrypt(nonce, bytes.fromhex(objects),
                                                              None)
    return (b"\x41" + sealed[:-4] + ctr + sealed[-4:]).hex()


async def test_an_old_encrypted_advert_replayed_is_refused(replay: Any) -> None:
    # the sensor's current advert (counter 6000, 25.00 °C) and one recorded earlier (counter
    # 5000, 10.00 °C) replayed by someone else: it authenticates, but it is old
    new = {"address": "54:48:E6:8F:80:A5", "rssi": -55,
           "service_data": {"fcd2": _sealed("02c409", 6000)}}
    old = {"address": "54:48:E6:8F:80:A5", "rssi": -40,
           "service_data": {"fcd2": _sealed("02e803", 5000)}}
    # and a restarted sensor (battery change) counts from 0 again: accepted
    restarted = {"address": "54:48:E6:8F:80:A5", "rssi": -56,
                 "service_data": {"fcd2": _sealed("02d007", 3)}}
    replay([new, old, old, restarted], interval=0.01, repeat=False)
    pool, metrics = ResourcePool(), Metrics()
    keyed = make({"name": "enc", "address": "54:48:E6:8F:80:A5", "min_interval": "0s",
                  "bindkey": "231d39c1d7cc1ab1aee224cd096db932"}, pool, metrics)
    got = await run_until([keyed], lambda g: 20.0 in [r.value for r in g])
    assert [r.value for r in got if r.metric == "temperature"] == [25.0, 20.0]
    assert sample(metrics, "ble_adverts_refused_total", device="enc",
                  reason="replayed") == 2


async def test_local_name_pattern_and_recorded_bthome(replay: Any) -> None:
    cap = by_id("bthome_thermometer")
    replay([{**cap["advert"], "name": "SBHT-003C"},
            {**by_id("atc1441")["advert"], "name": "ATC_0283F4"}])
    pool, metrics = ResourcePool(), Metrics()
    d = make({"name": "hall", "local_name": "SBHT-*"}, pool, metrics)
    got = await run_until([d], lambda g: "voltage" in values(g, "hall"))
    assert values(got, "hall") == {"present": 1, "rssi": -60, "battery": 94,
                                   "temperature": 21.78, "humidity": 60.6, "voltage": 2.947}


async def test_scanner_failures_are_counted_and_retried(replay: Any) -> None:
    replay([by_id("atc1441")["advert"]],
           fail={"reason": ["no_adapter", "bluez_not_running", "permission_denied"],
                 "times": 3})
    pool, metrics = ResourcePool(), Metrics()
    # the first user of an adapter creates the scanner; here with a fast backoff
    scanner = await pool.acquire(("ble-scanner", None), lambda: SharedScanner(
        None, metrics, backend=SCANNER, backoff=Backoff(base=0.01, cap=0.05)))
    d = make({"name": "s1", "address": "A4:C1:38:02:83:F4"}, pool, metrics)
    got = await run_until([d], lambda g: "temperature" in values(g, "s1"))
    assert values(got, "s1")["temperature"] == 16.2
    for reason in ("no_adapter", "bluez_not_running", "permission_denied"):
        assert sample(metrics, "ble_scanner_errors_total", adapter="default",
                      reason=reason) == 1
    assert fakes.ReplayScanner.starts == 4
    assert sample(metrics, "ble_scanner_up", adapter="default") == 1
    await pool.release(("ble-scanner", None))
    assert sample(metrics, "ble_scanner_up", adapter="default") == 0
    assert scanner.last_error is None


async def test_auto_mode_falls_back_to_active_when_passive_is_unsupported(replay: Any) -> None:
    replay([by_id("atc1441")["advert"]], fail={"reason": "x", "times": 0,
                                               "passive": "unsupported"})
    pool, metrics = ResourcePool(), Metrics()
    d = make({"name": "s1", "address": "A4:C1:38:02:83:F4"}, pool, metrics)
    await run_until([d], lambda g: "temperature" in values(g, "s1"))
    assert fakes.ReplayScanner.modes == ["passive", "active"]
    assert sample(metrics, "ble_scanner_errors_total", adapter="default",
                  reason="passive_unsupported") == 1


async def test_silent_adapter_is_restarted_by_the_watchdog(replay: Any) -> None:
    replay([by_id("atc1441")["advert"]], repeat=False)
    pool, metrics = ResourcePool(), Metrics()
    d = make({"name": "s1", "address": "A4:C1:38:02:83:F4", "scanner_watchdog": "150ms"},
             pool, metrics)
    await run_until([d], lambda g: fakes.ReplayScanner.starts >= 3)
    assert sample(metrics, "ble_scanner_errors_total", adapter="default",
                  reason="watchdog") >= 2


@pytest.mark.parametrize(("reason", "hint"), [
    ("no_adapter", "no Bluetooth adapter"), ("powered_off", "powered off"),
    ("bluez_not_running", "bluetoothd"), ("permission_denied", "permission denied"),
    ("no_dbus", "D-Bus system bus"), ("passive_unsupported", "passive scanning"),
])
def test_classify_bleak_failures(reason: str, hint: str) -> None:
    got, message = classify(fakes._failure(reason))
    assert got == reason
    assert hint in message
    assert "\n" not in message


# --- GATT -------------------------------------------------------------------------------
GATT = {"characteristics": [
    {"uuid": "2a6e", "metric": "temperature", "type": "int16", "scale": 0.01, "unit": "°C"},
    {"uuid": "2a6f", "metric": "humidity", "type": "uint16", "scale": 0.01, "unit": "%"},
    {"uuid": "2a19", "metric": "battery", "type": "uint8", "unit": "%"},
    {"uuid": "ff01", "metric": "missing", "type": "uint8"}]}
GATT_VALUES = {"chars": {"2a6e": "3408", "2a6f": "a00f", "2a19": "5f"},
               "connect_delay": 0.03}


async def test_gatt_poll_reads_decodes_and_disconnects(replay: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(driver_module, "CONNECT_BACKOFF_BASE", 0.01)
    replay([], gatt={**GATT_VALUES, "fail_connects": 2})
    pool, metrics = ResourcePool(), Metrics()
    d = make({"name": "g1", "address": "A4:C1:38:00:00:01", "interval": "1s",
              "gatt": GATT}, pool, metrics)
    await d.open()
    try:
        readings = await d.read_once()
    finally:
        await d.close()
    got = {r.metric: (r.value, r.unit, r.quality) for r in readings}
    assert got == {"temperature": (21.0, "°C", "good"), "humidity": (40.0, "%", "good"),
                   "battery": (95, "%", "good"), "missing": (None, None, "bad")}
    assert fakes.FakeGattClient.connects == 3
    assert fakes.FakeGattClient.active == 0  # disconnected after reading
    assert sample(metrics, "ble_gatt_errors_total", device="g1", reason="error") == 3


async def test_gatt_gives_up_with_a_transient_error(replay: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(driver_module, "CONNECT_BACKOFF_BASE", 0.01)
    replay([], gatt={**GATT_VALUES, "fail_connects": 10})
    pool, metrics = ResourcePool(), Metrics()
    d = make({"name": "g1", "address": "A4:C1:38:00:00:01",
              "gatt": {**GATT, "attempts": 2}}, pool, metrics)
    await d.open()
    with pytest.raises(TransientError, match="cannot connect to A4:C1:38:00:00:01"):
        await d.read_once()
    await d.close()
    assert fakes.FakeGattClient.connects == 2


async def test_gatt_connections_per_adapter_are_limited(replay: Any) -> None:
    replay([], gatt=GATT_VALUES)
    pool, metrics = ResourcePool(), Metrics()
    drivers = [make({"name": f"g{i}", "address": f"A4:C1:38:00:00:0{i}", "interval": "50ms",
                     "gatt": {**GATT, "max_connections": 2}}, pool, metrics)
               for i in range(5)]
    got = await run_until(drivers, lambda g: len({r.device for r in g}) == 5)
    assert fakes.FakeGattClient.max_active == 2
    assert {r.device for r in got if r.metric == "temperature" and r.value == 21.0} == {
        f"g{i}" for i in range(5)}


async def test_gatt_notifications_then_disconnect(replay: Any) -> None:
    replay([], gatt={"notify": {"2a6e": ["3408", "3508", "3608"]}, "notify_interval": 0.02,
                     "disconnect_after_notify": True})
    pool, metrics = ResourcePool(), Metrics()
    d = make({"name": "n1", "address": "A4:C1:38:00:00:09", "min_interval": "0s",
              "gatt": {"mode": "notify", "characteristics": GATT["characteristics"][:1]}},
             pool, metrics)
    got: list[Reading] = []
    await d.open()
    with pytest.raises(TransientError, match="disconnected"):
        await asyncio.wait_for(d.run(got.extend), 5)
    await d.close()
    assert [r.value for r in got] == [21.0, 21.01, 21.02]
    assert sample(metrics, "ble_gatt_errors_total", device="n1", reason="disconnected") == 1


def test_options_reject_what_cannot_work() -> None:
    base = {"name": "x", "driver": "ble"}
    with pytest.raises(ValueError, match="say which sensor"):
        BleOptions.model_validate(base)
    with pytest.raises(ValueError, match="exact `address`"):
        BleOptions.model_validate({**base, "address": "A4:C1:*", "gatt": GATT})
    with pytest.raises(ValueError, match="32 hex digits"):
        BleOptions.model_validate({**base, "address": "A4:C1:38:00:00:01", "bindkey": "12"})
    with pytest.raises(ValueError, match="Bluetooth address"):
        BleOptions.model_validate({**base, "address": "A4:C1:38"})
    ok = BleOptions.model_validate({**base, "address": "a4-c1-38-00-00-01"})
    assert ok.address == "A4:C1:38:00:00:01"


def test_bleak_is_not_imported_until_a_ble_device_runs() -> None:
    code = ("import sys; from pathlib import Path; from gateway.config import load_config; "
            "import drivers.ble; load_config(Path('drivers/ble/sample.yaml')); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('bleak', 'dbus_fast', 'cryptography')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_decode_error_labels() -> None:
    assert _error_kind("decryption failed: wrong bindkey or address") == "decrypt_failed"
    assert _error_kind("encrypted advert: configure the device's bindkey") == "no_bindkey"
    assert _error_kind("no pvvx data in the advert") == "no_data"
    assert _error_kind("advert is in atc format, not pvvx") == "wrong_format"
