"""Benchmark: many emulated Modbus meters polled through a real `parkgate run` agent.

    python bench/modbus.py                      # 100 meters x 100 registers at 1 s, 30 s
    python bench/modbus.py --devices 20 --window 10

The emulator runs in its own process (ten TCP "gateways" of ten meters each by default),
the agent in another, publishing to a private Mosquitto. After a warm-up the script
samples the agent's CPU time from /proc/PID/stat and its /metrics over the window, then
prints: CPU % of one core (and the event loop's share next to the other threads', where
SQLite commits), requests per poll, polls late or skipped (parkgate_poll_overruns_total),
poll durations, readings per second in and out, messages and commits per second.
Target (issue 11): agent at 6 % of one core or less with no skipped polls (issue 3: 12 %).

    python bench/modbus.py --profile /tmp/p.txt   # pyinstrument over the window only
    BENCH_PROFILE_CLOCK=cpu python bench/modbus.py --profile /tmp/p.txt   # by CPU time
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from procfs import CLK_TCK, cpu_seconds, rss_mib  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tests.support import (  # noqa: E402
    GatewayProcess,
    Mosquitto,
    base_config,
    free_port,
    write_config,
)

EMULATOR = ROOT / "hardware-in-loop" / "emulators" / "modbus_meter.py"


def write_profile(path: Path, registers: int) -> None:
    """A meter with `registers` one-register values (mixed types, scaled) from address 0."""
    lines = ["profile: bench-meter", "manufacturer: parkgate", "model: bench",
             "defaults: {table: holding}", "registers:"]
    units = ["V", "A", "W", "Hz", "kWh", "%"]
    for i in range(registers):
        dtype = "int16" if i % 2 else "uint16"
        lines.append(f"  - {{name: r{i:03d}, address: {i}, type: {dtype}, scale: 0.1, "
                     f"unit: '{units[i % len(units)]}'}}")
    path.write_text("\n".join(lines) + "\n")


def scrape(listen: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the agent's /metrics, keyed by (name, sorted labels)."""
    text = urllib.request.urlopen(f"http://{listen}/metrics", timeout=5).read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    return sum(v for (n, _), v in m.items() if n == name)


def values(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> list[float]:
    return [v for (n, _), v in m.items() if n == name]


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"bench: timed out waiting for {what}")


