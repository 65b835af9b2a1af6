"""Every aiomqtt/paho internal the uplink touches, and nothing else.

aiomqtt 2.x (pinned <3, with paho-mqtt <3) drops the MQTT 5 PUBACK reason code and the
CONNACK properties, and keeps the end of a connection on a private future. Each reach-in
below is marked with why; tests/core/test_mqtt_adapter.py pins these internals, so an
upgrade that changes them fails in CI, not silently in the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.session import disconnect_code
from gateway.uplink.messages import Incoming, Outgoing


def paho_client(client: aiomqtt.Client) -> Any:
    """The paho client inside aiomqtt's."""
    return client._client  # noqa: SLF001 - aiomqtt <3 exposes no PUBACK code or CONNACK props


def disconnected(client: aiomqtt.Client) -> asyncio.Future[None]:
    """The future aiomqtt completes when the connection ends (its exception says why)."""
    # aiomqtt <3 keeps the disconnection only on this private future; its pending publishes
    # never fail on a drop, so the window waits on this instead of publish_timeout
    future: asyncio.Future[None] = client._disconnected  # noqa: SLF001 - see above
    return future


def disconnection(client: aiomqtt.Client) -> BaseException | None:
    """Why aiomqtt's connection ended, if it did; marks the error retrieved.

    aiomqtt 2.x sets an exception on a future nobody awaits once the session is over;
    asyncio would log it as "Future exception was never retrieved" on every disconnect.
    """
    future = disconnected(client)
    if future.done() and not future.cancelled():
        return future.exception()
    return None


def raise_if_lost(future: asyncio.Future[None]) -> None:
    """Raise `MqttError` (with the broker's reason when it gave one) once disconnected."""
    if future.done():
        lost = future.exception() if not future.cancelled() else None
        code = disconnect_code(lost)
        raise aiomqtt.MqttError("connection lost" if lost is None or not code
                                else f"connection lost: {lost}")


class PubackCodes:
    """MQTT 5 PUBACK reason codes per publish, which aiomqtt 2.x drops.

    aiomqtt's `publish()` calls paho's `publish()` synchronously in the caller's task, then
    waits for `on_publish` and ignores its reason code, so a refused message (0x87 not
    authorized, 0x97 quota exceeded, 0x95 too large) would count as delivered and its
    readings would be deleted. These wrappers remember the mid each task published and the
    codes the broker refused, so the uplink keeps a refused batch and holds its device.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        inner = paho_client(client)
        self._mids: dict[asyncio.Task[Any], int] = {}
        self._refused: dict[int, str] = {}
        publish = inner.publish
        on_publish = inner.on_publish

        def publish_hook(*args: Any, **kwargs: Any) -> Any:
            info = publish(*args, **kwargs)
            task = asyncio.current_task()
            if task is not None:
                self._mids[task] = info.mid
            return info

        def on_publish_hook(c: Any, userdata: Any, mid: int, reason_code: Any,
                            properties: Any) -> None:
            if getattr(reason_code, "is_failure", False):
                self._refused[mid] = str(reason_code)
            on_publish(c, userdata, mid, reason_code, properties)

        inner.publish = publish_hook
        inner.on_publish = on_publish_hook

    def refused(self) -> str | None:
        """After `await client.publish(...)` in this task: the broker's refusal, if any."""
        task = asyncio.current_task()
        mid = self._mids.pop(task, None) if task is not None else None
        return None if mid is None else self._refused.pop(mid, None)

    def forget(self) -> None:
        """Drop what this task recorded (its publish failed or was cancelled)."""
        task = asyncio.current_task()
        if task is not None:
            mid = self._mids.pop(task, None)
            if mid is not None:
                self._refused.pop(mid, None)


