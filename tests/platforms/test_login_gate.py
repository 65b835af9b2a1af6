"""Data waits for the platform's answer to the sub-device login (Aliyun) or add (Huawei).

Against the shared Mosquitto (127.0.0.1:1883, topics unique to each test) with a scripted
"platform" client that answers late, never, or with an error: nothing of the gateway's
(data, device states, drop notices) is published before the answer; a platform that never
answers gets the data after the timed fallback; a refused sub-device's readings stay in
the buffer until a later login succeeds.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from structlog.testing import capture_logs

from gateway import logs
from gateway.buffer.memory import MemorySource
from gateway.config import GatewaySection, MqttSection
from gateway.metrics import Metrics
from gateway.model import Reading
from gateway.uplink import Uplink
from gateway.uplink.dialect import Dialect
from gateway.uplink.dialects import load
from gateway.uplink.dialects.aliyun import AliyunDialect
from gateway.uplink.dialects.gate import ReplyGate
from gateway.uplink.messages import Incoming
from tests.platforms.support import SUB_PK, answer, section

BROKER = "mqtt://127.0.0.1:1883"
TS = 1_764_345_600_000
_n = itertools.count()


def unique() -> str:
    """A gateway name no other test (or helper) uses: unique topics on the shared broker."""
    return f"gw-{os.getpid()}-{next(_n)}-{time.time_ns() % 10**6}"


class Platform:
    """A scripted platform: records what arrives (with the time), answers logins/adds
    after `delay` s (never when None) with `code`."""

    def __init__(self, filters: list[str], dialect: str, delay: float | None,
                 code: int = 200) -> None:
        self.dialect, self.delay, self.code = dialect, delay, code
        self.got: list[tuple[float, str, Any]] = []
        self.answered: list[float] = []
        self._cond = threading.Condition()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                  client_id=f"platform-{unique()}")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", 1883, keepalive=10)
        for f in filters:
            self.client.subscribe(f, qos=1)
        self.client.loop_start()
        time.sleep(0.3)  # the SUBACKs: the gateway is not started yet

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        doc = json.loads(msg.payload)
        with self._cond:
            self.got.append((time.monotonic(), msg.topic, doc))
            self._cond.notify_all()
        reply = answer(self.dialect, msg.topic, doc, self.code)
        if reply is not None and self.delay is not None:
            threading.Timer(self.delay, self._answer, reply).start()

    def _answer(self, topic: str, doc: Any) -> None:
        with self._cond:
            self.answered.append(time.monotonic())
        self.client.publish(topic, json.dumps(doc), qos=0)

    def on(self, pred: Callable[[str], bool]) -> list[tuple[float, str, Any]]:
        with self._cond:
            return [g for g in self.got if pred(g[1])]

    async def wait(self, pred: Callable[[Platform], bool], timeout: float = 15.0) -> None:
        def block() -> bool:
            deadline = time.monotonic() + timeout
            with self._cond:
                while not pred(self):
                    if time.monotonic() >= deadline:
                        return False
                    self._cond.wait(0.1)
            return True
        assert await asyncio.to_thread(block), self.got[-6:]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Gateway:
    def __init__(self, up: Uplink, dialect: Dialect, src: MemorySource) -> None:
        self.up, self.dialect, self.src = up, dialect, src


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Callable[..., Gateway]]:
    tasks: list[asyncio.Task[None]] = []

    def run(name: str, sect: dict[str, Any], prepare: Callable[[Gateway], None] = lambda g: None
            ) -> Gateway:
        cfg = MqttSection.model_validate({
            "brokers": [BROKER], "client_id": f"pg-{unique()}", "batch": {"max_delay": "50ms"},
            "backoff_max": "1s", "dialect": name, name: sect})
        gw = GatewaySection(id="gw-1", site="park")
        src = MemorySource()
        dialect = load(cfg, gw)
        up = Uplink(cfg, gw, src, Metrics(), logs.get_logger(), drops=src,
                    state_path=tmp_path / f"{unique()}.db", dialect=dialect)
        g = Gateway(up, dialect, src)
        prepare(g)
        tasks.append(asyncio.create_task(up.run()))
        return g

    yield run
    for t in tasks:
        t.cancel()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)


def aliyun(gw_dn: str, devices: list[str], timeout: str = "10s") -> dict[str, Any]:
    s = section("aliyun", devices)
    s["device_name"] = gw_dn
    s["login_timeout"] = timeout
    return s


def ali_filters(gw_dn: str) -> list[str]:
    return [f"/sys/+/{gw_dn}/#", f"/ext/session/+/{gw_dn}/#"]


def data(topic: str) -> bool:
    return topic.endswith("/property/pack/post")


def own(topic: str) -> bool:  # the gateway's own properties: device state, drop notices
    return topic.endswith(("/thing/event/property/post", "/parkgate_dropped/post"))


def store(src: MemorySource, devices: list[str]) -> None:
    src.store([Reading(d, "kwh", i + 1.5, TS + i, "kWh") for d in devices for i in range(3)])


def prepare_all(devices: list[str]) -> Callable[[Gateway], None]:
    """Readings, a device state and a drop notice waiting before the gateway connects."""
    def prepare(g: Gateway) -> None:
        store(g.src, devices)
        g.up.set_retained_state("box", g.dialect.device_state("box", {"state": "up"}))
    return prepare


async def test_aliyun_data_waits_for_a_late_login_reply(
        start: Callable[..., Gateway]) -> None:
    gw_dn, devices = unique(), ["meter-a1", "meter-a2"]
    platform = Platform(ali_filters(gw_dn), "aliyun", delay=1.5)
    try:
        g = start("aliyun", aliyun(gw_dn, devices), prepare_all(devices))
        await g.src.record_dropped([(100, 104)], "max_age")
        await platform.wait(lambda p: len(p.on(data)) >= 1 and len(p.on(own)) >= 2)
        (login,) = platform.on(lambda t: t.endswith("/combine/batch_login"))
        (replied,) = platform.answered
        assert replied - login[0] >= 1.4
        # nothing of the gateway's but topology and login before the reply
        early = [t for at, t, _d in platform.got if at < replied]
        assert all(t.endswith(("/thing/topo/add", "/combine/batch_login")) for t in early), early
        await platform.wait(lambda p: {(s["identity"]["deviceName"])
                                       for _a, _t, d in p.on(data)
                                       for s in d["params"]["subDevices"]} == set(devices))
    finally:
        platform.close()


async def test_aliyun_without_a_reply_data_goes_after_the_timeout(
        start: Callable[..., Gateway]) -> None:
    """No incoming message at all: the timer alone releases data, states and notices."""
    gw_dn, devices = unique(), ["meter-b1", "meter-b2"]
    platform = Platform(ali_filters(gw_dn), "aliyun", delay=None)
    try:
        with capture_logs() as logged:
            g = start("aliyun", aliyun(gw_dn, devices, "2s"), prepare_all(devices))
            await g.src.record_dropped([(100, 104)], "max_age")
            await platform.wait(lambda p: len(p.on(data)) >= 2 and len(p.on(own)) >= 2)
        (login,) = platform.on(lambda t: t.endswith("/combine/batch_login"))
        first = min(at for at, t, _d in platform.got if data(t) or own(t))
        assert 1.8 <= first - login[0] < 4.0
        warned = [e for e in logged if "did not answer" in e["event"]]
        assert len(warned) == 1 and warned[0]["log_level"] == "warning"
        assert "lost" in warned[0]["event"] and warned[0]["devices"] == devices
    finally:
        platform.close()


async def test_aliyun_a_refused_login_holds_that_device_until_a_login_succeeds(
        start: Callable[..., Gateway]) -> None:
    gw_dn, devices = unique(), ["meter-c1", "meter-c2"]
    platform = Platform(ali_filters(gw_dn), "aliyun", delay=0.1, code=522)
    try:
        with capture_logs() as logged:
            g = start("aliyun", aliyun(gw_dn, devices), prepare_all(devices))
            # the refusal opens the gate: the gateway's own state goes, the sub-devices' not
            await platform.wait(lambda p: len(p.on(own)) >= 1)
            await asyncio.sleep(1.5)
            assert platform.on(data) == []
            await g.src.settle()
            assert {c.device for c in g.src.chunks()} == set(devices)  # both kept
            refused = [e for e in logged if "refused a sub-device" in e["event"]]
            assert sorted(e["device"] for e in refused) == devices
            assert all("code 522" in e["reason"] for e in refused)
            # the platform lets it in now: the device comes up again, its login succeeds
            platform.code = 200
            g.up.set_retained_state("meter-c1", g.dialect.device_state("meter-c1",
                                                                       {"state": "up"}))
            await platform.wait(lambda p: len(p.on(data)) >= 1)
            await asyncio.sleep(0.5)
        names = {s["identity"]["deviceName"] for _a, _t, d in platform.on(data)
                 for s in d["params"]["subDevices"]}
        assert names == {"meter-c1"}  # meter-c2 is still refused: its readings wait
        await left_only(g, {"meter-c2"})
    finally:
        platform.close()


async def left_only(g: Gateway, devices: set[str], timeout: float = 10.0) -> None:
    """Wait until the buffer holds chunks of `devices` only: the platform's subscriber can
    see a report before the gateway has its PUBACK and deletes the chunk (found flaky)."""
    deadline = time.monotonic() + timeout
    while True:
        await g.src.settle()
        left = {c.device for c in g.src.chunks()}
        if left == devices:
            return
        assert time.monotonic() < deadline, f"still buffered: {sorted(left)}"
        await asyncio.sleep(0.05)


async def test_huawei_data_waits_for_the_add_response(start: Callable[..., Gateway]) -> None:
    gw, devices = unique(), ["meter-d1", "meter-d2"]
    platform = Platform([f"$oc/devices/{gw}/#"], "huawei", delay=1.5)
    try:
        s = section("huawei", devices)
        s["device_id"] = gw
        g = start("huawei", s, lambda g: store(g.src, devices))
        await platform.wait(lambda p: len(p.on(lambda t: t.endswith("/properties/report"))) >= 1)
        (add,) = [g_ for g_ in platform.on(lambda t: t.endswith("/events/up"))
                  if g_[2]["services"][0]["event_type"] == "add_sub_device_request"]
        (replied,) = platform.answered
        assert replied - add[0] >= 1.4
        first = min(at for at, t, _d in platform.on(lambda t: t.endswith("/properties/report")))
        assert first > replied
        await platform.wait(lambda p: sum(len(d["devices"]) for _a, t, d in p.on(
            lambda t: t.endswith("/sub_devices/properties/report"))) >= len(devices))
        await left_only(g, set())
    finally:
        platform.close()


# -- the pure parts --------------------------------------------------------------------------
def ali_dialect() -> AliyunDialect:
    cfg = MqttSection.model_validate({"brokers": [BROKER], "dialect": "aliyun",
                                      "aliyun": section("aliyun", ["meter-1", "meter-2"])})
    dialect = load(cfg, GatewaySection(id="g", site="s"))
    assert isinstance(dialect, AliyunDialect)
    return dialect


@pytest.mark.parametrize(("topic", "doc", "want"), [
    ("batch_login_reply", {"id": "7", "code": 200, "message": "success", "data": [
        {"productKey": SUB_PK, "deviceName": "meter-1"},
        {"productKey": SUB_PK, "deviceName": "meter-2"}]},
     ("7", ["meter-1", "meter-2"], None)),
    ("login_reply", {"id": "8", "code": 200, "data": {"productKey": SUB_PK,
                                                      "deviceName": "meter-2"}},
     ("8", ["meter-2"], None)),
    ("batch_login_reply", {"id": "9", "code": 6401, "message": "topo relation not exist",
                           "data": [{"productKey": SUB_PK, "deviceName": "meter-1"}]},
     ("9", ["meter-1"], "code 6401: topo relation not exist")),
    ("login_reply", {"id": 10, "code": 460}, ("10", [], "code 460: no message")),
    ("login_reply", {"code": 200, "data": {"productKey": "other", "deviceName": "x"}},
     (None, [], None)),
])
def test_login_replies(topic: str, doc: dict[str, Any],
                       want: tuple[str | None, list[str], str | None]) -> None:
    d = ali_dialect()
    msg = Incoming(f"{d.session}/combine/{topic}", json.dumps(doc).encode())
    assert d.login_reply(msg) == want
    assert d.login_reply(Incoming(f"{d.sys}/thing/service/property/set", b"{}")) is None


def test_the_gate() -> None:
    now = [0.0]
    with capture_logs() as logged:
        gate = ReplyGate("P", "login", 10.0, logs.get_logger(), clock=lambda: now[0])
        assert gate.ready()  # nothing asked: open
        gate.expect("1", ["a", "b"])
        gate.expect("2", ["c"])
        assert not gate.ready()
        gate.answered("1", [], None)  # a reply naming no device: by its id
        assert not gate.ready()
        gate.answered(None, ["c"], "code 522: forbidden")  # no id: by the devices
        assert gate.ready() and gate.withheld() == {"c"}
        gate.answered(None, ["c"], None)  # a later login of c succeeded
        assert gate.withheld() == frozenset()
        gate.expect("3", ["d"])
        now[0] = 9.9
        assert not gate.ready()
        now[0] = 10.0
        assert gate.ready() and gate.ready()
    assert [e["event"].split(":")[0] for e in logged] == [
        "P refused a sub-device's login", "P did not answer the login within 10 s"]
    assert logged[0]["device"] == "c" and logged[1]["devices"] == ["d"]
