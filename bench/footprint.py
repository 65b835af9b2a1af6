"""Where `parkgate run` spends its memory: imports, an idle agent, 100 meters x 100 registers.

    .venv/bin/python bench/footprint.py                 # everything, about 3 minutes
    .venv/bin/python bench/footprint.py --only imports  # or idle, profile, inline
    .venv/bin/python bench/footprint.py --no-unit-env   # without the unit's Environment=

Prints three tables:

* imports: what each library costs on top of the ones `parkgate run` loads before it, each
  row measured in a fresh interpreter (import the previous rows, read RSS, import the row,
  read RSS again), so the rows add up to the cost of the whole run path;
* idle: one `sim` device (10 points at 1 s) publishing to a private Mosquitto, after
  `--settle` seconds;
* 100 x 100: a hundred emulated Modbus TCP meters of a hundred registers at 1 s, the map
  from one shared profile file (`profile`) and written inline in every device (`inline`),
  peak RSS over `--window` seconds after the first readings.

Each agent row splits RSS into anonymous memory (the Python heap, allocator arenas,
SQLite's page cache) and file-backed pages (libpython, OpenSSL, pydantic-core: shared with
other processes and droppable by the kernel, but counted in RSS).

Figures match what systemd/install.sh installs: every process runs in a throwaway venv
without the checkout's editable-install hook, with the `Environment=` of
systemd/parkgate.service (-OO through PYTHONOPTIMIZE) unless `--no-unit-env`, and the
standard library, the dependencies and the project are compiled first into a private
`PYTHONPYCACHEPREFIX` at that optimisation level, as the installer does, so no row pays
for compiling source.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modbus import EMULATOR, _busy, wait_until, write_profile  # noqa: E402
from procfs import terminate  # noqa: E402

from tests.support import Mosquitto, base_config, free_port, write_config  # noqa: E402

# What `parkgate run` imports, in the order it first needs it; each row is measured on top
# of all the rows above it.
IMPORT_ROWS: list[tuple[str, list[str]]] = [
    ("interpreter (python -c pass)", []),
    ("asyncio (with ssl, socket, concurrent.futures)", ["asyncio"]),
    ("importlib.metadata (entry points, version)",
     ["importlib.metadata", "gateway"]),
    ("pydantic + pydantic-core", ["pydantic", "pydantic_core"]),
    ("structlog", ["structlog", "structlog.stdlib"]),
    ("PyYAML (libyaml)", ["yaml"]),
    ("gateway.config (models built)", ["gateway.config"]),
    ("argparse + gateway.cli", ["gateway.cli", "gateway.corecli"]),
    ("sqlite3", ["sqlite3"]),
    ("prometheus_client", ["prometheus_client"]),
    ("paho-mqtt + aiomqtt", ["aiomqtt"]),
    ("gateway.agent (buffer, uplink, supervisor, http)", ["gateway.agent"]),
    ("drivers.sim", ["drivers.sim"]),
    ("drivers.modbus (pymodbus)", ["drivers.modbus"]),
]

MEASURE = """
import sys
def mem():
    out = {}
    for line in open('/proc/self/smaps_rollup'):
        k, v = line.split()[:2]
        out[k.rstrip(':')] = int(v) / 1024 if v.isdigit() else 0.0
    return out
for name in %(before)r:
    __import__(name)
m0, n0 = mem(), len(sys.modules)
for name in %(row)r:
    __import__(name)
m1 = mem()
print(m1['Rss'] - m0['Rss'], m1['Anonymous'] - m0['Anonymous'], len(sys.modules) - n0,
      m1['Rss'])