class Connack:
    """The broker's Maximum Packet Size from an MQTT 5 CONNACK, which aiomqtt 2.x drops."""

    def __init__(self, client: aiomqtt.Client) -> None:
        inner = paho_client(client)
        self.max_packet: int | None = None
        on_connect = inner.on_connect

        def on_connect_hook(c: Any, userdata: Any, flags: Any, reason_code: Any,
                            properties: Any = None) -> None:
            size = getattr(properties, "MaximumPacketSize", None)
            self.max_packet = int(size) if size else None
            on_connect(c, userdata, flags, reason_code, properties)

        inner.on_connect = on_connect_hook


def register_writes_safely(client: aiomqtt.Client) -> None:
    """Watch paho's socket for writability only while it is still paho's open socket.

    aiomqtt 2.x asks the loop to watch the socket in a later callback
    (`call_soon_threadsafe(add_writer, fileno)`), but paho unregisters and closes the socket
    synchronously. A broker that drops the connection in between left `add_writer` on a
    closed descriptor: asyncio logged the EBADF as an unhandled exception (a flaky test),
    and once the number was reused by another socket, the stale writer would fire on every
    loop pass for a client that has no socket. The same callback as aiomqtt's, with the
    check in the loop thread, where nothing can close the socket between check and watch.
    """
    inner = paho_client(client)
    loop = asyncio.get_running_loop()
    lost = disconnected(client)

    def on_register_write(c: Any, _userdata: Any, sock: Any) -> None:
        def writable() -> None:
            # loop_write() raises on a broken pipe: the connection is over (as aiomqtt does)
            try:
                c.loop_write()
            except Exception as exc:  # noqa: BLE001 - whatever broke the connection ends it
                if not lost.done():
                    lost.set_exception(exc)

        def watch() -> None:
            if c.socket() is sock and sock.fileno() != -1:
                loop.add_writer(sock.fileno(), writable)

        # paho calls this from aiomqtt's connect thread too: hand over to the loop
        loop.call_soon_threadsafe(watch)

    inner.on_socket_register_write = on_register_write


# -- public paho API from here on: message properties ------------------------------------------
def properties(out: Outgoing, v5: bool) -> Properties | None:
    """The MQTT 5 PUBLISH properties of `out` (None when it has none, or on 3.1.1)."""
    if not v5 or (out.response_topic is None and out.correlation_data is None
                  and out.expiry_interval is None and out.content_type is None
                  and not out.user_properties):
        return None
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if out.response_topic is not None:
        props.ResponseTopic = out.response_topic
    if out.correlation_data is not None:
        props.CorrelationData = out.correlation_data
    if out.expiry_interval is not None:
        props.MessageExpiryInterval = out.expiry_interval
    if out.content_type is not None:
        props.ContentType = out.content_type
    if out.user_properties:
        props.UserProperty = list(out.user_properties)
    return props


def no_delay(client: aiomqtt.Client) -> None:
    """Turn Nagle's algorithm off on the connection's socket (paho leaves it on): a small
    publish (a command reply, a PUBACK wait) is not held back ~40 ms for the peer's
    delayed ACK."""
    sock = paho_client(client).socket()
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def connect_properties(session_expiry: int) -> Properties | None:
    """The MQTT 5 CONNECT properties: the session expiry interval when a session is kept."""
    if not session_expiry:
        return None
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = session_expiry
    return props


def incoming(message: aiomqtt.Message, received: float) -> Incoming:
    """An aiomqtt message as an `Incoming` (payload as bytes, MQTT 5 properties read out)."""
    props = message.properties
    response = getattr(props, "ResponseTopic", None)
    correlation = getattr(props, "CorrelationData", None)
    expiry = getattr(props, "MessageExpiryInterval", None)
    content_type = getattr(props, "ContentType", None)
    user = getattr(props, "UserProperty", None) or []
    return Incoming(topic=message.topic.value, payload=bytes(message.payload), qos=message.qos,
                    retain=message.retain, response_topic=response,
                    correlation_data=None if correlation is None else bytes(correlation),
                    expiry_interval=None if expiry is None else int(expiry),
                    content_type=content_type,
                    user_properties=tuple((str(k), str(v)) for k, v in user),
                    received=received)
