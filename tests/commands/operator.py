"""An operator's MQTT 5 client for end-to-end tests: signs, publishes, waits for replies."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.commands.request import canonical_form
from gateway.commands.signing import Signer
from gateway.model import now_ms


class Operator:
    """Publishes requests on a gateway's command topic and collects replies by id."""

    def __init__(self, port: int, site: str, gateway: str, key: Path | None, *,
                 persistent: bool = False) -> None:
        self.topic = f"parkgate/{site}/{gateway}/cmd"
        self.reply_topic = f"parkgate/{site}/{gateway}/cmd/reply"
        self.response_topic = f"{self.reply_topic}/op-{uuid.uuid4().hex[:8]}"
        self.signer = Signer.from_file(key) if key else None
        self.replies: dict[str, list[tuple[dict[str, Any], Any, str]]] = {}
        self.states: dict[str, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                  client_id=f"operator-{uuid.uuid4().hex[:8]}",
                                  protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.on_connect = lambda c, *_a: c.subscribe(
            # `reply/#` matches `reply` too: one subscription, one copy of each reply
            [(f"{self.reply_topic}/#", 1), (f"parkgate/{site}/{gateway}/status/#", 1)])
        self.client.reconnect_delay_set(0.1, 0.5)
        props = None
        if persistent:  # the broker keeps our subscriptions and what arrives meanwhile
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 600
        self.client.connect("127.0.0.1", port, clean_start=not persistent, properties=props)
        # no Nagle: a request is not held ~40 ms for the broker's delayed ACK
        self.client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise AssertionError("operator never subscribed")

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        doc = json.loads(msg.payload) if msg.payload else {}
        with self._cond:
            if "/status/" in msg.topic:
                self.states[msg.topic.rsplit("/", 1)[1]] = doc
            elif isinstance(doc, dict) and "status" in doc:
                self.replies.setdefault(str(doc.get("id")), []).append(
                    (doc, msg.properties, msg.topic))
            self._cond.notify_all()

    def request(self, device: str, action: str, point: str | None = None, value: Any = None,
                *, sign: bool = True, rid: str | None = None, ts: int | None = None,
                **extra: Any) -> dict[str, Any]:
        doc: dict[str, Any] = {"v": 1, "id": rid or str(uuid.uuid4()),
                               "ts": now_ms() if ts is None else ts, "device": device,
                               "action": action}
        if point is not None:
            doc["point"] = point
        if action == "write":
            doc["value"] = value
        doc.update(extra)
        if sign and self.signer is not None:
            doc["sig"] = self.signer.sign(canonical_form(doc))
        return doc

    def publish(self, doc: dict[str, Any], *, response: bool = True,
                expiry: int | None = None, wait: bool = True) -> None:
        props = Properties(PacketTypes.PUBLISH)
        if response:
            props.ResponseTopic = self.response_topic
            props.CorrelationData = doc["id"].encode()
        if expiry is not None:
            props.MessageExpiryInterval = expiry
        info = self.client.publish(self.topic, json.dumps(doc), qos=1, properties=props)
        if wait:
            info.wait_for_publish(10)

    def wait(self, rid: str, count: int = 1, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.replies.get(rid, [])) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no reply {count} for {rid}; have {self.replies}")
                self._cond.wait(min(left, 0.2))
            return [r[0] for r in self.replies[rid]]

    def send(self, doc: dict[str, Any], **kw: Any) -> dict[str, Any]:
        self.publish(doc, **kw)
        return self.wait(doc["id"])[0]

    def wait_state(self, device: str, pred: Any, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (device in self.states and pred(self.states[device])):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"state of {device}: {self.states.get(device)}")
                self._cond.wait(min(left, 0.2))
            return self.states[device]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