"""


def unit_environment() -> dict[str, str]:
    """KEY=VALUE pairs of every `Environment=` line of the systemd unit."""
    env: dict[str, str] = {}
    unit = (ROOT / "systemd" / "parkgate.service").read_text()
    for line in unit.splitlines():
        if line.startswith("Environment="):
            for pair in line.removeprefix("Environment=").split():
                key, _, value = pair.partition("=")
                env[key] = value.strip('"')
    return env


def installed_python(tmp: Path, deps: list[str]) -> Path:
    """A venv that imports what the project's venv has, as a wheel install would.

    The project's own venv holds parkgate as an editable install, whose import hook (a
    `.pth` file) loads pathlib, re, urllib.parse and ipaddress before anything else: 1 MiB
    an installed agent does not pay. Here that venv's site-packages is a plain path entry,
    so its `.pth` files are not run; `gateway` and `drivers` come from the checkout (the
    working directory) and the entry points from the editable install's metadata.
    """
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python3*/site-packages"))
    (site / "parkgate-deps.pth").write_text("\n".join(deps) + "\n")
    return venv / "bin" / "python"


@dataclass(frozen=True)
class Runner:
    """How every measured process is started: interpreter and environment."""

    python: str
    env: dict[str, str]


def prepare(tmp: Path, unit_env: bool) -> Runner:
    """The environment for every measured process, with bytecode compiled beforehand.

    As systemd/install.sh does: the standard library, the dependencies and the project are
    compiled into a private `PYTHONPYCACHEPREFIX` with the unit's optimisation level, so
    no agent compiles anything (that would cost it more memory than -OO saves).
    """
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(tmp / "pycache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if unit_env:
        env.update({k: v for k, v in unit_environment().items()
                    if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")})
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    python = str(installed_python(tmp, deps))
    query = "import sysconfig; print(sysconfig.get_paths()['stdlib'])"
    stdlib = subprocess.run([python, "-c", query],
                            env=env, check=True, capture_output=True, text=True).stdout.strip()
    for skip, paths in (
            ("/(test|tests|idlelib|tkinter|turtledemo|lib2to3|ensurepip|site-packages)/",
             [stdlib]),
            ("/(tests?)/", [*deps, "gateway", "drivers"])):
        subprocess.run([python, "-m", "compileall", "-q", "-j", "0", "-x", skip, *paths],
                       cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return Runner(python, env)


def imports(run: Runner) -> None:
    """The import table."""
    print("\n== imports on the `parkgate run` path (each row on top of the rows above)")
    print(f"{'row':52s} {'RSS MiB':>8s} {'anon':>6s} {'mods':>5s} {'total':>7s}")
    before: list[str] = []
    for title, row in IMPORT_ROWS:
        code = MEASURE % {"before": before, "row": row}
        out = subprocess.run([run.python, "-c", code], cwd=ROOT, env=run.env, check=True,
                             capture_output=True, text=True).stdout.split()
        rss, anon, mods, total = float(out[0]), float(out[1]), int(out[2]), float(out[3])
        if not row:  # the interpreter row: its total is the cost
            rss = anon = total
        print(f"{title:52s} {rss:8.1f} {anon:6.1f} {mods:5d} {total:7.1f}")
        before += row


def memory(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM, anonymous and file-backed RSS (MiB) and threads of a process."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
            n = int(value.split()[0])
            out[key] = n if key == "Threads" else n / 1024
    return out


def scrape_total(listen: str, name: str) -> float:
    text = urllib.request.urlopen(f"http://{listen}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def run_agent(config: Path, listen: str, run: Runner, seconds: float
              ) -> dict[str, float]:
    """Start `parkgate run`, wait for published readings, sample memory over `seconds`."""
    log = config.with_suffix(".log").open("wb")
    proc = subprocess.Popen([run.python, "-m", "gateway", "run", "-c", str(config)],
                            cwd=ROOT, env=run.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        started = time.monotonic()

        def published() -> bool:
            if proc.poll() is not None:
                raise SystemExit(f"footprint: the agent exited:\n"
                                 f"{config.with_suffix('.log').read_text()[-3000:]}")
            return scrape_total(listen, "parkgate_uplink_published_readings_total") > 0

        wait_until(published, 120, "the first published readings")
        first = time.monotonic() - started
        low = memory(proc.pid)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(1.0)
        m = memory(proc.pid)
        m["first_publish_s"] = first
        m["rss_at_first_publish"] = low["VmRSS"]
        m["published"] = scrape_total(listen, "parkgate_uplink_published_readings_total")
        return m
    finally:
        terminate(proc)
        log.close()


def show(title: str, m: dict[str, float]) -> None:
    print(f"{title:34s} peak {m['VmHWM']:6.1f}  now {m['VmRSS']:6.1f}  anon "
          f"{m['RssAnon']:6.1f}  file {m['RssFile']:5.1f}  threads {m['Threads']:3.0f}  "
          f"first publish {m['first_publish_s']:5.1f} s")


def idle(tmp: Path, run: Runner, settle: float) -> None:
    broker = Mosquitto().start()
    try:
        cfg = base_config(tmp / "idle", broker.port, [
            {"name": "sim-1", "driver": "sim", "interval": "1s", "points": 10}],
            logging={"level": "warning", "format": "json"})
        (tmp / "idle").mkdir()
        path = write_config(tmp / "idle" / "parkgate.yaml", cfg)
        show("idle (1 sim device, 10 points, 1 s)",
             run_agent(path, cfg["metrics"]["listen"], run, settle))
    finally:
        broker.close()


def meters(tmp: Path, run: Runner, window: float, inline: bool,
           devices: int = 100, registers: int = 100, per_port: int = 10) -> None:
    """100 x 100 against the Modbus emulator, the map in a profile file or inline."""
    work = tmp / ("inline" if inline else "profile")
    work.mkdir()
    profile = work / "bench-meter.yaml"
    write_profile(profile, registers)
    ports = (devices + per_port - 1) // per_port
    base = free_port()
    while any(_busy(base + i) for i in range(ports)):
        base = free_port()
    emu_log = (work / "emulator.log").open("wb")
    emu = subprocess.Popen(
        [sys.executable, str(EMULATOR), "--profile", str(profile), "--tcp",
         f"127.0.0.1:{base}-{base + ports - 1}", "--units", f"1-{per_port}"],
        stdout=emu_log, stderr=subprocess.STDOUT, cwd=ROOT)
    broker = Mosquitto().start()
    try:
        units = ["V", "A", "W", "Hz", "kWh", "%"]
        inline_map = [{"name": f"r{i:03d}", "table": "holding", "address": i,
                       "type": "int16" if i % 2 else "uint16", "scale": 0.1,
                       "unit": units[i % len(units)]} for i in range(registers)]
        devs: list[dict[str, Any]] = []
        for i in range(devices):
            dev: dict[str, Any] = {
                "name": f"meter-{i:03d}", "driver": "modbus",
                "transport": {"type": "tcp", "host": "127.0.0.1", "port": base + i // per_port},
                "unit": i % per_port + 1, "interval": "1s", "timeout": "2s"}
            if inline:
                dev["registers"] = inline_map
            else:
                dev["profile"] = str(profile)
            devs.append(dev)
        cfg = base_config(work, broker.port, devs,
                          logging={"level": "warning", "format": "json"})
        path = write_config(work / "parkgate.yaml", cfg)
        def emulator_ready() -> bool:
            if emu.poll() is not None:
                raise SystemExit("footprint: the emulator died:\n"
                                 + (work / "emulator.log").read_text()[-2000:])
            return "serving" in (work / "emulator.log").read_text()

        wait_until(emulator_ready, 90, "the emulator")
        title = f"{devices} x {registers} at 1 s, " + ("inline registers" if inline
                                                     else "one profile file")
        show(title, run_agent(path, cfg["metrics"]["listen"], run, window))
    finally:
        emu.terminate()
        emu.wait(10)
        emu_log.close()
        broker.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=["imports", "idle", "profile", "inline"], action="append")
    p.add_argument("--settle", type=float, default=15.0, help="idle agent: seconds to run")
    p.add_argument("--window", type=float, default=30.0, help="100 x 100: seconds to run")
    p.add_argument("--no-unit-env", action="store_true",
                   help="run the agents without the systemd unit's Environment= lines")
    args = p.parse_args()
    only = set(args.only or ["imports", "idle", "profile", "inline"])
    with tempfile.TemporaryDirectory(prefix="pg-footprint-") as d:
        tmp = Path(d)
        run = prepare(tmp, unit_env=not args.no_unit_env)
        extra = {k: v for k, v in run.env.items() if os.environ.get(k) != v
                 and k != "PYTHONPYCACHEPREFIX"}
        print(f"python {sys.version.split()[0]}; agent environment from the unit: "
              f"{' '.join(f'{k}={v}' for k, v in sorted(extra.items())) or '(none)'}")
        if "imports" in only:
            imports(run)
        if only - {"imports"}:
            print("\n== agents (MiB; peak is VmHWM since start)")
        if "idle" in only:
            idle(tmp, run, args.settle)
        if "profile" in only:
            meters(tmp, run, args.window, inline=False)
        if "inline" in only:
            meters(tmp, run, args.window, inline=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
