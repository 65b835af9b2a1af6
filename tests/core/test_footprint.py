"""Memory footprint: what `parkgate run` never imports, and state devices share.

The figures themselves come from `bench/footprint.py`; these tests pin the properties
behind them so a change cannot quietly undo them.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from drivers.modbus import ModbusDriver, ModbusOptions
from drivers.modbus.driver import CODECS_KEY
from gateway.driver import ResourcePool
from tests.support import (
    ROOT,
    Collector,
    Mosquitto,
    base_config,
    driver_context,
    wait_subscribed,
    write_config,
)

RUN_AND_LIST_MODULES = """
import atexit, sys
out = sys.argv[1]
# written after `parkgate run` returned: every module the run path ever imported
atexit.register(lambda: open(out, "w").write("\\n".join(sorted(sys.modules))))
from gateway.cli import main
raise SystemExit(main(["run", "-c", sys.argv[2]]))
"""

NEVER_FOR_SIM = ("pymodbus", "bleak", "dbus_fast", "serial", "serial_asyncio_fast",
                 "cryptography", "asyncua", "drivers.modbus", "drivers.ble", "drivers.dlt645",
                 "drivers.modem", "drivers.serial_line", "drivers.opcua")
"""Protocol libraries and drivers a gateway with only `sim` devices has no use for."""


def imported_by_run(tmp_path: Path, broker: Mosquitto, collector: Collector,
                    devices: list[dict[str, object]]) -> set[str]:
    """Every module a real `parkgate run` imported, from start to an orderly exit.

    The agent runs as in production (`gateway.cli.main`, in its own interpreter) until it
    has published, then gets SIGTERM; an exit hook writes `sys.modules` to a file.
    """
    wait_subscribed(collector, broker.port)
    cfg = write_config(tmp_path / "gw.yaml", base_config(tmp_path, broker.port, devices))
    listing = tmp_path / "modules.txt"
    log = (tmp_path / "gw.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-c", RUN_AND_LIST_MODULES, str(listing),
                             str(cfg)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        published = collector.wait_for(lambda c: len(c.messages) >= 1, 30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    output = (tmp_path / "gw.log").read_text()[-3000:]
    assert published, output
    return set(listing.read_text().split())


def test_run_with_sim_devices_imports_no_protocol_library(
        tmp_path: Path, broker: Mosquitto, collector: Collector) -> None:
    """Drivers and their libraries load only when a device uses them; driver CLIs never."""
    modules = imported_by_run(tmp_path, broker, collector, [
        {"name": "sim-1", "driver": "sim", "interval": "100ms", "points": 5}])
    assert "drivers.sim" in modules
    loaded = sorted(m for m in modules
                    if m.split(".")[0] in NEVER_FOR_SIM
                    or any(m == n or m.startswith(n + ".") for n in NEVER_FOR_SIM)
                    or (m.startswith("drivers.") and m.endswith(".cli")))
    assert loaded == []


async def test_meters_of_one_profile_share_their_decoders() -> None:
    """100 meters of one profile compile one decoder per read, not one per meter."""
    pool = ResourcePool()
    meters = [ModbusDriver(ModbusOptions.model_validate(
        {"name": f"meter-{unit}", "driver": "modbus", "profile": "eastron-sdm630",
         "transport": {"type": "tcp", "host": "127.0.0.1", "port": 1502}, "unit": unit}),
        driver_context(f"meter-{unit}", pool)) for unit in (1, 2, 3)]
    planned_early = meters[0]._plan((1,))  # before open: decoders of its own
    for m in meters:
        await m.open()
    plans = [m._plan((1,)) for m in meters]
    assert len(plans[0]) > 1
    for other in plans[1:]:
        assert [p.read for p in other] == [p.read for p in plans[0]]
        assert all(a.codec is b.codec for a, b in zip(other, plans[0], strict=True))
    assert all(a.codec is not b.codec for a, b in zip(planned_early, plans[0], strict=True))
    for m in meters:
        await m.close()
    assert CODECS_KEY not in pool._items  # the last meter to leave took them along
    assert len(pool) == 0
