"""Real parts for fault injection: a seq-checking subscriber, the agent, a Modbus meter thread.

Every test runs the real `parkgate run` as a subprocess against a private Mosquitto, breaks
something, and then accounts for every `seq`: the agent numbers readings when they enter
the durable buffer, so after a graceful stop `parkgate buffer stats` says how many were
issued, and anything issued but never delivered is a lost reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from emulators.modbus_meter import MeterEmulator

from tests.support import (
    ROOT,
    GatewayProcess,
    Mosquitto,
    base_config,
    free_port,
    read_packet,
    wait_on,
    write_config,
)

# --- the subscriber ---------------------------------------------------------------------------

Item = tuple[str, str, Any, int, Any, str]
"""A reading as it arrived, without its seq: device, metric, value, ts, unit, quality."""


@dataclass(slots=True)
class Arrival:
    """One data message as the subscriber got it."""

    at: float  # time.monotonic() of arrival
    device: str
    seqs: list[int]
    ts: list[int]
    values: list[Any]
    items: list[Item]


class SeqCollector:
    """Subscribes with a persistent session and keeps every seq that arrives.

    Unlike `tests.support.Collector` it keeps running figures (a set of seqs, duplicates,
    the highest seq) instead of rebuilding lists on every check: at thousands of readings
    per second the tests poll it often. It keeps the reading each seq first carried: a seq
    arriving again with another reading (a seq reused) is a conflict, never a duplicate.
    The session is persistent (clean_session false) so that messages the broker
    acknowledged while this subscriber was reconnecting (broker restarts) are queued for
    it, not silently missing from the count.
    """

    def __init__(self, port: int, name: str, topic: str = "parkgate/+/+/+") -> None:
        self.topic = topic
        self.seen: set[int] = set()
        self.first: dict[int, Item] = {}
        """The reading each seq carried when it first arrived."""
        self.conflicts: list[tuple[int, Item, Item]] = []
        """(seq, first reading, other reading): one seq carrying two different readings."""
        self.delivered = 0
        self.duplicates = 0
        """Readings that arrived again, identical (at-least-once delivery)."""
        self.max_seq = 0
        self.arrivals: list[Arrival] = []
        self.order_violations = 0
        """Messages whose seqs were not strictly increasing inside the message."""
        self._cond = threading.Condition()
        self.connected = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                  client_id=f"faults-{name}-{os.getpid()}",
                                  clean_session=False)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_a: self.connected.set()
        self.client.on_disconnect = lambda *_a: self.connected.clear()
        self.client.reconnect_delay_set(0.05, 0.3)
        self.client.max_inflight_messages_set(0)
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise TimeoutError("the subscriber could not connect to the broker")

    def _on_connect(self, c: paho.Client, *_a: Any) -> None:
        c.subscribe(self.topic, qos=1)

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        if msg.topic.endswith("/status"):
            return
        doc = json.loads(msg.payload)
        if "readings" not in doc:  # a drop notice shares the depth: told apart by payload
            return
        readings = doc["readings"]
        seqs = [r["seq"] for r in readings]
        items = [(r["device"], r["metric"], r["value"], r["ts"], r.get("unit"), r["quality"])
                 for r in readings]
        with self._cond:
            if any(b <= a for a, b in itertools.pairwise(seqs)):
                self.order_violations += 1
            for s, item in zip(seqs, items, strict=True):
                first = self.first.get(s)
                if first is None:
                    self.first[s] = item
                    self.seen.add(s)
                elif first == item:
                    self.duplicates += 1
                else:
                    self.conflicts.append((s, first, item))
            self.delivered += len(seqs)
            if seqs and seqs[-1] > self.max_seq:
                self.max_seq = max(seqs)
            self.arrivals.append(Arrival(time.monotonic(), readings[0]["device"] if readings
                                         else "", seqs, [r["ts"] for r in readings],
                                         [r["value"] for r in readings], items))
            self._cond.notify_all()

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        """Wait until `predicate(self)` holds; returns whether it did."""
        return wait_on(self._cond, lambda: predicate(self), timeout, tick=0.1)

    def wait_beyond(self, seq: int, timeout: float) -> float | None:
        """Seconds until a seq above `seq` arrives (None on timeout)."""
        t0 = time.monotonic()
        if self.wait_for(lambda c: c.max_seq > seq, timeout):
            return time.monotonic() - t0
        return None

    def missing(self, issued: Iterable[int]) -> list[int]:
        """Seqs in `issued` that never arrived."""
        with self._cond:
            return [s for s in issued if s not in self.seen]

    def device_count(self, device: str, since: float = 0.0, until: float = float("inf")
                     ) -> int:
        """Readings of `device` whose `ts` (ms) lies in [since, until)."""
        with self._cond:
            return sum(1 for a in self.arrivals if a.device == device
                       for t in a.ts if since <= t < until)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def persistent_broker() -> Mosquitto:
    """A started Mosquitto that keeps queued messages for persistent sessions over restarts.

    Without persistence a message the broker acknowledged but had not yet passed on when it
    was stopped would count as lost here, though the agent did its part.
    """
    return Mosquitto(persistent=True).start()


# --- the agent ------------------------------------------------------------------------------

class Agent:
    """`parkgate run` as a subprocess plus what a test asks of it."""

    def __init__(self, tmp: Path, cfg: dict[str, Any], *, env: dict[str, str] | None = None
                 ) -> None:
        self.cfg = cfg
        self.path = write_config(tmp / "gw.yaml", cfg)
        self.proc = GatewayProcess(self.path, env=env)
        self.listen = cfg["metrics"]["listen"]
        self.starts = 0

    def start(self) -> Agent:
        self.proc.start()
        self.starts += 1
        return self

    def alive(self) -> bool:
        return self.proc.alive()

    def kill9(self) -> None:
        self.proc.kill()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM once signal handlers are in place (the HTTP server answers after)."""
        if self.alive():
            with contextlib.suppress(OSError):
                self.wait_metrics()
        return self.proc.stop(timeout)

    def output(self, tail: int = 4000) -> str:
        return self.proc.output()[-tail:]

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.proc.output().splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    out.append(doc)
        return out

    def metrics(self, timeout: float = 3.0) -> dict[str, float]:
        """The agent's /metrics as {'name{labels}': value}."""
        url = f"http://{self.listen}/metrics"
        text = urllib.request.urlopen(url, timeout=timeout).read().decode()
        return parse_metrics(text)

    def wait_metrics(self, timeout: float = 10.0) -> dict[str, float]:
        """/metrics once the HTTP server answers."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.metrics()
            except OSError:
                if time.monotonic() > deadline or not self.alive():
                    raise
                time.sleep(0.1)

    def buffer_stats(self) -> dict[str, Any]:
        """`parkgate buffer stats` (the agent must be stopped)."""
        out = subprocess.run([sys.executable, "-m", "gateway", "buffer", "stats", "-c",
                              str(self.path)], capture_output=True, text=True, cwd=ROOT,
                             check=True, timeout=30)
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))


_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {'name{labels}': value}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def config(tmp: Path, broker_port: int, devices: list[dict[str, Any]], *,
           brokers: list[str] | None = None, buffer: dict[str, Any] | None = None,
           mqtt: dict[str, Any] | None = None) -> dict[str, Any]:
    """A test gateway config: fast commits and small batches so faults hit mid-flight."""
    cfg = base_config(tmp, broker_port, devices)
    cfg["buffer"] = {"path": str(tmp / "buffer.db"), "commit_interval": "20ms",
                     **(buffer or {})}
    cfg["uplink"]["mqtt"] = {
        "brokers": brokers or [f"mqtt://127.0.0.1:{broker_port}"],
        "batch": {"max_readings": 200, "max_delay": "50ms"},
        "publish_timeout": "3s", "connect_timeout": "3s", "keepalive": "5s",
        "backoff_max": "2s", **(mqtt or {})}
    cfg["agent"] = {"shutdown_grace": "15s"}
    return cfg


def sim(name: str, interval: str, points: int) -> dict[str, Any]:
    """A counter device of the built-in `sim` driver."""
    return {"name": name, "driver": "sim", "interval": interval, "points": points,
            "pattern": "counter"}


def meter(name: str, port: int, interval: str = "200ms", unit: int = 1) -> dict[str, Any]:
    """An Eastron SDM630 (36 values) behind Modbus TCP on `port`."""
    return {"name": name, "driver": "modbus", "unit": unit, "profile": "eastron-sdm630",
            "interval": interval, "timeout": "1s", "request_timeout": "300ms", "retries": 0,
            "transport": {"type": "tcp", "host": "127.0.0.1", "port": port}}


METER_POINTS = 36
"""Values per poll of the eastron-sdm630 profile."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """The accounting after a test: what was issued, what never arrived, what came twice."""

    next_seq: int
    issued: int
    lost: list[int]
    duplicates: int
    duplicate_bound: int


def duplicate_bound(cfg: dict[str, Any], redeliveries: int) -> int:
    """Readings that `redeliveries` broken sessions may deliver twice, and no more.

    Delivery is at least once: a session that ends with publishes awaiting PUBACK (the
    agent's, or the broker's to the subscriber) sends them again, at most a full window of
    full batches each. Anything beyond that is a bug (a resend loop, acks not recorded).
    """
    mqtt = cfg["uplink"]["mqtt"]
    return redeliveries * int(mqtt.get("window", 16)) * int(mqtt["batch"]["max_readings"])


def finish(agent: Agent, col: SeqCollector, *, first_seq: int = 1,
           gaps: Iterable[Container[int]] = (), timeout: float = 30.0,
           redeliveries: int = 0) -> Outcome:
    """Stop the agent gracefully (it drains the buffer) and account for every seq.

    Every seq in [first_seq, next_seq) outside `gaps` (jumps the buffer makes on purpose,
    readings that went with a corrupt file) must have reached the subscriber; no seq may
    have carried two different readings; readings delivered twice stay within what
    `redeliveries` (sessions the fault broke, see `duplicate_bound`) explains.
    """
    if agent.alive():
        code = agent.stop()
        assert code == 0, agent.output()
    stats = agent.buffer_stats()
    assert stats["rows"] == 0, f"the shutdown drain left {stats['rows']} readings: {stats}"
    next_seq = int(stats["next_seq"])
    skip = list(gaps)
    expected = [s for s in range(first_seq, next_seq) if not any(s in g for g in skip)]
    col.wait_for(lambda c: c.max_seq >= next_seq - 1 and not c.missing(expected[-1000:]),
                 timeout)
    col.wait_for(lambda c: not c.missing(expected), 2.0)
    assert not col.conflicts, (f"{len(col.conflicts)} seqs carried two different readings, "
                               f"first (seq, first, then): {col.conflicts[:3]}")
    bound = duplicate_bound(agent.cfg, redeliveries)
    assert col.duplicates <= bound, (
        f"{col.duplicates} readings delivered twice; {redeliveries} broken sessions explain "
        f"at most {bound}")
    return Outcome(next_seq, len(expected), col.missing(expected), col.duplicates, bound)


# --- a Modbus meter in its own thread -----------------------------------------------------------

class MeterThread:
    """A `MeterEmulator` served from a thread's event loop, so blocking test code (waits on
    the subscriber, sleeps between faults) never stalls the meter."""

    def __init__(self, profile: str = "eastron-sdm630", units: tuple[int, ...] = (1,)) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="meter-emulator",
                                       daemon=True)
        self.thread.start()
        self.emu = MeterEmulator(profile, units)
        self.port = free_port()
        self.serving = False

    def _call(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> MeterThread:
        self._call(self.emu.start_tcp("127.0.0.1", self.port))
        self.serving = True
        return self

    def stop(self) -> None:
        self._call(self.emu.stop())
        self.serving = False

    def requests(self) -> int:
        return len(self.emu.requests)

    def close(self) -> None:
        if self.serving:
            with contextlib.suppress(Exception):
                self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


# --- a broker that never acknowledges -----------------------------------------------------------

class SilentBroker:
    """Accepts MQTT connections, answers CONNACK (and PINGREQ), never a data PUBACK.

    Publishes to the status topic are acknowledged, so the agent gets past its `online`
    status and sends data, which then hangs: it must time out (publish_timeout) and go.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.connections = 0
        self.data_publishes = 0
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.thread = threading.Thread(target=self.loop.run_forever, name="silent-broker",
                                       daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(5)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        v5 = False
        try:
            while True:
                head, body = await read_packet(reader)
                kind = head >> 4
                if kind == 1:  # CONNECT: protocol name (2+4 bytes), then the level
                    v5 = body[6] == 5
                    writer.write(b"\x20\x03\x00\x00\x00" if v5 else b"\x20\x02\x00\x00")
                elif kind == 3:  # PUBLISH
                    qos = (head >> 1) & 3
                    tlen = int.from_bytes(body[:2], "big")
                    topic = body[2:2 + tlen].decode()
                    if qos and topic.endswith("/status"):
                        pid = body[2 + tlen:4 + tlen]
                        writer.write(b"\x40\x02" + pid)
                    elif qos:
                        self.data_publishes += 1
                elif kind == 12:  # PINGREQ
                    writer.write(b"\xd0\x00")
                elif kind == 14:  # DISCONNECT
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.close()
        await self._server.wait_closed()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


# --- the summary row --------------------------------------------------------------------------

FAULT_ROW = "fault_row"
"""The `user_properties` key of a summary row in a test's report."""

@dataclass(slots=True)
class FaultRow:
    """One line of the end-of-session summary."""

    fault: str
    injections: int
    issued: int = 0
    lost: int = 0
    duplicates: int = 0
    duplicate_bound: int | None = None
    """What the fault explains (`Outcome.duplicate_bound`); shown beside `duplicates`."""
    recover_s: float | None = None
    stayed_up: str = "yes"
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def summary_table(rows: list[FaultRow]) -> list[str]:
    """The end-of-session table of fault rows, one line each, a header first."""
    def fmt(row: FaultRow) -> list[str]:
        rec = "-" if row.recover_s is None else f"{row.recover_s:.1f}"
        dups = str(row.duplicates)
        if row.duplicate_bound is not None:
            dups += f" (<= {row.duplicate_bound})"
        return [row.fault, str(row.injections), str(row.issued), str(row.lost),
                dups, rec, row.stayed_up, row.notes]

    head = ["fault", "injected", "issued", "lost", "dups (bound)", "recover s (max)", "up", "notes"]
    table = [head, *(fmt(r) for r in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(head) - 1)]
    return [" | ".join([*(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)), r[-1]])
            for r in table]


@contextlib.contextmanager
def mounted_tmpfs(path: Path, size: str) -> Iterator[Path | None]:
    """A tmpfs of `size` at `path`, or None where mounting is not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount")
    ok = mount is not None and subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True, check=False).returncode == 0
    try:
        yield path if ok else None
    finally:
        if ok:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(directory: Path, name: str = "filler") -> int:
    """Write zeros into `directory` until the filesystem is full; returns bytes written."""
    total = 0
    chunk = b"\0" * 4096
    with (directory / name).open("wb", buffering=0) as f:
        while True:
            try:
                total += f.write(chunk)
            except OSError:
                break
    return total


def kill_quietly(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
