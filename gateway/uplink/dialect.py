"""The dialect seam: everything platform-specific about what goes on the wire.

A dialect owns topics, the framing of stored chunks into data messages, the status message
and the will, what is sent on every connect (status, births, announcements), what is
subscribed on every connect (commands, Sparkplug NCMD/DCMD/STATE), drop notices, and the
decoding of incoming requests and the encoding of their replies. The uplink owns none of
that: it connects, schedules, publishes and counts.

Stored chunks stay dialect-neutral (comma-separated JSON reading objects, see
gateway/buffer/encoder.py) so that a site switching dialect keeps its buffer: a dialect
frames them at publish time.

Per-connection state (Sparkplug's `seq` 0-255 and `bdSeq`, a platform's signed password
with a timestamp, whether the primary host is online) lives in a `DialectSession`, opened
before each CONNECT because the will and the credentials go into it.

Order on every connect, which the uplink guarantees:
1. CONNECT with `session.credentials` and `session.will`;
2. SUBSCRIBE to `session.subscriptions()` (QoS as given) before anything is published;
3. publish `session.announce()` in order (QoS 1, each awaited);
4. data (`frame`), drop notices and replies, while `session.ready()` (data waits while it
   is False; the uplink looks again after every incoming message and every second while
   something waits); data of a device in `session.withheld()` stays in the buffer;
5. every message goes through `session.stamp()` just before the MQTT client gets it.
Every incoming message goes to `session.observe()` first (session control: Sparkplug STATE,
rebirth requests); its returned messages are published; then to the uplink's inbound handler.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from gateway.uplink.messages import Credentials, Incoming, Outgoing, Subscription

if TYPE_CHECKING:
    from gateway.notices import DropRange


@dataclass(frozen=True, slots=True)
class Request:
    """A command request decoded from an incoming message, in the native document's terms.

    `document` holds the fields of interfaces.md "Commands" (`v`, `id`, `ts`, `device`,
    `action`, `point`, `value`, `sig`); dialects that map a platform's own command (a
    Sparkplug DCMD, a ThingsBoard RPC) fill the same keys. `incoming` is kept for the reply
    route (response topic, correlation data) and the message expiry. `error` says why a
    dialect could not map the message to a request (a DCMD that is not a Sparkplug payload,
    an unsigned DCMD the config does not allow): the commands path answers it `refused`
    with that text and carries nothing out. `unsigned_ok` is True when the request carries
    no signature and the dialect's own config allows that explicitly
    (`uplink.mqtt.sparkplug.allow_unsigned_dcmd`): the commands path then does not ask it
    for one, while native requests still need theirs; everything else (allow-list, write
    limits, expiry, de-duplication) applies as to any request.
    """

    document: Mapping[str, object]
    incoming: Incoming
    error: str | None = None
    unsigned_ok: bool = False


class DialectSession(Protocol):
    """One connection's worth of dialect state; a new one for every CONNECT."""

    @property
    def credentials(self) -> Credentials:
        """Client id, username and password of this CONNECT."""
        ...

    @property
    def will(self) -> Outgoing | None:
        """The last will of this CONNECT (status offline, Sparkplug NDEATH with its bdSeq)."""
        ...

    def subscriptions(self) -> Sequence[Subscription]:
        """Topic filters to subscribe to after CONNACK, before anything is published."""
        ...

    def announce(self) -> Sequence[Outgoing]:
        """Messages to publish after subscribing, before data: status, births."""
        ...

    def observe(self, msg: Incoming) -> Sequence[Outgoing]:
        """Session control in an incoming message (Sparkplug STATE, rebirth): replies to send."""
        ...

    def ready(self) -> bool:
        """Whether data may be published now (Sparkplug: the primary host is online)."""
        ...

    def withheld(self) -> frozenset[str]:
        """Devices whose data must wait although the session is ready (Aliyun: a
        sub-device whose login the platform refused); usually empty."""
        ...

    def topic(self, device: str) -> str:
        """The data topic of a device."""
        ...

    def budget(self, device: str, max_packet: int, v5: bool) -> int:
        """Bytes of stored items (and the commas between them) one data message may carry
        when the whole PUBLISH packet must fit `max_packet` bytes."""
        ...

    def frame(self, device: str, items: bytes,
              historical: bool) -> Outgoing | Sequence[Outgoing]:
        """A data message carrying stored items of one device, or several in order.

        `items` is comma-separated JSON reading objects (the stored chunk format, UTF-8),
        at most `budget()` bytes; `historical` is True for the backlog (accepted before this
        connection), False for live data. Several messages: those before the last one
        announce what it needs (Sparkplug: a DBIRTH listing a metric the device shows for
        the first time, before its DDATA); they are published in order, and the chunk is
        acknowledged once all are.
        """
        ...

    def stamp(self, out: Outgoing) -> Outgoing:
        """`out` as it goes on the wire now, called right before it is handed to the MQTT
        client, in wire order, for every message of the session but the will and goodbye
        (Sparkplug: the 0-255 `seq` that must follow the wire order, and births and deaths
        built from what is known at that moment). The native dialect returns `out`."""
        ...

    def drop_notice(self, ranges: Sequence[DropRange]) -> Outgoing:
        """The message announcing seqs dropped on purpose."""
        ...

    def goodbye(self, reason: str) -> Outgoing | None:
        """The message to publish before a clean disconnect (status offline), if any."""
        ...


class SessionDefaults:
    """What most `DialectSession`s answer alike: the credentials given at open, no session
    control in incoming messages, always ready, no device held on its own. Sessions
    inherit it and override what differs."""

    _credentials: Credentials

    @property
    def credentials(self) -> Credentials:
        """As given when the session was opened."""
        return self._credentials

    def observe(self, msg: Incoming) -> Sequence[Outgoing]:
        """No session control."""
        return ()

    def ready(self) -> bool:
        """Always: no host to wait for."""
        return True

    def withheld(self) -> frozenset[str]:
        """None: no device waits on its own."""
        return frozenset()


class Dialect(Protocol):
    """A wire format: opens per-connection sessions, decodes requests, encodes replies."""

    name: str
    credentials_hint: str
    """What to check when the broker refuses our credentials (the dialect's config keys)."""

    def open(self, broker: str, client_id: str) -> DialectSession:
        """State for one connection to `broker` (its URL); `client_id` is the configured or
        default client id, which platform dialects may replace with their signed one."""
        ...

    def decode(self, msg: Incoming) -> Request | None:
        """The command request in `msg`, or None when it is not one (ignored)."""
        ...

    def reply(self, request: Request, document: Mapping[str, object]) -> Outgoing:
        """The reply to `request` carrying `document` (interfaces.md "Commands": reply)."""
        ...

    def device_state(self, device: str, state: Mapping[str, object]) -> Outgoing:
        """The retained message that tells a device's state (`up`/`down`, since, error)."""
        ...
