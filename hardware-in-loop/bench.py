"""Bench runner: the end-to-end scenario of the tests, against real devices or emulators.

    python hardware-in-loop/bench.py                      # emulators (what CI runs)
    python hardware-in-loop/bench.py --config bench.yaml  # the devices wired to this bench
    python hardware-in-loop/bench.py --config bench.yaml --device main-meter --json

For every enabled device of the config it starts the real gateway (`parkgate run`) and
checks: readings of good quality reach an MQTT broker within N poll intervals, and the
gateway's /metrics says `parkgate_device_up{device=...} 1`. It then stops the gateway
with SIGTERM (exit status 0 expected) and checks that every `seq` from 1 to the last
arrived. Exit status 0 only if every device and every gateway check passed.

The devices of `--config` are used as they are; the gateway/buffer/uplink/metrics
sections are replaced (a private Mosquitto on a free port, a temporary buffer), so a bench
run never touches a production broker or buffer. See README.md beside this file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "hardware-in-loop")]

import yaml  # noqa: E402 - after the path set-up, like the tests' imports

from gateway.units import parse_duration  # noqa: E402
from tests.support import Collector, GatewayProcess, Mosquitto, free_port  # noqa: E402

EMULATORS = ROOT / "hardware-in-loop" / "emulators"
DEFAULT_INTERVAL = 5.0          # DeviceOptions' default
STREAM_WINDOW = 10.0            # streaming devices (serial push, BLE) have no interval


@dataclass
class DeviceResult:
    """What the bench saw of one device."""

    device: str
    driver: str
    passed: bool = False
    readings: int = 0
    good: int = 0
    uncertain: int = 0
    bad: int = 0
    metrics: list[str] = field(default_factory=list)
    first_after_s: float | None = None
    device_up: float | None = None
    poll_errors: dict[str, float] = field(default_factory=dict)
    deadline_s: float = 0.0
    note: str = ""


@dataclass
class Emulator:
    """One emulator script running as a subprocess, and the device it stands for."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    device: dict[str, Any]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _start_emulator(name: str, args: list[str], tmp: Path, device: dict[str, Any],
                    timeout: float = 15.0) -> Emulator:
    """Run `emulators/NAME.py ARGS`; ready once it printed its first line."""
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(EMULATORS / f"{name}.py"), *args],
                                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    emu = Emulator(name, proc, log, device)
    deadline = time.monotonic() + timeout
    while b"\n" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            emu.stop()
            raise RuntimeError(f"emulator {name} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    return emu


def emulated_devices(tmp: Path) -> tuple[list[dict[str, Any]], list[Emulator], list[str]]:
    """The sim driver plus one device per emulator that exists here.

    Returns (devices, running emulators, notes about what could not be emulated).
    """
    devices: list[dict[str, Any]] = [
        {"name": "sim-1", "driver": "sim", "interval": "200ms", "points": 3,
         "pattern": "counter"}]
    emulators: list[Emulator] = []
    notes: list[str] = []
    plans: list[tuple[str, list[str], dict[str, Any]]] = []
    dev = tmp / "dev"
    dev.mkdir(exist_ok=True)
    # Energy meter on RS-485 (what a USB-RS485 adapter and an Eastron SDM630 give).
    plans.append(("modbus_meter",
                  ["--profile", "eastron-sdm630", "--rtu", "--link", str(dev / "ttyUSB0")],
                  {"name": "modbus-meter", "driver": "modbus", "unit": 1,
                   "profile": "eastron-sdm630", "interval": "1s",
                   "transport": {"type": "rtu", "port": str(dev / "ttyUSB0"),
                                 "baudrate": 9600}}))
    # DL/T 645-2007 meter on its own RS-485 port.
    plans.append(("dlt645_meter",
                  ["--link", str(dev / "ttyDLT"), "--address", "000012345678"],
                  {"name": "dlt645-meter", "driver": "dlt645", "address": "000012345678",
                   "interval": "1s",
                   "transport": {"type": "serial", "port": str(dev / "ttyDLT"),
                                 "baudrate": 2400, "parity": "N", "delay": "10ms"},
                   "items": ["energy_import", "voltage_a", "frequency"]}))
    # A line-oriented sensor pushing `T=..,H=..` lines.
    plans.append(("line_sensor",
                  ["--link", str(dev / "ttySENSOR"), "--format", "kv", "--period", "0.5"],
                  {"name": "line-sensor", "driver": "serial", "port": str(dev / "ttySENSOR"),
                   "baudrate": 9600,
                   "parser": {"type": "kv", "fields": {
                       "T": {"metric": "temperature", "unit": "°C"},
                       "H": {"metric": "humidity", "unit": "%"}}}}))
    # A Quectel 5G module's AT port.
    plans.append(("quectel_modem", ["--mode", "nsa", "--link", str(dev / "ttyMODEM")],
                  {"name": "modem", "driver": "modem", "source": "at",
                   "port": str(dev / "ttyMODEM"), "interval": "2s",
                   "command_timeout": "1s"}))
    for name, args, device in plans:
        if not (EMULATORS / f"{name}.py").exists():
            notes.append(f"{device['name']}: emulators/{name}.py not found, not emulated")
            continue
        try:
            emulators.append(_start_emulator(name, args, tmp, device))
        except RuntimeError as exc:
            notes.append(f"{device['name']}: {exc}")
            continue
        devices.append(device)
    notes.append("ble: no emulator (BLE needs a real adapter and BlueZ); not run")
    return devices, emulators, notes


def bench_config(devices: list[dict[str, Any]], tmp: Path, broker_port: int) -> dict[str, Any]:
    """A complete config: the given devices, a private broker, a throwaway buffer."""
    return {
        "gateway": {"id": "bench", "site": "bench"},
        "buffer": {"path": str(tmp / "buffer.db")},
        "uplink": {"mqtt": {"brokers": [f"mqtt://127.0.0.1:{broker_port}"],
                            "batch": {"max_readings": 500, "max_delay": "200ms"}}},
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        "logging": {"level": "info", "format": "json"},
        "devices": devices,
    }


def interval_of(device: dict[str, Any]) -> float | None:
    """A polling device's interval in seconds; None for streaming devices."""
    if device.get("driver") == "ble" or (device.get("driver") == "serial"
                                         and device.get("mode", "push") == "push"):
        return None
    raw = device.get("interval")
    return DEFAULT_INTERVAL if raw is None else parse_duration(raw)


def scrape(listen: str) -> str:
    """The gateway's /metrics text ("" while it is not up)."""
    try:
        with urllib.request.urlopen(f"http://{listen}/metrics", timeout=3) as r:
            return str(r.read().decode())
    except OSError:
        return ""


def sample(text: str, name: str, device: str) -> float | None:
    """The value of `name{device="..."}` in an exposition, if present."""
    m = re.search(rf'^{name}\{{device="{re.escape(device)}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def poll_errors(text: str, device: str) -> dict[str, float]:
    """`parkgate_poll_errors_total` of one device, by kind."""
    pat = rf'^parkgate_poll_errors_total\{{device="{re.escape(device)}",kind="([^"]*)"\}} (\S+)$'
    return {k: float(v) for k, v in re.findall(pat, text, re.M) if float(v) > 0}


def run_bench(devices: list[dict[str, Any]], *, intervals: int, grace: float,
              min_good: int, tmp: Path, log: Any) -> tuple[list[DeviceResult],
                                                            dict[str, Any]]:
    """Start broker and gateway, watch every device, stop; returns device and gateway checks."""
    results = {d["name"]: DeviceResult(d["name"], str(d.get("driver")))
               for d in devices if d.get("enabled", True)}
    for d in devices:
        if not d.get("enabled", True):
            log(f"  {d['name']}: disabled in the config, skipped")
    for d in devices:
        if d["name"] in results:
            iv = interval_of(d)
            results[d["name"]].deadline_s = grace + (
                max(STREAM_WINDOW, intervals * 1.0) if iv is None else intervals * iv)
    gateway: dict[str, Any] = {}
    broker = Mosquitto().start()
    collector = Collector(broker.port)
    cfg = bench_config(devices, tmp, broker.port)
    cfg_path = tmp / "bench.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    gw = GatewayProcess(cfg_path).start()
    started = time.monotonic()
    first: dict[str, float] = {}
    try:
        deadline = started + max((r.deadline_s for r in results.values()), default=grace)
        text = ""
        while time.monotonic() < deadline:
            if not gw.alive():
                gateway["startup"] = f"gateway exited with {gw.proc and gw.proc.returncode}"
                break
            text = scrape(cfg["metrics"]["listen"]) or text
            for r in collector.readings():
                first.setdefault(r["device"], time.monotonic() - started)
            done = True
            for name, res in results.items():
                if res.passed:
                    continue
                _tally(res, collector, text)
                res.first_after_s = first.get(name)
                res.passed = res.good >= min_good and res.device_up == 1.0
                done = done and (res.passed or time.monotonic() - started > res.deadline_s)
            if done:
                break
            collector.wait_for(lambda _c: False, timeout=0.5)   # new messages, or 0.5 s
        text = scrape(cfg["metrics"]["listen"]) or text
        for res in results.values():
            if not res.passed:
                _tally(res, collector, text)
                res.first_after_s = first.get(res.device)
                res.note = _why(res, min_good)
        # gateway checks: orderly stop, seq strictly increasing
        code = gw.stop(timeout=30) if gw.alive() else (gw.proc.returncode if gw.proc else None)
        gateway["clean_stop"] = code == 0
        gateway["exit_code"] = code
        # After a drained stop every accepted reading has arrived: seq 1..N, no gaps.
        # Arrival order and duplicates are allowed (at-least-once, backlog and live data
        # share the connection); a gap or a number from nowhere is a defect.
        seqs = collector.seqs()
        unique = sorted(set(seqs))
        gateway["seq_complete"] = bool(unique) and unique == list(range(1, unique[-1] + 1))
        gateway["readings"] = len(unique)
        gateway["duplicates"] = len(seqs) - len(unique)
    finally:
        gw.kill()
        collector.close()
        broker.close()
    gateway["log"] = str(gw.log)
    return list(results.values()), gateway


def _tally(res: DeviceResult, collector: Collector, text: str) -> None:
    mine = [r for r in collector.readings() if r["device"] == res.device]
    res.readings = len(mine)
    res.good = sum(r["quality"] == "good" for r in mine)
    res.uncertain = sum(r["quality"] == "uncertain" for r in mine)
    res.bad = sum(r["quality"] == "bad" for r in mine)
    res.metrics = sorted({r["metric"] for r in mine})
    res.device_up = sample(text, "parkgate_device_up", res.device)
    res.poll_errors = poll_errors(text, res.device)


def _why(res: DeviceResult, min_good: int) -> str:
    if res.readings == 0:
        errors = ", ".join(f"{k}={v:g}" for k, v in res.poll_errors.items())
        return f"no readings within {res.deadline_s:g}s" + (f" (poll errors: {errors})"
                                                            if errors else "")
    if res.good < min_good:
        return f"only {res.good} good of {res.readings} readings"
    return f"device_up is {res.device_up}"


def report(results: list[DeviceResult], gateway: dict[str, Any], notes: list[str],
           out: Any) -> bool:
    """Print the table; True if everything passed."""
    ok = all(r.passed for r in results) and gateway.get("clean_stop") is True \
        and gateway.get("seq_complete") is True and bool(results)
    w = max([len(r.device) for r in results] + [6])
    print(f"{'device':<{w}}  {'driver':<8} {'result':<6} {'good':>5} {'bad':>4} "
          f"{'first':>6}  up  note", file=out)
    for r in results:
        first = "-" if r.first_after_s is None else f"{r.first_after_s:.1f}s"
        up = "-" if r.device_up is None else f"{r.device_up:g}"
        print(f"{r.device:<{w}}  {r.driver:<8} {'PASS' if r.passed else 'FAIL':<6} "
              f"{r.good:>5} {r.bad:>4} {first:>6}  {up:>2}  {r.note}", file=out)
    print(f"gateway: clean stop {'PASS' if gateway.get('clean_stop') else 'FAIL'} "
          f"(exit {gateway.get('exit_code')}), seq 1..N without gaps "
          f"{'PASS' if gateway.get('seq_complete') else 'FAIL'} "
          f"({gateway.get('readings', 0)} readings, {gateway.get('duplicates', 0)} duplicates)"
          + (f"; {gateway['startup']}" if "startup" in gateway else ""), file=out)
    for n in notes:
        print(f"note: {n}", file=out)
    print(f"{'PASS' if ok else 'FAIL'}: {sum(r.passed for r in results)} of {len(results)} "
          f"devices; gateway log {gateway.get('log')}", file=out)
    return ok


@contextlib.contextmanager
def _workdir(keep: bool) -> Iterator[Path]:
    if keep:
        yield Path(tempfile.mkdtemp(prefix="parkgate-bench-"))
        return
    with tempfile.TemporaryDirectory(prefix="parkgate-bench-") as d:
        yield Path(d)


def main(argv: list[str] | None = None) -> int:
    """Run the bench; exit status 0 if every device passed."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path,
                   help="a parkgate config whose devices are wired to this bench "
                        "(default: emulators)")
    p.add_argument("--device", action="append", default=[],
                   help="only this device (repeat); default: every enabled device")
    p.add_argument("--intervals", type=int, default=5,
                   help="poll intervals each device gets to deliver (default 5)")
    p.add_argument("--grace", type=float, default=10.0,
                   help="seconds added for start-up: connects, first poll (default 10)")
    p.add_argument("--min-good", type=int, default=1,
                   help="good readings a device must deliver (default 1)")
    p.add_argument("--json", action="store_true", help="print the results as JSON too")
    p.add_argument("--keep", action="store_true",
                   help="keep the work directory (config, gateway log, buffer)")
    args = p.parse_args(argv)

    emulators: list[Emulator] = []
    notes: list[str] = []
    with _workdir(args.keep) as tmp:
        try:
            if args.config:
                doc = yaml.safe_load(args.config.read_text())
                devices = list(doc.get("devices") or [])
                notes.append(f"devices from {args.config}; broker, buffer and metrics "
                             "replaced by private ones")
            else:
                devices, emulators, more = emulated_devices(tmp)
                notes += more
            if args.device:
                unknown = set(args.device) - {d["name"] for d in devices}
                if unknown:
                    print(f"bench: error: no such device: {', '.join(sorted(unknown))}",
                          file=sys.stderr)
                    return 2
                devices = [d for d in devices if d["name"] in args.device]
            if not devices:
                print("bench: error: no devices to test", file=sys.stderr)
                return 2
            print(f"bench: {len(devices)} device(s): "
                  f"{', '.join(d['name'] for d in devices)}", file=sys.stderr, flush=True)
            results, gateway = run_bench(
                devices, intervals=args.intervals, grace=args.grace, min_good=args.min_good,
                tmp=tmp, log=lambda m: print(m, file=sys.stderr))
        finally:
            for e in emulators:
                e.stop()
        ok = report(results, gateway, notes, sys.stdout)
        if not ok:
            print(f"--- last lines of the gateway log ---\n"
                  f"{Path(gateway['log']).read_text(errors='replace')[-3000:]}",
                  file=sys.stderr)
        if args.json:
            print(json.dumps({"passed": ok, "devices": [asdict(r) for r in results],
                              "gateway": gateway, "notes": notes}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
