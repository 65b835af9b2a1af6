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
4. data (`frame`), drop notices and replies, while `session.ready()`.
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
    route (response topic, correlation data) and the message expiry.
    """

    document: Mapping[str, object]
    incoming: Incoming
    error: str | None = None
    """Why the platform's message could not be mapped to a request (answered `refused`
    with this text); None when `document` is the request."""


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

    def topic(self, device: str) -> str:
        """The data topic of a device."""
        ...

    def budget(self, device: str, max_packet: int, v5: bool) -> int:
        """Bytes of stored items (and the commas between them) one data message may carry
        when the whole PUBLISH packet must fit `max_packet` bytes."""
        ...

    def frame(self, device: str, items: bytes, historical: bool
              ) -> Outgoing | Sequence[Outgoing]:
        """The data message (or messages) carrying stored items of one device.

        `items` is comma-separated JSON reading objects (the stored chunk format, UTF-8),
        at most `budget()` bytes; `historical` is True for the backlog (accepted before this
        connection), False for live data. Several messages where a platform limits what
        one may carry (keys or values per message) or needs one before the data (a
        sub-device login): published in order, the items acknowledged once all are.
        """
        ...

    def drop_notice(self, ranges: Sequence[DropRange]) -> Outgoing:
        """The message announcing seqs dropped on purpose."""
        ...

    def goodbye(self, reason: str) -> Outgoing | None:
        """The message to publish before a clean disconnect (status offline), if any."""
        ...


class Dialect(Protocol):
    """A wire format: opens per-connection sessions, decodes requests, encodes replies."""

    name: str

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
        """The message that tells a device's state (`up`/`down`, since, error), published
        when it changes and again after every reconnect; retained where the dialect sets
        `retain` (platforms take a connect/login message instead, not retained)."""
        ...
