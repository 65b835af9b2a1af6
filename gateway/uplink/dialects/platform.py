"""What the platform dialects (ThingsBoard, Aliyun, Huawei) share: stored items back into
readings, grouping them the way platforms want (one value per key per group), fitting
groups into messages under a count and a byte limit, and the request document a platform
command maps to (interfaces.md "Commands").

Platform payloads are re-encoded from the stored items (the native dialect sends them as
they are). A platform message never carries more than the stored items it came from plus
a fixed envelope, except where it must repeat a key per group; `fit()` therefore checks
the real size and splits further, so no message exceeds the broker's packet limit.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from gateway.batching import max_payload
from gateway.model import now_ms
from gateway.uplink.dialect import SessionDefaults
from gateway.uplink.messages import Credentials, Incoming, Outgoing

T = TypeVar("T")

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode

ACTIONS = ("write", "read", "poll", "sync_time")


def dumps(doc: object) -> bytes:
    """Compact UTF-8 JSON."""
    return _dumps(doc).encode()


@dataclass(frozen=True, slots=True)
class Item:
    """One stored reading, as a platform needs it."""

    seq: int
    metric: str
    value: object
    ts: int


def readings(items: bytes) -> list[Item]:
    """The stored items (comma-separated JSON reading objects) with a value.

    Readings without a value (`null`: a bad float, nothing read) are left out: a platform
    has nothing to show for them and Aliyun refuses a whole message for one null property.
    """
    out: list[Item] = []
    for r in json.loads(b"[" + items + b"]"):
        value = r.get("value")
        if value is not None:
            out.append(Item(r["seq"], r["metric"], value, r["ts"]))
    return out


def groups(items: Iterable[Item]) -> list[list[Item]]:
    """Consecutive readings of one `ts`, a new group where a metric would repeat (a
    platform's `{"key": value}` holds one value per key)."""
    out: list[list[Item]] = []
    seen: set[str] = set()
    ts: int | None = None
    for item in items:
        if out and item.ts == ts and item.metric not in seen:
            out[-1].append(item)
        else:
            out.append([item])
            seen = set()
            ts = item.ts
        seen.add(item.metric)
    return out


def rounds(items: Iterable[Item]) -> list[list[Item]]:
    """Readings in rounds where each metric appears once (oldest first): for a payload
    that keys values by metric alone, with a time per value (Aliyun's properties)."""
    out: list[list[Item]] = []
    taken: list[set[str]] = []
    next_round: dict[str, int] = {}
    for item in items:
        k = next_round.get(item.metric, 0)
        if k == len(out):
            out.append([])
            taken.append(set())
        out[k].append(item)
        taken[k].add(item.metric)
        next_round[item.metric] = k + 1
    return out


def batches(seq: Sequence[T], size: int) -> list[Sequence[T]]:
    """`seq` in slices of at most `size`."""
    return [seq[i:i + size] for i in range(0, len(seq), size)]


def fit(parts: Sequence[T], render: Callable[[Sequence[T]], bytes], limit: int,
        most: int | None = None) -> list[bytes]:
    """Payloads rendering `parts` in order, each of at most `most` parts and `limit` bytes
    (halving where one is larger; a single part larger than `limit` goes alone)."""
    if not parts:
        return []
    if most is not None and len(parts) > most:
        return [p for chunk in batches(parts, most) for p in fit(chunk, render, limit)]
    payload = render(parts)
    if len(payload) <= limit or len(parts) == 1:
        return [payload]
    half = len(parts) // 2
    return fit(parts[:half], render, limit) + fit(parts[half:], render, limit)


class Limit:
    """The packet limit a session's `budget()` was given, for `frame()` to fit payloads to."""

    def __init__(self) -> None:
        self.max_packet = 128_000
        self.v5 = False

    def set(self, max_packet: int, v5: bool) -> None:
        """From `budget()`: the limit of this connection."""
        self.max_packet = max_packet
        self.v5 = v5

    def payload(self, topic: str) -> int:
        """The largest payload of a PUBLISH to `topic`."""
        return max_payload(self.max_packet, topic, self.v5)


class MessageIds:
    """Alink/IoTDA message ids: decimal strings, unique per connection (0..4294967295)."""

    def __init__(self) -> None:
        self._ids = itertools.count(int(time.time() * 1000) % 1_000_000_000)

    def next(self) -> str:
        """The next id."""
        return str(next(self._ids) % 4_294_967_296)


def request(rid: str, device: str, action: str, point: str | None = None,
            value: object = None, *, has_value: bool = False) -> dict[str, Any]:
    """A native request document for a platform command.

    Unsigned: platforms cannot sign our way. The dialect's `commands: true` is the explicit
    allowance, and its requests go as `Request(..., unsigned_ok=True)`: the commands path
    asks them for no signature while native requests still need theirs; the allow-list,
    write limits, expiry and de-duplication apply as to any request.

    `ts` is the arrival time: platforms do not say when a command was sent, so their
    staleness is the platform's own timeout (ThingsBoard's RPC timeout, IoTDA's 20 s).
    """
    doc: dict[str, Any] = {"v": 1, "id": rid, "ts": now_ms(), "device": device,
                           "action": action}
    if point is not None:
        doc["point"] = point
    if has_value:
        doc["value"] = value
    return doc


def action_request(rid: str, device: str, name: str, params: object) -> dict[str, Any]:
    """A platform call named `name` with `params`: an action (`write` with
    `{"point", "value"}`, `read` with `{"point"}`, `poll`, `sync_time`), or a point's
    name (a value writes it, no value reads it)."""
    args: Mapping[str, Any] = params if isinstance(params, Mapping) else {}
    if name in ACTIONS:
        point = args.get("point")
        return request(rid, device, name, point if isinstance(point, str) else None,
                       args.get("value"), has_value="value" in args)
    value = args.get("value") if isinstance(params, Mapping) else params
    if value is None or (isinstance(params, Mapping) and not params):
        return request(rid, device, "read", name)
    return request(rid, device, "write", name, value, has_value=True)


def json_object(msg: Incoming) -> dict[str, Any] | None:
    """The incoming payload as a JSON object, or None."""
    try:
        doc = json.loads(msg.payload)
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def outcome(document: Mapping[str, object]) -> dict[str, Any]:
    """The parts of a native reply a platform's answer carries: status, value, error."""
    out: dict[str, Any] = {"status": document.get("status")}
    for key in ("value", "error", "point", "action"):
        if document.get(key) is not None:
            out[key] = document[key]
    return out


def ok(document: Mapping[str, object]) -> bool:
    """Whether the native reply says `ok`."""
    return document.get("status") == "ok"


class PayloadDialect(Protocol):
    """What `PlatformSession` needs of its dialect."""

    def topic(self, device: str) -> str:
        """Where `device`'s data goes."""
        ...

    def payloads(self, device: str, items: bytes, limit: int) -> list[bytes]:
        """Data payloads of `device`, each within `limit` bytes."""
        ...


class PlatformSession(SessionDefaults):
    """What the platform sessions share: credentials signed at open, no will (platforms
    track the connection themselves), no session control, data as the dialect's payloads
    on the dialect's topic. Subclasses add subscriptions, announcements, drop notices."""

    envelope = 256
    """Bytes of a data payload beyond the items it re-encodes, less the device name
    counted `name_factor` times (generous: `fit()` checks the real size anyway)."""
    name_factor = 1

    def __init__(self, dialect: PayloadDialect, broker: str, credentials: Credentials) -> None:
        self.payload_dialect = dialect
        self.broker = broker
        self._credentials = credentials
        self.limit = Limit()

    @property
    def will(self) -> Outgoing | None:
        """None: the platform sees the connection go and marks the gateway offline."""
        return None

    def topic(self, device: str) -> str:
        """Where `device`'s data goes."""
        return self.payload_dialect.topic(device)

    def budget(self, device: str, max_packet: int, v5: bool) -> int:
        """The packet limit less the headers, the topic and the envelope."""
        self.limit.set(max_packet, v5)
        return (self.limit.payload(self.topic(device)) - self.envelope
                - self.name_factor * len(device.encode()))

    def frame(self, device: str, items: bytes, historical: bool) -> list[Outgoing]:
        """Data messages of `device` (several where a limit or the size asks for it)."""
        topic = self.topic(device)
        return [Outgoing(topic, payload, qos=1) for payload in
                self.payload_dialect.payloads(device, items, self.limit.payload(topic))]

    def stamp(self, out: Outgoing) -> Outgoing:
        """As built (Sparkplug's per-message seq has no counterpart here)."""
        return out

    def goodbye(self, reason: str) -> Outgoing | None:
        """Nothing: the platform sees the disconnect."""
        return None
