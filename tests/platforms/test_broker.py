"""Each platform dialect through the real uplink to a real Mosquitto, with a subscriber that
checks topics and payload shapes: announcements in documented batches, more devices than
one message may carry, every reading once, device state, and a command round trip."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway import logs
from gateway.buffer.memory import MemorySource
from gateway.config import GatewaySection, MqttSection
from gateway.metrics import Metrics
from gateway.model import Reading
from gateway.uplink import Incoming, Uplink
from gateway.uplink.dialect import Dialect
from gateway.uplink.dialects import load
from tests.platforms.support import (
    DIALECTS,
    GW_DN,
    GW_PK,
    HW_GW,
    HW_PRODUCT,
    SUB_PK,
    PlatformCollector,
    section,
)
from tests.support import Mosquitto

TS = 1_764_345_600_000
DEVICES = {"thingsboard": 30, "aliyun": 65, "huawei": 120}
"""More sub-devices than one message may carry (Aliyun 20 per pack/post and 30 per
topo/add, 50 per login; Huawei 100 per report and status event, 50 per add here)."""


class Running:
    def __init__(self, up: Uplink, dialect: Dialect, src: MemorySource,
                 names: list[str], platform: PlatformCollector) -> None:
        self.up, self.dialect, self.src, self.names = up, dialect, src, names
        self.platform = platform


@pytest.fixture(params=DIALECTS)
async def running(request: pytest.FixtureRequest, tmp_path: Path,
                  broker: Mosquitto) -> AsyncIterator[Running]:
    name: str = request.param
    names = [f"meter-{i:03d}" for i in range(DEVICES[name])]
    cfg = MqttSection.model_validate({
        "brokers": [broker.url], "client_id": f"pg-{name}-{id(tmp_path)}",
        "batch": {"max_delay": "50ms"}, "backoff_max": "1s", "dialect": name,
        name: section(name, names, commands=True)})
    gw = GatewaySection(id="gw-1", site="park")
    src = MemorySource()
    dialect = load(cfg, gw)
    up = Uplink(cfg, gw, src, Metrics(), logs.get_logger(), drops=src,
                state_path=tmp_path / "b.db", dialect=dialect)
    # the platform listens before the gateway connects: it sees the announcements
    platform = await asyncio.to_thread(connected_platform, broker.port, name)
    task = asyncio.create_task(up.run())
    try:
        yield Running(up, dialect, src, names, platform)
    finally:
        task.cancel()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 10)
        platform.close()


async def until(c: PlatformCollector, predicate: Any, timeout: float = 20.0) -> None:
    assert await asyncio.to_thread(c.wait_for, predicate, timeout), c.messages[-5:]


def connected_platform(port: int, dialect: str) -> PlatformCollector:
    c = PlatformCollector(port, dialect)
    c.ready()
    return c


async def test_topics_payloads_limits_and_state(running: Running, broker: Mosquitto) -> None:
    d, c = running.dialect, running.platform
    # every device with a few polls of four metrics
    want = set()
    for k, dev in enumerate(running.names):
        rows = [Reading(dev, f"m{j}", k * 10 + j + t / 100, TS + t * 1000, "V")
                for t in range(3) for j in range(4)]
        running.src.store(rows)
        want |= {(dev, r.metric, r.ts) for r in rows}
    await until(c, lambda c: want <= set(c.seen), 30)
    assert set(c.seen) == want
    data = [(t, doc, n) for t, doc, n in c.messages if "probe/" not in t]
    check_announce_and_data(d.name, c, data, running.names)
    # device state: the platform's own connect / login / status message, not retained
    running.up.set_retained_state(running.names[0], d.device_state(
        running.names[0], {"state": "down", "error": "timeout"}))
    await until(c, lambda c: state_seen(d.name, c))


def check_announce_and_data(name: str, c: PlatformCollector, data: list[Any],
                            names: list[str]) -> None:
    if name == "thingsboard":
        (attrs,) = c.on("v1/devices/me/attributes")
        assert attrs["parkgate_gateway"] == "gw-1"
        tele = [doc for t, doc, _n in data if t == "v1/gateway/telemetry"]
        assert all(len(doc) == 1 for doc in tele)  # one device a message
        assert all(set(g) == {"ts", "values"} for doc in tele for gs in doc.values() for g in gs)
    elif name == "aliyun":
        topo = c.on(f"/sys/{GW_PK}/{GW_DN}/thing/topo/add")
        assert [len(t["params"]) for t in topo] == [30, 30, 5]
        assert {p["deviceName"] for t in topo for p in t["params"]} == set(names)
        assert all(p["signmethod"] == "hmacsha256" and len(p["sign"]) == 64
                   for t in topo for p in t["params"])
        logins = c.on(f"/ext/session/{GW_PK}/{GW_DN}/combine/batch_login")
        assert [len(x["params"]["deviceList"]) for x in logins] == [50, 15]
        packs = [doc for t, doc, _n in data if t.endswith("/property/pack/post")]
        assert packs and all(len(doc["params"]["subDevices"]) <= 20 for doc in packs)
        assert all(len(s["properties"]) <= 200 for doc in packs
                   for s in doc["params"]["subDevices"])
    else:
        events = [s for doc in c.on(f"$oc/devices/{HW_GW}/sys/events/up")
                  for s in doc["services"]]
        adds = [e["paras"]["devices"] for e in events
                if e["event_type"] == "add_sub_device_request"]
        assert [len(a) for a in adds] == [50, 50, 20]
        assert {x["node_id"] for a in adds for x in a} == set(names)
        sts = [e["paras"]["device_statuses"] for e in events
               if e["event_type"] == "sub_device_update_status"]
        assert [len(s) for s in sts[:2]] == [100, 20]
        reports = [doc for t, doc, _n in data if t.endswith("/sub_devices/properties/report")]
        assert reports and all(len(doc["devices"]) <= 100 for doc in reports)


def state_seen(name: str, c: PlatformCollector) -> bool:
    if name == "thingsboard":
        return {"device": "meter-000"} in c.on("v1/gateway/disconnect")
    if name == "aliyun":
        return any(d["params"] == {"productKey": SUB_PK, "deviceName": "meter-000"}
                   for d in c.on("/combine/logout"))
    return any(s.get("paras", {}).get("device_statuses") ==
               [{"device_id": f"{HW_PRODUCT}_meter-000", "status": "OFFLINE"}]
               for doc in c.on("/sys/events/up") for s in doc["services"])


COMMANDS = {
    "thingsboard": ("v1/gateway/rpc",
                    {"device": "meter-001", "data": {"id": 42, "method": "setpoint",
                                                     "params": 21.5}},
                    "v1/gateway/rpc"),
    "aliyun": (f"/sys/{SUB_PK}/meter-001/thing/service/property/set",
               {"id": "42", "version": "1.0", "params": {"setpoint": 21.5},
                "method": "thing.service.property.set"},
               f"/sys/{SUB_PK}/meter-001/thing/service/property/set_reply"),
    "huawei": (f"$oc/devices/{HW_GW}/sys/commands/request_id=42",
               {"object_device_id": f"{HW_PRODUCT}_meter-001", "command_name": "setpoint",
                "paras": {"value": 21.5}},
               f"$oc/devices/{HW_GW}/sys/commands/response/request_id=42"),
}


async def test_a_platform_command_reaches_the_handler_and_its_reply_the_platform(
        running: Running, broker: Mosquitto) -> None:
    """The wire half of the round trip: the platform's command is decoded into the native
    request and the reply goes back in the platform's documented format."""
    d, up = running.dialect, running.up
    requests: list[dict[str, Any]] = []

    async def handler(msg: Incoming) -> None:
        req = d.decode(msg)
        if req is None:
            return
        requests.append(dict(req.document))
        await up.send(d.reply(req, {"status": "ok", "value": req.document.get("value")}))

    up.set_inbound(handler)
    c = running.platform
    topic, doc, reply_topic = COMMANDS[d.name]
    if d.name == "thingsboard":
        await until(c, lambda c: c.on("v1/devices/me/attributes"))
    elif d.name == "aliyun":
        await until(c, lambda c: c.on("/combine/batch_login"))
    else:
        await until(c, lambda c: c.on("/sys/events/up"))
    await asyncio.sleep(0.3)  # the subscription precedes the announcements; margin
    c.client.publish(topic, json.dumps(doc), qos=1)

    def answered(c: PlatformCollector) -> list[Any]:
        return [x for t, x, _n in c.messages if t == reply_topic and x is not doc
                and x != doc]

    await until(c, answered)
    (reply,) = answered(c)
    assert len(requests) == 1, (requests, c.messages[-6:])
    req = requests[0]
    assert (req["device"], req["action"], req["point"], req["value"]) == \
        ("meter-001", "write", "setpoint", 21.5)
    if d.name == "thingsboard":
        assert reply == {"device": "meter-001", "id": 42,
                         "data": {"success": True, "status": "ok", "value": 21.5}}
    elif d.name == "aliyun":
        assert reply == {"id": "42", "code": 200, "data": {"status": "ok", "value": 21.5}}
    else:
        assert reply == {"result_code": 0, "response_name": "COMMAND_RESPONSE",
                         "paras": {"status": "ok", "value": 21.5}}
