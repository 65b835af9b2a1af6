"""The agent under the unit's `MemoryDenyWriteExecute=yes` (tests/ops/mdwe.py applies the
same seccomp rules systemd does; no systemd runs here).

cffi callbacks need writable-and-executable memory: a dependency that starts using them
(at import or at run time) would crash the agent on a gateway but pass every other test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.ops import mdwe
from tests.support import ROOT, Collector, Mosquitto, base_config, write_config

MDWE = [sys.executable, str(Path(mdwe.__file__))]

pytestmark = pytest.mark.skipif(not mdwe.supported(), reason="no seccomp table for this CPU")

CFFI_CALLBACK = ("import cffi; cb = cffi.FFI().callback('int(int)', lambda x: x + 1); "
                 "print(cb(1))")


def run(*args: str, sandboxed: bool) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(MDWE if sandboxed else []), *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, check=False)


def test_the_filter_refuses_what_systemd_refuses() -> None:
    """Not vacuous: a cffi callback works here, and fails under the filter."""
    assert run(sys.executable, "-c", CFFI_CALLBACK, sandboxed=False).stdout.strip() == "2"
    res = run(sys.executable, "-c", CFFI_CALLBACK, sandboxed=True)
    assert res.returncode != 0
    assert "Cannot allocate write+execute memory" in res.stderr, res.stderr


LOAD_EVERYTHING = """
from gateway.driver import discover_drivers
drivers = discover_drivers()
loaded = [drivers[name].cls.__name__ for name in sorted(drivers)]
# the lazily imported paths: BLE (bleak's BlueZ backend, dbus-fast), encrypted BTHome
import bleak.backends.bluezdbus.scanner, dbus_fast.aio, pymodbus.client, serial_asyncio_fast
import drivers.bacnet.link  # bacpypes3, loaded when a BACnet device opens
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
aes = AESCCM(bytes(16), tag_length=4)
assert aes.decrypt(bytes(13), aes.encrypt(bytes(13), b"reading", None), None) == b"reading"
print(" ".join(loaded))
"""


def test_every_driver_and_its_dependencies_load_under_the_filter() -> None:
    res = run(sys.executable, "-c", LOAD_EVERYTHING, sandboxed=True)
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.split()) >= 6, res.stdout  # sim modbus serial dlt645 modem ble


def test_agent_runs_and_publishes_under_the_filter(tmp_path: Path,
                                                   ops_broker: Mosquitto) -> None:
    cfg = base_config(tmp_path, ops_broker.port,
                      [{"name": "sim-mdwe", "driver": "sim", "interval": "100ms", "points": 3}])
    path = write_config(tmp_path / "gw.yaml", cfg)
    col = Collector(ops_broker.port)
    with (tmp_path / "gw.log").open("wb") as log:
        proc = subprocess.Popen([*MDWE, sys.executable, "-m", "gateway", "run", "-c",
                                 str(path)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            ok = col.wait_for(lambda c: sum(r["device"] == "sim-mdwe"
                                            for r in c.readings()) >= 30, timeout=30)
            assert ok, (tmp_path / "gw.log").read_text()[-3000:]
        finally:
            proc.terminate()
            proc.wait(30)
            col.close()
    assert proc.returncode == 0, (tmp_path / "gw.log").read_text()[-3000:]
