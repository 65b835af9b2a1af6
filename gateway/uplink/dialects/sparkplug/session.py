"""One MQTT session of the Sparkplug edge node: bdSeq, the 0-255 `seq`, births, the host.

Order (Sparkplug 3.0, operational behavior): CONNECT with clean start and the NDEATH will
(QoS 1, not retained) carrying this session's `bdSeq`; SUBSCRIBE to NCMD, DCMD (and the
primary host's STATE); NBIRTH (`seq` 0, the same `bdSeq`) and one DBIRTH per known device
that is up; then DDATA. With a primary host, the births wait for its STATE `online`
(`observe`), and data waits for the births (`ready`). NCMD `Node Control/Rebirth` sends
NBIRTH and every DBIRTH again.

`seq` is given when a message is handed to the MQTT client (`stamp`), so it follows the
wire order whatever the order in which messages were built; NDEATH carries none. DBIRTH
and DDEATH of a device state change are built at that moment too, from what is known then.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway import notices
from gateway.batching import max_payload
from gateway.model import now_ms
from gateway.uplink.dialect import SessionDefaults
from gateway.uplink.dialects.sparkplug import codec
from gateway.uplink.dialects.sparkplug.registry import DROPPED, NODE_ALIASES
from gateway.uplink.dialects.sparkplug.topics import parse_topic
from gateway.uplink.messages import Credentials, Incoming, Outgoing, Subscription

if TYPE_CHECKING:
    from gateway.uplink.dialects.sparkplug.dialect import SparkplugDialect

FRAME_OVERHEAD = 16
"""Bytes of a DDATA payload besides its metrics: the payload timestamp and `seq`."""


class SparkplugSession(SessionDefaults):
    """One connection's Sparkplug state (gateway/uplink/dialect.py `DialectSession`)."""

    def __init__(self, dialect: SparkplugDialect, credentials: Credentials,
                 bd_seq: int) -> None:
        self.d = dialect
        self._credentials = credentials
        self.bd_seq = bd_seq
        self.seq = 0
        """The `seq` of the next message after NBIRTH (NBIRTH itself is always 0)."""
        self.host_online = dialect.primary_host is None
        self.host_ts = -1
        self.node_born = False
        """NBIRTH has been handed to the client in this session."""
        self.born: set[str] = set()
        """Devices whose DBIRTH is queued or sent in this session."""
        self.unsent: set[str] = set()
        """Devices whose DBIRTH of the last birth sequence has not gone out yet: data waits
        for them (after a rebirth or the primary host's online, they go out one by one)."""
        self._will = Outgoing(dialect.topic_of("NDEATH"), codec.death(bd_seq, now_ms()),
                              qos=1, retain=False)

    @property
    def will(self) -> Outgoing:
        """NDEATH with this session's bdSeq, QoS 1, not retained."""
        return self._will

    def subscriptions(self) -> Sequence[Subscription]:
        """NCMD, DCMD of every device, and the primary host's STATE."""
        d = self.d
        subs = [Subscription(d.topic_of("NCMD"), 1), Subscription(d.topic_of("DCMD", "+"), 1)]
        if d.primary_host is not None:
            subs.append(Subscription(d.state_topic, 1))
        return subs

    def births(self) -> list[Outgoing]:
        """NBIRTH and the DBIRTH of every known device that is up."""
        d = self.d
        out = [Outgoing(d.topic_of("NBIRTH"), d.registry.node_birth(self.bd_seq, now_ms()))]
        for device in d.registry.devices:
            if device not in d.down:
                out.append(d.birth_marker(device))
                self.born.add(device)
        self.unsent = {device for device in d.registry.devices if device not in d.down}
        return out

    def announce(self) -> Sequence[Outgoing]:
        """The births, unless a primary host must say online first."""
        return self.births() if self.host_online else ()

    def observe(self, msg: Incoming) -> Sequence[Outgoing]:
        """STATE of the primary host; NCMD rebirth requests."""
        d = self.d
        if d.primary_host is not None and msg.topic == d.state_topic:
            state = codec.state_online(msg.payload)
            if state is None or state[1] < self.host_ts:
                return ()  # not a 3.0 STATE, or older than one seen: ignored
            online, self.host_ts = state
            was, self.host_online = self.host_online, online
            return self.births() if online and not was else ()
        if msg.topic == d.topic_of("NCMD") and codec.asks_rebirth(msg.payload, d.node_names):
            return self.births() if self.host_online else ()
        return ()

    def ready(self) -> bool:
        """While the primary host (if any) is online and the last NBIRTH and its DBIRTHs
        have gone out."""
        return self.host_online and self.node_born and not self.unsent

    def topic(self, device: str) -> str:
        """DDATA of the device."""
        return self.d.topic_of("DDATA", device)

    def budget(self, device: str, max_packet: int, v5: bool) -> int:
        """The JSON items' byte budget: protobuf metrics are smaller than the JSON items
        they come from (a reading's JSON has its device, metric and unit names, DDATA an
        alias), so items that fit as JSON fit as DDATA."""
        return max_payload(max_packet, self.topic(device), v5) - FRAME_OVERHEAD

    def frame(self, device: str, items: bytes, historical: bool) -> list[Outgoing]:
        """DDATA by alias; a DBIRTH first when the device is not born in this session or
        shows a metric (or a type) its last DBIRTH did not list."""
        d = self.d
        readings = codec.readings(items)
        changed = d.registry.learn(device, readings)
        out: list[Outgoing] = []
        if changed or device not in self.born:
            out.append(d.birth_marker(device))
            self.born.add(device)
        out.append(Outgoing(self.topic(device), d.registry.device_data(
            device, readings, now_ms(), historical=historical)))
        return out

    def drop_notice(self, ranges: Sequence[notices.DropRange]) -> Outgoing:
        """NDATA `Buffer/Dropped`: the native notice's JSON as a String metric."""
        d = self.d
        text = notices.encode(d.gw.id, d.gw.site, ranges).decode()
        return Outgoing(d.topic_of("NDATA"),
                        codec.text_metric(DROPPED, NODE_ALIASES[DROPPED], text, now_ms()))

    def goodbye(self, reason: str) -> Outgoing:
        """NDEATH before a clean disconnect (the will is not sent then)."""
        return Outgoing(self._will.topic, codec.death(self.bd_seq, now_ms()), qos=1)

    def stamp(self, out: Outgoing) -> Outgoing:
        """`out` as it goes on the wire now: with its `seq`, births and deaths built now."""
        parsed = parse_topic(out.topic)
        d = self.d
        if parsed is None or parsed[0] != d.group or parsed[2] != d.node:
            return out
        kind, device = parsed[1], parsed[3]
        if kind in ("NDEATH", "NCMD", "DCMD"):
            return out
        payload = out.payload
        if kind == "NBIRTH":
            self.seq = 0  # a (re)birth starts the sequence again
            self.node_born = True
        elif kind == "DBIRTH" and device is not None:
            self.unsent.discard(device)
            if not payload:  # a marker: built now
                payload = d.registry.device_birth(device, now_ms())
        elif kind == "DDEATH" and not payload:
            payload = codec.device_death(now_ms())
        seq = self.seq
        self.seq = (seq + 1) % 256
        return Outgoing(out.topic, codec.with_seq(payload, seq), qos=out.qos, retain=False)
