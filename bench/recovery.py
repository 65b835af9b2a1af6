"""How soon data flows again after a broker outage: broker accepting -> readings arriving.

    .venv/bin/python bench/recovery.py                   # 10 outages of 2-60 s, ~7 min
    .venv/bin/python bench/recovery.py --quick           # 10 outages of 1-5 s, ~2.5 min
    .venv/bin/python bench/recovery.py --outages 30,60 --gap 15
    .venv/bin/python bench/recovery.py --agent-root /tmp/old   # another checkout's agent

One `parkgate run` (defaults for the uplink: `backoff_max` 15 s, batches of up to 1 s;
one `sim` device of 10 points every 100 ms) publishes to a private persistent Mosquitto.
For each outage the broker is stopped, started again after the given length, and the
script times, from the first moment the broker accepts TCP (a 5 ms probe of its own):
- *data*: the first message with a reading measured after the broker went away at a
  subscriber (a persistent session that reconnects every 10-20 ms; a message the broker
  held for it and redelivers after the restart does not count);
- *fresh*: the first reading measured after the broker was back (`ts` >= that moment),
  which also waits for the live batch (`batch.max_delay`, 1 s by default).
Between outages the agent stays connected for `--gap` s (more than the uplink's
`STABLE_S`, so every outage starts from a working session). The outages are scaled down
to fit `--budget` s. Prints each outage, then p50/p95/max as a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "hardware-in-loop")]

from procfs import terminate  # noqa: E402

from gateway.reconnect import STABLE_S  # noqa: E402
from tests.faults.harness import Arrival, SeqCollector  # noqa: E402
from tests.support import Mosquitto, base_config, write_config  # noqa: E402

FULL = [2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 60.0]
QUICK = [1.0, 2.0, 3.0, 4.0, 5.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def accepting_at(port: int, limit: float = 30.0) -> float:
    """The first moment 127.0.0.1:port accepts TCP (5 ms resolution)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.05):
            return time.monotonic()
        time.sleep(0.005)
    raise TimeoutError(f"the broker did not come back on port {port}")


def first_arrival(col: SeqCollector, pred: Callable[[Arrival], bool], timeout: float
                  ) -> float | None:
    """Monotonic arrival time of the first message matching `pred`."""
    found: list[float] = []

    def check(c: SeqCollector) -> bool:
        hits = [a.at for a in c.arrivals if pred(a)]
        if hits:
            found.append(min(hits))
        return bool(hits)

    return found[0] if col.wait_for(check, timeout) else None


def quantiles(xs: list[float]) -> tuple[float, float, float]:
    """p50, p95, max."""
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=20, method="inclusive")
    return q[9], q[18], max(xs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--outages", help="comma-separated seconds (default: 10 outages, 2-60 s)")
    p.add_argument("--quick", action="store_true", help="10 outages of 1-5 s")
    p.add_argument("--gap", type=float, default=STABLE_S + 2,
                   help="seconds connected between outages")
    p.add_argument("--budget", type=float, default=600.0, help="longest total run, seconds")
    p.add_argument("--agent-root", type=Path, default=ROOT,
                   help="checkout whose gateway/ runs (default: this one)")
    args = p.parse_args(argv)
    outages = [float(x) for x in args.outages.split(",")] if args.outages \
        else (QUICK if args.quick else FULL)
    per = args.gap + 3.0  # the gap, then recovery and settling
    need = sum(outages) + len(outages) * per + 10
    if need > args.budget:
        scale = max(0.0, args.budget - len(outages) * per - 10) / sum(outages)
        outages = [max(1.0, round(o * scale, 1)) for o in outages]
        print(f"scaled the outages by {scale:.2f} to fit --budget {args.budget:.0f} s",
              flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="pg-recovery-"))
    broker = Mosquitto(persistent=True).start()
    col = SeqCollector(broker.port, "recovery-bench")
    col.client.reconnect_delay_set(0.01, 0.02)  # paho accepts floats; its stub says int
    cfg = base_config(tmp, broker.port, [{"name": "sim", "driver": "sim", "interval": "100ms",
                                          "points": 10, "pattern": "counter"}])
    cfg["uplink"] = {"mqtt": {"brokers": [broker.url]}}  # the uplink's defaults
    cfg["logging"] = {"level": "warning", "format": "json"}
    path = write_config(tmp / "gw.yaml", cfg)
    log = (tmp / "agent.log").open("wb")
    agent = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(path)],
                             cwd=args.agent_root, stdout=log, stderr=subprocess.STDOUT,
                             env={**os.environ, "PYTHONPATH": str(args.agent_root)})
    data: list[float] = []
    fresh: list[float] = []
    print(f"agent from {args.agent_root}; outages {outages} s; "
          f"{args.gap:.0f} s connected between them", flush=True)
    print("outage s | data flowing s | fresh reading s")
    try:
        if col.wait_beyond(0, 60) is None:
            print((tmp / "agent.log").read_text()[-3000:], file=sys.stderr)
            return 1
        for outage in outages:
            time.sleep(args.gap)
            broker.stop()
            stop_ms = int(time.time() * 1000)
            time.sleep(outage)
            # spawn without Mosquitto.start()'s 50 ms wait: the bench times the port itself
            broker.proc = subprocess.Popen([broker.exe, "-c", str(broker.conf)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            back = accepting_at(broker.port)
            back_ms = int(time.time() * 1000) - int(1000 * (time.monotonic() - back))
            # measured after the broker went: not a message it held and redelivers
            t_data = first_arrival(col, lambda a, b=stop_ms: max(a.ts, default=0) >= b, 60.0)
            t_fresh = first_arrival(col, lambda a, b=back_ms: max(a.ts, default=0) >= b, 60.0)
            d = None if t_data is None else t_data - back
            f = None if t_fresh is None else t_fresh - back
            if d is not None:
                data.append(d)
            if f is not None:
                fresh.append(f)
            print(f"{outage:8.1f} | {'-' if d is None else f'{d:.3f}':>14} | "
                  f"{'-' if f is None else f'{f:.3f}':>15}", flush=True)
    finally:
        terminate(agent)
        log.close()
        col.close()
        broker.close()
    print()
    print(f"| after a broker outage ({len(outages)} outages, {min(outages):.0f}-"
          f"{max(outages):.0f} s) | p50 s | p95 s | max s | n |")
    print("| --- | --- | --- | --- | --- |")
    for name, xs in (("data flowing again", data), ("first fresh reading", fresh)):
        if xs:
            q = quantiles(xs)
            print(f"| {name} | {q[0]:.2f} | {q[1]:.2f} | {q[2]:.2f} | {len(xs)} |")
        else:
            print(f"| {name} | - | - | - | 0 |")
    missing = len(outages) - len(data)
    if missing:
        print(f"{missing} outage(s) without data within 60 s of the broker's return")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
