"""End to end: `parkgate run` with BLE devices fed by the fake bleak backend -> MQTT broker."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from tests.ble import fakes
from tests.ble.conftest import by_id
from tests.support import Collector, GatewayProcess, Mosquitto, base_config, write_config

SCANNER = "tests.ble.fakes:ReplayScanner"


def latest(c: Collector, device: str) -> dict[str, Any]:
    return {r["metric"]: r for _t, m in list(c.messages) for r in m["readings"]
            if r["device"] == device}


def test_ble_readings_reach_the_broker_and_a_missing_adapter_hurts_nobody(
        tmp_path: Path, broker: Mosquitto, collector: Collector) -> None:
    adverts = [by_id("pvvx_custom")["advert"], by_id("ruuvi_rawv2")["advert"],
               {**by_id("bthome_thermometer")["advert"], "name": "SBHT-003C"},
               {"address": "54:48:E6:8F:80:A5", "rssi": -58,
                "service_data": {"fcd2": "41e445f3c9962b332211006c7c4519"}}]
    script = tmp_path / "replay.json"
    script.write_text(json.dumps({"interval": 0.02, "adverts": adverts}))
    devices = [
        {"name": "coldroom-1", "driver": "ble", "address": "A4:C1:38:02:83:F4",
         "scanner_backend": SCANNER},
        {"name": "tag-1", "driver": "ble", "address": "CD:D4:FA:*", "format": "ruuvi",
         "scanner_backend": SCANNER},
        {"name": "hall", "driver": "ble", "local_name": "SBHT-*", "scanner_backend": SCANNER},
        {"name": "door-7", "driver": "ble", "address": "54:48:E6:8F:80:A5",
         "bindkey": "231d39c1d7cc1ab1aee224cd096db932", "scanner_backend": SCANNER},
        # a second adapter that is not there: logged, counted, retried; nothing else stops
        {"name": "yard", "driver": "ble", "adapter": "hci1", "address": "A4:C1:38:00:00:01",
         "scanner_backend": "tests.ble.fakes:NoAdapterScanner"},
        {"name": "sim-1", "driver": "sim", "interval": "100ms"},
    ]
    cfg = base_config(tmp_path, broker.port, devices)
    gw = GatewayProcess(write_config(tmp_path / "gw.yaml", cfg),
                        env={fakes.REPLAY_ENV: str(script)}).start()
    try:
        def arrived(c: Collector) -> bool:
            return all(m in latest(c, d) for d, m in (
                ("coldroom-1", "humidity"), ("tag-1", "pressure"), ("hall", "voltage"),
                ("door-7", "humidity"), ("sim-1", "p0")))

        assert collector.wait_for(arrived, timeout=30), gw.output()[-3000:]
        cold = latest(collector, "coldroom-1")
        assert cold["temperature"]["value"] == 17.05
        assert cold["temperature"]["unit"] == "°C"
        assert cold["temperature"]["quality"] == "good"
        assert cold["rssi"]["value"] == -34
        assert cold["present"]["value"] == 1
        assert latest(collector, "tag-1")["pressure"]["value"] == 1004.16
        assert latest(collector, "hall")["temperature"]["value"] == 21.78
        assert latest(collector, "door-7")["temperature"]["value"] == 25.06
        assert "yard" not in {r["device"] for r in collector.readings()}

        listen = cfg["metrics"]["listen"]
        text = urllib.request.urlopen(f"http://{listen}/metrics", timeout=5).read().decode()
        assert 'parkgate_ble_scanner_errors_total{adapter="hci1",reason="no_adapter"}' in text
        assert 'parkgate_ble_scanner_up{adapter="default"} 1.0' in text
        assert 'parkgate_ble_present{device="coldroom-1"} 1.0' in text
        assert gw.alive()
    finally:
        code = gw.stop()
    assert code == 0, gw.output()[-3000:]
    log = gw.output()
    assert "ble scanner failed to start" in log
    assert "no Bluetooth adapter found" in log
    assert "Traceback" not in log
