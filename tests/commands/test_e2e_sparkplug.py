"""Commands through the Sparkplug dialect: a signed DCMD is a write, the reply an NDATA."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from gateway.commands.request import canonical_form
from gateway.commands.signing import Signer, keygen
from gateway.uplink.dialects.sparkplug import codec
from gateway.uplink.dialects.sparkplug import sparkplug_b_pb2 as pb
from gateway.uplink.dialects.sparkplug.registry import REPLY
from tests.sparkplug_support import Host
from tests.support import GatewayProcess, Mosquitto, base_config, wait_metric, write_config

pytestmark = pytest.mark.slow
NODE = "edge-cmd"


def dcmd(device: str, point: str, value: float, signer: Signer | None) -> tuple[bytes, str]:
    """A DCMD writing `value`, signed over the request the gateway will read from it."""
    rid, ts = str(uuid.uuid4()), int(time.time() * 1000)
    p = pb.Payload(timestamp=ts, uuid=rid)
    m = p.metrics.add()
    m.name, m.datatype, m.double_value = point, pb.Double, value
    if signer is not None:
        doc = {"v": 1, "id": rid, "ts": ts, "device": device, "action": "write",
               "point": point, "value": value}
        codec.add_property(m.properties, "sig", codec.STRING,
                           signer.sign(canonical_form(doc)))
    return p.SerializeToString(), rid


def replies(host: Host) -> dict[str, dict[str, Any]]:
    out = {}
    for msg in host.of("NDATA"):
        for metric in msg.payload.metrics:
            if metric.name == REPLY or (metric.alias and not metric.name):
                doc = json.loads(metric.string_value)
                out[doc["id"]] = doc
    return out


def start_site(tmp_path: Path, broker: Mosquitto, device: dict[str, Any]
               ) -> tuple[str, Signer, Host, GatewayProcess]:
    """A Sparkplug gateway with `device` that takes commands signed by a fresh key, its
    births seen by a decoding host: (group, signer, host, gateway)."""
    group = f"pg-{uuid.uuid4().hex[:10]}"
    pub, _ = keygen(tmp_path / "op.key")
    cfg = base_config(tmp_path, broker.port, [device],
                      commands={"enabled": True, "verify_keys": [f"${{file:{pub}}}"]})
    cfg["uplink"]["mqtt"]["dialect"] = "sparkplug"
    cfg["uplink"]["mqtt"]["sparkplug"] = {"group": group, "node": NODE}
    host = Host(broker.port, group)
    gw = GatewayProcess(write_config(tmp_path / "gw.yaml", cfg)).start()
    try:
        wait_metric(cfg["metrics"]["listen"], "parkgate_uplink_connected", lambda v: v == 1, 30)
        assert host.wait(lambda h: h.of("DBIRTH"), 20), gw.output()[-2000:]
    except BaseException:
        gw.kill()
        host.close()
        raise
    return group, Signer.from_file(tmp_path / "op.key"), host, gw


def test_signed_dcmd_writes_and_is_answered(tmp_path: Path, shared_broker: Mosquitto) -> None:
    device = {"name": "boiler", "driver": "sim", "interval": "200ms", "points": 0,
              "variables": [{"name": "setpoint", "initial": 20.0,
                             "write": {"min": 5, "max": 80}}]}
    group, signer, host, gw = start_site(tmp_path, shared_broker, device)
    try:
        topic = f"spBv1.0/{group}/DCMD/{NODE}/boiler"
        payload, rid = dcmd("boiler", "setpoint", 42.5, signer)
        host.send(topic, payload)
        assert host.wait(lambda h: rid in replies(h), 20), gw.output()[-2000:]
        assert replies(host)[rid]["status"] == "ok"
        assert replies(host)[rid]["value"] == 42.5
        # the written value shows in the device's data
        assert host.wait(lambda h: any(r["metric"] == "setpoint" and r["value"] == 42.5
                                       for r in h.readings()), 20)
        for value, sign, status in ((60.0, False, "refused"), (99.0, True, "refused")):
            payload, rid = dcmd("boiler", "setpoint", value, signer if sign else None)
            host.send(topic, payload)
            assert host.wait(lambda h, rid=rid: rid in replies(h), 20)
            assert replies(host)[rid]["status"] == status
        # unsigned: refused by the dialect, before the commands path could carry it out
        time.sleep(0.5)
        assert not any(r["metric"] == "setpoint" and r["value"] in (60.0, 99.0)
                       for r in host.readings())
    finally:
        gw.kill()
        host.close()


def test_dcmd_writes_a_modbus_register_and_refusals_leave_the_server_untouched(
        tmp_path: Path, shared_broker: Mosquitto) -> None:
    """Issue 14's Done-when: a DCMD write to a pymodbus server, allowed and refused."""
    from tests.commands.test_e2e_modbus import REGISTERS, Plc

    plc = Plc()
    device = {"name": "plc", "driver": "modbus", "interval": "500ms", "unit": 1,
              "transport": {"type": "tcp", "host": "127.0.0.1", "port": plc.port},
              "registers": REGISTERS}
    try:
        group, signer, host, gw = start_site(tmp_path, shared_broker, device)
    except BaseException:
        plc.close()
        raise
    try:
        topic = f"spBv1.0/{group}/DCMD/{NODE}/plc"
        payload, rid = dcmd("plc", "setpoint", 42.5, signer)
        host.send(topic, payload)
        assert host.wait(lambda h: rid in replies(h), 20), gw.output()[-2000:]
        assert (replies(host)[rid]["status"], replies(host)[rid]["value"]) == ("ok", 42.5)
        assert plc.written() == [(6, 30, (425,))]  # FC06, the scaled int16, once
        for value, sign in ((60.0, False), (99.0, True)):  # unsigned; out of limits
            payload, rid = dcmd("plc", "setpoint", value, signer if sign else None)
            host.send(topic, payload)
            assert host.wait(lambda h, rid=rid: rid in replies(h), 20)
            assert replies(host)[rid]["status"] == "refused"
        assert plc.writes_on_the_wire() == 1  # the refused requests never reached the PLC
    finally:
        gw.kill()
        host.close()
        plc.close()
