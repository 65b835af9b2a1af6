"""Pins what gateway/ingest/mqttack.py takes from aiomqtt's internals, against a real broker:
with manual ack on, a message left unacknowledged comes back to the same session, and one
acknowledged through `ack()` does not."""

from __future__ import annotations

import asyncio
import inspect

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.ingest import mqttack
from tests.support import Mosquitto


def test_the_internals_exist() -> None:
    src = inspect.getsource(aiomqtt.Client.__init__)
    assert "self._client: mqtt.Client = mqtt.Client(" in src
    assert "self._disconnected" in src
    assert hasattr(paho.Client, "manual_ack_set") and hasattr(paho.Client, "ack")


async def _receive(port: int, *, ack: bool) -> list[bytes]:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 600
    client = aiomqtt.Client("127.0.0.1", port, identifier="pin-ack", clean_start=False,
                            protocol=aiomqtt.ProtocolVersion.V5, properties=props)
    mqttack.enable_manual_ack(client)
    got: list[bytes] = []
    async with client:
        await client.subscribe("$share/pin/t/#", qos=1)
        assert not mqttack.disconnected(client).done()
        try:
            async with asyncio.timeout(1.5):
                async for m in client.messages:
                    got.append(bytes(m.payload))  # type: ignore[arg-type]
                    if ack:
                        assert mqttack.ack(client, m.mid, m.qos)
        except TimeoutError:
            pass
    return got


def _publish(port: int, n: int) -> None:
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    for i in range(n):
        pub.publish("t/x", str(i), qos=1).wait_for_publish(5)
    pub.loop_stop()
    pub.disconnect()


async def test_unacked_messages_come_back_acked_ones_do_not(broker: Mosquitto) -> None:
    assert await _receive(broker.port, ack=False) == []  # creates the session
    await asyncio.to_thread(_publish, broker.port, 3)
    first = await _receive(broker.port, ack=False)
    again = await _receive(broker.port, ack=True)  # redelivered: never acknowledged
    last = await _receive(broker.port, ack=True)
    assert first == again == [b"0", b"1", b"2"]
    assert last == []
