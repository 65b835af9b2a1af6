"""`sync_time` end to end: a signed request sets a DL/T 645 meter emulator's clock."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from emulators.dlt645_meter import Meter, MeterBus
from emulators.line_sensor import LoopThread

from gateway.commands.signing import keygen
from tests.commands.operator import Operator
from tests.support import (
    GatewayProcess,
    Mosquitto,
    base_config,
    wait_metric,
    write_config,
)

pytestmark = pytest.mark.slow
A1 = "000012345678"


def test_sync_time_sets_the_meter_clock(tmp_path: Path, shared_broker: Mosquitto) -> None:
    loop = LoopThread()
    bus = MeterBus(Meter(A1))
    port = loop.run(bus.serve_tcp())
    pub, _ = keygen(tmp_path / "op.key")
    gw_id = f"gw-{tmp_path.name[-10:]}".replace("_", "-")
    device = {"name": "meter", "driver": "dlt645", "address": A1, "interval": "1h",
              "items": ["voltage_a"], "time_zone": "Asia/Shanghai",
              "transport": {"type": "tcp", "host": "127.0.0.1", "port": port}}
    cfg = base_config(tmp_path, shared_broker.port, [device],
                      gateway={"id": gw_id, "site": "e2e"},
                      commands={"enabled": True, "verify_keys": [f"${{file:{pub}}}"]})
    gw = GatewayProcess(write_config(tmp_path / "gw.yaml", cfg)).start()
    op = Operator(shared_broker.port, "e2e", gw_id, tmp_path / "op.key")
    try:
        wait_metric(cfg["metrics"]["listen"], "parkgate_uplink_connected", lambda v: v == 1, 30)
        reply = op.send(op.request("meter", "sync_time"))
        assert reply["status"] == "ok", reply
        now = datetime.now(ZoneInfo("Asia/Shanghai")).replace(tzinfo=None)
        meter = bus.meter(A1)
        syncs, clock = loop.call(lambda: (meter.time_syncs, meter.clock))
        assert syncs == 1
        assert clock is not None and abs(clock - now) <= timedelta(seconds=3)
        read = op.send(op.request("meter", "read", "voltage_a"))
        assert (read["status"], read["value"]) == ("ok", 231.4)
        unsigned = op.send(op.request("meter", "sync_time", sign=False))
        assert unsigned["status"] == "refused"
        assert loop.call(lambda: meter.time_syncs) == 1
    finally:
        gw.kill()
        op.close()
        loop.run(bus.stop())
        loop.close()
