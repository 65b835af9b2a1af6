"""`parkgate demo`: the gateway end to end on emulated local devices, watched upstream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import yaml

from gateway import logs
from gateway.agent import Agent, AgentHooks
from gateway.config import load_config
from gateway.driver import discover_drivers
from gateway.errors import ParkgateError

ROOT = Path(__file__).resolve().parent.parent
EMULATOR = ROOT / "hardware-in-loop" / "emulators" / "modbus_meter.py"
INSTALLED_DIR = Path(sys.prefix) / "share" / "parkgate" / "demo"
"""Where an installed parkgate keeps the demo config and the meter emulator (the wheel's
data files, see pyproject.toml): a field engineer runs the demo on the gateway itself."""


def demo_file(checkout: Path) -> Path:
    """A demo file from this source checkout, else the installed copy (may not exist)."""
    return checkout if checkout.exists() else INSTALLED_DIR / checkout.name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_mosquitto() -> str:
    """Path of the mosquitto binary; installs it with apt-get when running as root."""
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return candidate
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("mosquitto is not installed; installing it with apt-get ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        apt = shutil.which("apt-get") or "apt-get"
        subprocess.run([apt, "update", "-qq"], check=False, env=env)  # noqa: S603
        done = subprocess.run([apt, "install", "-y", "-qq", "mosquitto"],  # noqa: S603
                              check=False, env=env)
        if done.returncode == 0 and Path("/usr/sbin/mosquitto").exists():
            return "/usr/sbin/mosquitto"
    raise ParkgateError("the demo needs the mosquitto broker: install it with "
                        "`sudo apt-get install -y mosquitto` and run `parkgate demo` again")


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ParkgateError(f"{what} exited at start (code {proc.returncode})")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise ParkgateError(f"{what} did not start listening on port {port}")


@dataclass
class _View:
    """What the upstream subscriber has seen, per device."""

    started: float = field(default_factory=time.monotonic)
    count: dict[str, int] = field(default_factory=dict)
    last: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_seq: int = 0
    seqs: set[int] = field(default_factory=set)
    status: str = "?"
    aliases: dict[int, tuple[str, int, object]] = field(default_factory=dict)

    def add(self, topic: str, doc: dict[str, Any]) -> None:
        if topic.endswith("/status"):
            self.status = str(doc.get("state"))
            return
        for r in doc.get("readings", []):
            dev = r["device"]
            self.count[dev] = self.count.get(dev, 0) + 1
            self.last.setdefault(dev, {})[r["metric"]] = r
            self.max_seq = max(self.max_seq, r["seq"])
            self.seqs.add(r["seq"])

    def add_sparkplug(self, topic: str, payload: bytes) -> None:
        """A Sparkplug message: births name the aliases, DDATA carries the readings."""
        from gateway.uplink.dialects.sparkplug import codec  # noqa: PLC0415 - protobuf

        parts = topic.split("/")
        msg = codec.decode(payload)
        if msg is None or len(parts) < 4:
            return
        kind, device = parts[2], parts[4] if len(parts) > 4 else None
        if kind == "NBIRTH":
            bd = next((m.long_value for m in msg.metrics if m.name == codec.BDSEQ), "?")
            self.status = f"online (NBIRTH, bdSeq {bd})"
        elif kind == "NDEATH":
            self.status = "offline (NDEATH)"
        elif kind == "DBIRTH" and device:
            for m in msg.metrics:
                unit = codec.properties(m).get("engUnit")
                self.aliases[m.alias] = (m.name, m.datatype, unit)
        elif kind == "DDATA" and device:
            readings = []
            for m in msg.metrics:
                name, datatype, unit = self.aliases.get(m.alias, (f"alias {m.alias}", 0, None))
                seq = codec.properties(m).get("seq")
                readings.append({"device": device, "metric": name, "unit": unit,
                                 "value": codec.metric_value(m, datatype),
                                 "seq": seq if isinstance(seq, int) else 0})
            self.add(topic, {"readings": readings})

    def render(self, metrics_url: str, broker: str) -> str:
        elapsed = time.monotonic() - self.started
        total = sum(self.count.values())
        missing = self.max_seq - len(self.seqs) if self.seqs else 0
        lines = [f"parkgate demo - {elapsed:5.0f} s - broker {broker} - status: {self.status}",
                 f"metrics: {metrics_url}   (Ctrl-C to stop)",
                 f"received upstream: {total} readings, highest seq {self.max_seq}, "  # noqa: ISC004
                 f"missing seqs: {missing}",
                 "",
                 f"{'device':<18} {'readings':>8}  latest values"]
        for dev in sorted(self.count):
            shown = []
            for metric, r in list(self.last[dev].items())[:4]:
                unit = f" {r['unit']}" if r.get("unit") else ""
                value = r["value"]
                value = f"{value:.2f}" if isinstance(value, float) else value
                shown.append(f"{metric}={value}{unit}")
            lines.append(f"{dev:<18} {self.count[dev]:>8}  {', '.join(shown)}")
        return "\n".join(lines)


async def _watch(port: int, view: _View, stop: asyncio.Event, dialect: str) -> None:
    sparkplug = dialect == "sparkplug"
    while not stop.is_set():
        try:
            async with aiomqtt.Client("127.0.0.1", port, identifier="parkgate-demo-view") as c:
                await c.subscribe("spBv1.0/#" if sparkplug else "parkgate/#", qos=1)
                async for msg in c.messages:
                    if sparkplug:
                        view.add_sparkplug(str(msg.topic), bytes(msg.payload))
                        continue
                    with contextlib.suppress(ValueError, TypeError):
                        view.add(str(msg.topic), json.loads(bytes(msg.payload)))
        except aiomqtt.MqttError:
            await asyncio.sleep(0.5)


async def _demo(config: Path, seconds: float | None, broker_url: str, broker_port: int,
                dialect: str) -> int:
    loaded = load_config(config, discover_drivers())
    agent = Agent(loaded)
    view = _View()
    hooks = AgentHooks()
    stop = hooks.stop
    listen = loaded.config.metrics.listen or ""
    metrics_url = f"http://{listen}/metrics" if listen else "(metrics disabled)"
    tty = sys.stdout.isatty()

    async def show() -> None:
        while not stop.is_set():
            await asyncio.sleep(1.0)
            text = view.render(metrics_url, broker_url)
            print(("\x1b[H\x1b[2J" + text) if tty else text + "\n", flush=True)

    async def timer() -> None:
        if seconds is not None:
            await asyncio.sleep(seconds)
            stop.set()

    async with asyncio.TaskGroup() as tg:
        watcher = tg.create_task(_watch(broker_port, view, stop, dialect), name="demo.watch")
        shower = tg.create_task(show(), name="demo.view")
        tg.create_task(timer(), name="demo.timer")
        code = await agent.run(hooks)
        stop.set()
        await asyncio.sleep(0.5)  # let the last messages reach the view
        watcher.cancel()
        shower.cancel()
    print(view.render(metrics_url, broker_url))
    print(f"\nstopped. {sum(view.count.values())} readings arrived upstream; the buffer "
          f"and logs were in a temporary directory.")
    return code


def _with_dialect(config: Path, dialect: str, tmp: Path) -> Path:
    """`config` with `uplink.mqtt.dialect` set (Sparkplug: group = site, node = gateway)."""
    if dialect == "parkgate":
        return config
    doc = yaml.safe_load(config.read_text(encoding="utf-8"))
    mqtt = doc["uplink"]["mqtt"]
    mqtt["dialect"] = dialect
    mqtt["sparkplug"] = {"group": doc["gateway"]["site"], "node": doc["gateway"]["id"]}
    out = tmp / f"demo-{dialect}.yaml"
    out.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return out


def run_demo(seconds: float | None = None, config: Path | None = None,
             dialect: str = "parkgate") -> int:
    """Start mosquitto and a Modbus meter emulator, run the agent and show what arrives."""
    config = config or demo_file(ROOT / "config" / "demo.yaml")
    if not config.exists():
        raise ParkgateError(f"demo config {config} not found: reinstall parkgate (the demo "
                            "files are part of the package), or pass --config FILE")
    emulator = demo_file(EMULATOR)
    mosquitto = find_mosquitto()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="parkgate-demo-") as tmp:
        try:
            port = _free_port()
            conf = Path(tmp) / "mosquitto.conf"
            conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                            "persistence false\n")
            broker = subprocess.Popen([mosquitto, "-c", str(conf)],  # noqa: S603 - our binary
                                      stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            procs.append(broker)
            _wait_port(port, broker, "mosquitto")
            modbus_port = _free_port()
            if emulator.exists():
                emu = subprocess.Popen([sys.executable, str(emulator), "--profile",  # noqa: S603
                                        "eastron-sdm630", "--tcp", f"127.0.0.1:{modbus_port}",
                                        "--units", "1"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, cwd=ROOT)
                procs.append(emu)
                _wait_port(modbus_port, emu, "the Modbus meter emulator")
            os.environ.update({
                "PARKGATE_DEMO_BROKER": f"mqtt://127.0.0.1:{port}",
                "PARKGATE_DEMO_DIR": tmp,
                "PARKGATE_DEMO_MODBUS_PORT": str(modbus_port),
                "PARKGATE_DEMO_METRICS": os.environ.get("PARKGATE_DEMO_METRICS",
                                                        f"127.0.0.1:{_free_port()}"),
            })
            logs.configure("warning", "console")
            config = _with_dialect(config, dialect, Path(tmp))
            return asyncio.run(_demo(config, seconds, f"mqtt://127.0.0.1:{port}", port,
                                     dialect))
        except KeyboardInterrupt:
            return 0
        finally:
            for proc in reversed(procs):
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
