"""Commands end to end to a Modbus TCP device: the pymodbus-based emulator, a real broker,
`parkgate run` as a subprocess and a signing operator. Counts the writes the server got."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from emulators.modbus_meter import WRITE_FCS, MeterEmulator, points_of

from gateway.commands.signing import keygen
from tests.commands.operator import Operator
from tests.modbus.conftest import PLC_POINTS, PLC_VALUES, LoopThread
from tests.support import (
    GatewayProcess,
    Mosquitto,
    base_config,
    wait_metric,
    write_config,
)

pytestmark = pytest.mark.slow

REGISTERS = [  # what the gateway is told
    {"name": "setpoint", "table": "holding", "address": 30, "type": "int16", "scale": 0.1,
     "write": {"min": 5, "max": 80}},
    {"name": "flow_sp", "table": "holding", "address": 40, "type": "float32", "order": "CDAB",
     "write": {"max": 500}},
    {"name": "alarm_ack", "table": "holding", "address": 50, "type": "bit", "bit": 3,
     "write": {}},
    {"name": "pump_on", "table": "coil", "address": 2, "write": {}},
    {"name": "flags", "table": "holding", "address": 50, "type": "uint16"},
    {"name": "temp", "table": "input", "address": 0, "type": "int16", "scale": 0.1},
]


class Plc:
    def __init__(self) -> None:
        self.loop = LoopThread()
        self.emu = MeterEmulator(points_of(PLC_POINTS), [1], values=PLC_VALUES)
        self.port = self.loop.run(self.emu.start_tcp())

    def writes_on_the_wire(self) -> int:
        return self.loop.call(lambda: sum(n for fc, n in self.emu.frames_in.items()
                                          if fc in WRITE_FCS))

    def written(self) -> list[tuple[int, int, tuple[Any, ...] | None]]:
        return self.loop.call(lambda: [(w.fc, w.address, w.values) for w in self.emu.writes])

    def close(self) -> None:
        self.loop.run(self.emu.stop())
        self.loop.close()


class Site:
    def __init__(self, tmp: Path, broker: Mosquitto, plc: Plc) -> None:
        pub, _ = keygen(tmp / "op.key")
        self.gw_id = f"gw-{tmp.name[-10:]}".replace("_", "-")
        device = {"name": "plc", "driver": "modbus", "interval": "1h", "unit": 1,
                  "transport": {"type": "tcp", "host": "127.0.0.1", "port": plc.port},
                  "registers": REGISTERS}
        self.cfg = base_config(tmp, broker.port, [device],
                               gateway={"id": self.gw_id, "site": "e2e"},
                               commands={"enabled": True, "max_age": "10s",
                                         "verify_keys": [f"${{file:{pub}}}"]})
        self.gw = GatewayProcess(write_config(tmp / "gw.yaml", self.cfg)).start()
        wait_metric(self.cfg["metrics"]["listen"], "parkgate_uplink_connected",
                    lambda v: v == 1, 30)
        self.op = Operator(broker.port, "e2e", self.gw_id, tmp / "op.key")

    def close(self) -> None:
        self.gw.kill()
        self.op.close()


@pytest.fixture
def site(tmp_path: Path, shared_broker: Mosquitto) -> Iterator[tuple[Site, Plc]]:
    plc = Plc()
    s = Site(tmp_path, shared_broker, plc)
    yield s, plc
    s.close()
    plc.close()


def test_writes_of_each_kind_and_read_back(site: tuple[Site, Plc]) -> None:
    s, plc = site
    op = s.op
    reply = op.send(op.request("plc", "write", "setpoint", 21.5))
    assert (reply["status"], reply["value"]) == ("ok", 21.5), reply
    reply = op.send(op.request("plc", "write", "flow_sp", 230.5))
    assert (reply["status"], reply["value"]) == ("ok", 230.5), reply
    reply = op.send(op.request("plc", "write", "pump_on", True))
    assert (reply["status"], reply["value"]) == ("ok", True), reply
    reply = op.send(op.request("plc", "write", "alarm_ack", True))
    assert reply["status"] == "ok", reply
    writes = plc.written()
    assert writes[0] == (6, 30, (215,))                 # FC06, scaled int16
    assert writes[1] == (16, 40, (0x8000, 0x4366))      # FC16, float32 CDAB
    assert writes[2][:2] == (5, 2)                      # FC05, the coil
    assert writes[3] == (6, 50, (0xA5A1 | 0x0008,))     # one bit, the others kept
    assert len(writes) == 4
    flags = op.send(op.request("plc", "read", "flags"))
    assert flags["value"] == 0xA5A9
    assert op.send(op.request("plc", "read", "setpoint"))["value"] == 21.5


def test_refused_requests_leave_the_registers_unchanged(site: tuple[Site, Plc]) -> None:
    s, plc = site
    op = s.op
    before = plc.writes_on_the_wire()
    cases = [
        (op.request("plc", "write", "setpoint", 99), "refused"),          # out of limits
        (op.request("plc", "write", "temp", 1.0), "refused"),             # input register
        (op.request("plc", "write", "flags", 1), "refused"),              # no write: block
        (op.request("plc", "write", "nope", 1), "refused"),               # unknown point
        (op.request("plc", "write", "setpoint", 30, sign=False), "refused"),
        (op.request("plc", "write", "setpoint", 30,
                    ts=int(time.time() * 1000) - 60_000), "expired"),
    ]
    forged = op.request("plc", "write", "setpoint", 30)
    forged["value"] = 31
    cases.append((forged, "refused"))
    for doc, status in cases:
        reply = op.send(doc)
        assert reply["status"] == status, (doc, reply)
    assert plc.writes_on_the_wire() == before
    assert plc.written() == []
    assert op.send(op.request("plc", "read", "setpoint"))["value"] == 20.0


def test_a_modbus_exception_is_failed_with_its_code(site: tuple[Site, Plc]) -> None:
    s, plc = site
    op = s.op
    plc.loop.call(lambda: plc.emu.faults.__setitem__(("holding", 30), 4))
    reply = op.send(op.request("plc", "write", "setpoint", 22.0))
    assert (reply["status"], reply["code"]) == ("failed", 4), reply
    assert "exception 4" in reply["error"]
    plc.loop.call(plc.emu.faults.clear)
    assert op.send(op.request("plc", "write", "setpoint", 22.0))["status"] == "ok"
