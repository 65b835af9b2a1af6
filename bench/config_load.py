"""How long a large site's config takes to load, and what loading leaves behind.

    .venv/bin/python bench/config_load.py                   # 100 devices x 100 registers
    .venv/bin/python bench/config_load.py --devices 50 --registers 50 --keep /tmp/cfg.yaml

Writes the config a field engineer writes for PLCs without a profile: every device lists its
registers inline (block style, as `yaml.safe_dump` writes it). Each figure comes from its own
fresh interpreter, so imports and earlier runs do not blur it:

* `load_cpu_s`: CPU seconds of `load_config()` (read, parse, substitute, validate), imports
  excluded;
* `retained_mib` / `peak_mib`: tracemalloc's view of what the loaded config keeps alive after
  a `gc.collect()`, and the peak while loading (tracemalloc slows the load; it gets its own
  run);
* `check_wall_s` / `check_cpu_s`: the whole `parkgate check FILE` command, interpreter start
  and imports included, as a field engineer waits for it;
* `run_start_cpu_s` / `run_peak_rss_mib`: `parkgate run -c FILE` until its first log line
  after loading ("parkgate starting") plus `--run-seconds`, with nobody answering on the
  Modbus ports or the broker port: what loading costs the running agent.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.procfs import cpu_seconds, rss_mib, terminate  # noqa: E402 - after the path
from tests.support import free_port  # noqa: E402

HEADER = """\
gateway: {{id: bench-gw, site: bench}}
buffer: {{path: {buffer}}}
uplink:
  mqtt:
    brokers: ["mqtt://127.0.0.1:{broker}"]
metrics: {{listen: "127.0.0.1:{metrics}"}}
logging: {{level: info, format: json}}
devices:
"""


def config_text(devices: int, registers: int, buffer: Path = Path("/tmp/pg-bench/buffer.db")
                ) -> str:
    """The YAML of `devices` Modbus TCP devices with `registers` inline registers each."""
    out = [HEADER.format(buffer=buffer, broker=free_port(), metrics=free_port())]
    for d in range(devices):
        out.append(f"- name: dev{d}\n  driver: modbus\n  unit: 1\n  interval: 1s\n"
                   f"  transport:\n    type: tcp\n    host: 127.0.0.1\n    port: {15000 + d}\n"
                   "  registers:\n")
        out.extend(f"  - name: r{r}\n    table: holding\n    address: {r}\n    type: uint16\n"
                   for r in range(registers))
    return "".join(out)


_PROBE = """
import gc, json, sys, time, tracemalloc
from pathlib import Path
from gateway.config import load_config
from gateway.driver import discover_drivers
drivers = discover_drivers()
for d in drivers.values():  # import every driver first: imports are not loading
    d.cls
path, mode = Path(sys.argv[1]), sys.argv[2]
if mode == "cpu":
    t0 = time.process_time()
    loaded = load_config(path, drivers)
    print(json.dumps({"load_cpu_s": time.process_time() - t0}))
else:
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    loaded = load_config(path, drivers)
    gc.collect()
    now, peak = tracemalloc.get_traced_memory()
    print(json.dumps({"retained_mib": (now - base) / 2**20, "peak_mib": (peak - base) / 2**20}))
assert len(loaded.config.devices) > 0
"""


def probe(path: Path, mode: str) -> dict[str, float]:
    """One measurement in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", _PROBE, str(path), mode], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return result


def check(path: Path) -> dict[str, float]:
    """Wall and CPU seconds of `parkgate check FILE`, a child process from start to exit."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "gateway", "check", str(path)], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"check failed: {done.stdout}{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"check_wall_s": wall, "check_cpu_s": cpu,
            "check_maxrss_mib": after.ru_maxrss / 1024}


def run(path: Path, seconds: float) -> dict[str, float]:
    """CPU seconds until the agent logged its start, and its peak RSS `seconds` later."""
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(path)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if b"parkgate starting" in line:
                break
        else:
            raise SystemExit(f"parkgate run exited with {proc.wait()}")
        started = cpu_seconds(proc.pid)
        time.sleep(seconds)
        peak = rss_mib(proc.pid)[1]
    finally:
        terminate(proc)
    return {"run_start_cpu_s": started, "run_peak_rss_mib": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--registers", type=int, default=100)
    p.add_argument("--runs", type=int, default=3, help="best of N for the timings")
    p.add_argument("--run-seconds", type=float, default=5.0)
    p.add_argument("--keep", type=Path, default=None, help="write the config here and keep it")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="pg-bench-cfg-") as tmp:
        text = config_text(args.devices, args.registers, Path(tmp) / "buffer.db")
        path = args.keep or Path(tmp) / "site.yaml"
        path.write_text(text)
        runs = [probe(path, "cpu") for _ in range(args.runs)]
        checks = [check(path) for _ in range(args.runs)]
        row: dict[str, float | int | str] = {
            "devices": args.devices, "registers": args.devices * args.registers,
            "file_kib": round(len(text.encode()) / 1024, 1),
            "load_cpu_s": round(min(r["load_cpu_s"] for r in runs), 3),
            **{k: round(v, 2) for k, v in probe(path, "mem").items()},
            **{k: round(min(c[k] for c in checks), 3) for k in checks[0]},
            **{k: round(v, 2) for k, v in run(path, args.run_seconds).items()},
        }
    for key, value in row.items():
        print(f"{key:<18} {value}")


if __name__ == "__main__":
    main()
