"""Huawei Cloud IoTDA (`dialect: huawei`): a gateway with sub-devices over the MQTT device API.

Pages (the signing is in gateway/uplink/dialects/huawei_auth.py):
- topics: https://support.huaweicloud.com/intl/en-us/api-iothub/iot_06_v5_3004.html
- batch properties of sub-devices: https://support.huaweicloud.com/intl/en-us/api-iothub/iot_06_v5_3006.html
  (`$oc/devices/{gw}/sys/gateway/sub_devices/properties/report`, at most 100 sub-devices a
  message; `event_time` as yyyy-MM-dd'T'HH:mm:ss.SSS'Z');
- sub-device status: https://support.huaweicloud.com/devg-ocsmartcampus/ocsmartcampus_04_0046.html
  (`$oc/devices/{gw}/sys/events/up`, service `$sub_device_manager`, event
  `sub_device_update_status`, 1 to 100 statuses a message); sub-device add is the
  `add_sub_device_request` event of the same service;
- commands: https://support.huaweicloud.com/intl/en-us/api-iothub/iot_06_v5_3014.html
  (`$oc/devices/{gw}/sys/commands/request_id={id}`, answered on
  `.../sys/commands/response/request_id={id}` with `{"result_code", "response_name", "paras"}`)
  and property sets (`.../sys/properties/set/request_id={id}`, answered with
  `{"result_code", "result_desc"}`).

The add is answered by the `add_sub_device_response` event on `$oc/devices/{gw}/sys/events/down`
(`successful_devices`, `failed_devices` with `node_id`); reports of a sub-device the platform
has not added yet are dropped without a word (no PUBACK failure, no reply), so on a connect
that adds sub-devices data waits for the responses naming them (gateway/uplink/dialects/
gate.py), at most `huawei.add_timeout` seconds. A failed add does not hold data back: a
sub-device added before is answered in `failed_devices` too, and its reports are taken. The
ONLINE status is not waited for: reports of an existing sub-device are not dropped for its
status.

Each message carries one sub-device here (a refused device is held back alone), its
readings grouped by time into `services` entries of `service_id`. Devices that are not
sub-devices report as the gateway's own properties (`$oc/devices/{gw}/sys/properties/report`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from gateway import logs, notices
from gateway.config import GatewaySection, MqttSection
from gateway.model import now_ms
from gateway.platforms import HuaweiSection
from gateway.uplink.dialect import Request
from gateway.uplink.dialects import platform as p
from gateway.uplink.dialects.gate import ReplyGate
from gateway.uplink.dialects.huawei_auth import connect, timestamp
from gateway.uplink.messages import Credentials, Incoming, Outgoing, Subscription

ADD_BATCH = 50
"""Sub-devices per add request: the ROMA/IoTDA pages allow 1-100 records; 50 stays below
what every version of the page has said."""
STATUS_BATCH = 100
REPORT_DEVICES = 100
MANAGER = "$sub_device_manager"

def event_time(ms: int) -> str:
    """yyyy-MM-dd'T'HH:mm:ss.SSS'Z'."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


