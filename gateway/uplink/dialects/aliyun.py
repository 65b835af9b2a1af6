"""Alibaba Cloud IoT Platform (`dialect: aliyun`): a gateway with sub-devices over Alink JSON.

Pages (the signing is in gateway/uplink/dialects/aliyun_auth.py):
- topology: https://www.alibabacloud.com/help/zh/iot/user-guide/manage-topological-relationships
  (`/sys/{pk}/{dn}/thing/topo/add`, at most 30 sub-devices per request, each signed);
- sub-device login and logout: https://www.alibabacloud.com/help/doc-detail/89300.htm
  (`/ext/session/{pk}/{dn}/combine/login|batch_login|logout`, QoS 0 only, at most 50
  sub-devices per batch);
- batch properties: https://help.aliyun.com/zh/marketplace/gateway-reports-data-in-batches
  (`thing/event/property/pack/post`: at most 200 properties and 20 sub-devices a message);
- property set and services: https://www.alibabacloud.com/help/doc-detail/89301.htm
  (`/sys/{pk}/{dn}/thing/service/property/set` and `/thing/service/{identifier}`, answered on
  the same topic with `_reply`, `{"id", "code": 200, "data": {}}`).

On every connect the gateway adds its sub-devices to its topology (batches of 30) and logs
them in (batches of 50). A sub-device's readings go as pack/post messages of that one
sub-device, at most 200 properties each; a property holds one value and time, so readings
of a metric sampled several times go in successive messages. Devices that are not
sub-devices report as the gateway's own properties (`thing/event/property/post`). A device
that goes down is logged out; readings it left in the buffer are sent between a login and a
logout, so it still shows offline afterwards.

The platform answers a login on `combine/login_reply` or `combine/batch_login_reply`
(`{"id", "code": 200, "message", "data"}`; a batch succeeds or fails as a whole, `data`
naming the devices), not in the PUBACK, and refuses properties of a sub-device it has not
logged in yet in the post's own reply: data waits for the login replies of the connection
(gateway/uplink/dialects/gate.py), at most `aliyun.login_timeout` seconds, and a device
whose login was refused keeps its readings in the buffer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gateway import logs, notices
from gateway.config import GatewaySection, MqttSection
from gateway.model import now_ms
from gateway.platforms import AliyunSection
from gateway.uplink.dialect import Request
from gateway.uplink.dialects import platform as p
from gateway.uplink.dialects.aliyun_auth import Triple, connect
from gateway.uplink.dialects.gate import ReplyGate
from gateway.uplink.messages import Credentials, Incoming, Outgoing, Subscription

TOPO_BATCH = 30
LOGIN_BATCH = 50
MAX_PROPERTIES = 200
MAX_SUB_DEVICES = 20
"""Documented limits (module docstring); a message here carries one sub-device."""

def _properties(items: Sequence[p.Item]) -> dict[str, Any]:
    return {i.metric: {"value": i.value, "time": i.ts} for i in items}


class AliyunDialect:
    """Alink JSON for a gateway and its sub-devices."""

    name = "aliyun"
    credentials_hint = ("check uplink.mqtt.aliyun.product_key, device_name and device_secret "
                        "(and the clock: the signature carries a timestamp)")

    def __init__(self, cfg: MqttSection, gateway: GatewaySection) -> None:
        assert cfg.aliyun is not None  # the config requires it for this dialect
        self.cfg = cfg
        self.ali: AliyunSection = cfg.aliyun
        self.gw = gateway
        a = self.ali
        self.triple = Triple(a.product_key, a.device_name, a.device_secret.get_secret_value())
        self.subs = {name: Triple(*a.sub_triple(name)) for name in a.sub_devices}
        self.by_identity = {(t.product_key, t.device_name): n for n, t in self.subs.items()}
        self.sys = f"/sys/{a.product_key}/{a.device_name}"
        self.session = f"/ext/session/{a.product_key}/{a.device_name}"
        self.ids = p.MessageIds()
        self.down: set[str] = set()
        """Sub-devices logged out because they went down (device_state)."""

    def open(self, broker: str, client_id: str) -> AliyunSession:
        """A session with the CONNECT signed now (securemode 2 over TLS, 3 over TCP)."""
        cid = self.ali.client_id or f"{self.ali.product_key}.{self.ali.device_name}"
        creds = connect(self.triple, cid, str(now_ms()), tls=broker.startswith("mqtts://"),
                        method=self.ali.sign_method)
        return AliyunSession(self, broker, creds)

    def topic(self, device: str) -> str:
        """pack/post for sub-devices, property/post for the gateway's own."""
        if device in self.subs:
            return f"{self.sys}/thing/event/property/pack/post"
        return f"{self.sys}/thing/event/property/post"

    def alink(self, method: str, params: object) -> bytes:
        """An Alink request payload."""
        return p.dumps({"id": self.ids.next(), "version": "1.0", "params": params,
                        "method": method})

    def payloads(self, device: str, items: bytes, limit: int) -> list[bytes]:
        """Property messages of `device`: one value per property, 200 properties each."""
        sub = self.subs.get(device)
        identity = None if sub is None else {"productKey": sub.product_key,
                                             "deviceName": sub.device_name}

        def render(rnd: Sequence[p.Item]) -> bytes:
            if identity is None:
                return self.alink("thing.event.property.post", _properties(rnd))
            return self.alink("thing.event.property.pack.post", {"subDevices": [
                {"identity": identity, "properties": _properties(rnd)}]})

        return [payload for rnd in p.rounds(p.readings(items))
                for payload in p.fit(rnd, render, limit, MAX_PROPERTIES)]

    def sign_params(self, name: str) -> dict[str, str]:
        """A sub-device's signed identity (topo/add, login), signed now."""
        t = self.subs[name]
        ts = str(now_ms())
        cid = f"{t.product_key}.{t.device_name}"
        method = self.ali.sign_method
        return {"productKey": t.product_key, "deviceName": t.device_name, "clientId": cid,
                "timestamp": ts, "sign": t.signed(cid, ts, method)}

    def topo_add(self, names: Sequence[str]) -> Outgoing:
        """Adds sub-devices to the gateway's topology."""
        params = []
        for name in names:
            s = self.sign_params(name)
            s["signmethod"] = self.ali.sign_method
            params.append(s)
        return Outgoing(f"{self.sys}/thing/topo/add", self.alink("thing.topo.add", params),
                        qos=1)

    def login(self, names: Sequence[str]) -> Outgoing:
        """Logs sub-devices in (one: combine/login; several: combine/batch_login), QoS 0."""
        return self.login_request(names)[1]

    def login_request(self, names: Sequence[str]) -> tuple[str, Outgoing]:
        """The login of `names` and its message id (the reply carries it)."""
        rid = self.ids.next()
        signed = [{**self.sign_params(n), "signMethod": self.ali.sign_method,
                   "cleanSession": "true"} for n in names]
        if len(signed) == 1:
            return rid, Outgoing(f"{self.session}/combine/login",
                                 p.dumps({"id": rid, "params": signed[0]}), qos=0)
        return rid, Outgoing(f"{self.session}/combine/batch_login", p.dumps(
            {"id": rid, "params": {"deviceList": signed}}), qos=0)

    def login_reply(self, msg: Incoming) -> tuple[str | None, list[str], str | None] | None:
        """A login reply's (id, devices it names, why it refused them or None), or None
        when `msg` is not one."""
        if msg.topic not in (f"{self.session}/combine/login_reply",
                             f"{self.session}/combine/batch_login_reply"):
            return None
        doc = p.json_object(msg) or {}
        data = doc.get("data")
        listed = data if isinstance(data, list) else [data] if isinstance(data, dict) else []
        names = [n for x in listed if isinstance(x, dict) and (n := self.by_identity.get(
            (str(x.get("productKey")), str(x.get("deviceName"))))) is not None]
        rid, code = doc.get("id"), doc.get("code")
        error = None if code == 200 else f"code {code}: {doc.get('message') or 'no message'}"
        return (None if rid is None else str(rid)), names, error

    def logout(self, name: str) -> Outgoing:
        """Logs a sub-device out, QoS 0."""
        t = self.subs[name]
        return Outgoing(f"{self.session}/combine/logout", p.dumps({
            "id": self.ids.next(),
            "params": {"productKey": t.product_key, "deviceName": t.device_name}}), qos=0)

    def decode(self, msg: Incoming) -> Request | None:
        """A property set or a service call to a sub-device, when commands are on."""
        parts = msg.topic.split("/")
        if (not self.ali.commands or len(parts) < 7 or parts[1] != "sys"
                or parts[4:6] != ["thing", "service"] or parts[-1].endswith("_reply")):
            return None
        name = self.by_identity.get((parts[2], parts[3]))
        doc = p.json_object(msg)
        if name is None or doc is None:
            return Request({}, msg, error="not a request to a sub-device of this gateway")
        rid = f"ali-{name}-{doc.get('id')}"
        params = doc.get("params")
        if parts[6:] == ["property", "set"]:
            if not isinstance(params, dict) or len(params) != 1:
                return Request({}, msg, error="a property set carries exactly one property "
                               "here (one write, one reply)")
            (point, value), = params.items()
            return Request(p.request(rid, name, "write", point, value, has_value=True), msg,
                           unsigned_ok=True)
        if len(parts) != 7:
            return None
        return Request(p.action_request(rid, name, parts[6], params), msg,
                       unsigned_ok=True)

    def reply(self, request: Request, document: Mapping[str, object]) -> Outgoing:
        """On the request's topic + `_reply`: code 200 when ok, else 460 (refused,
        expired, duplicate) or 500 (the device failed), with the outcome in `data`."""
        doc = p.json_object(request.incoming) or {}
        status = document.get("status")
        code = 200 if status == "ok" else 500 if status == "failed" else 460
        body: dict[str, Any] = {"id": doc.get("id"), "code": code,
                                "data": p.outcome(document)}
        if code != 200:
            body["message"] = document.get("error") or status
        return Outgoing(request.incoming.topic + "_reply", p.dumps(body), qos=1)

    def device_state(self, device: str, state: Mapping[str, object]) -> Outgoing:
        """Login when up, logout when down; the gateway's own devices as a property."""
        up = state.get("state") == "up"
        if device in self.subs:
            if up:
                self.down.discard(device)
                return self.login([device])
            self.down.add(device)
            return self.logout(device)
        return Outgoing(self.topic(device), self.alink("thing.event.property.post", {
            f"{device}_state": {"value": state.get("state"), "time": now_ms()}}), qos=1)


