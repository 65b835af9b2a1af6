"""The native dialect: parkgate's JSON (interfaces.md "Upstream MQTT"), byte for byte.

Data: `{"v":1,"gateway":G,"site":S,"readings":[ITEMS]}` on the `topic` template per device,
where ITEMS are the stored chunk items as they are (no re-encoding); status retained on
`status_topic` with the offline will; drop notices on the data topic with the device
`dropped` (gateway/notices.py); command requests on `command_topic` (when given) and
replies on the request's MQTT 5 response topic with its correlation data, else `reply_topic`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from gateway import __version__, notices
from gateway.batching import max_payload
from gateway.commands.request import BadRequest, load_document
from gateway.config import GatewaySection, MqttSection
from gateway.model import now_ms
from gateway.uplink.dialect import Request, SessionDefaults
from gateway.uplink.messages import Credentials, Incoming, Outgoing, Subscription

STATE_DEVICE = "status"
"""The device state topic is the status topic plus `/{device}`: one level deeper than the
data and status topics, so a consumer of `parkgate/+/+/+` never mistakes it for data."""


def prefix(gateway: str, site: str) -> bytes:
    """The bytes before a data message's items."""
    return ('{"v":1,"gateway":' + json.dumps(gateway) + ',"site":'
            + json.dumps(site) + ',"readings":[').encode()


SUFFIX = b"]}"


class ParkgateDialect:
    """The native JSON dialect."""

    name = "parkgate"
    credentials_hint = "check uplink.mqtt.username and password"

    def __init__(self, cfg: MqttSection, gateway: GatewaySection, *,
                 command_topic: str | None = None, reply_topic: str | None = None) -> None:
        self.cfg = cfg
        self.gw = gateway
        self.status_topic = cfg.status_topic.format(site=gateway.site, gateway=gateway.id,
                                                    device="status")
        self.notice_topic = notices.notice_topic(cfg.topic, gateway.site, gateway.id)
        self.prefix = prefix(gateway.id, gateway.site)
        self.command_topic = command_topic
        self.reply_topic = reply_topic
        self._topics: dict[str, str] = {}

    def open(self, broker: str, client_id: str) -> ParkgateSession:
        """A session for one connection to `broker`."""
        password = self.cfg.password.get_secret_value() if self.cfg.password else None
        return ParkgateSession(self, broker, Credentials(client_id, self.cfg.username, password))

    def topic(self, device: str) -> str:
        """The data topic of a device."""
        topic = self._topics.get(device)
        if topic is None:
            topic = self.cfg.topic.format(site=self.gw.site, gateway=self.gw.id, device=device)
            self._topics[device] = topic
        return topic

    def status(self, state: str, broker: str | None, reason: str | None = None) -> bytes:
        """The status payload (`online` on connect, `offline` at shutdown)."""
        doc: dict[str, Any] = {"state": state, "gateway": self.gw.id, "site": self.gw.site,
                               "version": __version__, "ts": now_ms(), "broker": broker}
        if reason:
            doc["reason"] = reason
        return json.dumps(doc).encode()

    def will_payload(self) -> bytes:
        """The offline status the broker publishes when we vanish."""
        return json.dumps({"state": "offline", "reason": "connection lost",
                           "gateway": self.gw.id}).encode()

    def data(self, device: str, items: bytes) -> Outgoing:
        """A data message: the items framed as one batch."""
        return Outgoing(self.topic(device), self.prefix + items + SUFFIX, qos=1)

    def decode(self, msg: Incoming) -> Request | None:
        """A JSON object on the command topic, else None."""
        if self.command_topic is None or msg.topic != self.command_topic:
            return None
        try:
            # bounded, no duplicate keys (the signed form would be ambiguous), no NaN
            doc = load_document(msg.payload)
        except BadRequest as exc:
            return Request({}, msg, error=str(exc))  # answered refused, with the reason
        return Request(doc, msg)

    def reply(self, request: Request, document: Mapping[str, object]) -> Outgoing:
        """On the request's response topic with its correlation data, else `reply_topic`."""
        incoming = request.incoming
        topic = incoming.response_topic or self.reply_topic
        if topic is None:
            raise ValueError("no reply topic: the request has no response topic and no "
                             "reply_topic is configured")
        return Outgoing(topic, json.dumps(document, separators=(",", ":")).encode(), qos=1,
                        correlation_data=incoming.correlation_data
                        if incoming.response_topic else None)

    def device_state(self, device: str, state: Mapping[str, object]) -> Outgoing:
        """Retained on `{status_topic}/{device}`; an empty state (the device was removed
        from the config) deletes the retained message."""
        if not state:
            return Outgoing(f"{self.status_topic}/{device}", b"", qos=1, retain=True)
        doc = {"v": 1, "gateway": self.gw.id, "site": self.gw.site, "device": device, **state}
        return Outgoing(f"{self.status_topic}/{device}",
                        json.dumps(doc, separators=(",", ":")).encode(), qos=1, retain=True)


class ParkgateSession(SessionDefaults):
    """One connection of the native dialect: no state beyond the broker's URL."""

    def __init__(self, dialect: ParkgateDialect, broker: str, credentials: Credentials) -> None:
        self.dialect = dialect
        self.broker = broker
        self._credentials = credentials
        self._will = Outgoing(dialect.status_topic, dialect.will_payload(), qos=1, retain=True)
        self._prefix_len = len(dialect.prefix) + len(SUFFIX)

    @property
    def will(self) -> Outgoing:
        """Status offline, retained."""
        return self._will

    def subscriptions(self) -> Sequence[Subscription]:
        """The command topic, when commands are on."""
        topic = self.dialect.command_topic
        return [Subscription(topic, 1)] if topic else []

    def announce(self) -> Sequence[Outgoing]:
        """Status online, retained."""
        d = self.dialect
        return [Outgoing(d.status_topic, d.status("online", self.broker), qos=1, retain=True)]

    def topic(self, device: str) -> str:
        """The data topic of a device."""
        return self.dialect.topic(device)

    def budget(self, device: str, max_packet: int, v5: bool) -> int:
        """The packet limit less the PUBLISH headers, the topic and the JSON frame."""
        return max_payload(max_packet, self.dialect.topic(device), v5) - self._prefix_len

    def frame(self, device: str, items: bytes, historical: bool) -> Outgoing:
        """The same message for backlog and live data (the consumer sorts by seq)."""
        return self.dialect.data(device, items)

    def stamp(self, out: Outgoing) -> Outgoing:
        """As it is: nothing in the native dialect depends on the moment of sending."""
        return out

    def drop_notice(self, ranges: Sequence[notices.DropRange]) -> Outgoing:
        """gateway/notices.py's payload on the notice topic."""
        d = self.dialect
        return Outgoing(d.notice_topic, notices.encode(d.gw.id, d.gw.site, ranges), qos=1)

    def goodbye(self, reason: str) -> Outgoing:
        """Status offline with the reason, retained."""
        d = self.dialect
        return Outgoing(d.status_topic, d.status("offline", self.broker, reason), qos=1,
                        retain=True)