class HuaweiDialect:
    """The IoTDA device API for a gateway and its sub-devices."""

    name = "huawei"
    credentials_hint = ("check uplink.mqtt.huawei.device_id and secret (and the clock: the "
                        "password is signed for the hour)")

    def __init__(self, cfg: MqttSection, gateway: GatewaySection) -> None:
        assert cfg.huawei is not None  # the config requires it for this dialect
        self.cfg = cfg
        self.hw: HuaweiSection = cfg.huawei
        self.gw = gateway
        self.ids = {name: self.hw.sub_ids(name) for name in self.hw.sub_devices}
        self.by_node = {ids[1]: name for name, ids in self.ids.items()}
        self.by_id = {ids[0]: name for name, ids in self.ids.items()}
        self.base = f"$oc/devices/{self.hw.device_id}/sys"
        self.down: set[str] = set()
        """Sub-devices last reported OFFLINE (device_state): not set ONLINE on connect."""

    def open(self, broker: str, client_id: str) -> HuaweiSession:
        """A session with the CONNECT signed for this hour."""
        hw = self.hw
        return HuaweiSession(self, broker, connect(
            hw.device_id, hw.secret.get_secret_value(), timestamp(),
            check_timestamp=hw.check_timestamp))

    def topic(self, device: str) -> str:
        """The gateway's batch report for sub-devices, its own report otherwise."""
        if device in self.ids:
            return f"{self.base}/gateway/sub_devices/properties/report"
        return f"{self.base}/properties/report"

    def services(self, found: Sequence[Sequence[p.Item]]) -> list[dict[str, Any]]:
        """One `services` entry per group of readings of one time."""
        return [{"service_id": self.hw.service_id,
                 "properties": {i.metric: i.value for i in g},
                 "event_time": event_time(g[0].ts)} for g in found]

    def payloads(self, device: str, items: bytes, limit: int) -> list[bytes]:
        """Report payloads of `device` within `limit` bytes each."""
        found = p.groups(p.readings(items))
        if device not in self.ids:
            return p.fit(found, lambda gs: p.dumps({"services": self.services(gs)}), limit)
        device_id = self.ids[device][0]
        return p.fit(found, lambda gs: p.dumps({"devices": [
            {"device_id": device_id, "services": self.services(gs)}]}), limit)

    def event(self, event_type: str, paras: Mapping[str, object]) -> Outgoing:
        """A `$sub_device_manager` event of the gateway."""
        return Outgoing(f"{self.base}/events/up", p.dumps({
            "object_device_id": self.hw.device_id,
            "services": [{"service_id": MANAGER, "event_type": event_type,
                          "event_time": event_time(now_ms()), "paras": paras}]}), qos=1)

    def statuses(self, names: Sequence[str], status: str) -> Outgoing:
        """Sub-devices ONLINE or OFFLINE."""
        return self.event("sub_device_update_status", {"device_statuses": [
            {"device_id": self.ids[n][0], "status": status} for n in names]})

    def add(self, names: Sequence[str]) -> Outgoing:
        """Asks the platform to add sub-devices under the gateway."""
        devices = []
        for name in names:
            _device_id, node, product = self.ids[name]
            devices.append({"node_id": node, "product_id": product,
                            "name": self.hw.sub_devices[name].name or node})
        return self.event("add_sub_device_request", {"devices": devices})

    def add_response(self, msg: Incoming) -> list[str] | None:
        """The sub-devices an `add_sub_device_response` names (added or not), or None when
        `msg` is not one."""
        if msg.topic != f"{self.base}/events/down":
            return None
        services = (p.json_object(msg) or {}).get("services")
        names: list[str] | None = None
        for svc in services if isinstance(services, list) else []:
            if not isinstance(svc, dict) or svc.get("event_type") != "add_sub_device_response":
                continue
            paras = svc.get("paras") if isinstance(svc.get("paras"), dict) else {}
            names = names or []
            for key in ("successful_devices", "failed_devices"):
                found = paras.get(key) if isinstance(paras, dict) else None
                for dev in found if isinstance(found, list) else []:
                    node = dev.get("node_id") if isinstance(dev, dict) else None
                    if (name := self.by_node.get(str(node))) is not None:
                        names.append(name)
                    if key == "failed_devices" and isinstance(dev, dict):
                        logs.get_logger(component="huawei").info(
                            "IoTDA did not add a sub-device (one added before is answered "
                            "so too)", node_id=node, error_code=dev.get("error_code"),
                            error=dev.get("error_msg"))
        return names

    def decode(self, msg: Incoming) -> Request | None:
        """A command or a property set to a sub-device, when commands are on."""
        prefix = f"{self.base}/"
        if not self.hw.commands or not msg.topic.startswith(prefix):
            return None
        kind, _, rid = msg.topic[len(prefix):].rpartition("/request_id=")
        if kind not in ("commands", "properties/set") or not rid:
            return None
        doc = p.json_object(msg)
        name = self.by_id.get(str((doc or {}).get("object_device_id")))
        if doc is None or name is None:
            return Request({}, msg, error="not a request to a sub-device of this gateway "
                           "(object_device_id)")
        req_id = f"hw-{rid}"
        if kind == "commands":
            command = doc.get("command_name")
            if not isinstance(command, str):
                return Request({}, msg, error="the command has no command_name")
            return Request(p.action_request(req_id, name, command, doc.get("paras")), msg,
                           unsigned_ok=True)
        services = doc.get("services")
        props = services[0].get("properties") if (
            isinstance(services, list) and len(services) == 1
            and isinstance(services[0], dict)) else None
        if not isinstance(props, dict) or len(props) != 1:
            return Request({}, msg, error="a property set carries exactly one property here "
                           "(one write, one answer)")
        (point, value), = props.items()
        return Request(p.request(req_id, name, "write", point, value, has_value=True), msg,
                           unsigned_ok=True)

    def reply(self, request: Request, document: Mapping[str, object]) -> Outgoing:
        """The documented response on the request's topic with `response/` inserted."""
        topic = request.incoming.topic
        kind, _, rid = topic.rpartition("/request_id=")
        code = 0 if p.ok(document) else 1
        if kind.endswith("/commands"):
            body: dict[str, Any] = {"result_code": code, "response_name": "COMMAND_RESPONSE",
                                    "paras": p.outcome(document)}
        else:
            body = {"result_code": code,
                    "result_desc": "success" if code == 0 else
                    str(document.get("error") or document.get("status"))}
        return Outgoing(f"{kind}/response/request_id={rid}", p.dumps(body), qos=1)

    def device_state(self, device: str, state: Mapping[str, object]) -> Outgoing:
        """The sub-device's ONLINE/OFFLINE status; the gateway's own as a property."""
        up = state.get("state") == "up"
        if device in self.ids:
            (self.down.discard if up else self.down.add)(device)
            return self.statuses([device], "ONLINE" if up else "OFFLINE")
        return Outgoing(self.topic(device), p.dumps({"services": [{
            "service_id": self.hw.service_id,
            "properties": {f"{device}_state": state.get("state")}}]}), qos=1)


