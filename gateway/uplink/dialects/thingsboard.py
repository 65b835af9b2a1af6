"""ThingsBoard (`dialect: thingsboard`): the gateway MQTT API, as thingsboard-gateway uses it.

Documented at https://thingsboard.io/docs/reference/gateway-mqtt-api/ (topics, payloads,
RPC) and https://thingsboard.io/docs/reference/mqtt-api/ (the gateway's own telemetry on
the device API; access token as the MQTT username).

- CONNECT: username = the gateway device's access token, no password.
- Telemetry of the devices behind the gateway: `v1/gateway/telemetry`,
  `{"<device>": [{"ts": ms, "values": {"<metric>": value, ...}}, ...]}`; the device
  names and metric keys are parkgate's own, so a site moving from thingsboard-gateway with
  the same device names keeps its devices and keys.
- The gateway's own telemetry (`gateway_devices`: modem, box): `v1/devices/me/telemetry`,
  `[{"ts": ms, "values": {...}}]`; drop notices go there too (`parkgate_dropped*` keys).
- Device state: `v1/gateway/connect` `{"device": D[, "type": T]}` when a device is up,
  `v1/gateway/disconnect` `{"device": D}` when it is down; sent again after a reconnect.
  The API has no reply to connect, and telemetry of a device ThingsBoard does not know
  yet creates it, so data waits for nothing here (unlike Aliyun's login and Huawei's add,
  gateway/uplink/dialects/gate.py).
- Server-side RPC: `v1/gateway/rpc` `{"device": D, "data": {"id": N, "method": M,
  "params": P}}` becomes a native request (gateway/uplink/dialects/platform.py); the reply
  goes on the same topic as `{"device": D, "id": N, "data": {"success": bool, ...}}`.

The gateway API page names no message size limit. ThingsBoard's MQTT transport has a
configurable maximum payload size (`NETTY_MAX_PAYLOAD_SIZE`); no ThingsBoard page found
states its default, so the example sets `uplink.mqtt.max_message_bytes: 65536`, below
what installations commonly allow; raise it to the installation's setting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gateway import __version__, notices
from gateway.config import GatewaySection, MqttSection
from gateway.model import now_ms
from gateway.platforms import ThingsboardSection
from gateway.uplink.dialect import Request
from gateway.uplink.dialects import platform as p
from gateway.uplink.messages import Credentials, Incoming, Outgoing, Subscription

TELEMETRY = "v1/gateway/telemetry"
CONNECT = "v1/gateway/connect"
DISCONNECT = "v1/gateway/disconnect"
RPC = "v1/gateway/rpc"
OWN_TELEMETRY = "v1/devices/me/telemetry"
OWN_ATTRIBUTES = "v1/devices/me/attributes"

def _group(items: Sequence[p.Item]) -> dict[str, Any]:
    return {"ts": items[0].ts, "values": {i.metric: i.value for i in items}}


class ThingsboardDialect:
    """The ThingsBoard gateway API."""

    name = "thingsboard"
    credentials_hint = "check uplink.mqtt.thingsboard.access_token (the MQTT username)"

    def __init__(self, cfg: MqttSection, gateway: GatewaySection) -> None:
        assert cfg.thingsboard is not None  # the config requires it for this dialect
        self.cfg = cfg
        self.tb: ThingsboardSection = cfg.thingsboard
        self.gw = gateway
        self.own = frozenset(self.tb.gateway_devices)

    def open(self, broker: str, client_id: str) -> ThingsboardSession:
        """A session: the access token is the username."""
        return ThingsboardSession(self, broker, Credentials(
            client_id, self.tb.access_token.get_secret_value(), None))

    def topic(self, device: str) -> str:
        """The gateway's own telemetry topic, or the gateway API's."""
        return OWN_TELEMETRY if device in self.own else TELEMETRY

    def payloads(self, device: str, items: bytes, limit: int) -> list[bytes]:
        """Telemetry payloads of `device` within `limit` bytes each."""
        found = p.groups(p.readings(items))
        if device in self.own:
            return p.fit(found, lambda gs: p.dumps([_group(g) for g in gs]), limit)
        return p.fit(found, lambda gs: p.dumps({device: [_group(g) for g in gs]}), limit)

    def decode(self, msg: Incoming) -> Request | None:
        """A server-side RPC to a device behind the gateway, when commands are on."""
        if not self.tb.commands or msg.topic != RPC:
            return None
        doc = p.json_object(msg)
        data = doc.get("data") if doc else None
        device = doc.get("device") if doc else None
        if isinstance(data, dict) and "method" not in data and "id" in (doc or {}):
            return None  # an RPC reply (ours, when the broker echoes the shared topic)
        if not isinstance(data, dict) or not isinstance(device, str):
            return Request({}, msg, error="not a ThingsBoard RPC: {device, data} expected")
        rpc_id, method = data.get("id"), data.get("method")
        if not isinstance(method, str) or rpc_id is None:
            return Request({}, msg, error="the RPC has no method or id")
        return Request(p.action_request(f"tb-{device}-{rpc_id}", device, method,
                                        data.get("params")), msg,
                       unsigned_ok=True)

    def reply(self, request: Request, document: Mapping[str, object]) -> Outgoing:
        """On `v1/gateway/rpc` with the RPC's device and id."""
        doc = p.json_object(request.incoming) or {}
        data = doc.get("data")
        rpc_id = data.get("id") if isinstance(data, dict) else None
        answer = {"success": p.ok(document), **p.outcome(document)}
        return Outgoing(RPC, p.dumps({"device": doc.get("device"), "id": rpc_id,
                                      "data": answer}), qos=1)

    def device_state(self, device: str, state: Mapping[str, object]) -> Outgoing:
        """`v1/gateway/connect` when up, `v1/gateway/disconnect` when down; the gateway's
        own devices as telemetry keys `parkgate_state`."""
        up = state.get("state") == "up"
        if device in self.own:
            return Outgoing(OWN_TELEMETRY, p.dumps({"ts": now_ms(), "values": {
                f"{device}_state": state.get("state"),
                f"{device}_error": state.get("error")}}), qos=1)
        doc: dict[str, Any] = {"device": device}
        if up and self.tb.device_type:
            doc["type"] = self.tb.device_type
        return Outgoing(CONNECT if up else DISCONNECT, p.dumps(doc), qos=1)


