"""Pins the aiomqtt/paho internals gateway/uplink/adapter.py relies on.

When an aiomqtt or paho upgrade renames `Client._client` or `Client._disconnected`, changes
the callback signatures the PUBACK and CONNACK hooks wrap, or starts failing a publish on a
refusal itself, these fail in CI with the name of what moved, instead of the uplink silently
counting refused publishes as delivered in the field.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
from importlib.metadata import version

import aiomqtt
import paho.mqtt.client as paho

from gateway.uplink import adapter
from gateway.uplink.messages import Outgoing
from tests.support import Mosquitto


def test_versions_are_the_ones_the_adapter_was_written_for() -> None:
    assert version("aiomqtt").split(".")[0] == "2", (
        "aiomqtt 3 exposes reason codes: drop the hooks in gateway/uplink/adapter.py")
    assert version("paho-mqtt").split(".")[0] == "2"


async def test_the_private_members_exist_with_the_shapes_used() -> None:
    client = aiomqtt.Client("127.0.0.1", 1, protocol=aiomqtt.ProtocolVersion.V5)
    inner = adapter.paho_client(client)
    assert isinstance(inner, paho.Client), "aiomqtt.Client._client is no longer paho's client"
    assert isinstance(adapter.disconnected(client), asyncio.Future), \
        "aiomqtt.Client._disconnected is no longer a future"
    # the hooks call paho's callbacks with these parameters (callback API version 2)
    on_publish = list(inspect.signature(inner.on_publish).parameters)
    assert on_publish == ["client", "userdata", "mid", "reason_code", "properties"]
    on_connect = list(inspect.signature(inner.on_connect).parameters)
    assert on_connect == ["client", "userdata", "flags", "reason_code", "properties"]
    # publish_hook records the mid from what paho's publish returns
    assert "mid" in inspect.signature(paho.MQTTMessageInfo.__init__).parameters


async def test_hooks_see_the_connack_and_the_pubacks_of_a_real_broker() -> None:
    broker = Mosquitto(extra="max_packet_size 4096").start()
    checked = False
    try:
        client = aiomqtt.Client("127.0.0.1", broker.port, identifier="pin-adapter",
                                protocol=aiomqtt.ProtocolVersion.V5)
        codes = adapter.PubackCodes(client)
        connack = adapter.Connack(client)
        async with asyncio.timeout(10), client:
            assert connack.max_packet == 4096
            out = Outgoing("pin/adapter", b"x", qos=1, response_topic="pin/reply",
                           correlation_data=b"c", expiry_interval=5)
            await client.publish(out.topic, out.payload, qos=1,
                                 properties=adapter.properties(out, True))
            assert codes.refused() is None  # accepted: nothing recorded, nothing left over
            assert codes._mids == {} and codes._refused == {}
            lost = adapter.disconnected(client)
            assert not lost.done()
            broker.stop()
            await asyncio.wait([lost], timeout=5)
            assert lost.done(), "the private future no longer completes on a lost connection"
            assert adapter.disconnection(client) is not None
            checked = True
    except aiomqtt.MqttError:
        assert checked, "an MQTT error before every check was made"  # else: leaving the
        # context after the broker went away
    finally:
        broker.close()
    assert checked


def _socket_pair_client() -> tuple[aiomqtt.Client, paho.Client, socket.socket, socket.socket]:
    """An aiomqtt client whose paho client holds one end of a socket pair as its socket."""
    client = aiomqtt.Client("127.0.0.1", 1, protocol=aiomqtt.ProtocolVersion.V5)
    inner = adapter.paho_client(client)
    ours, peer = socket.socketpair()
    inner._sock = ours  # what paho's connect() sets; socket() returns it
    return client, inner, ours, peer


async def test_a_socket_closed_before_the_loop_watches_it_is_not_watched() -> None:
    """Found: aiomqtt 2.x calls add_writer in a later loop callback, after a broker drop had
    closed the socket: asyncio logged EBADF as an unhandled exception (1 run in ~10 of
    test_broker_disconnects_leave_no_unretrieved_future)."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        # aiomqtt's own callback, as it stands: the race reproduced
        client, inner, ours, peer = _socket_pair_client()
        assert list(inspect.signature(inner.on_socket_register_write).parameters) == [
            "client", "userdata", "sock"]
        inner.on_socket_register_write(inner, None, ours)
        inner._sock = None  # paho's _sock_close(): unregister (nothing yet), then close
        ours.close()
        peer.close()
        await asyncio.sleep(0.01)
        assert errors and isinstance(errors[0].get("exception"), OSError), (
            "aiomqtt no longer registers the socket late: "
            "adapter.register_writes_safely may be dropped")
        errors.clear()

        # with the adapter's callback: nothing watched, nothing reported
        client, inner, ours, peer = _socket_pair_client()
        adapter.register_writes_safely(client)
        inner.on_socket_register_write(inner, None, ours)
        inner._sock = None
        ours.close()
        peer.close()
        await asyncio.sleep(0.01)
        assert errors == []
    finally:
        loop.set_exception_handler(None)


async def test_an_open_socket_is_watched_until_paho_unregisters_it() -> None:
    client, inner, ours, peer = _socket_pair_client()
    adapter.register_writes_safely(client)
    writes: list[int] = []
    inner.loop_write = lambda: writes.append(1) or 0  # type: ignore[method-assign]
    try:
        inner.on_socket_register_write(inner, None, ours)
        await asyncio.sleep(0.01)
        assert writes, "a writable socket paho asked to watch was not watched"
        inner.on_socket_unregister_write(inner, None, ours)  # aiomqtt's: remove_writer
        seen = len(writes)
        await asyncio.sleep(0.01)
        assert len(writes) == seen
    finally:
        inner._sock = None
        ours.close()
        peer.close()
