"""End to end: `parkgate run` reads a GNSS receiver and a polled probe on ptys -> MQTT;
the receiver goes silent, is unplugged and plugged back in."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import serial
from emulators.line_sensor import LineSensor, LoopThread, PtyPort
from emulators.nmea_source import NmeaSource

from tests.support import ROOT, Collector, GatewayProcess, Mosquitto, base_config, write_config


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    t = LoopThread()
    yield t
    t.close()


def metrics_text(cfg: dict[str, Any]) -> str:
    with urllib.request.urlopen(f"http://{cfg['metrics']['listen']}/metrics", timeout=5) as r:
        return str(r.read().decode())


def wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def latest(c: Collector, device: str) -> dict[str, dict[str, Any]]:
    return {r["metric"]: r for _t, m in list(c.messages) for r in m["readings"]
            if r["device"] == device}


def test_serial_sensors_reach_the_broker_through_silence_and_replug(
        tmp_path: Path, broker: Mosquitto, collector: Collector,
        loop_thread: LoopThread) -> None:
    gnss_port = PtyPort(tmp_path / "by-id" / "usb-gnss")
    probe_port = PtyPort(tmp_path / "by-id" / "usb-probe")
    gnss = NmeaSource(gnss_port, lat=29.563, lon=106.5516, alt=245.3, speed_kn=12.5,
                      course=84.4, period=0.1)
    probe = LineSensor(probe_port, values={"T": 18.25, "H": 63.5}, command=b"R")
    loop_thread.run(gnss.start())
    loop_thread.run(probe.start())
    devices = [
        {"name": "gnss", "driver": "serial", "port": gnss_port.path, "baudrate": 4800,
         "silence": "1s", "parser": {"type": "nmea", "sentences": ["GGA", "RMC"]}},
        {"name": "probe", "driver": "serial", "port": probe_port.path, "mode": "poll",
         "command": r"R\r\n", "interval": "200ms", "timeout": "1s",
         "parser": {"type": "kv", "fields": {"T": {"metric": "temperature", "unit": "°C"},
                                             "H": {"metric": "humidity", "unit": "%"}}}},
    ]
    cfg = base_config(tmp_path, broker.port, devices)
    gw = GatewayProcess(write_config(tmp_path / "gw.yaml", cfg)).start()
    try:
        assert collector.wait_for(lambda c: {"speed_knots", "altitude"} <= set(latest(c, "gnss"))
                                  and "humidity" in latest(c, "probe"), 30), gw.output()[-3000:]
        g = latest(collector, "gnss")
        assert g["latitude"]["value"] == pytest.approx(29.563, abs=1e-6)
        assert g["latitude"]["unit"] == "deg"
        assert (g["altitude"]["value"], g["altitude"]["unit"]) == (245.3, "m")
        assert (g["speed_knots"]["value"], g["speed_knots"]["unit"]) == (12.5, "kn")
        assert g["valid"]["value"] is True
        p = latest(collector, "probe")
        assert (p["temperature"]["value"], p["temperature"]["unit"]) == (18.25, "°C")
        assert (p["humidity"]["value"], p["humidity"]["unit"]) == (63.5, "%")
        assert all(r["quality"] == "good" for r in collector.readings())

        # the receiver goes quiet: device down, counted, the other sensor unaffected
        def log() -> str:
            return gw.output()[-4000:]

        loop_thread.call(lambda: setattr(gnss, "silent", True))
        assert wait(lambda: 'parkgate_device_up{device="gnss"} 0.0' in metrics_text(cfg),
                    15), log()
        text = metrics_text(cfg)
        assert 'parkgate_poll_errors_total{device="gnss",kind="silent"}' in text, text
        assert 'parkgate_serial_silences_total{device="gnss"}' in text, text
        assert 'parkgate_poll_errors_total{device="probe"' not in text, log()

        # ... talks again, then its USB adapter is unplugged and plugged back in
        loop_thread.call(lambda: setattr(gnss, "silent", False))
        assert wait(lambda: 'parkgate_device_up{device="gnss"} 1.0' in metrics_text(cfg),
                    15), log()
        loop_thread.call(gnss.unplug)
        assert wait(lambda: 'parkgate_poll_errors_total{device="gnss",kind="disconnected"}'
                    in metrics_text(cfg), 15), log()
        gnss.alt = 250.0
        loop_thread.call(gnss.replug)
        assert collector.wait_for(
            lambda c: latest(c, "gnss").get("altitude", {}).get("value") == 250.0, 30), \
            gw.output()[-3000:]
        assert gw.alive()
        assert gw.stop() == 0, log()
        assert "Traceback" not in gw.output()
    finally:
        gw.kill()
        loop_thread.run(gnss.stop())
        loop_thread.run(probe.stop())
        gnss_port.close()
        probe_port.close()


def test_emulators_run_as_scripts(tmp_path: Path) -> None:
    emulators = ROOT / "hardware-in-loop" / "emulators"
    for script, args, expect in (
            ("line_sensor.py", ["--period", "0.05"], b"T=21.50,H=45.00\r\n"),
            ("nmea_source.py", ["--period", "0.05", "--lat", "-1.5"], b"$GPGGA,"),
    ):
        link = tmp_path / script
        proc = subprocess.Popen([sys.executable, str(emulators / script), "--link", str(link),
                                 *args], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            info = json.loads(proc.stdout.readline())
            assert info["port"] == str(link)
            with serial.Serial(info["port"], 9600, timeout=2) as ser:
                data = ser.read_until(expect, 4096)
            assert data.endswith(expect)
        finally:
            proc.terminate()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
