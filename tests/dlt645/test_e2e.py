"""End to end: `parkgate run` reads DL/T 645 meters on a pty bus (one of them dead) and
behind a TCP device server (the emulator run as a script) -> MQTT."""

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
from emulators.dlt645_meter import Meter, MeterBus
from emulators.line_sensor import LoopThread, PtyPort

from tests.dlt645.conftest import A1, A2
from tests.support import ROOT, Collector, GatewayProcess, Mosquitto, base_config, write_config


@pytest.fixture
def tcp_meter() -> Iterator[int]:
    """The meter emulator as a script, serving TCP like a serial device server."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "hardware-in-loop" / "emulators" /
                                                 "dlt645_meter.py"), "--tcp", "0",
                             "--address", "210300001234"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    yield int(info["tcp"])
    proc.terminate()
    proc.wait(10)
    proc.stdout.close()


def metrics_text(cfg: dict[str, Any]) -> str:
    with urllib.request.urlopen(f"http://{cfg['metrics']['listen']}/metrics", timeout=5) as r:
        return str(r.read().decode())


def latest(c: Collector, device: str) -> dict[str, dict[str, Any]]:
    return {r["metric"]: r for _t, m in list(c.messages) for r in m["readings"]
            if r["device"] == device}


def test_meters_reach_the_broker_and_a_dead_one_does_not_stall_the_bus(
        tmp_path: Path, broker: Mosquitto, collector: Collector, tcp_meter: int) -> None:
    loop_thread = LoopThread()
    port = PtyPort(tmp_path / "by-id" / "usb-rs485")
    bus = MeterBus(Meter(A1), Meter(A2, responsive=False))
    loop_thread.run(bus.serve_pty(port))
    rs485 = {"type": "serial", "port": port.path, "baudrate": 2400, "parity": "N",
             "delay": "10ms"}   # Linux ptys refuse even parity
    devices = [
        {"name": "meter-live", "driver": "dlt645", "transport": rs485, "address": A1,
         "interval": "300ms", "items": ["energy_import", "voltage_a", "current_b",
                                        "power_total", "power_factor_a", "frequency",
                                        "phase_angle_a"]},
        {"name": "meter-dead", "driver": "dlt645", "transport": rs485, "address": A2,
         "interval": "300ms", "response_timeout": "200ms", "items": ["voltage_a", "frequency"]},
        {"name": "meter-tcp", "driver": "dlt645", "address": "210300001234", "interval": "300ms",
         "transport": {"type": "tcp", "host": "127.0.0.1", "port": tcp_meter},
         "items": ["energy_import_t1", {"item": "current_a", "metric": "ia", "scale": 40}]},
    ]
    cfg = base_config(tmp_path, broker.port, devices)
    gw = GatewayProcess(write_config(tmp_path / "gw.yaml", cfg)).start()
    try:
        assert collector.wait_for(lambda c: len(latest(c, "meter-live")) == 7
                                  and len(latest(c, "meter-tcp")) == 2, 30), gw.output()[-3000:]
        live = {m: (r["value"], r["unit"], r["quality"])
                for m, r in latest(collector, "meter-live").items()}
        assert live == {"energy_import": (12345.67, "kWh", "good"),
                        "voltage_a": (231.4, "V", "good"), "current_b": (-4.567, "A", "good"),
                        "power_total": (1.2345, "kW", "good"),
                        "power_factor_a": (-0.5, None, "good"),
                        "frequency": (50.01, "Hz", "good"),
                        "phase_angle_a": (None, "deg", "bad")}   # exception reply 0xD1
        tcp = {m: (r["value"], r["unit"]) for m, r in latest(collector, "meter-tcp").items()}
        assert tcp == {"energy_import_t1": (1234.56, "kWh"), "ia": (204.92, "A")}
        assert not latest(collector, "meter-dead")

        # the live meter keeps its pace while the dead one times out on the same bus
        before = bus.meter(A1).requests
        time.sleep(2.0)
        polls = (bus.meter(A1).requests - before) / 7
        assert polls >= 3, polls   # 300ms interval; a dead meter costs 200ms per poll
        text = metrics_text(cfg)
        assert 'parkgate_device_up{device="meter-dead"} 0.0' in text
        assert 'parkgate_device_up{device="meter-live"} 1.0' in text
        assert 'parkgate_poll_errors_total{device="meter-dead",kind="timeout"}' in text
        assert ('parkgate_dlt645_exception_replies_total{device="meter-live",error="no_data"}'
                in text)
        assert f'parkgate_dlt645_bus_wait_seconds_count{{bus="{port.path}"}}' in text
        assert gw.stop() == 0
        assert "Traceback" not in gw.output()
    finally:
        gw.kill()
        loop_thread.run(bus.stop())
        port.close()
        loop_thread.close()
