"""End to end: emulated meters (separate processes) -> `parkgate run` -> MQTT broker."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    ROOT,
    Collector,
    GatewayProcess,
    Mosquitto,
    base_config,
    free_port,
    write_config,
)

EMULATOR = ROOT / "hardware-in-loop" / "emulators" / "modbus_meter.py"


class EmulatorProcess:
    """`modbus_meter.py` as a script; ready once it logged its `serving` line."""

    def __init__(self, log: Path, *args: str) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen([sys.executable, str(EMULATOR), *args], stdout=out,
                                         stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 15
        while "serving" not in log.read_text():
            assert self.proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def meters(tmp_path: Path) -> Iterator[dict[str, Any]]:
    port = free_port()
    link = tmp_path / "by-id" / "usb-rs485"
    tcp = EmulatorProcess(tmp_path / "tcp.log", "--profile", "eastron-sdm630", "--tcp",
                          f"127.0.0.1:{port}", "--units", "1,2")
    rtu = EmulatorProcess(tmp_path / "rtu.log", "--profile", "chint-dtsu666", "--rtu",
                          "--link", str(link), "--units", "7")
    yield {"port": port, "link": str(link)}
    tcp.stop()
    rtu.stop()


def latest(c: Collector, device: str) -> dict[str, Any]:
    return {r["metric"]: r for r in c.readings() if r["device"] == device}


def test_meters_reach_the_broker(tmp_path: Path, broker: Mosquitto,
                                 collector: Collector, meters: dict[str, Any]) -> None:
    tcp = {"type": "tcp", "host": "127.0.0.1", "port": meters["port"]}
    devices = [
        {"name": "main-1", "driver": "modbus", "transport": tcp, "unit": 1,
         "profile": "eastron-sdm630", "interval": "200ms"},
        {"name": "main-2", "driver": "modbus", "transport": tcp, "unit": 2,
         "profile": "eastron-sdm630", "interval": "200ms",
         "only": ["voltage_l1", "energy_import"]},
        # a meter that never answers behind the same gateway: the others do not mind
        {"name": "dead-9", "driver": "modbus", "transport": tcp, "unit": 9,
         "profile": "eastron-sdm630", "interval": "200ms", "request_timeout": "100ms",
         "retries": 0},
        {"name": "pv-7", "driver": "modbus", "unit": 7, "profile": "chint-dtsu666",
         "interval": "300ms",
         "transport": {"type": "rtu", "port": meters["link"], "baudrate": 9600}},
    ]
    cfg = base_config(tmp_path, broker.port, devices)
    gw = GatewayProcess(write_config(tmp_path / "gw.yaml", cfg)).start()
    try:
        def arrived(c: Collector) -> bool:
            return all(m in latest(c, d) for d, m in (
                ("main-1", "reactive_energy_total"), ("main-2", "energy_import"),
                ("pv-7", "frequency")))

        assert collector.wait_for(arrived, timeout=30), gw.output()[-3000:]
        m1, m2, pv = latest(collector, "main-1"), latest(collector, "main-2"), \
            latest(collector, "pv-7")
        assert len(m1) == 36
        assert set(m2) == {"voltage_l1", "energy_import"}
        assert 220 < m1["voltage_l1"]["value"] < 240
        assert (m1["voltage_l1"]["unit"], m1["voltage_l1"]["quality"]) == ("V", "good")
        assert 49.9 < pv["frequency"]["value"] < 50.1
        assert 220 < pv["voltage_l1"]["value"] < 240  # scale 0.1 applied
        assert "dead-9" not in {r["device"] for r in collector.readings()}
        listen = cfg["metrics"]["listen"]
        text = urllib.request.urlopen(f"http://{listen}/metrics", timeout=5).read().decode()
        assert 'parkgate_modbus_requests_per_poll{device="main-1"} 4.0' in text
        assert 'parkgate_device_up{device="dead-9"} 0.0' in text
        assert 'parkgate_poll_errors_total{device="dead-9",kind="timeout"}' in text
        assert f'parkgate_modbus_link_up{{bus="rtu:{meters["link"]}"}} 1.0' in text
        assert gw.alive()
    finally:
        code = gw.stop()
    assert code == 0, gw.output()[-3000:]