class AliyunSession(p.PlatformSession):
    """One connection: signed CONNECT, topology and logins on connect."""

    envelope = 256  # id, version, method, the identity's keys (generous)
    name_factor = 2  # the identity's deviceName, and the product key's room

    def __init__(self, dialect: AliyunDialect, broker: str, credentials: Credentials) -> None:
        super().__init__(dialect, broker, credentials)
        self.dialect = dialect
        self.gate = ReplyGate("Alibaba Cloud IoT", "sub-device login (combine/batch_login)",
                              dialect.ali.login_timeout, logs.get_logger(component="aliyun"))

    def subscriptions(self) -> Sequence[Subscription]:
        """The login replies (QoS 0, as the logins); each sub-device's services (property
        set and calls) when commands are on."""
        d = self.dialect
        out = [Subscription(f"{d.session}/combine/{r}", 0)
               for r in ("login_reply", "batch_login_reply")] if d.subs else []
        if not d.ali.commands:
            return out
        return out + [Subscription(f"/sys/{t.product_key}/{t.device_name}/thing/service/#", 1)
                      for t in d.subs.values()]

    def announce(self) -> Sequence[Outgoing]:
        """topo/add in batches of 30, then logins in batches of 50 (devices not down);
        data waits for the logins' replies."""
        d = self.dialect
        names = list(d.subs)
        out = [d.topo_add(batch) for batch in p.batches(names, TOPO_BATCH)]
        for batch in p.batches([n for n in names if n not in d.down], LOGIN_BATCH):
            rid, login = d.login_request(batch)
            self.gate.expect(rid, batch)
            out.append(login)
        return out

    def observe(self, msg: Incoming) -> Sequence[Outgoing]:
        """Login replies open the gate (or keep a refused device's data held)."""
        if (reply := self.dialect.login_reply(msg)) is not None:
            self.gate.answered(*reply)
        return ()

    def ready(self) -> bool:
        """Once the platform answered this connection's logins (or did not in time)."""
        return self.gate.ready()

    def withheld(self) -> frozenset[str]:
        """Sub-devices whose login the platform refused."""
        return self.gate.withheld()

    def frame(self, device: str, items: bytes, historical: bool) -> list[Outgoing]:
        """Property messages; between a login and a logout for a device that is down."""
        d = self.dialect
        data = super().frame(device, items, historical)
        if device in d.down and data:
            return [d.login([device]), *data, d.logout(device)]
        return data

    def drop_notice(self, ranges: Sequence[notices.DropRange]) -> Outgoing:
        """The gateway's event `parkgate_dropped`: count and seq ranges with reasons."""
        d = self.dialect
        return Outgoing(f"{d.sys}/thing/event/parkgate_dropped/post", d.alink(
            "thing.event.parkgate_dropped.post",
            {"value": {"count": sum(r.count for r in ranges),
                       "ranges": ",".join(f"{r.first}-{r.last}:{r.reason}" for r in ranges)},
             "time": now_ms()}), qos=1)
