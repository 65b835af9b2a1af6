"""End to end: simulated BACnet devices (another process) -> `parkgate run` -> MQTT broker."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.support import ROOT, Collector, GatewayProcess, Mosquitto, base_config, write_config

from .conftest import OBJECTS, free_udp_port

EMULATOR = ROOT / "hardware-in-loop" / "emulators" / "bacnet_device.py"


def latest(c: Collector, device: str) -> dict[str, Any]:
    return {r["metric"]: r for r in c.readings() if r["device"] == device}


def test_devices_reach_the_broker(tmp_path: Path, broker: Mosquitto,
                                  collector: Collector) -> None:
    base = free_udp_port()
    while True:  # two devices on consecutive ports, the agent on a third
        ports = [base, base + 1, free_udp_port()]
        if len(set(ports)) == 3:
            break
        base = free_udp_port()
    log = tmp_path / "emulator.log"
    with log.open("wb") as out:
        emu = subprocess.Popen([sys.executable, str(EMULATOR), "--address",
                                f"127.0.0.1:{base}", "--devices", "2", "--no-rpm"],
                               stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while "serving" not in log.read_text():
            assert emu.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        network = {"address": "127.0.0.1", "port": ports[2]}
        devices = [
            {"name": f"ahu-{i}", "driver": "bacnet", "address": f"127.0.0.1:{base + i}",
             "device_id": 1001 + i, "network": network, "interval": "300ms",
             "objects": OBJECTS}
            for i in range(2)]
        cfg = base_config(tmp_path, broker.port, devices)
        gw = GatewayProcess(write_config(tmp_path / "gw.yaml", cfg)).start()
        try:
            def arrived(c: Collector) -> bool:
                return all(len(latest(c, d)) == 6 for d in ("ahu-0", "ahu-1"))

            assert collector.wait_for(arrived, timeout=30), gw.output()[-3000:]
            ahu = latest(collector, "ahu-1")
            assert (ahu["supply_temp"]["value"], ahu["supply_temp"]["unit"],
                    ahu["supply_temp"]["quality"]) == (21.5, "°C", "good")
            assert (ahu["pump"]["value"], ahu["mode"]["value"]) == (True, 2)
            text = urllib.request.urlopen(f"http://{cfg['metrics']['listen']}/metrics",
                                          timeout=5).read().decode()
            assert 'parkgate_device_up{device="ahu-0"} 1.0' in text
            assert 'parkgate_bacnet_cov_subscriptions{device="ahu-1"} 4.0' in text
            assert gw.alive()
        finally:
            code = gw.stop()
        assert code == 0, gw.output()[-3000:]
    finally:
        emu.terminate()
        emu.wait(10)
