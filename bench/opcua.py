"""Benchmark: CPU per 1,000 values of the OPC UA driver, polled vs. by subscription.

    python bench/opcua.py                  # 100 nodes, every value changes each 1 s, 30 s
    python bench/opcua.py --nodes 200 --window 60
    python bench/opcua.py --change 10      # values change every 10 s, still polled at 1 s

One emulated server (hardware-in-loop/emulators/opcua_server.py) in its own process
changes all of its `Bench.<i>` Doubles every second. Two client processes run side by
side against it, each one `driver: opcua` device with every node: `poll` reads them all
in one Read call every 1 s, `subscribe` has the server report changes (publishing and
sampling interval 1 s). After a warm-up each client counts the values its driver
produced and its own CPU time (getrusage: user + system) over the window and reports;
the script prints the two side by side: values/s, CPU per 1,000 values, % of one core,
RSS. The server's CPU is printed too, for context (it is not the gateway's cost).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import structlog  # noqa: E402
from procfs import cpu_seconds, rss_mib, terminate  # noqa: E402

from drivers.opcua import OpcUaDriver, OpcUaOptions  # noqa: E402
from gateway.driver import DriverContext, ResourcePool  # noqa: E402
from gateway.metrics import Metrics  # noqa: E402
from gateway.model import Reading  # noqa: E402
from tests.support import free_port, wait_port  # noqa: E402


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _client(args: argparse.Namespace) -> dict[str, Any]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    nodes = [{"name": f"n{i}", "node": f"ns=2;s=Bench.{i}"} for i in range(args.nodes)]
    cfg: dict[str, Any] = {"name": args.mode, "driver": "opcua", "endpoint": args.url,
                           "interval": "1s", "nodes": nodes, "keepalive": "5s"}
    if args.mode == "subscribe":
        cfg.update(mode="subscribe", publishing_interval="1s")
    opts = OpcUaOptions.model_validate(cfg)
    ctx = DriverContext(device=args.mode, log=structlog.get_logger(),
                        resources=ResourcePool(), metrics=Metrics())
    drv = OpcUaDriver(opts, ctx)
    await drv.open()
    count = 0
    good = 0

    def emit(rs: Sequence[Reading]) -> None:
        nonlocal count, good
        count += len(rs)
        good += sum(1 for r in rs if r.quality == "good")

    loop = asyncio.get_running_loop()
    if args.mode == "subscribe":
        task = asyncio.create_task(drv.run(emit))  # type: ignore[attr-defined]
    else:
        async def polling() -> None:
            deadline = loop.time()
            while True:  # the supervisor's schedule: every interval on the monotonic clock
                emit(await drv.poll())  # type: ignore[attr-defined]
                deadline += 1.0
                await asyncio.sleep(max(0.0, deadline - loop.time()))

        task = asyncio.create_task(polling())
    await asyncio.sleep(args.warmup)
    c0, n0, t0 = _cpu(), count, time.monotonic()
    await asyncio.sleep(args.window)
    c1, n1, t1 = _cpu(), count, time.monotonic()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await drv.close()
    values = n1 - n0
    cpu = c1 - c0
    rss, hwm = rss_mib(os.getpid())
    return {"mode": args.mode, "values": values, "good": good, "seconds": t1 - t0,
            "cpu_s": cpu, "rss_mib": rss, "hwm_mib": hwm}


def _run(args: argparse.Namespace) -> None:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "hardware-in-loop/emulators/opcua_server.py"),
         "--port", str(port), "--nodes", str(args.nodes), "--change", f"{args.change:g}s"],
        cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        wait_port(port, 60)
        s0 = cpu_seconds(server.pid)
        url = f"opc.tcp://127.0.0.1:{port}"
        clients = [subprocess.Popen(
            [sys.executable, __file__, "--client", mode, "--url", url, "--nodes",
             str(args.nodes), "--window", str(args.window), "--warmup", str(args.warmup)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True) for mode in ("poll", "subscribe")]
        results = []
        for c in clients:
            out, _ = c.communicate(timeout=args.window + args.warmup + 120)
            results.append(json.loads(out.strip().splitlines()[-1]))
        server_cpu = cpu_seconds(server.pid) - s0
    finally:
        terminate(server)
    print(f"OPC UA driver, {args.nodes} nodes, every value changing each {args.change:g} s, "
          f"{args.window:.0f} s window after {args.warmup:.0f} s warm-up")
    print(f"{'mode':<10} {'values':>7} {'values/s':>9} {'CPU s':>7} {'CPU ms/1000 values':>19} "
          f"{'% core':>7} {'RSS MiB':>8}")
    for r in results:
        per_k = 1000 * 1000 * r["cpu_s"] / r["values"] if r["values"] else float("nan")
        print(f"{r['mode']:<10} {r['values']:>7} {r['values'] / r['seconds']:>9.1f} "
              f"{r['cpu_s']:>7.2f} {per_k:>19.1f} {100 * r['cpu_s'] / r['seconds']:>7.2f} "
              f"{r['rss_mib']:>8.1f}")
    print(f"(server process, both clients together: {server_cpu:.2f} CPU s over the run)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=100)
    p.add_argument("--window", type=float, default=30.0, help="seconds measured (default 30)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds before (default 5)")
    p.add_argument("--change", type=float, default=1.0, help=(
        "seconds between changes of the values (default 1; 10 shows what a subscription "
        "saves when values change less often than they are polled)"))
    p.add_argument("--client", choices=("poll", "subscribe"), help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        args.mode = args.client
        print(json.dumps(asyncio.run(_client(args))))
    else:
        _run(args)


if __name__ == "__main__":
    main()
