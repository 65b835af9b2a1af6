"""Messages between the uplink and everything above it: frozen, bytes on the wire.

`Outgoing` is what a dialect or the commands path asks the uplink to publish; `Incoming`
is what the broker delivered on one of the dialect's subscriptions, with its MQTT 5
properties (response topic, correlation data, message expiry) for replies and staleness.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Envelope:
    """A message as MQTT carries it: topic, payload bytes, QoS, retain, MQTT 5 properties.

    `expiry_interval` (seconds), `response_topic`, `correlation_data`, `content_type` and
    `user_properties` are MQTT 5 properties; a 3.1.1 session neither sends nor receives them.
    """

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    response_topic: str | None = None
    correlation_data: bytes | None = None
    expiry_interval: int | None = None
    content_type: str | None = None
    user_properties: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Outgoing(Envelope):
    """One message to publish (a dialect's, or a reply or state from above the uplink)."""


@dataclass(frozen=True, slots=True)
class Incoming(Envelope):
    """One message the broker delivered to us.

    `expiry_interval` is what is left of the publisher's message expiry when the broker
    delivered it (MQTT 5: the broker subtracts the time it held the message), None when the
    message has none or the session is MQTT 3.1.1. `received` is `time.monotonic()` at
    arrival, so a handler that runs late can still tell how old the message is.
    """

    received: float = field(default=0.0, compare=False)


@dataclass(frozen=True, slots=True)
class Subscription:
    """A topic filter the session subscribes to on every connect, before publishing data."""

    topic: str
    qos: int = 1


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the MQTT CONNECT carries to identify us (platform dialects sign their own)."""

    client_id: str
    username: str | None = None
    password: str | None = None
    clean: bool = False
    """The dialect needs a clean session (Sparkplug: clean start, session expiry 0), even
    where the uplink would otherwise keep one to receive requests queued while away."""
