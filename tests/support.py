"""Real parts for tests: a private Mosquitto, an MQTT collector, a gateway subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import structlog
import yaml

from gateway.driver import DriverContext, ResourcePool
from gateway.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    """Block until something accepts on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


class Mosquitto:
    """A private mosquitto on a free port that a test may stop, pause or restart."""

    def __init__(self, port: int | None = None, *, password: tuple[str, str] | None = None,
                 extra: str = "", persistent: bool = False) -> None:
        """`persistent`: sessions and queued messages outlast a restart of the broker, so a
        message it acknowledged but had not yet passed on when stopped is not lost."""
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise RuntimeError("mosquitto is not installed: apt-get install mosquitto")
        self.exe = exe
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pg-mosq-"))
        # run as root, mosquitto drops to its own user: it must be able to read its files
        self.dir.chmod(0o755)
        conf = [f"listener {self.port} 127.0.0.1",
                "log_dest stderr", "log_type error", "max_inflight_messages 0",
                "max_queued_messages 0", "message_size_limit 0"]
        if password:
            pw = self.dir / "passwd"
            pw.write_text("")
            subprocess.run(["mosquitto_passwd", "-b", str(pw), *password], check=True)
            pw.chmod(0o644)
            conf += ["allow_anonymous false", f"password_file {pw}"]
        else:
            conf += ["allow_anonymous true"]
        if persistent:
            store = self.dir / "store"
            store.mkdir()
            store.chmod(0o777)  # mosquitto started as root writes as user mosquitto
            conf += ["persistence true", f"persistence_location {store}/"]
        else:
            conf += ["persistence false"]
        conf += [extra]
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join(conf) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def pause(self) -> None:
        assert self.proc
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_on(cond: threading.Condition, check: Callable[[], bool], timeout: float,
            tick: float = 0.2) -> bool:
    """Wait on `cond` (notified by a collector's callback) until `check()` holds, checking
    at least every `tick` seconds; returns whether it held within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    with cond:
        while not check():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            cond.wait(min(left, tick))
    return True


class Collector:
    """Subscribes to a topic filter and keeps every data payload (paho, its own thread)."""

    def __init__(self, port: int, topic: str = "parkgate/#", *,
                 auth: tuple[str, str] | None = None, persistent: bool = False) -> None:
        """`persistent`: a session the broker keeps, so nothing published while this
        subscriber reconnects after a broker restart is lost to it (with a persistent
        `Mosquitto`)."""
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.retained: dict[str, dict[str, Any]] = {}
        # re-entrant: wait_for() holds it while predicates call readings()
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                  client_id=f"collector-{os.getpid()}-{id(self)}",
                                  clean_session=not persistent)
        if auth:
            self.client.username_pw_set(*auth)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            doc = {"_raw": msg.payload.decode(errors="replace")}
        with self._cond:
            if msg.retain or msg.topic.endswith("/status"):
                self.retained[msg.topic] = doc
            if "readings" in doc:
                self.messages.append((msg.topic, doc))
            self._cond.notify_all()

    def readings(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for _t, m in self.messages for r in m["readings"]]

    def seqs(self) -> list[int]:
        return [r["seq"] for r in self.readings()]

    def wait_for(self, predicate: Any, timeout: float = 20.0) -> bool:
        """Wait until `predicate(self)` is true; returns whether it became true."""
        return wait_on(self._cond, lambda: predicate(self), timeout)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def base_config(tmp: Path, broker_port: int, devices: list[dict[str, Any]],
                **sections: Any) -> dict[str, Any]:
    """A complete config dict for a test gateway; override sections by keyword."""
    cfg: dict[str, Any] = {
        "gateway": {"id": "test-gw", "site": "test"},
        "buffer": {"path": str(tmp / "buffer.db")},
        "uplink": {"mqtt": {"brokers": [f"mqtt://127.0.0.1:{broker_port}"],
                            "batch": {"max_readings": 500, "max_delay": "100ms"}}},
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        "logging": {"level": "info", "format": "json"},
        "devices": devices,
    }
    cfg.update(sections)
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class GatewayProcess:
    """`parkgate run -c FILE` as a real subprocess (so it can be SIGKILLed)."""

    def __init__(self, config: Path, *, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = config.with_suffix(".log")

    def start(self) -> GatewayProcess:
        self._close_log()  # a previous run may have been killed from outside
        self._logf = self.log.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c",
                                      str(self.config)], stdout=self._logf,
                                     stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)
        return self

    def signal(self, sig: int) -> None:
        assert self.proc
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        logf = getattr(self, "_logf", None)
        if logf is not None and not logf.closed:
            logf.close()

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self._close_log()
                raise
        self._close_log()
        return int(self.proc.returncode)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@contextlib.contextmanager
def running(*things: Any) -> Iterator[None]:
    """Close/stop everything given on exit, in reverse order."""
    try:
        yield
    finally:
        for t in reversed(things):
            with contextlib.suppress(Exception):
                (getattr(t, "close", None) or t.stop)()


# --- helpers shared by the end-to-end tests --------------------------------------------

def scrape(listen: str) -> dict[str, float]:
    """The agent's /metrics as {'name{labels}': value}."""
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def wait_metric(listen: str, key: str, pred: Callable[[float], bool],
                timeout: float = 20.0) -> float:
    """Poll /metrics until `pred(value of key)`; returns the value."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            value = scrape(listen).get(key)
            if value is not None and pred(value):
                return value
        time.sleep(0.1)
    raise AssertionError(f"{key} = {value} after {timeout}s")


def buffer_stats(cfg: Path) -> dict[str, Any]:
    """`parkgate buffer stats -c FILE` as JSON."""
    out = subprocess.run([sys.executable, "-m", "gateway", "buffer", "stats", "-c", str(cfg)],
                         capture_output=True, text=True, cwd=ROOT, timeout=30, check=True)
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def wait_subscribed(c: Collector, port: int, auth: tuple[str, str] | None = None) -> None:
    """Publish probes until the collector's subscription demonstrably works."""
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"probe-{id(c)}")
    if auth:
        pub.username_pw_set(*auth)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    try:
        for _ in range(100):
            pub.publish("parkgate/probe/probe/status", b'{"probe": 1}', qos=1)
            if c.wait_for(lambda c: "parkgate/probe/probe/status" in c.retained, 0.2):
                return
        raise AssertionError("the collector never received a probe")
    finally:
        pub.loop_stop()
        pub.disconnect()


def driver_context(name: str, pool: ResourcePool | None = None,
                   metrics: Metrics | None = None) -> DriverContext:
    """A driver context like the supervisor's, for driver-level tests."""
    return DriverContext(device=name, log=structlog.get_logger().bind(device=name),
                         resources=pool if pool is not None else ResourcePool(),
                         metrics=metrics if metrics is not None else Metrics())


def metric_value(metrics: Metrics, name: str, **labels: str) -> float:
    """Current value of a metric sample, 0 if absent."""
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One MQTT control packet from a scripted broker's stream: its first byte and body."""
    head = (await reader.readexactly(1))[0]
    length, mult = 0, 1
    while True:
        b = (await reader.readexactly(1))[0]
        length += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            break
    return head, await reader.readexactly(length)
