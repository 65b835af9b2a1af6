"""Pipeline benchmark: sim at full speed -> durable buffer -> local mosquitto -> subscriber.

Prints accepted and delivered readings/s, CPU seconds per 100k readings, peak RSS, the time
to drain a 1,000,000-reading backlog after the broker comes back, and the ceiling: a bare
paho client publishing the same JSON batches at QoS 1 with nothing else to do.

    .venv/bin/python bench/pipeline.py [--seconds 15] [--backlog 1000000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as paho

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from procfs import cpu_seconds, rss_mib  # noqa: E402

from tests.support import Mosquitto, free_port  # noqa: E402


def scrape(port: int) -> dict[str, float]:
    """Un-labelled parkgate_ samples from /metrics (sums labelled ones by name)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("parkgate_"):
            name, value = line.rsplit(" ", 1)
            name = name.split("{", 1)[0]
            out[name] = out.get(name, 0.0) + float(value)
    return out


SPARKPLUG_SEQ = b"\n\x03seq"
"""A DDATA metric's `seq` property key as protobuf encodes it (PropertySet.keys, field 1)."""


def _count(port: int, topic: str, counter: mp.Value, stop: mp.Event) -> None:  # type: ignore[valid-type]
    """Subscriber process: counts readings by counting `"seq":` in payloads (fast, exact),
    or for Sparkplug the `seq` property keys of DDATA metrics."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{os.getpid()}")
    local = [0]
    sparkplug = topic.startswith("spBv1.0")

    def on_message(_c: object, _u: object, msg: paho.MQTTMessage) -> None:
        if sparkplug:
            if "/DDATA/" in msg.topic:
                local[0] += msg.payload.count(SPARKPLUG_SEQ)
        else:
            local[0] += msg.payload.count(b'"seq":')
        counter.value = local[0]

    client.on_message = on_message
    client.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
    client.reconnect_delay_set(0.05, 0.5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    stop.wait()
    client.loop_stop()


class Subscriber:
    """A counting subscriber in its own process, so it never shares our GIL."""

    def __init__(self, port: int, topic: str) -> None:
        self.count = mp.Value("q", 0)
        self.stop = mp.Event()
        self.proc = mp.Process(target=_count, args=(port, topic, self.count, self.stop),
                               daemon=True)
        self.proc.start()
        time.sleep(0.5)

    def value(self) -> int:
        return int(self.count.value)

    def close(self) -> None:
        self.stop.set()
        self.proc.join(3)
        if self.proc.is_alive():
            self.proc.kill()


def batch_payload(start: int, n: int) -> bytes:
    """The same JSON a parkgate batch carries."""
    ts = int(time.time() * 1000)
    items = [{"seq": start + i, "device": "bench", "metric": f"p{i % 100}", "value": i,
              "unit": None, "ts": ts, "quality": "good"} for i in range(n)]
    return json.dumps({"v": 1, "gateway": "bench-gw", "site": "bench", "readings": items},
                      separators=(",", ":")).encode()


def bare_paho(port: int, seconds: float, batch: int) -> tuple[float, float]:
    """Ceiling: one paho client, QoS 1, the same batches, 16 in flight. (readings/s, cpu s).

    Each batch is encoded when sent, as any client holding readings must do.
    """
    sub = Subscriber(port, "bare/#")
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-bare")
    client.max_inflight_messages_set(16)
    sem = threading.Semaphore(16)
    client.on_publish = lambda *_a: sem.release()
    client.connect("127.0.0.1", port)
    client.loop_start()
    cpu0 = time.process_time()
    t0 = time.monotonic()
    sent = 0
    while time.monotonic() - t0 < seconds:
        sem.acquire()
        client.publish("bare/x", batch_payload(sent * batch, batch), qos=1)
        sent += 1
    # all 16 permits back: every publish acknowledged (or the deadline passed)
    for _ in range(16):
        if not sem.acquire(timeout=max(0.0, t0 + seconds + 5 - time.monotonic())):
            break
    elapsed = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    client.loop_stop()
    client.disconnect()
    time.sleep(0.5)
    delivered = sub.value()
    sub.close()
    return delivered / elapsed, cpu


def write_config(path: Path, db: Path, broker_port: int, metrics_port: int, devices: str,
                 extra_mqtt: str = "") -> None:
    path.write_text(f"""
gateway: {{id: bench-gw, site: bench}}
buffer: {{path: {db}, max_bytes: 4GiB, synchronous: full}}
uplink:
  mqtt:
    brokers: ["mqtt://127.0.0.1:{broker_port}"]
    batch: {{max_readings: 500, max_delay: 200ms}}
    window: 32
    backoff_max: 2s
    {extra_mqtt}
metrics: {{listen: 127.0.0.1:{metrics_port}}}
logging: {{level: warning, format: json}}
agent: {{shutdown_grace: 1s}}
devices:
{devices}
""")


FULL_SPEED = """  - {name: sim-a, driver: sim, interval: 1ms, points: 500}
  - {name: sim-b, driver: sim, interval: 1ms, points: 500}
"""
RATE_120K = """  - {name: sim-a, driver: sim, interval: 10ms, points: 600}
  - {name: sim-b, driver: sim, interval: 10ms, points: 600}
