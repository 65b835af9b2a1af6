"""The Sparkplug B 3.0 edge node: topics, DCMD as command requests, replies, device state.

Topics `spBv1.0/{group}/{NBIRTH|NDEATH|NDATA|NCMD|DBIRTH|DDEATH|DDATA|DCMD}/{node}[/{device}]`
with the group, node and primary host of `uplink.mqtt.sparkplug`. Readings go out as DDATA
metrics by alias with the properties `seq` (the per-gateway seq, UInt64: a host
de-duplicates by (group, node, seq), README "Sparkplug") and `Quality` (192 good, 64
uncertain, 0 bad; absent means good); the backlog with `is_historical`.

A DCMD becomes one command request (interfaces.md "Commands") per message: its first
metric (by name, or by the alias its DBIRTH gave) is the point, the DCMD's device the
device, the metric's value the value, the payload's `timestamp` the request's `ts`, its
`uuid` the request's `id` (else one made of the topic, timestamp, seq and metric), and a
metric property `sig` (String) the signature over the canonical form of exactly that
request. A DCMD without `sig` is refused here unless `allow_unsigned_dcmd` is set (warned
at every start); then it is marked `unsigned_ok` and the commands path does not ask it for
a signature, while its other rules (the point's `write:` block, expiry, duplicates) apply.
A reply goes out as NDATA `Commands/Reply`, the reply's JSON as a String metric; a
successful write also shows in the device's next DDATA.

Device state: `down` sends DDEATH, `up` a DBIRTH again (both not retained, `seq` given
when sent); after a reconnect the births list only the devices that are up.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from gateway import logs
from gateway.config import GatewaySection, MqttSection, SparkplugSection
from gateway.model import now_ms
from gateway.uplink.dialect import Request
from gateway.uplink.dialects.sparkplug import codec, topics
from gateway.uplink.dialects.sparkplug.bdseq import BdSeq, bdseq_path
from gateway.uplink.dialects.sparkplug.registry import NODE_ALIASES, REPLY, Registry
from gateway.uplink.dialects.sparkplug.session import SparkplugSession
from gateway.uplink.messages import Credentials, Incoming, Outgoing


class SparkplugDialect:
    """`uplink.mqtt.dialect: sparkplug`."""

    name = "sparkplug"
    credentials_hint = "check uplink.mqtt.username and password"

    def __init__(self, cfg: MqttSection, gateway: GatewaySection,
                 state_path: Path | None = None) -> None:
        sp = cfg.sparkplug or SparkplugSection(group=gateway.site)
        self.cfg = cfg
        self.gw = gateway
        self.group = sp.group
        self.node = sp.node or gateway.id
        self.primary_host = sp.primary_host
        self.allow_unsigned = sp.allow_unsigned_dcmd
        if self.allow_unsigned:
            logs.get_logger().warning(
                "Sparkplug DCMD writes are carried out UNSIGNED "
                "(uplink.mqtt.sparkplug.allow_unsigned_dcmd): anyone who may publish on "
                f"spBv1.0/{sp.group}/DCMD/ can write to writable points")
        self.state_topic = topics.state_topic(sp.primary_host or "")
        self.registry = Registry(gateway.id, gateway.site)
        self.bdseq = BdSeq(None if state_path is None else bdseq_path(state_path))
        self.down: set[str] = set()
        self.node_names = {alias: name for name, alias in NODE_ALIASES.items()}
        self._topics: dict[tuple[str, str | None], str] = {}

    def topic_of(self, kind: str, device: str | None = None) -> str:
        """This node's topic of a message type (of a device)."""
        key = (kind, device)
        found = self._topics.get(key)
        if found is None:
            found = self._topics[key] = topics.topic(self.group, kind, self.node, device)
        return found

    def open(self, broker: str, client_id: str) -> SparkplugSession:
        """A session with the next bdSeq, taken (and written down) before the CONNECT."""
        password = self.cfg.password.get_secret_value() if self.cfg.password else None
        return SparkplugSession(self, Credentials(client_id, self.cfg.username, password,
                                                  clean=True), self.bdseq.next())

    def birth_marker(self, device: str) -> Outgoing:
        """A DBIRTH whose payload the session builds when it sends it."""
        return Outgoing(self.topic_of("DBIRTH", device), b"", qos=1)

    # -- commands ----------------------------------------------------------------------------
    def decode(self, msg: Incoming) -> Request | None:
        """A DCMD to one of our devices as a command request, else None."""
        parsed = topics.parse_topic(msg.topic)
        if parsed is None or parsed[1] != "DCMD" or parsed[0] != self.group \
                or parsed[2] != self.node or parsed[3] is None:
            return None
        return dcmd_request(msg, parsed[3], self.registry, self.group, self.node,
                            allow_unsigned=self.allow_unsigned)

    def reply(self, request: Request, document: Mapping[str, object]) -> Outgoing:
        """NDATA `Commands/Reply` carrying the reply's JSON (its `seq` given when sent)."""
        text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
        return Outgoing(self.topic_of("NDATA"),
                        codec.text_metric(REPLY, NODE_ALIASES[REPLY], text, now_ms()))

    def device_state(self, device: str, state: Mapping[str, object]) -> Outgoing:
        """DBIRTH when the device is up, DDEATH otherwise (not retained); an empty state
        (the device was removed from the config) also forgets its metrics."""
        if state.get("state") == "up":
            self.down.discard(device)
            return self.birth_marker(device)
        if state:
            self.down.add(device)
        else:
            self.down.discard(device)
            self.registry.forget(device)
        return Outgoing(self.topic_of("DDEATH", device), b"", qos=1)


def dcmd_request(msg: Incoming, device: str, registry: Registry, group: str, node: str, *,
                 allow_unsigned: bool) -> Request:
    """The command request a DCMD carries (module docstring), or one saying why not."""
    payload = codec.decode(msg.payload)
    if payload is None:
        return Request({}, msg, error="the DCMD payload is not a Sparkplug B payload")
    if len(payload.metrics) != 1:
        return Request({}, msg, error=f"a DCMD must carry exactly one metric (one write), "
                                      f"not {len(payload.metrics)}")
    metric = payload.metrics[0]
    point = metric.name
    if not point and metric.HasField("alias"):
        point = registry.name(device, metric.alias)
    if not point:
        return Request({}, msg, error="the DCMD metric has no name and an unknown alias")
    known = registry.metric(device, point)
    props = codec.properties(metric)
    sig = props.get("sig")
    ts = payload.timestamp if payload.HasField("timestamp") else 0
    rid = payload.uuid or f"spb:{group}/{node}/{device}:{ts}:{payload.seq}:{point}"
    doc: dict[str, object] = {"v": 1, "id": rid, "ts": ts, "device": device,
                              "action": "write", "point": point,
                              "value": codec.metric_value(metric, None if known is None
                                                          else known.datatype)}
    if isinstance(sig, str) and sig:
        doc["sig"] = sig
    elif not allow_unsigned:
        return Request(doc, msg, error="the DCMD carries no signature (a metric property "
                                       "'sig') and uplink.mqtt.sparkplug.allow_unsigned_dcmd "
                                       "is off")
    return Request(doc, msg, unsigned_ok="sig" not in doc)
