"""End to end: `parkgate run` with a modem on an emulated AT port and one behind a fake
ModemManager -> MQTT broker; the AT port vanishes and comes back."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.modem.conftest import FakeMmcli
from tests.support import ROOT, Collector, GatewayProcess, Mosquitto, base_config, write_config

EMULATOR = ROOT / "hardware-in-loop" / "emulators" / "quectel_modem.py"


class EmulatorProcess:
    """The Quectel emulator run as a script, as on a bench."""

    def __init__(self, link: Path, *args: str) -> None:
        self.link, self.args = link, args
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> EmulatorProcess:
        self.proc = subprocess.Popen([sys.executable, str(EMULATOR), "--link", str(self.link),
                                      *self.args], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == str(self.link)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorProcess]:
    emu = EmulatorProcess(tmp_path / "modem-at", "--mode", "nsa", "--urc", "RING",
                          "--error", "AT+QTEMP=+CME ERROR: 100")
    yield emu.start()
    emu.stop()


def held(c: Collector, device: str) -> list[dict[str, Any]]:
    """Readings of `device` the collector has seen."""
    return [r for r in c.readings() if r["device"] == device]


def latest(readings: list[dict[str, Any]], device: str) -> dict[str, Any]:
    return {r["metric"]: r for r in readings if r["device"] == device}


def metrics_text(cfg: dict[str, Any]) -> str:
    url = f"http://{cfg['metrics']['listen']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_modem_readings_reach_the_broker_and_the_port_comes_back(
        tmp_path: Path, modem_broker: Mosquitto, modem_collector: Collector,
        emulator: EmulatorProcess, fake_mmcli: FakeMmcli) -> None:
    broker, collector = modem_broker, modem_collector
    fake_mmcli.use(list="list-one", modem_0="modem-sa", signal="signal-sa",
                   location="location")
    devices = [
        {"name": "modem-at", "driver": "modem", "source": "at", "port": str(emulator.link),
         "interval": "1s", "command_timeout": "1s"},
        {"name": "modem-mm", "driver": "modem", "interval": "1s"},
    ]
    cfg = base_config(tmp_path, broker.port, devices)
    gw = GatewayProcess(write_config(tmp_path / "gw.yaml", cfg)).start()  # PATH: fake mmcli
    try:
        def arrived(c: Collector) -> bool:
            return all(any(r["metric"] == "nr_sinr" for r in held(c, d))
                       for d in ("modem-at", "modem-mm"))

        assert collector.wait_for(arrived, timeout=30), gw.output()[-3000:]
        at = latest(collector.readings(), "modem-at")
        assert {m: (r["value"], r["unit"]) for m, r in at.items()} == {
            "state": ("NOCONN", None), "technology": ("NR5G-NSA", None),
            "operator": ("CHINA MOBILE", None), "operator_code": ("46001", None),
            "registration": ("home", None), "registered": (1, None),
            "rsrp": (-99, "dBm"), "rsrq": (-12, "dB"), "sinr": (2, "dB"),
            "rssi": (-67, "dBm"), "nr_rsrp": (-71, "dBm"), "nr_rsrq": (-11, "dB"),
            "nr_sinr": (33, "dB"), "cell_id": ("5F1EA15", None), "band": ("B3+n78", None)}
        assert all(r["quality"] == "good" for r in at.values())
        mm = latest(collector.readings(), "modem-mm")
        assert (mm["technology"]["value"], mm["rsrp"]["value"], mm["rsrp"]["unit"],
                mm["registration"]["value"], mm["signal_quality"]["unit"]) == (
            "NR5G-SA", -101.0, "dBm", "roaming", "%")

        text = metrics_text(cfg)
        for line in (
                'parkgate_modem_signal_rsrp_dbm{device="modem-at",rat="lte"} -99.0',
                'parkgate_modem_signal_rsrp_dbm{device="modem-at",rat="nr"} -71.0',
                'parkgate_modem_signal_sinr_db{device="modem-mm",rat="nr"} 6.5',
                'parkgate_modem_registered{device="modem-at"} 1.0',
                ('parkgate_modem_info{band="B3+n78",cell_id="5F1EA15",device="modem-at",'
                'operator="CHINA MOBILE",technology="NR5G-NSA"} 1.0')):
            assert line in text, line
        assert 'parkgate_modem_at_errors_total{command="AT+QTEMP",device="modem-at"}' in text
        assert 'parkgate_modem_temperature_celsius{device="modem-at"}' not in text

        # the modem resets: its port disappears, then comes back under the same link
        emulator.stop()
        assert wait(lambda: 'parkgate_device_up{device="modem-at"} 0.0' in metrics_text(cfg),
                    timeout=15), gw.output()[-3000:]
        assert 'parkgate_device_up{device="modem-mm"} 1.0' in metrics_text(cfg)
        before = len([r for r in collector.readings() if r["device"] == "modem-at"])
        emulator.start()
        assert collector.wait_for(lambda c: len(held(c, "modem-at")) > before,
                                  timeout=60), gw.output()[-3000:]
        assert wait(lambda: 'parkgate_device_up{device="modem-at"} 1.0' in metrics_text(cfg),
                    timeout=15)
        assert [r["value"] for r in collector.readings()
                if r["device"] == "modem-at" and r["metric"] == "nr_rsrp"][-1] == -71
        assert gw.alive()
    finally:
        code = gw.stop()
    assert code == 0, gw.output()[-3000:]
    log = gw.output()
    assert "Traceback" not in log
    assert "modem.at_port_lost" in log
    assert "cannot open AT port" in log
