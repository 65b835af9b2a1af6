"""A Sparkplug host for tests: subscribes to a group, decodes every payload with our protobuf
module, keeps births, deaths and data in arrival order, and can send NCMD, DCMD and STATE."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho

from gateway.uplink.dialects.sparkplug import codec
from gateway.uplink.dialects.sparkplug import sparkplug_b_pb2 as pb
from tests.support import wait_on


@dataclass
class Message:
    """One decoded Sparkplug message."""

    topic: str
    kind: str
    device: str | None
    payload: Any
    retain: bool
    qos: int
    raw: bytes = b""

    @property
    def seq(self) -> int | None:
        return int(self.payload.seq) if self.payload.HasField("seq") else None

    def metric(self, name: str) -> Any:
        return next(m for m in self.payload.metrics if m.name == name)


@dataclass
class Host:
    """A subscriber to `spBv1.0/{group}/#` that decodes as a Sparkplug host would."""

    port: int
    group: str
    persistent: bool = False
    """A session the broker keeps (with a persistent `Mosquitto`): nothing published while
    the host reconnects after a broker restart is lost to it."""
    messages: list[Message] = field(default_factory=list)
    lock: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                  client_id=f"spb-host-{os.getpid()}-{id(self)}",
                                  clean_session=not self.persistent)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_a: c.subscribe(f"spBv1.0/{self.group}/#", qos=1)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect_async("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        self.subscribed()

    def subscribed(self) -> None:
        """Publish probes until one comes back (the subscription works)."""
        probe = f"spBv1.0/{self.group}/NDATA/probe"
        for _ in range(100):
            self.client.publish(probe, pb.Payload(timestamp=1).SerializeToString(), qos=1)
            if self.wait(lambda h: any(m.topic == probe for m in h.messages), 0.2):
                with self.lock:
                    self.messages = [m for m in self.messages if m.topic != probe]
                return
        raise AssertionError("the Sparkplug host never received its probe")

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        payload = pb.Payload()
        payload.ParseFromString(msg.payload)
        with self.lock:
            self.messages.append(Message(msg.topic, parts[2],
                                         parts[4] if len(parts) > 4 else None, payload,
                                         bool(msg.retain), msg.qos, msg.payload))
            self.lock.notify_all()

    def wait(self, predicate: Any, timeout: float = 20.0) -> bool:
        return wait_on(self.lock, lambda: predicate(self), timeout)

    def of(self, kind: str) -> list[Message]:
        with self.lock:
            return [m for m in self.messages if m.kind == kind]

    def readings(self) -> list[dict[str, Any]]:
        """Every DDATA metric resolved through the DBIRTH aliases seen before it."""
        names: dict[int, tuple[str, int]] = {}
        out = []
        with self.lock:
            for m in self.messages:
                if m.kind == "DBIRTH":
                    for metric in m.payload.metrics:
                        names[metric.alias] = (metric.name, metric.datatype)
                elif m.kind == "DDATA":
                    for metric in m.payload.metrics:
                        name, datatype = names[metric.alias]  # KeyError: alias never born
                        props = codec.properties(metric)
                        out.append({"device": m.device, "metric": name,
                                    "seq": props["seq"], "ts": metric.timestamp,
                                    "value": codec.metric_value(metric, datatype),
                                    "historical": metric.is_historical})
        return out

    def seqs(self) -> set[int]:
        return {int(r["seq"]) for r in self.readings()}

    def send(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def rebirth(self, node: str) -> None:
        p = pb.Payload(timestamp=int(time.time() * 1000))
        m = p.metrics.add()
        m.name, m.datatype, m.boolean_value = "Node Control/Rebirth", pb.Boolean, True
        self.send(f"spBv1.0/{self.group}/NCMD/{node}", p.SerializeToString())

    def state(self, host: str, online: bool) -> None:
        doc = {"online": online, "timestamp": int(time.time() * 1000)}
        self.send(f"spBv1.0/STATE/{host}", json.dumps(doc).encode(), retain=True)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def check_seq_order(messages: list[Message]) -> None:
    """Within each session (from an NBIRTH on) seq goes 0, 1, 2 ... 255, 0 without a gap.

    A message the broker delivered twice to the host (QoS 1 to a kept session across a
    broker restart: the very same bytes again) is skipped.
    """
    expected: int | None = None
    seen: set[tuple[str, bytes]] = set()
    for m in messages:
        if (m.topic, m.raw) in seen:
            continue
        seen.add((m.topic, m.raw))
        if m.kind in ("NDEATH", "NCMD", "DCMD"):
            assert m.seq is None, m
            continue
        if m.kind == "NBIRTH":
            assert m.seq == 0, m
            expected = 1
            continue
        assert expected is not None, f"{m.kind} before any NBIRTH"
        assert m.seq == expected, (m.topic, m.seq, expected)
        expected = (expected + 1) % 256
