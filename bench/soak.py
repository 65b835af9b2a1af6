"""Soak: `parkgate run` for an hour on a realistic mixed config; RSS, CPU and buffer over time.

    .venv/bin/python bench/soak.py                 # one hour
    .venv/bin/python bench/soak.py --minutes 5     # a quick check

Starts a private Mosquitto, Modbus meter emulators (pymodbus, in this process) and the
agent as a subprocess; every 5 s samples the agent's RSS (/proc/PID/status VmRSS), CPU
(/proc/PID/stat utime+stime) and buffer depth (/metrics). A subscriber checks every seq.
At the end: a PNG of the three series, RSS growth per hour (least-squares line over the
second half, after warm-up), mean CPU, and loss (issued but never delivered).

Needs matplotlib in the venv for the plot (a bench-only dependency: pip install matplotlib).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "hardware-in-loop")]

import paho.mqtt.client as paho  # noqa: E402
from emulators.modbus_meter import MeterEmulator  # noqa: E402
from procfs import cpu_seconds, rss_mib  # noqa: E402

from tests.support import (  # noqa: E402
    GatewayProcess,
    Mosquitto,
    free_port,
    scrape,
    write_config,
)


class Counter:
    """Counts delivered readings and duplicates; a bitmap of seqs keeps memory flat."""

    def __init__(self, port: int) -> None:
        self.bits = bytearray(1 << 20)
        self.delivered = self.duplicates = self.max_seq = 0
        self.lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="soak-counter",
                                  clean_session=False)
        self.client.on_connect = lambda c, *_a: c.subscribe("parkgate/+/+/+", qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        if msg.topic.endswith("/status"):
            return
        doc = json.loads(msg.payload)
        if "readings" not in doc:  # a drop notice shares the depth: told apart by payload
            return
        seqs = [r["seq"] for r in doc["readings"]]
        with self.lock:
            for s in seqs:
                if s >= len(self.bits):
                    self.bits.extend(bytearray(max(s + 1 - len(self.bits), len(self.bits))))
                if self.bits[s]:
                    self.duplicates += 1
                self.bits[s] = 1
            self.delivered += len(seqs)
            self.max_seq = max(self.max_seq, *seqs)

    def missing(self, upto: int) -> int:
        with self.lock:
            return sum(1 for s in range(1, upto) if s >= len(self.bits) or not self.bits[s])

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Meters:
    """Modbus TCP meters served from a thread's event loop."""

    def __init__(self, gateways: int, units: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.emu = MeterEmulator("eastron-sdm630", range(1, units + 1))
        self.ports = [free_port() for _ in range(gateways)]
        for port in self.ports:
            asyncio.run_coroutine_threadsafe(self.emu.start_tcp("127.0.0.1", port),
                                             self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.emu.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class Samples:
    t: list[float] = field(default_factory=list)
    rss_mib: list[float] = field(default_factory=list)
    cpu_pct: list[float] = field(default_factory=list)
    buffer: list[float] = field(default_factory=list)
    pending: list[float] = field(default_factory=list)


def config(tmp: Path, broker: int, meters: Meters, units: int) -> dict[str, Any]:
    """10 sim devices (1-5 s, 10-40 points) and `units` meters behind each emulated gateway."""
    devices: list[dict[str, Any]] = [
        {"name": f"sim-{i}", "driver": "sim", "interval": f"{1 + i % 5}s",
         "points": 10 + 10 * (i % 4), "pattern": ("sine", "random", "counter")[i % 3]}
        for i in range(10)]
    devices += [{"name": f"meter-{g}-{u}", "driver": "modbus", "unit": u,
                 "profile": "eastron-sdm630", "interval": f"{1 + (u % 5)}s",
                 "transport": {"type": "tcp", "host": "127.0.0.1", "port": port}}
                for g, port in enumerate(meters.ports) for u in range(1, units + 1)]
    return {"gateway": {"id": "soak-gw", "site": "soak"},
            "buffer": {"path": str(tmp / "buffer.db")},
            "uplink": {"mqtt": {"brokers": [f"mqtt://127.0.0.1:{broker}"]}},
            "metrics": {"listen": f"127.0.0.1:{free_port()}"},
            "logging": {"level": "warning", "format": "json"},
            "devices": devices}


def growth_per_hour(t: list[float], y: list[float]) -> float:
    """Slope of the least-squares line over the second half, per hour."""
    half = len(t) // 2
    if len(t) - half < 3:
        return float("nan")
    slope, _ = statistics.linear_regression(t[half:], y[half:])
    return slope * 3600


def plot(s: Samples, path: Path, title: str) -> bool:
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return False
    minutes = [x / 60 for x in s.t]
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    axes[0].plot(minutes, s.rss_mib, color="tab:blue")
    axes[0].set_ylabel("RSS (MiB)")
    axes[1].plot(minutes, s.cpu_pct, color="tab:red")
    axes[1].set_ylabel("CPU (% of a core)")
    axes[2].plot(minutes, s.buffer, label="in SQLite (unacked)", color="tab:green")
    axes[2].plot(minutes, s.pending, label="in memory (uncommitted)", color="tab:olive")
    axes[2].set_ylabel("buffer depth (readings)")
    axes[2].set_xlabel("minutes")
    axes[2].legend(loc="upper right")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--meters", type=int, default=2, help="emulated Modbus TCP gateways")
    p.add_argument("--units", type=int, default=5, help="meters behind each gateway")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "parkgate-soak")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="pg-soak-"))
    broker = Mosquitto().start()
    counter = Counter(broker.port)
    meters = Meters(args.meters, args.units)
    cfg = config(tmp, broker.port, meters, args.units)
    gw = GatewayProcess(write_config(tmp / "soak.yaml", cfg)).start()
    assert gw.proc is not None
    listen = cfg["metrics"]["listen"]
    s = Samples()
    started = time.monotonic()
    end = started + args.minutes * 60
    last_cpu = None
    rate = 0.0
    try:
        while time.monotonic() < end:
            time.sleep(args.sample)
            if not gw.alive():
                print("the agent exited:\n" + gw.output()[-3000:], file=sys.stderr)
                return 1
            now = time.monotonic() - started
            rss, cpu = rss_mib(gw.proc.pid)[0], cpu_seconds(gw.proc.pid)
            m = scrape(listen)
            if last_cpu is not None:
                s.t.append(now)
                s.rss_mib.append(rss)
                s.cpu_pct.append(100 * (cpu - last_cpu[1]) / (now - last_cpu[0]))
                s.buffer.append(m.get("parkgate_buffer_readings", 0.0))
                s.pending.append(m.get("parkgate_buffer_pending_readings", 0.0))
            last_cpu = (now, cpu)
            produced = sum(v for k, v in m.items() if k.startswith("parkgate_readings_total"))
            rate = produced / now
        cpu_total = cpu_seconds(gw.proc.pid)
        code = gw.stop(30)
    finally:
        if gw.alive():
            gw.kill()
        logf = getattr(gw, "_logf", None)
        if logf is not None:
            logf.close()
    time.sleep(2)
    issued = next_seq = 0
    stats_line = os.popen(f"{sys.executable} -m gateway buffer stats -c {tmp / 'soak.yaml'}"
                          ).read().strip().splitlines()
    if stats_line:
        next_seq = int(json.loads(stats_line[-1])["next_seq"])
        issued = next_seq - 1
    lost = counter.missing(next_seq) if next_seq else -1
    counter.close()
    meters.close()
    broker.close()

    minutes = args.minutes
    summary = {
        "minutes": minutes, "devices": len(cfg["devices"]),
        "readings_per_s": round(rate, 1), "issued": issued, "delivered": counter.delivered,
        "lost": lost, "duplicates": counter.duplicates, "exit_code": code,
        "rss_mib_start": round(s.rss_mib[0], 1) if s.rss_mib else None,
        "rss_mib_end": round(s.rss_mib[-1], 1) if s.rss_mib else None,
        "rss_mib_peak": round(max(s.rss_mib), 1) if s.rss_mib else None,
        "rss_growth_mib_per_hour": round(growth_per_hour(s.t, s.rss_mib), 2),
        "cpu_pct_mean": round(statistics.fmean(s.cpu_pct), 2) if s.cpu_pct else None,
        "cpu_pct_p95": round(sorted(s.cpu_pct)[int(0.95 * (len(s.cpu_pct) - 1))], 2)
        if s.cpu_pct else None,
        "cpu_s_per_1000_readings": round(1000 * cpu_total / max(issued, 1), 3),
        "buffer_depth_max": max(s.buffer) if s.buffer else None,
    }
    png = args.out / "soak.png"
    title = (f"parkgate soak: {len(cfg['devices'])} devices, {rate:.0f} readings/s, "
             f"{minutes:g} min")
    if plot(s, png, title):
        summary["plot"] = str(png)
    (args.out / "soak.json").write_text(json.dumps({"summary": summary, "samples": s.__dict__}))
    width = max(len(k) for k in summary)
    for k, v in summary.items():
        print(f"{k.ljust(width)}  {v}")
    return 0 if lost == 0 and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
