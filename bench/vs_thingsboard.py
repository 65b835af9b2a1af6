"""parkgate vs ThingsBoard IoT Gateway: same Modbus emulator, same local Mosquitto.

    bash bench/thingsboard/setup.sh          # once: ThingsBoard gateway into bench/.tb-venv
    .venv/bin/python bench/vs_thingsboard.py  # 10 x 20, 50 x 50, 100 x 100 registers at 1 s
    .venv/bin/python bench/vs_thingsboard.py --quick             # 10 x 20, short windows
    .venv/bin/python bench/vs_thingsboard.py --sizes 100x100 --repeat 2

Each gateway runs alone against one pymodbus emulator process that serves N devices (one
Modbus TCP port each, unit 1) of M holding registers (uint16), polled every second, and
publishes to one Mosquitto; per size the two alternate (parkgate first, then ThingsBoard;
with `--repeat`, the order flips each round). Measured per gateway: delivered readings/s
(a subscriber counts values), CPU seconds per 1,000 delivered readings and % of a core,
steady/peak RSS (from /proc), time from process start to the first data message, what
arrives of the readings taken during a broker outage (`--outage`, 30 s), and how soon
data flows again: from the first moment the restarted broker accepts TCP to the first
value measured after the broker went away arriving (a message the broker held and
redelivers does not count) and to the first value measured after it was back (fresh).
The 1-minute load average during each run is printed: the VM is shared, and CPU seconds
per reading suffer less from contention than % of a core or readings/s.
ThingsBoard's gateway waits for a `getSessionLimits` RPC reply after connecting, which only
a ThingsBoard server sends: the subscriber here answers it with empty limits (no rate
limiting).

ThingsBoard gateway runs with its shipped defaults (memory storage, ON_RECEIVED reporting)
plus the Modbus connector generated here; parkgate with its defaults, as installed
(bench/footprint.py's `prepare`: no editable-install hook, the systemd unit's environment,
bytecode compiled beforehand). The last lines are a
markdown table of every run, for README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
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
from footprint import Runner, prepare  # noqa: E402
from procfs import cpu_seconds, rss_mib, terminate  # noqa: E402

from tests.support import Mosquitto, free_port, write_config  # noqa: E402

TB_VENV = ROOT / "bench" / ".tb-venv"
TB_PACKAGE = "thingsboard_gateway"
RPC_REQUEST = "v1/devices/me/rpc/request/"
RPC_RESPONSE = "v1/devices/me/rpc/response/"


# --- the emulator (a process of its own, so neither gateway pays for it) ----------------------

def serve(devices: int, registers: int, port0: int) -> None:
    """`--serve`: N Modbus TCP servers on port0.. of M changing uint16 holding registers."""
    from emulators.modbus_meter import MeterEmulator, points_of  # noqa: PLC0415

    pts = points_of([{"name": f"r{i}", "table": "holding", "address": i, "type": "uint16"}
                     for i in range(registers)])

    async def run() -> None:
        emu = MeterEmulator(pts, [1], refresh=0.5)
        emu.requests = _Discard()  # an hour of request logs is not needed here
        for i in range(devices):
            await emu.start_tcp("127.0.0.1", port0 + i)
        print("serving", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await emu.stop()

    asyncio.run(run())


class _Discard(list):  # type: ignore[type-arg]
    def append(self, _item: Any) -> None:
        pass


# --- the subscriber -------------------------------------------------------------------------

class Subscriber:
    """Counts values of both payload formats and answers ThingsBoard's getSessionLimits."""

    def __init__(self, port: int) -> None:
        self.lock = threading.Lock()
        self.values = 0
        self.first_at: float | None = None
        self.ts_counts: dict[int, int] = {}
        """Values per second of measurement time (ts // 1000)."""
        self.arrivals: list[tuple[float, int]] = []
        """(monotonic arrival, newest ts in ms) per data message."""
        self.rpc_answered = 0
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-sub",
                                  clean_session=False)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        # back within 10-20 ms of the broker: its own delay must not count as theirs
        self.client.reconnect_delay_set(0.01, 0.02)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, c: paho.Client, *_a: Any) -> None:
        c.subscribe([("parkgate/+/+/+", 1), ("v1/gateway/telemetry", 1),
                     (RPC_REQUEST + "+", 1)])

    def _on_message(self, c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        topic = msg.topic
        if topic.startswith(RPC_REQUEST):
            req = json.loads(msg.payload)
            if req.get("method") == "getSessionLimits":
                c.publish(RPC_RESPONSE + topic[len(RPC_REQUEST):],
                          json.dumps({"rateLimits": {}, "gatewayRateLimits": {}}), qos=1)
                self.rpc_answered += 1
            return
        if topic.endswith("/status"):
            return
        doc = json.loads(msg.payload)
        if topic == "v1/gateway/telemetry":  # {"device": [{"ts": ..., "values": {...}}]}
            counts = [(int(e.get("ts", time.time() * 1000)), len(e["values"]))
                      for entries in doc.values()
                      for e in (entries if isinstance(entries, list) else [entries])]
        elif "readings" in doc:  # not a drop notice (same topic depth, told apart by payload)
            counts = [(r["ts"], 1) for r in doc["readings"]]
        else:
            return
        now = time.monotonic()
        with self.lock:
            if self.first_at is None:
                self.first_at = now
            self.arrivals.append((now, max((ts for ts, _n in counts), default=0)))
            for ts, n in counts:
                self.values += n
                self.ts_counts[ts // 1000] = self.ts_counts.get(ts // 1000, 0) + n

    def taken_between(self, start_s: float, end_s: float) -> int:
        """Values measured in [start, end) (epoch seconds) that arrived."""
        with self.lock:
            return sum(n for s, n in self.ts_counts.items() if start_s <= s < end_s)

    def first_after(self, t: float, min_ts: int = 0) -> float | None:
        """Arrival time of the first message at or after `t` with a value of `ts` >= min_ts."""
        with self.lock:
            return next((at for at, ts in self.arrivals if at >= t and ts >= min_ts), None)

    def reset(self) -> None:
        with self.lock:
            self.values = 0
            self.first_at = None
            self.ts_counts.clear()
            self.arrivals.clear()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# --- the two gateways -------------------------------------------------------------------------

def parkgate_cmd(run: Runner, tmp: Path, broker: int, devices: int, registers: int,
                 port0: int) -> tuple[list[str], dict[str, str], Path]:
    """parkgate as installed: the unit's environment (-OO), bytecode compiled beforehand."""
    regs = [{"name": f"r{i}", "table": "holding", "address": i, "type": "uint16"}
            for i in range(registers)]
    cfg = {"gateway": {"id": "bench-gw", "site": "bench"},
           "buffer": {"path": str(tmp / "buffer.db")},
           "uplink": {"mqtt": {"brokers": [f"mqtt://127.0.0.1:{broker}"]}},
           "metrics": {"listen": f"127.0.0.1:{free_port()}"},
           "logging": {"level": "warning", "format": "json"},
           "devices": [{"name": f"dev{i}", "driver": "modbus", "unit": 1, "interval": "1s",
                        "transport": {"type": "tcp", "host": "127.0.0.1", "port": port0 + i},
                        "registers": regs} for i in range(devices)]}
    path = write_config(tmp / "parkgate.yaml", cfg)
    return [run.python, "-m", "gateway", "run", "-c", str(path)], run.env, ROOT


def thingsboard_cmd(tmp: Path, broker: int, devices: int, registers: int, port0: int
                    ) -> tuple[list[str], dict[str, str], Path]:
    shipped = TB_VENV / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" \
        / "site-packages" / TB_PACKAGE / "config"
    conf = tmp / "tb-config"
    shutil.copytree(shipped, conf)  # logs.json, list.json, statistics/ ... as shipped
    tb = json.loads((shipped / "tb_gateway.json").read_text())
    tb["thingsboard"].update({"host": "127.0.0.1", "port": broker, "remoteConfiguration": False,
                              "remoteShell": False,
                              "statistics": {"enable": False, "statsSendPeriodInSeconds": 3600}})
    tb["thingsboard"]["security"] = {"type": "accessToken", "accessToken": "bench"}
    tb["connectors"] = [{"type": "modbus", "name": "Modbus", "configuration": "modbus.json"}
                        ] if devices else []
    (conf / "tb_gateway.json").write_text(json.dumps(tb, indent=2))
    logs = json.loads((shipped / "logs.json").read_text())
    for logger in logs.get("loggers", {}).values():
        logger["level"] = "WARNING"
    (conf / "logs.json").write_text(json.dumps(logs, indent=2))
    slaves = [{"host": "127.0.0.1", "port": port0 + i, "type": "tcp", "method": "socket",
               "unitId": 1, "deviceName": f"dev{i}", "deviceType": "meter", "timeout": 1,
               "byteOrder": "BIG", "wordOrder": "BIG", "retries": 1, "retryOnEmpty": True,
               "retryOnInvalid": True, "pollPeriod": 1000, "connectAttemptTimeMs": 5000,
               "connectAttemptCount": 5, "waitAfterFailedAttemptsMs": 30000,
               "attributes": [], "attributeUpdates": [], "rpc": [],
               "timeseries": [{"tag": f"r{r}", "type": "16uint", "functionCode": 3,
                               "objectsCount": 1, "address": r} for r in range(registers)]}
              for i in range(devices)]
    (conf / "modbus.json").write_text(json.dumps({"master": {"slaves": slaves}}, indent=2))
    (tmp / "logs").mkdir(exist_ok=True)
    env = {"TB_GW_CONFIG_DIR": str(conf)}
    return [str(TB_VENV / "bin" / "thingsboard-gateway")], env, tmp


# --- measuring ----------------------------------------------------------------------------------

@dataclass
class Row:
    gateway: str
    size: str
    readings_per_s: float = 0.0
    cpu_s_per_1000: float | None = None
    cpu_pct: float = 0.0
    rss_steady_mib: float = 0.0
    rss_peak_mib: float = 0.0
    first_publish_s: float | None = None
    outage_expected: int = 0
    outage_delivered: int = 0
    flowing_s: float | None = None
    """Broker accepting TCP again -> the first value arriving."""
    fresh_s: float | None = None
    """Broker accepting TCP again -> the first value measured after that arriving."""
    load: float = 0.0
    """1-minute load average at the end of the steady window (2 cores)."""
    notes: list[str] = field(default_factory=list)

    @property
    def outage_pct(self) -> float:
        return 100 * self.outage_delivered / self.outage_expected if self.outage_expected else 0


def run_one(name: str, cmd_fn: Any, broker: Mosquitto, sub: Subscriber, devices: int,
            registers: int, port0: int, *, warmup: float, steady: float, outage: float,
            drain: float, start_limit: float = 120.0) -> Row:
    tmp = Path(tempfile.mkdtemp(prefix=f"pg-bench-{name}-"))
    cmd, env, cwd = cmd_fn(tmp, broker.port, devices, registers, port0)
    sub.reset()
    log = (tmp / "out.log").open("wb")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **env}, stdout=log,
                            stderr=subprocess.STDOUT)
    row = Row(name, f"{devices}x{registers}")
    try:
        while sub.first_at is None and time.monotonic() - t0 < start_limit \
                and proc.poll() is None:
            time.sleep(0.05)
        if sub.first_at is None:
            tail = (tmp / "out.log").read_text(errors="replace")[-2000:]
            row.notes.append(f"no data within {start_limit:.0f} s: {tail}")
            return row
        row.first_publish_s = sub.first_at - t0
        time.sleep(warmup)
        v0, c0, w0 = sub.values, cpu_seconds(proc.pid, children=True), time.monotonic()
        rss: list[float] = []
        while time.monotonic() - w0 < steady:
            time.sleep(1.0)
            rss.append(rss_mib(proc.pid)[0])
        v1, c1, w1 = sub.values, cpu_seconds(proc.pid, children=True), time.monotonic()
        row.readings_per_s = (v1 - v0) / (w1 - w0)
        # nothing delivered: no figure per reading (the row says 0 readings/s)
        row.cpu_s_per_1000 = 1000 * (c1 - c0) / (v1 - v0) if v1 > v0 else None
        row.cpu_pct = 100 * (c1 - c0) / (w1 - w0)
        row.rss_steady_mib = sum(rss) / len(rss)
        row.load = float(Path("/proc/loadavg").read_text().split()[0])
        if outage > 0:
            # the broker goes away for `outage` s: which readings taken meanwhile arrive, and
            # how long after the broker accepts again does data flow?
            before = time.time()
            # a window that ended 2 s ago: the last second's readings may still be in a batch
            baseline = sub.taken_between(int(before) - 12, int(before) - 2) / 10
            broker.stop()
            out_start = time.time()
            stop_ms = int(1000 * out_start)
            time.sleep(outage)
            out_end = time.time()
            broker.proc = subprocess.Popen([broker.exe, "-c", str(broker.conf)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            back = accepting_at(broker.port)
            back_ms = int(1000 * (time.time() - (time.monotonic() - back)))
            row.outage_expected = round(baseline * (int(out_end) - int(out_start) - 1))
            while time.monotonic() - back < drain and sub.first_after(back, back_ms) is None:
                time.sleep(0.05)
            # measured after the broker went: not a message it had and redelivers on restart
            flowing = sub.first_after(back, stop_ms)
            fresh = sub.first_after(back, back_ms)
            row.flowing_s = None if flowing is None else flowing - back
            row.fresh_s = None if fresh is None else fresh - back
            last, stable = -1, 0
            while time.monotonic() - back < drain and stable < 5:  # until nothing more comes
                time.sleep(1.0)
                now = sub.taken_between(int(out_start) + 1, int(out_end))
                stable = stable + 1 if now == last else 0
                last = now
            row.outage_delivered = sub.taken_between(int(out_start) + 1, int(out_end))
        row.rss_peak_mib = rss_mib(proc.pid)[1]
        if proc.poll() is not None:
            row.notes.append(f"exited with {proc.returncode}")
        return row
    finally:
        terminate(proc)
        log.close()
        if name == "thingsboard" and (tmp / "logs").exists():
            errors = [line for f in (tmp / "logs").glob("*.log")
                      for line in f.read_text(errors="replace").splitlines() if "|ERROR|" in line]
            if errors:
                row.notes.append(f"{len(errors)} ERROR log lines, first: {errors[0][-160:]}")
        shutil.rmtree(tmp, ignore_errors=True)


def idle(name: str, cmd_fn: Any, broker: Mosquitto, seconds: float) -> float:
    """CPU % of a gateway with no devices, after 10 s of start-up."""
    tmp = Path(tempfile.mkdtemp(prefix=f"pg-idle-{name}-"))
    cmd, env, cwd = cmd_fn(tmp, broker.port, 0, 0, 0)
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(10)
        c0, t0 = cpu_seconds(proc.pid, children=True), time.monotonic()
        time.sleep(seconds)
        return 100 * (cpu_seconds(proc.pid, children=True) - c0) / (time.monotonic() - t0)
    finally:
        terminate(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def _s(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def table(rows: list[Row]) -> list[str]:
    """Markdown: one row per run."""
    head = ["gateway", "size", "readings/s", "CPU s/1k readings", "CPU % of a core",
            "RSS MiB", "peak MiB", "1st pub s", "outage delivered", "flowing again s",
            "fresh reading s", "load"]
    lines = [head, ["---"] * len(head)] + [
        [r.gateway, r.size, f"{r.readings_per_s:.0f}", _s(r.cpu_s_per_1000, 3),
         f"{r.cpu_pct:.1f}", f"{r.rss_steady_mib:.0f}", f"{r.rss_peak_mib:.0f}",
         _s(r.first_publish_s),
         f"{r.outage_delivered}/{r.outage_expected} ({r.outage_pct:.0f}%)",
         _s(r.flowing_s), _s(r.fresh_s), f"{r.load:.1f}"] for r in rows]
    return ["| " + " | ".join(line) + " |" for line in lines]


def accepting_at(port: int, limit: float = 30.0) -> float:
    """The first moment 127.0.0.1:port accepts TCP (5 ms resolution)."""
    import socket  # noqa: PLC0415

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.05):
                return time.monotonic()
        except OSError:
            time.sleep(0.005)
    raise TimeoutError(f"the broker did not come back on port {port}")


def _range(xs: list[float], fmt: str = "{:.1f}") -> str:
    if not xs:
        return "-"
    lo, hi = fmt.format(min(xs)), fmt.format(max(xs))
    return lo if lo == hi else f"{lo}-{hi}"


def summary(rows: list[Row], sizes: list[str]) -> list[str]:
    """Markdown: per size, parkgate's and ThingsBoard's ranges over the repeats."""
    out = ["| size | | parkgate | ThingsBoard | ratio |", "| --- | --- | --- | --- | --- |"]
    for size in sizes:
        pg = [r for r in rows if r.gateway == "parkgate" and r.size == size
              and r.first_publish_s is not None]
        tb = [r for r in rows if r.gateway == "thingsboard" and r.size == size
              and r.first_publish_s is not None]
        for name in ("parkgate", "thingsboard"):
            silent = sum(1 for r in rows if r.gateway == name and r.size == size
                         and r.first_publish_s is None)
            if silent:
                out.append(f"| {size} | runs without data within the start limit | "
                           + (f"{silent} | |" if name == "parkgate" else f"| {silent} |")
                           + " |")
        for label, get, fmt in (
                ("readings/s delivered", lambda r: r.readings_per_s, "{:.0f}"),
                ("CPU s per 1,000 readings", lambda r: r.cpu_s_per_1000, "{:.3f}"),
                ("CPU % of a core", lambda r: r.cpu_pct, "{:.1f}"),
                ("peak RSS MiB", lambda r: r.rss_peak_mib, "{:.0f}"),
                ("first publish s", lambda r: r.first_publish_s, "{:.1f}"),
                ("outage readings delivered %", lambda r: r.outage_pct, "{:.0f}"),
                ("data flowing again s", lambda r: r.flowing_s, "{:.2f}"),
                ("first fresh reading s", lambda r: r.fresh_s, "{:.2f}")):
            a = [v for v in map(get, pg) if v is not None]
            b = [v for v in map(get, tb) if v is not None]
            ratio = f"{statistics.mean(b) / statistics.mean(a):.1f}x" \
                if a and b and statistics.mean(a) > 0 and statistics.mean(b) > 0 else ""
            out.append(f"| {size} | {label} | {_range(a, fmt)} | {_range(b, fmt)} | {ratio} |")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--serve", nargs=3, type=int, metavar=("DEVICES", "REGISTERS", "PORT0"),
                   help=argparse.SUPPRESS)
    p.add_argument("--sizes", default="10x20,50x50,100x100")
    p.add_argument("--repeat", type=int, default=1,
                   help="rounds per size; the order of the two gateways flips each round")
    p.add_argument("--quick", action="store_true",
                   help="10x20 only, 5 s warm-up, 15 s steady, 10 s outage, no idle")
    p.add_argument("--warmup", type=float, default=10.0)
    p.add_argument("--steady", type=float, default=30.0)
    p.add_argument("--outage", type=float, default=30.0)
    p.add_argument("--drain", type=float, default=120.0,
                   help="longest wait after the outage for data to flow and settle")
    p.add_argument("--start-limit", type=float, default=120.0,
                   help="longest wait for a gateway's first data message, seconds")
    p.add_argument("--idle", type=float, default=30.0, help="idle baseline seconds (0: skip)")
    p.add_argument("--only", choices=["parkgate", "thingsboard"])
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.warmup, args.steady, args.outage, args.idle = "10x20", 5, 15, 10, 0
    if args.serve:
        serve(*args.serve)
        return 0
    if not (TB_VENV / "bin" / "thingsboard-gateway").exists() and args.only != "parkgate":
        print("ThingsBoard gateway not installed: bash bench/thingsboard/setup.sh",
              file=sys.stderr)
        return 2
    installed = Path(tempfile.mkdtemp(prefix="pg-vs-tb-"))
    run = prepare(installed, unit_env=True)  # as systemd/install.sh and the unit run it
    broker = Mosquitto(persistent=True)
    broker.start()
    sub = Subscriber(broker.port)
    gateways = [("parkgate", functools.partial(parkgate_cmd, run)),
                ("thingsboard", thingsboard_cmd)]
    if args.only:
        gateways = [g for g in gateways if g[0] == args.only]
    rows: list[Row] = []
    try:
        for size in args.sizes.split(","):
            devices, registers = (int(x) for x in size.split("x"))
            port0 = free_port()
            while any(_busy(port0 + i) for i in range(devices)):
                port0 = free_port()
            emu = subprocess.Popen([sys.executable, __file__, "--serve", str(devices),
                                    str(registers), str(port0)], stdout=subprocess.PIPE,
                                   text=True, cwd=ROOT)
            assert emu.stdout is not None
            assert emu.stdout.readline().startswith("serving")
            try:
                for rnd in range(args.repeat):
                    for name, fn in (gateways if rnd % 2 == 0 else gateways[::-1]):
                        row = run_one(name, fn, broker, sub, devices, registers, port0,
                                      warmup=args.warmup, steady=args.steady,
                                      outage=args.outage, drain=args.drain,
                                      start_limit=args.start_limit)
                        rows.append(row)
                        print(table([row])[-1], *row.notes, flush=True)
            finally:
                emu.terminate()
                emu.wait(10)
        idles = {name: idle(name, fn, broker, args.idle) for name, fn in gateways} \
            if args.idle else {}
    finally:
        sub.close()
        broker.close()
        shutil.rmtree(installed, ignore_errors=True)
    print()
    print("\n".join(table(rows)))
    print()
    for name, pct in idles.items():
        print(f"idle (no devices) {name}: {pct:.2f}% of a core")
    print()
    print("\n".join(summary(rows, args.sizes.split(","))))
    return 0


def _busy(port: int) -> bool:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


if __name__ == "__main__":
    sys.exit(main())