def start_gateway(gw: GatewayProcess, listen: str, emu: subprocess.Popen[bytes],
                  emu_log: Path, emu_timeout: float) -> None:
    """Wait for the emulator to say "serving" (it must not die), start the gateway and wait
    for its first readings on the metrics endpoint `listen`."""
    def emulator_ready() -> bool:
        if emu.poll() is not None:
            raise SystemExit("bench: the emulator died:\n" + emu_log.read_text()[-2000:])
        return "serving" in emu_log.read_text()

    wait_until(emulator_ready, emu_timeout, "the emulator")
    gw.start()
    wait_until(lambda: total(scrape(listen), "parkgate_readings_total") > 0, 30,
               "the first readings")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--registers", type=int, default=100)
    p.add_argument("--per-port", type=int, default=10, help="meters behind one TCP port")
    p.add_argument("--interval", default="1s")
    p.add_argument("--warmup", type=float, default=8.0)
    p.add_argument("--window", type=float, default=30.0)
    p.add_argument("--baseline", action="store_true",
                   help="the same number of readings from the sim driver, no Modbus: what "
                        "the rest of the agent (buffer, uplink) costs")
    p.add_argument("--profile", metavar="FILE", type=Path, default=None,
                   help="run the agent under pyinstrument (sampling) over the measured "
                        "window and write its text report here (a call tree, then self "
                        "time by function; FILE.all has the full tree); profiling costs "
                        "CPU, the figures are then not comparable")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pg-bench-modbus-"))
    profile = tmp / "bench-meter.yaml"
    write_profile(profile, args.registers)
    ports = (args.devices + args.per_port - 1) // args.per_port
    base = free_port()
    while any(_busy(base + i) for i in range(ports)):
        base = free_port()
    emu_log = (tmp / "emulator.log").open("wb")
    emu = subprocess.Popen(
        [sys.executable, str(EMULATOR), "--profile", str(profile), "--tcp",
         f"127.0.0.1:{base}-{base + ports - 1}", "--units", f"1-{args.per_port}"],
        stdout=emu_log, stderr=subprocess.STDOUT, cwd=ROOT)
    broker = Mosquitto().start()
    devices: list[dict[str, Any]] = [
        {"name": f"meter-{i:03d}", "driver": "modbus",
         "transport": {"type": "tcp", "host": "127.0.0.1", "port": base + i // args.per_port},
         "unit": i % args.per_port + 1, "profile": str(profile),
         "interval": args.interval, "timeout": "2s"}
        for i in range(args.devices)]
    if args.baseline:
        devices = [{"name": f"sim-{i:03d}", "driver": "sim", "interval": args.interval,
                    "points": args.registers, "pattern": "random"}
                   for i in range(args.devices)]
    cfg = base_config(tmp, broker.port, devices,
                      logging={"level": "warning", "format": "json"})
    config = write_config(tmp / "bench.yaml", cfg)
    gw = GatewayProcess(config) if args.profile is None else Profiled(config, args.profile)
    try:
        listen = cfg["metrics"]["listen"]
        start_gateway(gw, listen, emu, tmp / "emulator.log", 20)
        assert gw.proc is not None
        time.sleep(args.warmup)
        if isinstance(gw, Profiled):
            gw.begin()
        m0, c0, e0, t0 = scrape(listen), cpu_seconds(gw.proc.pid), cpu_seconds(emu.pid), \
            time.monotonic()
        u0, s0 = user_system(gw.proc.pid)
        th0 = thread_seconds(gw.proc.pid)
        time.sleep(args.window)
        m1, c1, e1, t1 = scrape(listen), cpu_seconds(gw.proc.pid), cpu_seconds(emu.pid), \
            time.monotonic()
        u1, s1 = user_system(gw.proc.pid)
        th1 = thread_seconds(gw.proc.pid)
        wall = t1 - t0

        def delta(name: str) -> float:
            return total(m1, name) - total(m0, name)

        polls = delta("parkgate_poll_duration_seconds_count")
        per_poll = values(m1, "parkgate_modbus_requests_per_poll")
        result = {
            "driver": "sim (baseline)" if args.baseline else "modbus",
            "devices": args.devices, "registers_per_device": args.registers,
            "interval": args.interval, "window_s": round(wall, 1),
            "agent_cpu_percent_of_one_core": round(100 * (c1 - c0) / wall, 1),
            "emulator_cpu_percent": round(100 * (e1 - e0) / wall, 1),
            "polls_per_s": round(polls / wall, 1),
            "requests_per_poll_mean": round(delta("parkgate_modbus_requests_total") / polls, 2)
            if polls else None,
            "requests_per_poll_max": max(per_poll) if per_poll else None,
            "polls_late_or_skipped": int(delta("parkgate_poll_overruns_total")),
            "poll_errors": int(delta("parkgate_poll_errors_total")),
            "poll_duration_mean_ms": round(1000 * delta("parkgate_poll_duration_seconds_sum")
                                           / polls, 2) if polls else None,
            "readings_per_s": round(delta("parkgate_readings_total") / wall),
            "published_per_s": round(delta("parkgate_uplink_published_readings_total") / wall),
            "messages_per_s": round(delta("parkgate_uplink_published_messages_total") / wall,
                                    1),
            "commits_per_s": round(delta("parkgate_buffer_commits_total") / wall, 1),
            "event_loop_lag_s": max(values(m1, "parkgate_event_loop_lag_seconds") or [0.0]),
            "agent_user_percent": round(100 * (u1 - u0) / wall, 1),
            "agent_system_percent": round(100 * (s1 - s0) / wall, 1),
            "agent_threads_percent": {name: round(100 * (th1[name] - th0.get(name, 0.0)) / wall,
                                                  1) for name in sorted(th1)},
            "agent_cpu_ms_per_1000_readings": round(
                1000 * (c1 - c0) / max(1.0, delta("parkgate_readings_total")) * 1000, 2),
            "agent_rss_mb": round(rss_mib(gw.proc.pid)[0], 1),
            "agent_peak_rss_mb": round(rss_mib(gw.proc.pid)[1], 1),
        }
        print(json.dumps(result, indent=2))
        ok = result["agent_cpu_percent_of_one_core"] <= 6 and \
            result["polls_late_or_skipped"] == 0
        print(f"target (<=6% of one core, no skipped polls): {'met' if ok else 'NOT met'}")
        return 0
    finally:
        if gw.proc is not None:
            gw.stop()
            logf = getattr(gw, "_logf", None)
            if logf is not None:
                logf.close()
        emu.terminate()
        emu.wait(10)
        emu_log.close()
        broker.close()


PROFILE_RUNNER = """
import os, signal, sys
from pyinstrument import Profiler
from pyinstrument.renderers import ConsoleRenderer
report = sys.argv.pop(1)
profiler = Profiler(interval=0.0005, async_mode="disabled")
if os.environ.get("BENCH_PROFILE_CLOCK") == "cpu":
    # sample by the event loop thread's CPU time: waits, preemption and GIL hand-overs
    # drop out (each sample then costs a clock_gettime system call)
    import time
    from pyinstrument.stack_sampler import get_stack_sampler
    get_stack_sampler().timer_func = time.thread_time

def begin(*_):
    # the measured window starts: start-up and warm-up stay out of the report
    profiler.start()

def done(*_):
    # write the reports and leave at once: the measured window is over
    session = profiler.stop()
    with open(report, "w") as f:
        f.write(profiler.output_text(unicode=False, color=False, show_all=False))
        f.write("\\n\\nSelf time by function (all frames):\\n")
        f.write(ConsoleRenderer(flat=True, show_all=True).render(session))
    with open(report + ".all", "w") as f:
        f.write(ConsoleRenderer(show_all=True).render(session))
    os._exit(0)

signal.signal(signal.SIGUSR2, begin)
signal.signal(signal.SIGUSR1, done)
from gateway.cli import main
main(sys.argv[1:])
"""


class Profiled(GatewayProcess):
    """The agent under pyinstrument; SIGUSR1 writes the report and ends it."""

    def __init__(self, config: Path, report: Path) -> None:
        super().__init__(config)
        self.report = report.resolve()

    def start(self) -> Profiled:
        self._logf = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PROFILE_RUNNER, str(self.report), "run", "-c",
             str(self.config)], stdout=self._logf, stderr=subprocess.STDOUT, env=self.env,
            cwd=ROOT)
        return self

    def begin(self) -> None:
        """Start sampling (the measured window begins)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR2)

    def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR1)
        return super().stop(timeout)


def user_system(pid: int) -> tuple[float, float]:
    """utime and stime of a process in seconds (the kernel's share is loopback TCP)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    f = stat[stat.rindex(")") + 2:].split()
    return int(f[11]) / CLK_TCK, int(f[12]) / CLK_TCK


def thread_seconds(pid: int) -> dict[str, float]:
    """utime + stime of the event loop (the main thread) and of all other threads together
    (SQLite commits run in the buffer's thread)."""
    out = {"loop": 0.0, "threads": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended
        f = stat[stat.rindex(")") + 2:].split()
        out["loop" if task.name == str(pid) else "threads"] += (int(f[11]) + int(f[12])) \
            / CLK_TCK
    return out


def _busy(port: int) -> bool:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


if __name__ == "__main__":
    raise SystemExit(main())
