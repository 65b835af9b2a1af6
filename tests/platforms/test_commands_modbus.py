"""A platform command end to end to a Modbus TCP device: the pymodbus-based emulator, a real
broker, `parkgate run` as a subprocess, and the platform side publishing its own command
format and reading its own reply format. Counts the writes the device received."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.commands.signing import keygen
from tests.commands.test_e2e_modbus import REGISTERS, Plc
from tests.platforms.support import DIALECTS, HW_GW, HW_PRODUCT, SUB_PK, PlatformCollector, section
from tests.support import GatewayProcess, Mosquitto, base_config, wait_metric, write_config

pytestmark = pytest.mark.slow



def command(dialect: str, n: int, value: float) -> tuple[str, dict[str, Any], str]:
    """The platform's own command writing `setpoint` of `boiler-plc`, and its reply topic."""
    if dialect == "thingsboard":
        return ("v1/gateway/rpc", {"device": "boiler-plc", "data": {
            "id": n, "method": "setpoint", "params": value}}, "v1/gateway/rpc")
    if dialect == "aliyun":
        topic = f"/sys/{SUB_PK}/boiler-plc/thing/service/property/set"
        return (topic, {"id": str(n), "version": "1.0", "params": {"setpoint": value},
                        "method": "thing.service.property.set"}, topic + "_reply")
    return (f"$oc/devices/{HW_GW}/sys/commands/request_id=c{n}",
            {"object_device_id": f"{HW_PRODUCT}_boiler-plc", "service_id": "parkgate",
             "command_name": "write", "paras": {"point": "setpoint", "value": value}},
            f"$oc/devices/{HW_GW}/sys/commands/response/request_id=c{n}")


def succeeded(dialect: str, reply: dict[str, Any]) -> bool:
    if dialect == "thingsboard":
        return bool(reply["data"]["success"])
    if dialect == "aliyun":
        return bool(reply["code"] == 200)
    return bool(reply["result_code"] == 0)


def device_up(dialect: str, c: PlatformCollector) -> bool:
    """The platform was told `boiler-plc` is up (a connect, a login, an ONLINE status)."""
    if dialect == "thingsboard":
        return {"device": "boiler-plc"} in c.on("v1/gateway/connect")
    if dialect == "aliyun":
        return any(d["params"]["deviceName"] == "boiler-plc" for d in c.on("/combine/login"))
    return any(s.get("paras", {}).get("device_statuses") ==
               [{"device_id": f"{HW_PRODUCT}_boiler-plc", "status": "ONLINE"}]
               for d in c.on("/sys/events/up") for s in d["services"])


@pytest.fixture
def plc() -> Iterator[Plc]:
    p = Plc()
    yield p
    p.close()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_platform_write_reaches_the_device_and_out_of_limits_does_not(
        dialect: str, tmp_path: Path, broker: Mosquitto, plc: Plc) -> None:
    device = {"name": "boiler-plc", "driver": "modbus", "interval": "1h", "unit": 1,
              "transport": {"type": "tcp", "host": "127.0.0.1", "port": plc.port},
              "registers": REGISTERS}
    cfg = base_config(tmp_path, broker.port, [device],
                      # native requests need an operator's signature; the platform's are
                      # let in unsigned by the dialect's own `commands: true`
                      commands={"enabled": True, "max_age": "10s",
                                "verify_keys": [f"${{file:{keygen(tmp_path / 'op.key')[0]}}}"]},
                      uplink={"mqtt": {"brokers": [broker.url], "dialect": dialect,
                                       dialect: section(dialect, ["boiler-plc"], commands=True)}})
    c = PlatformCollector(broker.port, dialect)
    gw = GatewayProcess(write_config(tmp_path / "gw.yaml", cfg)).start()
    try:
        c.ready()
        wait_metric(cfg["metrics"]["listen"], "parkgate_uplink_connected", lambda v: v == 1, 30)
        time.sleep(0.5)  # subscribed right after CONNACK; margin for the SUBACK
        # the device's state reaches the platform its own way once the device is up
        assert c.wait_for(lambda c: device_up(dialect, c), 20), gw.output()[-3000:]
        replies = []
        for n, value in ((1, 21.5), (2, 95.0)):  # in limits, then above max 80
            topic, doc, reply_topic = command(dialect, n, value)
            c.client.publish(topic, json.dumps(doc), qos=1)

            def answered(c: PlatformCollector, t: str = reply_topic, k: int = n) -> list[Any]:
                # ThingsBoard answers on the request's own topic: replies carry the id
                return [x for x in c.on(t) if "method" not in x.get("data", {})
                        and str(x.get("id", k)) == str(k)]

            assert c.wait_for(answered, 20), gw.output()[-3000:]
            replies.append(answered(c)[-1])
        assert [succeeded(dialect, r) for r in replies] == [True, False], replies
        # the device got exactly one write: setpoint 21.5 as int16 x0.1 = 215 at 30 (FC06)
        assert plc.writes_on_the_wire() == 1
        assert [(fc, addr) for fc, addr, _v in plc.written()] == [(6, 30)]
        assert plc.written()[0][2] == (215,)
    finally:
        gw.kill()
        c.close()