class ThingsboardSession(p.PlatformSession):
    """One connection: the client attributes on connect, the RPC subscription."""

    envelope = 64  # braces, the device key's quotes, brackets (generous)

    def __init__(self, dialect: ThingsboardDialect, broker: str,
                 credentials: Credentials) -> None:
        super().__init__(dialect, broker, credentials)
        self.dialect = dialect

    def subscriptions(self) -> Sequence[Subscription]:
        """`v1/gateway/rpc` when commands are on."""
        return [Subscription(RPC, 1)] if self.dialect.tb.commands else []

    def announce(self) -> Sequence[Outgoing]:
        """The gateway's client attributes: what it is and where."""
        d = self.dialect
        return [Outgoing(OWN_ATTRIBUTES, p.dumps({
            "parkgate_version": __version__, "parkgate_gateway": d.gw.id,
            "parkgate_site": d.gw.site, "parkgate_broker": self.broker}), qos=1)]

    def drop_notice(self, ranges: Sequence[notices.DropRange]) -> Outgoing:
        """The gateway's own telemetry: how many were dropped, the seq ranges, why."""
        return Outgoing(OWN_TELEMETRY, p.dumps({"ts": now_ms(), "values": {
            "parkgate_dropped": sum(r.count for r in ranges),
            "parkgate_dropped_ranges": ",".join(f"{r.first}-{r.last}:{r.reason}"
                                                for r in ranges)}}), qos=1)