"""


def start_agent(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(cfg)],
                            cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def wait_metrics(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            scrape(port)
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError("agent did not come up")


DIALECT_MQTT = {
    "parkgate": "",
    "sparkplug": "dialect: sparkplug\n    sparkplug: {group: bench, node: bench-gw}",
}


def steady(tmp: Path, broker: Mosquitto, seconds: float, devices: str = FULL_SPEED,
           dialect: str = "parkgate") -> dict[str, float]:
    """Sim through buffer and broker; rates over the measuring window."""
    mport = free_port()
    cfg = tmp / f"steady-{dialect}.yaml"
    write_config(cfg, tmp / f"steady-{dialect}-{mport}.db", broker.port, mport, devices,
                 DIALECT_MQTT[dialect])
    sub = Subscriber(broker.port, "spBv1.0/#" if dialect == "sparkplug" else "parkgate/#")
    agent = start_agent(cfg, tmp / "steady.log")
    try:
        wait_metrics(mport)
        time.sleep(2.0)  # warm-up
        m0, d0, c0, t0 = scrape(mport), sub.value(), cpu_seconds(agent.pid), time.monotonic()
        time.sleep(seconds)
        m1, d1, c1, t1 = scrape(mport), sub.value(), cpu_seconds(agent.pid), time.monotonic()
        rss = rss_mib(agent.pid)[1]
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
        sub.close()
    elapsed = t1 - t0
    accepted = m1["parkgate_readings_total"] - m0["parkgate_readings_total"]
    delivered = d1 - d0
    return {"accepted_per_s": accepted / elapsed, "delivered_per_s": delivered / elapsed,
            "cpu_s_per_100k": (c1 - c0) / max(1, delivered) * 100_000,
            "cpu_percent": (c1 - c0) / elapsed * 100, "peak_rss_mb": rss,
            "overruns": m1.get("parkgate_poll_overruns_total", 0)
            - m0.get("parkgate_poll_overruns_total", 0)}


def backlog(tmp: Path, target: int) -> dict[str, float]:
    """Fill a backlog with the broker down, then bring the broker back and time the drain."""
    mport = free_port()
    bport = free_port()
    cfg = tmp / "backlog.yaml"
    write_config(cfg, tmp / "backlog.db", bport, mport, FULL_SPEED)
    agent = start_agent(cfg, tmp / "backlog.log")
    broker = Mosquitto(port=bport)
    sub: Subscriber | None = None
    try:
        wait_metrics(mport)
        t_fill = time.monotonic()
        while scrape(mport)["parkgate_buffer_readings"] < target:
            time.sleep(0.2)
        fill_s = time.monotonic() - t_fill
        # stop producing: reload with no devices (this also exercises SIGHUP)
        write_config(cfg, tmp / "backlog.db", bport, mport, "  []")
        agent.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        held = scrape(mport)["parkgate_buffer_readings"]
        broker.start()
        sub = Subscriber(bport, "parkgate/#")
        t0 = time.monotonic()
        first_seen = None
        while True:
            if first_seen is None and sub.value() > 0:
                first_seen = time.monotonic()
            if sub.value() >= held and scrape(mport)["parkgate_buffer_readings"] == 0:
                break
            if time.monotonic() - t0 > 300:
                raise TimeoutError("backlog did not drain in 300 s")
            time.sleep(0.05)
        t1 = time.monotonic()
        rss = rss_mib(agent.pid)[1]
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
        if sub:
            sub.close()
        broker.close()
    return {"backlog": held, "fill_s": fill_s, "drain_s": t1 - t0,
            "drain_after_first_s": t1 - (first_seen or t0), "drain_rate": held / (t1 - t0),
            "peak_rss_mb": rss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--backlog", type=int, default=1_000_000)
    ap.add_argument("--skip-backlog", action="store_true")
    ap.add_argument("--dialects", default="parkgate",
                    help="comma-separated: parkgate, sparkplug (the steady runs of each, "
                         "side by side)")
    args = ap.parse_args()
    dialects = [d.strip() for d in args.dialects.split(",") if d.strip()]
    with tempfile.TemporaryDirectory(prefix="pg-bench-") as d:
        tmp = Path(d)
        broker = Mosquitto().start()
        try:
            bare_rate, _ = bare_paho(broker.port, min(args.seconds, 10.0), 500)
            print(f"bare paho QoS 1 ceiling:      {bare_rate:12,.0f} readings/s")
            runs = [(f"sim at full speed (2 x 500 points every 1 ms), dialect {d}",
                     steady(tmp, broker, args.seconds, FULL_SPEED, d)) for d in dialects]
            rate = "sim offering 120,000 readings/s (2 x 600 points every 10 ms)"
            runs += [(f"{rate}, dialect {d}", steady(tmp, broker, args.seconds, RATE_120K, d))
                     for d in dialects]
        finally:
            broker.close()
        for title, s in runs:
            print(f"-- {title}")
            print(f"parkgate accepted:            {s['accepted_per_s']:12,.0f} readings/s")
            print(f"parkgate delivered (QoS 1):   {s['delivered_per_s']:12,.0f} readings/s"
                  f"   ratio to bare paho {s['delivered_per_s'] / bare_rate:.2f}")
            print(f"agent CPU:                    {s['cpu_s_per_100k']:12.2f} s per 100k "
                  f"delivered   ({s['cpu_percent']:.0f}% of one core)")
            print(f"agent peak RSS:               {s['peak_rss_mb']:12.1f} MB")
            print(f"poll ticks skipped (overrun): {s['overruns']:12,.0f}")
        if not args.skip_backlog:
            b = backlog(tmp, args.backlog)
            print(f"backlog of {b['backlog']:,.0f} readings filled in {b['fill_s']:.1f} s; "
                  f"drained in {b['drain_s']:.1f} s after the broker came back "
                  f"({b['drain_after_first_s']:.1f} s after the first message, "
                  f"{b['drain_rate']:,.0f} readings/s); peak RSS {b['peak_rss_mb']:.1f} MB")


if __name__ == "__main__":
    main()
