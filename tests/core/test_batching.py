"""Fitting batches into a maximum message size: the pure functions, and the overhead
formula against a real Mosquitto's `max_packet_size` at the boundary."""

from __future__ import annotations

import json
import threading

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.batching import Packed, max_payload, pack, seq_ranges, split_items
from gateway.buffer import ChunkEncoder
from gateway.model import Reading
from tests.support import Mosquitto


@pytest.mark.parametrize(("sizes", "budget", "want"), [
    ([], 10, Packed([], [])),
    ([3, 3, 3], 10, Packed([[0, 1], [2]], [])),        # 3+1+3 = 7, +1+3 = 11 > 10
    ([3, 3, 2], 10, Packed([[0, 1, 2]], [])),           # exactly 10
    ([11, 2, 11, 2], 10, Packed([[1, 3]], [0, 2])),     # too large alone: left out
    ([10], 10, Packed([[0]], [])),
    ([11], 10, Packed([], [0])),
    ([5, 5, 5], 5, Packed([[0], [1], [2]], [])),
])
def test_pack(sizes: list[int], budget: int, want: Packed) -> None:
    assert pack(sizes, budget) == want


def test_split_items_gives_each_reading_exactly() -> None:
    tricky = ['a,{"seq":1}', "quote \" and \\ backslash", "パーク", "}{", ""]
    readings = [Reading("d", f"m{i}", v, 1000 + i) for i, v in enumerate(tricky)]
    body = ChunkEncoder().encode(7, readings)
    items = split_items(body)
    assert ",".join(items) == body
    assert [json.loads(i)["seq"] for i in items] == [7, 8, 9, 10, 11]
    assert [json.loads(i)["value"] for i in items] == tricky
    assert split_items("") == []


def test_max_payload_where_the_length_field_grows() -> None:
    # header 5 bytes (topic "t"); a remaining length of 127 takes one byte, 128 two
    assert max_payload(129, "t", v5=False) == 122  # 1 + 1 + 127
    assert max_payload(130, "t", v5=False) == 122  # 128 would need a 2-byte length
    assert max_payload(131, "t", v5=False) == 123  # 1 + 2 + 128
    assert max_payload(131, "t", v5=True) == 122   # the empty property length
    assert max_payload(3000, "ü", v5=False) == 3000 - 3 - 2 - 2 - 2


def test_seq_ranges() -> None:
    assert seq_ranges([]) == []
    assert seq_ranges([4, 5, 6, 9, 11, 12]) == [(4, 6), (9, 9), (11, 12)]


@pytest.mark.parametrize("v5", [True, False])
def test_overhead_matches_the_broker_at_the_boundary(v5: bool) -> None:
    """A payload of `max_payload` bytes passes `max_packet_size`; within 2 bytes, no more.

    The spec counts the whole packet; Mosquitto leaves out the remaining-length field (2
    bytes at this size), so it lets 2 bytes more through: we follow the stricter spec.
    """
    limit = 3000
    broker = Mosquitto(extra=f"max_packet_size {limit}").start()
    topic = "parkgate/site-ü/gw/device"
    try:
        fits = max_payload(limit, topic, v5)
        assert _publish(broker.port, topic, fits, v5) == "acked"
        assert _publish(broker.port, topic, fits + 3, v5) == "disconnected"
    finally:
        broker.close()


def _publish(port: int, topic: str, size: int, v5: bool) -> str:
    """QoS 1 publish of `size` payload bytes: 'acked' or 'disconnected'."""
    done = threading.Event()
    outcome: list[str] = []
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"boundary-{size}-{v5}",
                         protocol=paho.MQTTv5 if v5 else paho.MQTTv311)

    def on_publish(*_a: object) -> None:
        outcome.append("acked")
        done.set()

    def on_disconnect(*_a: object) -> None:
        outcome.append("disconnected")
        done.set()

    client.on_publish = on_publish
    client.on_disconnect = on_disconnect
    # MQTT 5: the broker announces its limit; a client that honours it (paho does not)
    # would refuse to send, so ask for no maximum of our own and send anyway
    props = Properties(PacketTypes.CONNECT) if v5 else None
    client.connect("127.0.0.1", port, properties=props)
    client.loop_start()
    try:
        client.publish(topic, b"x" * size, qos=1)
        assert done.wait(10), "neither PUBACK nor a disconnect"
        return outcome[0]
    finally:
        client.loop_stop()
        client.disconnect()
