"""Benchmark: BACnet/IP devices (bacpypes3 emulator) read through a real `parkgate run` agent.

    python bench/bacnet.py                       # 1 device x 100 objects polled at 1 s, 30 s
    python bench/bacnet.py --mode cov            # the same 100 objects by COV, each changing
                                                 # once a second
    python bench/bacnet.py --devices 10 --window 20

The emulator runs in its own process, the agent in another, publishing to a private
Mosquitto. After a warm-up the script samples the agent's CPU time from /proc/PID/stat and
its /metrics over the window, then prints CPU % of one core, CPU ms per 1,000 readings,
requests per second and readings per second.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modbus import scrape, start_gateway, total  # noqa: E402
from procfs import cpu_seconds, rss_mib  # noqa: E402

from tests.support import GatewayProcess, Mosquitto, base_config, write_config  # noqa: E402

EMULATOR = ROOT / "hardware-in-loop" / "emulators" / "bacnet_device.py"


def free_udp_block(n: int) -> int:
    """The first of `n` consecutive UDP ports free on 127.0.0.1."""
    import socket  # noqa: PLC0415

    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + n >= 65535:
            continue
        try:
            socks = []
            for i in range(n + 1):  # one more: the agent's own port
                t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(t)
                t.bind(("127.0.0.1", base + i))
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
        return base
    raise SystemExit("bench: no block of free UDP ports")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--points", type=int, default=100)
    p.add_argument("--interval", default="1s")
    p.add_argument("--mode", choices=("poll", "cov"), default="poll")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--window", type=float, default=30.0)
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pg-bench-bacnet-"))
    base = free_udp_block(args.devices)
    emu_log = (tmp / "emulator.log").open("wb")
    emu = subprocess.Popen(
        [sys.executable, str(EMULATOR), "--address", f"127.0.0.1:{base}", "--devices",
         str(args.devices), "--points", str(args.points),
         *(["--change", "1"] if args.mode == "cov" else [])],
        stdout=emu_log, stderr=subprocess.STDOUT, cwd=ROOT)
    broker = Mosquitto().start()
    network = {"address": "127.0.0.1", "port": base + args.devices}
    devices: list[dict[str, Any]] = [
        {"name": f"ahu-{i:03d}", "driver": "bacnet", "address": f"127.0.0.1:{base + i}",
         "network": network, "interval": args.interval, "timeout": "3s",
         "cov": args.mode == "cov", "max_per_request": 25,
         "objects": [{"name": f"p{j:03d}", "object": f"analog-input,{100 + j}"}
                     for j in range(args.points)]}
        for i in range(args.devices)]
    cfg = base_config(tmp, broker.port, devices, logging={"level": "warning", "format": "json"})
    config = write_config(tmp / "bench.yaml", cfg)
    gw = GatewayProcess(config)
    try:
        listen = cfg["metrics"]["listen"]
        start_gateway(gw, listen, emu, tmp / "emulator.log", 30)
        assert gw.proc is not None
        time.sleep(args.warmup)
        m0, c0, e0, t0 = scrape(listen), cpu_seconds(gw.proc.pid), cpu_seconds(emu.pid), \
            time.monotonic()
        time.sleep(args.window)
        m1, c1, e1, t1 = scrape(listen), cpu_seconds(gw.proc.pid), cpu_seconds(emu.pid), \
            time.monotonic()
        wall = t1 - t0

        def delta(name: str) -> float:
            return total(m1, name) - total(m0, name)

        readings = delta("parkgate_readings_total")
        result = {
            "driver": "bacnet", "mode": args.mode, "devices": args.devices,
            "objects_per_device": args.points, "interval": args.interval,
            "window_s": round(wall, 1),
            "agent_cpu_percent_of_one_core": round(100 * (c1 - c0) / wall, 1),
            "agent_cpu_ms_per_1000_readings": round(1000 * (c1 - c0) / max(1.0, readings)
                                                    * 1000, 2),
            "emulator_cpu_percent": round(100 * (e1 - e0) / wall, 1),
            "readings_per_s": round(readings / wall),
            "published_per_s": round(delta("parkgate_uplink_published_readings_total") / wall),
            "bacnet_requests_per_s": round(delta("parkgate_bacnet_requests_total") / wall, 1),
            "cov_notifications_per_s": round(
                delta("parkgate_bacnet_cov_notifications_total") / wall, 1),
            "poll_errors": int(delta("parkgate_poll_errors_total")),
            "agent_rss_mb": round(rss_mib(gw.proc.pid)[0], 1),
            "agent_peak_rss_mb": round(rss_mib(gw.proc.pid)[1], 1),
        }
        print(json.dumps(result, indent=2))
        return 0
    finally:
        if gw.proc is not None:
            gw.stop()
        emu.terminate()
        emu.wait(10)
        emu_log.close()
        broker.close()


if __name__ == "__main__":
    raise SystemExit(main())
