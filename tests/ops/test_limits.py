"""The agent runs within the unit's MemoryMax, TasksMax and LimitNOFILE.

No systemd runs here, so the limits are applied the way systemd would: a memory and a pids
cgroup (cgroup v1 on this machine) with the unit's values, and the descriptor limit with
`prlimit`. A Pi-sized load runs for a while: devices polling, the buffer committing, the
uplink publishing, /metrics scraped. It must deliver, never hit the pids limit, never be
OOM-killed, and its peaks are printed (systemd/README.md quotes them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT, Collector, Mosquitto, base_config, write_config

UNIT = ROOT / "systemd" / "parkgate.service"
CGROUP = Path("/sys/fs/cgroup")


def unit_values() -> dict[str, str]:
    keys: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";")):
            k, _, v = line.partition("=")
            keys[k.strip()] = v.strip()
    return keys


def size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def test_unit_sets_resource_limits_for_a_pi() -> None:
    keys = unit_values()
    assert size(keys["MemoryMax"]) <= 512 << 20
    assert size(keys["MemoryHigh"]) < size(keys["MemoryMax"])
    assert 32 <= int(keys["TasksMax"]) <= 256
    assert 1024 <= int(keys["LimitNOFILE"]) <= 65536


@contextlib.contextmanager
def cgroup(controller: str, settings: dict[str, str]) -> Iterator[Path]:
    """A fresh cgroup v1 directory of `controller` with `settings` written."""
    path = CGROUP / controller / f"parkgate-test-{os.getpid()}"
    path.mkdir()
    try:
        for name, value in settings.items():
            (path / name).write_text(value)
        yield path
    finally:
        for _ in range(50):
            with contextlib.suppress(OSError):
                path.rmdir()
                break
            time.sleep(0.1)


def _v1_available() -> bool:
    return all(os.access(CGROUP / c, os.W_OK) for c in ("memory", "pids")) and \
        (CGROUP / "memory" / "memory.limit_in_bytes").exists()


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("prlimit") is None
                    or not _v1_available(),
                    reason="needs root, prlimit and writable cgroup v1 memory and pids")
def test_agent_runs_within_the_units_limits(tmp_path: Path) -> None:
    keys = unit_values()
    memory_max, tasks_max, nofile = (size(keys["MemoryMax"]), int(keys["TasksMax"]),
                                     int(keys["LimitNOFILE"]))
    broker = Mosquitto().start()
    col = Collector(broker.port)
    # 12 devices, 1,200 readings/s: more than a typical Pi gateway polls
    devices = [{"name": f"dev{i}", "driver": "sim", "interval": "100ms", "points": 10,
                "pattern": "sine"} for i in range(12)]
    cfg = base_config(tmp_path, broker.port, devices)
    path = write_config(tmp_path / "gw.yaml", cfg)
    listen = cfg["metrics"]["listen"]
    with cgroup("memory", {"memory.limit_in_bytes": str(memory_max)}) as mem, \
            cgroup("pids", {"pids.max": str(tasks_max)}) as pids, \
            (tmp_path / "gw.log").open("wb") as log:

        # the shell joins both cgroups, then becomes prlimit, which becomes the agent: the
        # same pid throughout, and everything it starts is inside
        enter = (f'echo $$ > {mem / "cgroup.procs"} && echo $$ > {pids / "cgroup.procs"}'
                 f' && exec prlimit --nofile={nofile}:{nofile} -- "$@"')
        proc = subprocess.Popen(["sh", "-c", enter, "sh", sys.executable, "-m", "gateway",
                                 "run", "-c", str(path)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        threads = fds = rss = 0
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                time.sleep(0.5)
                assert proc.poll() is None, (tmp_path / "gw.log").read_text()[-3000:]
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(f"http://{listen}/metrics", timeout=2).read()
                status = dict(line.split(":", 1) for line in
                              Path(f"/proc/{proc.pid}/status").read_text().splitlines())
                threads = max(threads, int(status["Threads"]))
                rss = max(rss, int(status["VmHWM"].split()[0]) * 1024)
                fds = max(fds, len(os.listdir(f"/proc/{proc.pid}/fd")))
            delivered = len(col.readings())
            peak = int((mem / "memory.max_usage_in_bytes").read_text())
            oom = dict(line.split() for line in (mem / "memory.oom_control").read_text()
                       .splitlines())
            refused = dict(line.split() for line in (pids / "pids.events").read_text()
                           .splitlines())["max"]
        finally:
            proc.terminate()
            code = proc.wait(30)
            col.close()
            broker.close()
    print(f"within MemoryMax={keys['MemoryMax']} TasksMax={tasks_max} LimitNOFILE={nofile}:"
          f" peak RSS {rss / 2**20:.0f} MiB, cgroup peak (with page cache)"
          f" {peak / 2**20:.0f} MiB, {threads} threads, {fds} descriptors,"
          f" {delivered} readings delivered in 20 s")
    assert code == 0, (tmp_path / "gw.log").read_text()[-3000:]
    assert delivered > 15_000, delivered
    assert oom.get("oom_kill", "0") == "0", oom
    assert refused == "0", "a thread or child process was refused by TasksMax"
    # headroom: a backlog in memory (disk full) or a reconnect storm must fit too
    assert rss < memory_max / 2, rss
    assert threads < tasks_max / 2, threads
    assert fds < nofile / 8, fds
