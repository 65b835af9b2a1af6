"""Command round trip: request published -> reply received, through Mosquitto, to a device.

Starts a private Mosquitto, a device (a Modbus TCP server, or the sim driver with
`--device sim`), `parkgate run` with commands on and a verify key, then an operator client
(paho, MQTT 5, response topic and correlation data) that sends signed requests one after
the other and times each from publish to reply. Prints p50/p90/p99/max per action and the
agent's CPU per request, once with Mosquitto's defaults and once with `set_tcp_nodelay true`.

    .venv/bin/python bench/commands.py [--requests 300] [--device modbus|sim]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from procfs import cpu_seconds  # noqa: E402

from gateway.commands.signing import keygen  # noqa: E402
from tests.commands.operator import Operator  # noqa: E402
from tests.support import (  # noqa: E402
    GatewayProcess,
    Mosquitto,
    base_config,
    wait_metric,
    write_config,
)


def sim_device() -> tuple[dict[str, Any], list[tuple[str, str, Any]], Any]:
    device = {"name": "dev", "driver": "sim", "interval": "1s", "points": 0,
              "variables": [{"name": "setpoint", "initial": 20.0,
                             "write": {"min": 0, "max": 1000}}]}
    plan = [("write", "setpoint", None), ("read", "setpoint", None)]
    return device, plan, None


class _Plc:
    """The Modbus emulator in a thread of its own (what the gateway talks to)."""

    def __init__(self) -> None:
        sys.path.insert(0, str(ROOT / "hardware-in-loop"))
        from emulators.modbus_meter import MeterEmulator, points_of  # noqa: PLC0415

        from tests.modbus.conftest import LoopThread  # noqa: PLC0415

        self.loop = LoopThread()
        self.emu = MeterEmulator(points_of([{"name": "setpoint", "table": "holding",
                                             "address": 30, "type": "int16", "scale": 0.1}]),
                                 [1], values={"setpoint": 20.0})
        self.port = self.loop.run(self.emu.start_tcp())

    def stop(self) -> None:
        self.loop.run(self.emu.stop())
        self.loop.close()


def modbus_device() -> tuple[dict[str, Any], list[tuple[str, str, Any]], Any]:
    server = _Plc()
    device = {"name": "dev", "driver": "modbus", "interval": "1s",
              "transport": {"type": "tcp", "host": "127.0.0.1", "port": server.port},
              "unit": 1, "registers": [
                  {"name": "setpoint", "table": "holding", "address": 30, "type": "int16",
                   "scale": 0.1, "write": {"min": 0, "max": 1000}}]}
    plan = [("write", "setpoint", None), ("read", "setpoint", None)]
    return device, plan, server


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(args: argparse.Namespace, nodelay: bool) -> None:
    """One agent, one broker; prints a table."""
    tmp = Path(tempfile.mkdtemp(prefix="pg-bench-cmd-"))
    device, plan, server = modbus_device() if args.device == "modbus" else sim_device()
    broker = Mosquitto(extra="set_tcp_nodelay true" if nodelay else "").start()
    pub, _ = keygen(tmp / "op.key")
    cfg = base_config(tmp, broker.port, [device], gateway={"id": "bench", "site": "bench"},
                      commands={"enabled": True, "verify_keys": [f"${{file:{pub}}}"]})
    cfg["logging"] = {"level": "warning", "format": "json"}
    gw = GatewayProcess(write_config(tmp / "gw.yaml", cfg)).start()
    op = Operator(broker.port, "bench", "bench", tmp / "op.key")
    try:
        wait_metric(cfg["metrics"]["listen"], "parkgate_uplink_connected", lambda v: v == 1, 30)
        for _ in range(10):  # warm up: imports, first connections
            op.send(op.request("dev", "read", "setpoint"))
        assert gw.proc is not None
        cpu0 = cpu_seconds(gw.proc.pid)
        times: dict[str, list[float]] = {}
        statuses: dict[str, int] = {}
        for i in range(args.requests):
            action, point, _ = plan[i % len(plan)]
            value = float(i % 1000) / 10 if action == "write" else None
            doc = op.request("dev", action, point, value)
            started = time.perf_counter()
            op.publish(doc, wait=False)
            reply = op.wait(doc["id"])[0]
            times.setdefault(action, []).append(time.perf_counter() - started)
            statuses[reply["status"]] = statuses.get(reply["status"], 0) + 1
        cpu = cpu_seconds(gw.proc.pid) - cpu0
        print(f"\ncommand round trip (ms), {args.requests} signed requests one after another, "
              f"device {args.device}, Mosquitto set_tcp_nodelay {str(nodelay).lower()}")
        print(f"{'action':8} {'n':>5} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7} {'mean':>7}")
        for action, ts in times.items():
            ms = [t * 1000 for t in ts]
            print(f"{action:8} {len(ms):5d} {percentile(ms, 0.5):7.2f} "
                  f"{percentile(ms, 0.9):7.2f} {percentile(ms, 0.99):7.2f} {max(ms):7.2f} "
                  f"{statistics.fmean(ms):7.2f}")
        print(f"statuses: {statuses}; agent CPU {cpu * 1000 / args.requests:.2f} ms per request")
    finally:
        op.close()
        gw.kill()
        broker.close()
        if server is not None:
            server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--device", choices=["modbus", "sim"], default="sim")
    args = ap.parse_args()
    # Mosquitto's default keeps Nagle's algorithm on its sockets: a reply waits for the
    # delayed ACK of the request (~40 ms here); `set_tcp_nodelay true` removes that
    for nodelay in (False, True):
        run(args, nodelay)


if __name__ == "__main__":
    main()
