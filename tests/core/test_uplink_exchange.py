"""The uplink's two-way API against a real broker: subscriptions made on connect, incoming
messages with their MQTT 5 properties to one handler, replies with `send`, retained state
re-published after a reconnect. The uplink runs in-process over the in-memory source."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway import logs
from gateway.buffer.memory import MemorySource
from gateway.config import GatewaySection, MqttSection
from gateway.metrics import Metrics
from gateway.model import Reading
from gateway.uplink import Incoming, Outgoing, Uplink
from gateway.uplink.dialects.parkgate import ParkgateDialect
from gateway.uplink.exchange import Inbound, RetainedStates
from tests.support import Mosquitto


def make_uplink(tmp_path: Path, port: int, name: str, src: MemorySource
                ) -> tuple[Uplink, ParkgateDialect]:
    cfg = MqttSection.model_validate({
        "brokers": [f"mqtt://127.0.0.1:{port}"], "client_id": f"pg-x-{name}",
        "batch": {"max_delay": "50ms"}, "backoff_max": "1s"})
    gw = GatewaySection(id=name, site="x")
    dialect = ParkgateDialect(cfg, gw, command_topic=f"parkgate/x/{name}/cmd",
                              reply_topic=f"parkgate/x/{name}/cmd/reply")
    up = Uplink(cfg, gw, src, Metrics(), logs.get_logger(), drops=src,
                state_path=tmp_path / "b.db", dialect=dialect)
    return up, dialect


@pytest.fixture
async def running(tmp_path: Path, broker: Mosquitto
                  ) -> AsyncIterator[tuple[Uplink, ParkgateDialect, MemorySource]]:
    src = MemorySource()
    up, dialect = make_uplink(tmp_path, broker.port, f"gw-{id(src)}", src)
    task = asyncio.create_task(up.run())
    try:
        yield up, dialect, src
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def online(client: aiomqtt.Client, status_topic: str) -> None:
    """The retained status says online: the uplink has subscribed (that comes first)."""
    await client.subscribe(status_topic, qos=1)
    async for m in client.messages:
        if m.topic.value == status_topic and json.loads(bytes(m.payload))["state"] == "online":
            return


async def test_a_request_reaches_the_handler_with_its_properties_and_is_answered(
        running: tuple[Uplink, ParkgateDialect, MemorySource], broker: Mosquitto) -> None:
    up, dialect, src = running
    got: list[Incoming] = []

    async def handler(msg: Incoming) -> None:
        got.append(msg)
        request = dialect.decode(msg)
        assert request is not None
        refusal = await up.send(dialect.reply(request, {"id": request.document["id"],
                                                        "status": "ok"}))
        assert refusal is None

    up.set_inbound(handler)
    assert dialect.command_topic is not None
    async with asyncio.timeout(20), aiomqtt.Client(
            "127.0.0.1", broker.port, identifier=f"op-{id(src)}",
            protocol=aiomqtt.ProtocolVersion.V5) as op:
        await online(op, dialect.status_topic)
        await op.subscribe("op/replies", qos=1)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "op/replies"
        props.CorrelationData = b"\x01corr"
        props.MessageExpiryInterval = 30
        await op.publish(dialect.command_topic, b'{"v":1,"id":"r-1"}', qos=1,
                         properties=props)
        async for m in op.messages:
            if m.topic.value == "op/replies":
                reply = m
                break
        assert json.loads(bytes(reply.payload)) == {"id": "r-1", "status": "ok"}
        assert reply.properties is not None
        assert reply.properties.CorrelationData == b"\x01corr"
        # without a response topic the reply goes to the configured reply topic
        await op.subscribe(dialect.reply_topic or "", qos=1)
        await op.publish(dialect.command_topic, b'{"v":1,"id":"r-2"}', qos=1)
        async for m in op.messages:
            if m.topic.value == dialect.reply_topic:
                assert json.loads(bytes(m.payload)) == {"id": "r-2", "status": "ok"}
                break
        # data still flows beside it
        await op.subscribe(dialect.topic("d1"), qos=1)
        src.store([Reading("d1", "m", 1.5, 1_700_000_000_000, "V")])
        async for m in op.messages:
            if m.topic.value == dialect.topic("d1"):
                assert json.loads(bytes(m.payload))["readings"][0]["seq"] == 1
                break
    first = got[0]
    assert (first.topic, first.payload) == (dialect.command_topic, b'{"v":1,"id":"r-1"}')
    assert first.response_topic == "op/replies" and first.correlation_data == b"\x01corr"
    assert first.expiry_interval is not None and 0 < first.expiry_interval <= 30
    assert first.received > 0
    assert got[1].response_topic is None and got[1].expiry_interval is None


async def test_retained_state_goes_when_it_changes_and_again_after_a_reconnect(
        tmp_path: Path) -> None:
    broker = Mosquitto().start()  # not persistent: a restart forgets retained messages
    src = MemorySource()
    up, dialect = make_uplink(tmp_path, broker.port, "gw-retained", src)
    assert await up.send(Outgoing("x", b"")) == "not connected"
    task = asyncio.create_task(up.run())
    topic = "parkgate/x/gw-retained/status/pump-1"
    try:
        up.set_retained_state("pump-1", dialect.device_state("pump-1", {"state": "up"}))
        up.set_retained_state("pump-1", dialect.device_state("pump-1", {"state": "down"}))

        async def retained() -> dict[str, object]:
            """What a new subscriber gets: a retained message, or a live one when the
            uplink published it just after the subscription (then ask again)."""
            while True:
                async with aiomqtt.Client("127.0.0.1", broker.port) as c:
                    await c.subscribe(topic, qos=1)
                    async for m in c.messages:
                        if m.retain:
                            doc: dict[str, object] = json.loads(bytes(m.payload))
                            return doc
                        break

        async with asyncio.timeout(20):
            while True:  # the latest value only (the first may or may not have gone)
                with_state = await retained() if up.state.connected else None
                if with_state is not None:
                    break
                await asyncio.sleep(0.1)
        assert with_state == {"v": 1, "gateway": "gw-retained", "site": "x",
                              "device": "pump-1", "state": "down"}
        broker.restart()  # forgets it; the uplink reconnects and publishes it again
        async with asyncio.timeout(20):
            while not up.state.connected:
                await asyncio.sleep(0.05)
            assert (await retained())["state"] == "down"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        broker.close()


async def test_a_full_inbound_queue_drops_newer_messages_without_blocking() -> None:
    inbound = Inbound(logs.get_logger(), size=2)
    msgs = [Incoming(f"t/{i}", b"") for i in range(4)]
    assert not inbound.offer(msgs[0])  # no handler: ignored
    release = asyncio.Event()
    handled: list[str] = []

    async def slow(msg: Incoming) -> None:
        await release.wait()
        handled.append(msg.topic)

    inbound.handler = slow
    assert [inbound.offer(m) for m in msgs] == [True, True, False, False]
    assert inbound.dropped == 2
    task = asyncio.create_task(inbound.run())
    release.set()
    async with asyncio.timeout(5):
        while len(handled) < 2:
            await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert handled == ["t/0", "t/1"]


async def test_retained_states_wait_until_the_session_is_ready() -> None:
    """Nothing goes while `ready()` is False (a Sparkplug session before NBIRTH); a poke
    after the session became ready sends what waited; the dialect's retain flag is kept."""
    states = RetainedStates(logs.get_logger())
    sent: list[Outgoing] = []

    async def send(out: Outgoing) -> None:
        sent.append(out)

    ready = [False]
    states.set("dev", Outgoing("spBv1.0/g/DDEATH/n/dev", b"", retain=False))
    task = asyncio.create_task(states.run(send, lambda: ready[0]))
    await asyncio.sleep(0.05)
    assert sent == []
    ready[0] = True
    states.poke()
    for _ in range(100):
        if sent:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert [(o.topic, o.retain) for o in sent] == [("spBv1.0/g/DDEATH/n/dev", False)]
