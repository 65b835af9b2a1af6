"""End to end: the emulated OPC UA server (a process) -> `parkgate run` -> MQTT, through a
server restart: polled and subscribed devices deliver again, the subscription re-created."""

from __future__ import annotations

import subprocess
import sys
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
    wait_port,
    write_config,
)

EMULATOR = ROOT / "hardware-in-loop" / "emulators" / "opcua_server.py"


def serve(port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, str(EMULATOR), "--port", str(port),
                                 "--nodes", "3", "--change", "200ms"], stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT)
    wait_port(port, 30)
    return proc


def values(c: Collector, device: str, since: int = 0) -> list[dict[str, Any]]:
    return [r for r in c.readings()[since:] if r["device"] == device]


@pytest.mark.slow  # the supervisor's backoff decides when the devices come back
def test_polled_and_subscribed_survive_a_server_restart(
        tmp_path: Path, broker: Mosquitto, collector: Collector) -> None:
    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}"
    server = serve(port, tmp_path / "server.log")
    nodes = [{"name": f"n{i}", "node": f"ns=2;s=Bench.{i}"} for i in range(3)]
    devices = [
        {"name": "polled", "driver": "opcua", "endpoint": url, "interval": "200ms",
         "nodes": [*nodes, {"name": "broken", "node": "ns=2;s=Plant.Broken"}]},
        {"name": "subscribed", "driver": "opcua", "endpoint": url, "mode": "subscribe",
         "publishing_interval": "100ms", "keepalive": "1s", "nodes": nodes},
    ]
    gw = GatewayProcess(write_config(tmp_path / "gw.yaml",
                                     base_config(tmp_path, broker.port, devices))).start()
    try:
        def both(since: int) -> Any:
            return lambda c: all(len(values(c, d, since)) >= 6
                                 for d in ("polled", "subscribed"))

        assert collector.wait_for(both(0), timeout=40), gw.output()[-3000:]
        polled = values(collector, "polled")
        assert {r["quality"] for r in polled if r["metric"] == "broken"} == {"bad"}
        assert {r["quality"] for r in polled if r["metric"] != "broken"} == {"good"}
        server.terminate()
        server.wait(10)
        mark = len(collector.readings())
        server = serve(port, tmp_path / "server.log")
        assert collector.wait_for(both(mark), timeout=40), gw.output()[-4000:]
        again = values(collector, "subscribed", mark)
        assert {r["metric"] for r in again} == {"n0", "n1", "n2"}
        assert all(r["quality"] == "good" for r in again)
        out = gw.output()
        assert "connection lost" in out and "connection refused" in out
        assert out.count('"event": "subscribed"') >= 2  # created again after the restart
        assert "Traceback" not in out and '"level": "error"' not in out
    finally:
        code = gw.stop()
        server.terminate()
        server.wait(10)
    assert code == 0, gw.output()[-3000:]
