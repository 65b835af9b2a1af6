"""Platform test helpers: config sections per dialect, and a subscriber that reads each
platform's payloads back into readings (written from the platforms' pages, not from the
dialect code, so it checks the shapes independently)."""

from __future__ import annotations

import calendar
import json
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from gateway.buffer.encoder import ChunkEncoder
from gateway.model import Reading
from tests.support import wait_on

DIALECTS = ("thingsboard", "aliyun", "huawei")
GW_PK, GW_DN = "a1GwProduct", "parkgate-gw"
SUB_PK = "a1SubProduct"
HW_GW, HW_PRODUCT = "gwprod_parkgate-gw", "meterprod"

Key = tuple[str, str, int]
"""A reading as a platform shows it: (device, metric, ts)."""


def items(device: str, rows: Sequence[tuple[str, Any, int]], first: int = 1) -> bytes:
    """Stored chunk items of (metric, value, ts) readings of `device`."""
    return ChunkEncoder().encode(first, [Reading(device, m, v, ts, None)
                                         for m, v, ts in rows]).encode()


def section(dialect: str, devices: list[str], secret_file: Path | None = None,
            *, commands: bool = False) -> dict[str, Any]:
    """`uplink.mqtt.<dialect>` for sub-devices `devices`."""
    secret = f"${{file:{secret_file}}}" if secret_file else "s3cret-device-key"
    if dialect == "thingsboard":
        return {"access_token": secret, "commands": commands}
    if dialect == "aliyun":
        return {"product_key": GW_PK, "device_name": GW_DN, "device_secret": secret,
                "sub_product_key": SUB_PK, "commands": commands,
                "sub_devices": {d: {"device_secret": secret} for d in devices}}
    return {"device_id": HW_GW, "secret": secret, "sub_product_id": HW_PRODUCT,
            "commands": commands, "sub_devices": {d: {} for d in devices}}


def filters(dialect: str) -> list[str]:
    """What a platform-side subscriber listens to (`#` does not match `$oc/...` or `/sys`)."""
    return {"thingsboard": ["v1/#"], "aliyun": ["/sys/#", "/ext/#"],
            "huawei": ["$oc/#"]}[dialect]


def _huawei_ms(text: str) -> int:
    whole, _, frac = text.rstrip("Z").partition(".")
    secs = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    return secs * 1000 + int(frac or 0)


def parse(dialect: str, topic: str, doc: Any) -> list[tuple[Key, object]]:
    """The readings in one data message of `dialect`, or [] for other messages."""
    out: list[tuple[Key, object]] = []
    if dialect == "thingsboard" and topic == "v1/gateway/telemetry":
        for device, groups in doc.items():
            out += [((device, m, g["ts"]), v) for g in groups for m, v in g["values"].items()]
    elif dialect == "aliyun" and topic.endswith("/thing/event/property/pack/post"):
        assert doc["method"] == "thing.event.property.pack.post" and doc["version"] == "1.0"
        for sub in doc["params"]["subDevices"]:
            name = sub["identity"]["deviceName"]
            assert sub["identity"]["productKey"] == SUB_PK
            out += [((name, m, p["time"]), p["value"]) for m, p in sub["properties"].items()]
    elif dialect == "huawei" and topic.endswith("/sys/gateway/sub_devices/properties/report"):
        for dev in doc["devices"]:
            assert dev["device_id"].startswith(HW_PRODUCT + "_")
            name = dev["device_id"][len(HW_PRODUCT) + 1:]
            out += [((name, m, _huawei_ms(s["event_time"])), v)
                    for s in dev["services"] for m, v in s["properties"].items()]
    return out


def answer(dialect: str, topic: str, doc: Any, code: int = 200) -> tuple[str, Any] | None:
    """What the platform answers to a sub-device login (Aliyun) or add (Huawei), as its
    pages show it: (topic, payload), or None for other messages."""
    if dialect == "aliyun" and topic.endswith(("/combine/login", "/combine/batch_login")):
        params = doc["params"]
        devices = params.get("deviceList", [params])
        data = [{"productKey": d["productKey"], "deviceName": d["deviceName"]}
                for d in devices]
        body: dict[str, Any] = {"id": doc["id"], "code": code,
                                "message": "success" if code == 200 else "device forbidden",
                                "data": data if "deviceList" in params else data[0]}
        return topic + "_reply", body
    if dialect == "huawei" and topic.endswith("/sys/events/up"):
        svc = doc["services"][0]
        if svc["event_type"] != "add_sub_device_request":
            return None
        added = [{"node_id": d["node_id"], "product_id": d["product_id"],
                  "device_id": f"{d['product_id']}_{d['node_id']}"}
                 for d in svc["paras"]["devices"]]
        return topic[:-len("up")] + "down", {"object_device_id": doc["object_device_id"],
                                             "services": [{
            "service_id": "$sub_device_manager", "event_type": "add_sub_device_response",
            "event_time": svc["event_time"],
            "paras": {"successful_devices": added, "failed_devices": []}}]}
    return None


class PlatformCollector:
    """Subscribes to a platform's topics; keeps every message and the readings in them;
    answers sub-device logins and adds as the platform does (unless `answers` is False)."""

    def __init__(self, port: int, dialect: str, *, persistent: bool = False,
                 answers: bool = True) -> None:
        self.dialect = dialect
        self.answers = answers
        self.messages: list[tuple[str, Any, int]] = []
        self.seen: dict[Key, object] = {}
        self.deliveries = 0
        self._cond = threading.Condition()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                  client_id=f"platform-{os.getpid()}-{id(self)}",
                                  clean_session=not persistent)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_a: [c.subscribe(f, qos=1)
                                                 for f in [*filters(dialect), "probe/#"]]
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect_async("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        doc = json.loads(msg.payload)
        found = parse(self.dialect, msg.topic, doc)
        if self.answers and (reply := answer(self.dialect, msg.topic, doc)) is not None:
            self.client.publish(reply[0], json.dumps(reply[1]), qos=0)
        with self._cond:
            self.messages.append((msg.topic, doc, len(msg.payload)))
            for key, value in found:
                self.seen[key] = value
            self.deliveries += len(found)
            self._cond.notify_all()

    def on(self, topic_end: str) -> list[Any]:
        """Payloads of messages whose topic ends with `topic_end`."""
        with self._cond:
            return [doc for t, doc, _n in self.messages if t.endswith(topic_end)]

    def wait_for(self, predicate: Any, timeout: float = 20.0) -> bool:
        """Wait until `predicate(self)` is true."""
        return wait_on(self._cond, lambda: predicate(self), timeout)

    def ready(self) -> None:
        """Subscribed: a probe published to ourselves came back."""
        def probed(c: PlatformCollector) -> bool:
            return any(t.startswith("probe/") for t, _d, _n in c.messages)

        deadline = time.monotonic() + 20
        while not probed(self):
            assert time.monotonic() < deadline, "the platform collector never subscribed"
            self.client.publish(f"probe/{id(self)}", b"{}", qos=1)
            self.wait_for(probed, 0.5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