class HuaweiSession(p.PlatformSession):
    """One connection: signed CONNECT, sub-devices added and set online on connect."""

    envelope = 160  # {"devices":[{"device_id":...,"services":[]}]} (generous)

    def __init__(self, dialect: HuaweiDialect, broker: str, credentials: Credentials) -> None:
        super().__init__(dialect, broker, credentials)
        self.dialect = dialect
        self.gate = ReplyGate("Huawei IoTDA", "add_sub_device_request", dialect.hw.add_timeout,
                              logs.get_logger(component="huawei"))

    def subscriptions(self) -> Sequence[Subscription]:
        """The platform's events (add responses) when it adds sub-devices; commands and
        property sets (request ids are not known in advance: `#`)."""
        d = self.dialect
        base = d.base
        out = [Subscription(f"{base}/events/down", 1)] if d.hw.add_sub_devices and d.ids else []
        if not d.hw.commands:
            return out
        return [*out, Subscription(f"{base}/commands/#", 1),
                Subscription(f"{base}/properties/set/#", 1)]

    def observe(self, msg: Incoming) -> Sequence[Outgoing]:
        """Add responses open the gate."""
        if (names := self.dialect.add_response(msg)) is not None:
            self.gate.answered(None, names, None)
        return ()

    def ready(self) -> bool:
        """Once the platform answered this connection's adds (or did not in time)."""
        return self.gate.ready()

    def announce(self) -> Sequence[Outgoing]:
        """Add the sub-devices (batches of 50), then set those not down ONLINE (batches
        of 100); the down ones get their OFFLINE with the device states after this."""
        d = self.dialect
        names = list(d.ids)
        out = []
        for i, batch in enumerate(p.batches(names, ADD_BATCH) if d.hw.add_sub_devices else []):
            self.gate.expect(str(i), batch)
            out.append(d.add(batch))
        up = [n for n in names if n not in d.down]
        return out + [d.statuses(b, "ONLINE") for b in p.batches(up, STATUS_BATCH)]

    def drop_notice(self, ranges: Sequence[notices.DropRange]) -> Outgoing:
        """The gateway's own properties `parkgate_dropped` and `parkgate_dropped_ranges`."""
        d = self.dialect
        return Outgoing(f"{d.base}/properties/report", p.dumps({"services": [{
            "service_id": d.hw.service_id, "properties": {
                "parkgate_dropped": sum(r.count for r in ranges),
                "parkgate_dropped_ranges": ",".join(f"{r.first}-{r.last}:{r.reason}"
                                                    for r in ranges)}}]}), qos=1)
