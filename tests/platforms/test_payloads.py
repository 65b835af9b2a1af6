"""Platform payloads without a broker: shapes, the documented per-message limits, byte
limits, command mapping and replies (tables of cases)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.config import GatewaySection, MqttSection
from gateway.uplink import dialects
from gateway.uplink.dialect import Dialect, Request
from gateway.uplink.dialects import platform as p
from gateway.uplink.messages import Incoming, Outgoing
from tests.platforms.support import (
    DIALECTS,
    GW_DN,
    GW_PK,
    HW_GW,
    HW_PRODUCT,
    SUB_PK,
    items,
    parse,
    section,
)

GW = GatewaySection(id="gw-1", site="park")
TS = 1_764_345_600_000


def dialect(name: str, devices: list[str], **over: Any) -> Dialect:
    cfg = MqttSection.model_validate({"brokers": ["mqtt://127.0.0.1:1883"], "dialect": name,
                                      name: {**section(name, devices, commands=True), **over}})
    return dialects.load(cfg, GW)


def framed(d: Dialect, device: str, body: bytes, max_packet: int = 128_000) -> list[Outgoing]:
    s = d.open("mqtt://127.0.0.1:1883", "cid")
    assert len(body) <= s.budget(device, max_packet, False) or max_packet < 128_000
    out = s.frame(device, body, False)
    return [out] if isinstance(out, Outgoing) else list(out)


@pytest.mark.parametrize("name", DIALECTS)
def test_every_reading_comes_back_once_in_the_platform_shape(name: str) -> None:
    d = dialect(name, ["meter-1"])
    rows = [(f"m{k}", float(k) + t / 10, TS + t * 1000) for t in range(3) for k in range(4)]
    msgs = framed(d, "meter-1", items("meter-1", rows))
    got = [kv for m in msgs for kv in parse(name, m.topic, json.loads(m.payload))]
    assert sorted(got) == sorted((("meter-1", m, ts), v) for m, v, ts in rows)
    assert all(m.qos == 1 and not m.retain for m in msgs)


def test_aliyun_200_properties_a_message_and_one_value_per_property() -> None:
    d = dialect("aliyun", ["meter-1"])
    # 450 distinct metrics at one time: 200 + 200 + 50
    wide = framed(d, "meter-1", items("meter-1", [(f"p{k}", k, TS) for k in range(450)]))
    sizes = [len(json.loads(m.payload)["params"]["subDevices"][0]["properties"]) for m in wide]
    assert sizes == [200, 200, 50]
    # one metric sampled 5 times: 5 messages, each with the property once
    deep = framed(d, "meter-1", items("meter-1", [("p", k, TS + k) for k in range(5)]))
    assert [json.loads(m.payload)["params"]["subDevices"][0]["properties"]["p"]["time"]
            for m in deep] == [TS + k for k in range(5)]
    for m in wide + deep:
        doc = json.loads(m.payload)
        assert m.topic == f"/sys/{GW_PK}/{GW_DN}/thing/event/property/pack/post"
        assert len(doc["params"]["subDevices"]) == 1 <= 20
        assert doc["params"]["subDevices"][0]["identity"] == {"productKey": SUB_PK,
                                                              "deviceName": "meter-1"}
    assert len({json.loads(m.payload)["id"] for m in wide + deep}) == 8  # ids unique


@pytest.mark.parametrize("name", DIALECTS)
def test_a_small_packet_limit_splits_messages_and_none_exceeds_it(name: str) -> None:
    d = dialect(name, ["meter-1"])
    rows = [(f"metric_{k}", 1234.5 + k, TS + (k // 10) * 1000) for k in range(300)]
    limit = 2048
    msgs = framed(d, "meter-1", items("meter-1", rows), max_packet=limit)
    assert len(msgs) > 3
    for m in msgs:
        assert len(m.payload) + len(m.topic) + 5 <= limit
    got = {k for m in msgs for k, _v in parse(name, m.topic, json.loads(m.payload))}
    assert got == {("meter-1", mt, ts) for mt, _v, ts in rows}


def test_null_values_are_left_out() -> None:
    assert [i.metric for i in p.readings(items("d", [("a", None, TS), ("b", 1, TS)]))] == ["b"]


def test_gateway_own_devices_report_as_the_gateway() -> None:
    tb = dialect("thingsboard", [], gateway_devices=["modem"])
    (own,) = framed(tb, "modem", items("modem", [("rssi", -70, TS)]))
    assert own.topic == "v1/devices/me/telemetry"
    assert json.loads(own.payload) == [{"ts": TS, "values": {"rssi": -70}}]
    ali = dialect("aliyun", ["meter-1"])
    (own,) = framed(ali, "modem", items("modem", [("rssi", -70, TS)]))
    assert own.topic == f"/sys/{GW_PK}/{GW_DN}/thing/event/property/post"
    assert json.loads(own.payload)["params"] == {"rssi": {"value": -70, "time": TS}}
    hw = dialect("huawei", ["meter-1"])
    (own,) = framed(hw, "modem", items("modem", [("rssi", -70, TS)]))
    assert own.topic == f"$oc/devices/{HW_GW}/sys/properties/report"
    assert json.loads(own.payload)["services"][0]["properties"] == {"rssi": -70}


def test_announce_batches_within_the_documented_limits() -> None:
    names = [f"meter-{i:03d}" for i in range(135)]
    ali = dialect("aliyun", names).open("mqtts://x:8883", "cid").announce()
    topo = [json.loads(m.payload) for m in ali if m.topic.endswith("/thing/topo/add")]
    logins = [(m, json.loads(m.payload)) for m in ali if "/combine/" in m.topic]
    assert [len(t["params"]) for t in topo] == [30, 30, 30, 30, 15]
    assert [len(doc["params"]["deviceList"]) for _m, doc in logins] == [50, 50, 35]
    assert all(m.qos == 0 for m, _doc in logins)  # login supports QoS 0 only
    hw = dialect("huawei", names).open("mqtts://x:8883", "cid").announce()
    events = [json.loads(m.payload)["services"][0] for m in hw]
    adds = [len(e["paras"]["devices"]) for e in events if e["event_type"] ==
            "add_sub_device_request"]
    statuses = [len(e["paras"]["device_statuses"]) for e in events
                if e["event_type"] == "sub_device_update_status"]
    assert adds == [50, 50, 35] and statuses == [100, 35]
    assert {e["service_id"] for e in events} == {"$sub_device_manager"}


def test_aliyun_down_device_backlog_goes_between_a_login_and_a_logout() -> None:
    d = dialect("aliyun", ["meter-1"])
    out = d.device_state("meter-1", {"state": "down", "error": "timeout"})
    assert out.topic.endswith("/combine/logout") and out.qos == 0
    msgs = framed(d, "meter-1", items("meter-1", [("p", 1, TS)]))
    assert [m.topic.rsplit("/", 1)[1] for m in msgs] == ["login", "post", "logout"]
    assert d.device_state("meter-1", {"state": "up"}).topic.endswith("/combine/login")
    assert len(framed(d, "meter-1", items("meter-1", [("p", 1, TS)]))) == 1


def incoming(topic: str, doc: object) -> Incoming:
    return Incoming(topic, json.dumps(doc).encode(), qos=1)


CASES: list[tuple[str, str, object, dict[str, Any] | None]] = [
    ("thingsboard", "v1/gateway/rpc",
     {"device": "meter-1", "data": {"id": 7, "method": "setpoint", "params": 21.5}},
     {"id": "tb-meter-1-7", "action": "write", "point": "setpoint", "value": 21.5}),
    ("thingsboard", "v1/gateway/rpc",
     {"device": "meter-1", "data": {"id": 8, "method": "read", "params": {"point": "kwh"}}},
     {"id": "tb-meter-1-8", "action": "read", "point": "kwh"}),
    ("thingsboard", "v1/gateway/rpc",
     {"device": "meter-1", "data": {"id": 9, "method": "setpoint"}},
     {"id": "tb-meter-1-9", "action": "read", "point": "setpoint"}),
    ("aliyun", f"/sys/{SUB_PK}/meter-1/thing/service/property/set",
     {"id": "123", "version": "1.0", "params": {"setpoint": 21.5},
      "method": "thing.service.property.set"},
     {"id": "ali-meter-1-123", "action": "write", "point": "setpoint", "value": 21.5}),
    ("aliyun", f"/sys/{SUB_PK}/meter-1/thing/service/poll",
     {"id": "124", "version": "1.0", "params": {}, "method": "thing.service.poll"},
     {"id": "ali-meter-1-124", "action": "poll"}),
    ("aliyun", f"/sys/{SUB_PK}/meter-1/thing/service/property/set",
     {"id": "125", "params": {"a": 1, "b": 2}}, None),
    ("huawei", f"$oc/devices/{HW_GW}/sys/commands/request_id=r-9",
     {"object_device_id": f"{HW_PRODUCT}_meter-1", "service_id": "parkgate",
      "command_name": "write", "paras": {"point": "setpoint", "value": 21.5}},
     {"id": "hw-r-9", "action": "write", "point": "setpoint", "value": 21.5}),
    ("huawei", f"$oc/devices/{HW_GW}/sys/properties/set/request_id=r-10",
     {"object_device_id": f"{HW_PRODUCT}_meter-1",
      "services": [{"service_id": "parkgate", "properties": {"pump_on": True}}]},
     {"id": "hw-r-10", "action": "write", "point": "pump_on", "value": True}),
    ("huawei", f"$oc/devices/{HW_GW}/sys/commands/request_id=r-11",
     {"object_device_id": "someone-else", "command_name": "poll"}, None),
]


@pytest.mark.parametrize(("name", "topic", "doc", "want"), CASES)
def test_platform_commands_map_to_native_requests(name: str, topic: str, doc: object,
                                                  want: dict[str, Any] | None) -> None:
    req = dialect(name, ["meter-1"]).decode(incoming(topic, doc))
    assert req is not None
    if want is None:
        assert req.error and not req.document
        return
    assert req.error is None and req.unsigned_ok  # the dialect's `commands: true` allows it
    got: dict[str, Any] = dict(req.document)
    assert got.pop("ts") > 0 and got.pop("v") == 1 and got.pop("device") == "meter-1"
    assert got == want


def test_commands_off_or_other_topics_are_not_requests() -> None:
    off = MqttSection.model_validate({"brokers": ["mqtt://127.0.0.1:1883"],
                                      "dialect": "huawei", "huawei": section("huawei", ["m-1"])})
    d = dialects.load(off, GW)
    assert d.decode(incoming(f"$oc/devices/{HW_GW}/sys/commands/request_id=1", {})) is None
    ali = dialect("aliyun", ["meter-1"])
    assert ali.decode(incoming(f"/sys/{SUB_PK}/meter-1/thing/service/x_reply", {})) is None


REPLIES = [
    ("thingsboard", CASES[0], "v1/gateway/rpc",
     {"device": "meter-1", "id": 7, "data": {"success": True, "status": "ok", "value": 21.5}}),
    ("aliyun", CASES[3], f"/sys/{SUB_PK}/meter-1/thing/service/property/set_reply",
     {"id": "123", "code": 200, "data": {"status": "ok", "value": 21.5}}),
    ("huawei", CASES[6], f"$oc/devices/{HW_GW}/sys/commands/response/request_id=r-9",
     {"result_code": 0, "response_name": "COMMAND_RESPONSE",
      "paras": {"status": "ok", "value": 21.5}}),
    ("huawei", CASES[7], f"$oc/devices/{HW_GW}/sys/properties/set/response/request_id=r-10",
     {"result_code": 0, "result_desc": "success"}),
]


@pytest.mark.parametrize(("name", "case", "topic", "want"), REPLIES)
def test_replies_in_the_platform_format(name: str, case: tuple[str, str, object, Any],
                                        topic: str, want: dict[str, Any]) -> None:
    d = dialect(name, ["meter-1"])
    msg = incoming(case[1], case[2])
    out = d.reply(Request({}, msg), {"status": "ok", "value": 21.5})
    assert out.topic == topic and json.loads(out.payload) == want


def test_refusals_answer_with_the_platform_error_form() -> None:
    ali = dialect("aliyun", ["meter-1"])
    out = ali.reply(Request({}, incoming(CASES[3][1], CASES[3][2])),
                    {"status": "refused", "error": "above max 80"})
    assert json.loads(out.payload)["code"] == 460
    assert json.loads(out.payload)["message"] == "above max 80"
    hw = dialect("huawei", ["meter-1"])
    out = hw.reply(Request({}, incoming(CASES[7][1], CASES[7][2])),
                   {"status": "failed", "error": "exception 2"})
    assert json.loads(out.payload) == {"result_code": 1, "result_desc": "exception 2"}
    tb = dialect("thingsboard", [])
    out = tb.reply(Request({}, incoming(CASES[0][1], CASES[0][2])),
                   {"status": "expired", "error": "too old"})
    assert json.loads(out.payload)["data"]["success"] is False


def test_device_state_is_the_platform_connect_or_status_message() -> None:
    tb = dialect("thingsboard", [], device_type="meter")
    up = tb.device_state("meter-1", {"state": "up"})
    assert (up.topic, json.loads(up.payload), up.retain) == (
        "v1/gateway/connect", {"device": "meter-1", "type": "meter"}, False)
    assert tb.device_state("meter-1", {"state": "down"}).topic == "v1/gateway/disconnect"
    hw = dialect("huawei", ["meter-1"])
    down = json.loads(hw.device_state("meter-1", {"state": "down"}).payload)
    assert down["services"][0]["paras"]["device_statuses"] == [
        {"device_id": f"{HW_PRODUCT}_meter-1", "status": "OFFLINE"}]


def test_huawei_does_not_report_a_down_device_online_on_connect() -> None:
    hw = dialect("huawei", ["meter-1", "meter-2"])
    hw.device_state("meter-2", {"state": "down"})
    events = [json.loads(m.payload)["services"][0]
              for m in hw.open("mqtts://x:8883", "cid").announce()]
    (online,) = [e["paras"]["device_statuses"] for e in events
                 if e["event_type"] == "sub_device_update_status"]
    assert online == [{"device_id": f"{HW_PRODUCT}_meter-1", "status": "ONLINE"}]


def test_thingsboard_access_token_is_the_username_without_password() -> None:
    creds = dialect("thingsboard", []).open("mqtts://tb:8883", "pg-1").credentials
    assert (creds.client_id, creds.username, creds.password) == (
        "pg-1", "s3cret-device-key", None)
