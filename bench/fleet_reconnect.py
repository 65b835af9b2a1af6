"""A fleet of gateways reconnecting to one broker that comes back: when do they arrive?

    .venv/bin/python bench/fleet_reconnect.py                  # 200 clients, 30 s outage
    .venv/bin/python bench/fleet_reconnect.py --quick          # 10 s outage
    .venv/bin/python bench/fleet_reconnect.py --clients 500 --outage 60 --policies probe

Each client is one asyncio task running a reconnect policy against a private Mosquitto,
with a minimal MQTT 3.1.1 CONNECT/CONNACK of its own (not 200 agent processes: what is
measured is the policy, not the agent's start-up). The clients connect, stay connected for
longer than `STABLE_S` (so the policies reset their backoff, as after a working session),
the broker is stopped for `--outage` seconds and started again, and the script records
when each client's CONNACK arrives, counted from the moment the broker accepts TCP again
(a 5 ms probe of the bench's own).

Policies (`--policies`, any of):
- `probe`: the uplink's real policy, `gateway.reconnect.Reconnect` (TCP probes paced by
  the outage's length, then the handshake; a handshake backoff only for a broker that
  accepted TCP all along), driven exactly as `Uplink.run` drives it with one broker.
- `jitter`: the uplink's policy before it: full-jitter backoff up to 15 s per failure.
- `fixed`: exponential backoff without jitter (0.5, 1, 2 ... 15 s), as many simple clients
  do: everyone retries at the same instants.

Printed per policy: p50/p95/max reconnect time, a histogram per 100 ms, the peak connects
per second (sliding 1 s window) and per 100 ms, and the connection attempts (probes or
failed connects) the fleet sent per second while the broker was gone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402

from gateway.backoff import Backoff  # noqa: E402
from gateway.reconnect import STABLE_S, Reconnect  # noqa: E402
from tests.support import Mosquitto  # noqa: E402

HOST = "127.0.0.1"
CAP = 15.0
"""`uplink.mqtt.backoff_max`, the default."""
CONNECT_LIMIT = 10.0
"""`uplink.mqtt.connect_timeout`, the default."""
QUIET = structlog.wrap_logger(
    structlog.PrintLogger(open(os.devnull, "w")),  # noqa: SIM115 - for the process's life
    wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))


@dataclass
class Fleet:
    """What the clients report: CONNACK times and failed attempts, in monotonic seconds."""

    port: int
    connacks: list[float] = field(default_factory=list)
    attempts: list[float] = field(default_factory=list)
    """Failed connects (each a SYN to the broker's port)."""
    policies: list[Reconnect] = field(default_factory=list)

    def probes(self) -> int:
        """Probes the `probe` clients sent so far."""
        return sum(p.probes for p in self.policies)


async def mqtt_session(fleet: Fleet, client_id: str) -> float:
    """CONNECT, wait for CONNACK, stay until the broker closes; when the session began.

    Raises OSError or TimeoutError when no session came about."""
    async with asyncio.timeout(CONNECT_LIMIT):
        reader, writer = await asyncio.open_connection(HOST, fleet.port)
        try:
            cid = client_id.encode()
            # protocol "MQTT" level 4, clean session, keepalive 0 (off), then the client id
            body = b"\x00\x04MQTT\x04\x02\x00\x00" + len(cid).to_bytes(2, "big") + cid
            writer.write(bytes([0x10, len(body)]) + body)
            connack = await reader.readexactly(4)
        except BaseException:
            writer.close()
            raise
    if connack[0] != 0x20 or connack[3] != 0:
        writer.close()
        raise ConnectionRefusedError(f"CONNACK {connack.hex()}")
    since = time.monotonic()
    fleet.connacks.append(since)
    try:
        await reader.read()  # until the broker goes away
    except OSError:
        pass
    finally:
        writer.close()
    return since


async def _once(fleet: Fleet, client_id: str) -> float | None:
    try:
        return await mqtt_session(fleet, client_id)
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        fleet.attempts.append(time.monotonic())
        return None


async def probe_client(fleet: Fleet, client_id: str) -> None:
    """The uplink's policy, as `Uplink.run` drives it with one broker in the list."""
    policy = Reconnect(cap=CAP, probe_limit_s=min(2.0, CONNECT_LIMIT))
    fleet.policies.append(policy)
    while True:
        since = await _once(fleet, client_id)
        policy.ended(since, time.monotonic())
        await policy.wait([(HOST, fleet.port)], QUIET)


async def jitter_client(fleet: Fleet, client_id: str) -> None:
    """The uplink before probing: full jitter up to 15 s, reset after a stable session."""
    backoff = Backoff(base=0.5, cap=CAP)
    while True:
        since = await _once(fleet, client_id)
        if since is not None and time.monotonic() - since >= STABLE_S:
            backoff.reset()
        await asyncio.sleep(backoff.next_delay())


async def fixed_client(fleet: Fleet, client_id: str) -> None:
    """Exponential backoff without jitter: 0.5, 1, 2 ... 15 s."""
    failures = 0
    while True:
        since = await _once(fleet, client_id)
        if since is not None and time.monotonic() - since >= STABLE_S:
            failures = 0
        await asyncio.sleep(min(CAP, 0.5 * 2**failures))
        failures += 1


POLICIES: dict[str, Callable[[Fleet, str], Awaitable[None]]] = {
    "probe": probe_client, "jitter": jitter_client, "fixed": fixed_client}


async def accepting_at(port: int, limit: float = 30.0) -> float:
    """The first moment `port` accepts TCP (5 ms resolution)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            _r, w = await asyncio.open_connection(HOST, port)
            t = time.monotonic()
            w.close()
            return t
        await asyncio.sleep(0.005)
    raise TimeoutError(f"the broker did not come back on {port}")


@dataclass
class Result:
    policy: str
    clients: int
    outage: float
    times: list[float]
    """Per reconnected client: CONNACK - broker accepting, seconds."""
    attempts_per_s: float

    def histogram(self, step: float = 0.1) -> list[tuple[float, int]]:
        buckets: dict[int, int] = {}
        for t in self.times:
            b = int(max(t, 0.0) // step)
            buckets[b] = buckets.get(b, 0) + 1
        return [(b * step, n) for b, n in sorted(buckets.items())]

    def peak(self, window: float) -> int:
        ts = sorted(self.times)
        best, j = 0, 0
        for i, t in enumerate(ts):
            while ts[j] < t - window + 1e-9:
                j += 1
            best = max(best, i - j + 1)
        return best


async def run_policy(name: str, clients: int, outage: float, settle: float) -> Result:
    broker = Mosquitto(extra="max_connections -1")
    await asyncio.to_thread(broker.start)
    fleet = Fleet(broker.port)
    policy = POLICIES[name]
    tasks = [asyncio.create_task(policy(fleet, f"fleet-{name}-{i}"), name=f"client[{i}]")
             for i in range(clients)]
    try:
        deadline = time.monotonic() + 30
        while len(fleet.connacks) < clients and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert len(fleet.connacks) >= clients, f"only {len(fleet.connacks)} connected"
        await asyncio.sleep(STABLE_S + 1.0)  # a working session, as before a real outage
        await asyncio.to_thread(broker.stop)
        down, probed = time.monotonic(), fleet.probes()
        await asyncio.sleep(outage)
        await asyncio.to_thread(_spawn, broker)
        back = await accepting_at(broker.port)
        tried = sum(1 for t in fleet.attempts if down <= t < back) + fleet.probes() - probed
        deadline = back + CAP + CONNECT_LIMIT + settle
        while time.monotonic() < deadline:
            after = [t for t in fleet.connacks if t >= back]
            if len(after) >= clients:
                break
            await asyncio.sleep(0.1)
        times = sorted(t - back for t in fleet.connacks if t >= back)[:clients]
        return Result(name, clients, outage, times, tried / (back - down))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(broker.close)


def _spawn(broker: Mosquitto) -> None:
    """Start the broker's process without waiting for its port (the bench times that)."""
    import subprocess  # noqa: PLC0415

    broker.proc = subprocess.Popen([broker.exe, "-c", str(broker.conf)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def report(r: Result) -> list[str]:
    if not r.times:
        return [f"## {r.policy}: no client reconnected"]
    q = statistics.quantiles(r.times, n=20, method="inclusive") if len(r.times) > 1 \
        else [r.times[0]] * 19
    out = [(f"## {r.policy}: {len(r.times)}/{r.clients} clients back after a "
            f"{r.outage:.0f} s outage"),
           (f"reconnect s after the broker accepts: p50 {q[9]:.2f}, p95 {q[18]:.2f}, "
            f"max {r.times[-1]:.2f}; first {r.times[0]:.3f}"),
           (f"peak connects: {r.peak(1.0)} in 1 s, {r.peak(0.1)} in 100 ms; attempts "
            f"while down: {r.attempts_per_s:.0f}/s for the fleet "
            f"({r.attempts_per_s / r.clients:.2f}/s per client)"),
           "histogram (per 100 ms, empty buckets left out):"]
    top = max(n for _t, n in r.histogram())
    for t, n in r.histogram():
        out.append(f"  {t:6.1f}-{t + 0.1:4.1f} s {n:4d} {'#' * max(1, round(40 * n / top))}")
    return out


async def amain(args: argparse.Namespace) -> int:
    results = []
    for name in args.policies.split(","):
        r = await run_policy(name, args.clients, args.outage, args.settle)
        results.append(r)
        print("\n".join(report(r)), "", sep="\n", flush=True)
    print("| policy | clients | outage s | back | p50 s | p95 s | max s | peak/s | peak/100 ms |"
          " attempts/s while down |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        if not r.times:
            continue
        q = statistics.quantiles(r.times, n=20, method="inclusive")
        print(f"| {r.policy} | {r.clients} | {r.outage:.0f} | {len(r.times)} | {q[9]:.2f} |"
              f" {q[18]:.2f} | {r.times[-1]:.2f} | {r.peak(1.0)} | {r.peak(0.1)} |"
              f" {r.attempts_per_s:.0f} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--outage", type=float, default=30.0)
    p.add_argument("--policies", default="probe,jitter,fixed")
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--quick", action="store_true", help="a 10 s outage")
    args = p.parse_args(argv)
    if args.quick:
        args.outage = min(args.outage, 10.0)
    for name in args.policies.split(","):
        if name not in POLICIES:
            p.error(f"unknown policy {name!r}: choose from {', '.join(POLICIES)}")
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
