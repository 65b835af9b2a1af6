"""SIGTERM while Modbus replies arrive: the agent exits, every time.

On Python 3.11 `asyncio.wait_for`, which pymodbus awaits every reply with, drops a
cancellation that lands in the loop iteration its reply completes in (CPython gh-86296).
The supervisor stopped devices by cancelling them once, so a meter whose reply met the stop
polled on and the agent never exited: 9 of 10 stops hung with 8 meters polled every 10 ms.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from tests.faults.harness import MeterThread, meter
from tests.support import Collector, GatewayProcess, Mosquitto, base_config, write_config

pytestmark = pytest.mark.faults

METERS = 8
STOPS = 3


def test_sigterm_while_replies_arrive_exits(tmp_path: Path, broker: Mosquitto,
                                            collector: Collector,
                                            gateways: list[GatewayProcess]) -> None:
    meters = [MeterThread().start() for _ in range(METERS)]
    try:
        devices = [meter(f"m{i}", m.port, "10ms") for i, m in enumerate(meters)]
        cfg = write_config(tmp_path / "gw.yaml", base_config(
            tmp_path, broker.port, devices, agent={"shutdown_grace": "2s"}))
        names = {d["name"] for d in devices}
        for stop in range(STOPS):
            seen = len(collector.messages)
            gw = GatewayProcess(cfg).start()
            gateways.append(gw)
            # every meter answering, so replies keep arriving when SIGTERM does
            assert collector.wait_for(lambda c, n=seen: names <= {
                r["device"] for _t, m in c.messages[n:] for r in m["readings"]}, 30), \
                gw.output()[-3000:]
            before = {m.port: m.requests() for m in meters}
            time.sleep(0.3)
            assert all(m.requests() > before[m.port] for m in meters)
            t0 = time.monotonic()
            # grace 2 s (the buffer is near empty), offline status, close: seconds, not 20
            assert gw.stop(timeout=20) == 0, f"stop {stop}\n{gw.output()[-3000:]}"
            assert time.monotonic() - t0 < 10, gw.output()[-3000:]
            assert "parkgate stopped" in gw.output()
    finally:
        for m in meters:
            with contextlib.suppress(Exception):
                m.close()
