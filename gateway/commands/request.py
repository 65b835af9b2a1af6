"""Requests and replies of the command topic (interfaces.md "Commands"), as pure functions.

A request is UTF-8 JSON; its canonical form (what `sig` signs) is the JSON of the request
without `sig`, keys sorted, separators `,` and `:`, non-ASCII as UTF-8 (Python's
`json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`). Keys other
than the ones below are kept and signed too, so a sender may add its own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from gateway.model import Value

ACTIONS: Final = ("write", "read", "poll", "sync_time")
STATUSES: Final = ("ok", "refused", "expired", "failed", "duplicate")
Status = Literal["ok", "refused", "expired", "failed", "duplicate"]
MAX_REQUEST_BYTES = 16 * 1024
"""A request is a line of JSON; anything larger is refused unread."""

_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_POINT = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
NEEDS_POINT: Final = frozenset({"write", "read"})


class BadRequest(ValueError):
    """A request that cannot be carried out as sent; answered `refused` with what was read."""

    def __init__(self, message: str, fields: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.fields = dict(fields or {})


@dataclass(frozen=True, slots=True)
class Request:
    """A well-formed request (not yet authenticated)."""

    id: str
    ts: int
    device: str
    action: str
    point: str | None
    value: Value
    sig: str | None
    canonical: bytes
    """The bytes `sig` signs."""


def canonical_form(doc: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: `doc` without `sig`, sorted, compact, UTF-8."""
    body = {k: v for k, v in doc.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False).encode("utf-8")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # the canonical form keeps one of them: what was signed would be ambiguous
            raise BadRequest(f"the key '{key}' appears twice")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise BadRequest(f"{name} is not a JSON number")


def _scalar(value: Any) -> bool:
    return isinstance(value, bool | int | float | str)


def load_document(payload: bytes) -> dict[str, Any]:
    """The JSON object of a request payload; `BadRequest` if it is not one (or is ambiguous)."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise BadRequest(f"the request is {len(payload):,} bytes; at most "
                         f"{MAX_REQUEST_BYTES:,} are read")
    try:
        doc = json.loads(payload.decode("utf-8"), object_pairs_hook=_no_duplicates,
                         parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise BadRequest("the request is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the request is not JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(doc, dict):
        raise BadRequest("the request is not a JSON object")
    return doc


def parse_request(payload: bytes) -> Request:
    """A request from its payload; `BadRequest` says what is wrong (and what could be read)."""
    return parse_document(load_document(payload))


def parse_document(doc: Mapping[str, Any]) -> Request:
    """A request from its decoded JSON object (a dialect may have mapped it from its own)."""
    # what can be echoed in the reply even if something else is wrong
    seen = {k: doc[k] for k in ("id", "device", "action", "point")
            if isinstance(doc.get(k), str) and len(doc[k]) <= 128}
    if seen.get("id") is not None and not _ID.match(seen["id"]):
        del seen["id"]

    def bad(message: str) -> BadRequest:
        return BadRequest(message, seen)

    if doc.get("v") != 1 or isinstance(doc.get("v"), bool):
        raise bad(f"unsupported request version v={doc.get('v')!r}; this gateway reads v=1")
    rid = doc.get("id")
    if not isinstance(rid, str) or not _ID.match(rid):
        raise bad("id must be a string of 1 to 128 printable ASCII characters (a UUID)")
    ts = doc.get("ts")
    if not isinstance(ts, int) or isinstance(ts, bool) or ts < 0:
        raise bad("ts must be the request's time in Unix epoch milliseconds (an integer)")
    device = doc.get("device")
    if not isinstance(device, str) or not _NAME.match(device):
        raise bad("device must be the name of one of this gateway's devices")
    action = doc.get("action")
    if action not in ACTIONS:
        raise bad(f"action must be one of {', '.join(ACTIONS)}, not {action!r}")
    point = doc.get("point")
    if action in NEEDS_POINT:
        if not isinstance(point, str) or not _POINT.match(point):
            raise bad(f"action {action} needs the name of a point")
    elif point is not None:
        raise bad(f"action {action} takes no point")
    value = doc.get("value")
    if action == "write":
        if not _scalar(value):
            raise bad("a write needs a value: a number, true/false or a string")
    elif "value" in doc:
        raise bad(f"action {action} takes no value")
    sig = doc.get("sig")
    if sig is not None and not isinstance(sig, str):
        raise bad("sig must be a base64 string")
    return Request(rid, ts, device, str(action), point, value, sig, canonical_form(doc))


def expiry_problem(ts: int, now: int, max_age: float, deadline: int | None = None) -> str | None:
    """Why a request with time `ts` is stale at `now` (epoch ms), or None.

    `deadline` is the MQTT 5 message expiry as epoch ms (arrival plus the interval left),
    when the request had one.
    """
    limit = round(max_age * 1000)
    if now - ts > limit:
        return (f"the request is {(now - ts) / 1000:.1f} s old; commands.max_age is "
                f"{max_age:g} s")
    if ts - now > limit:
        return (f"the request's ts is {(ts - now) / 1000:.1f} s in the future: the "
                "sender's clock and the gateway's differ by more than commands.max_age")
    if deadline is not None and now > deadline:
        return "the request's MQTT message expiry passed before it could be carried out"
    return None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of a request: the reply's status, sentence and value."""

    status: Status
    error: str | None = None
    value: Value = None
    has_value: bool = False
    code: int | None = None
    """The device's own code of a refusal (a Modbus exception code) where it has one."""
    old: Value = None
    """The point's value before a write, where it could be read (for the audit)."""

    def to_json(self) -> str:
        """The outcome as the ledger keeps it."""
        doc: dict[str, Any] = {"status": self.status}
        if self.error is not None:
            doc["error"] = self.error
        if self.has_value:
            doc["value"] = self.value
        if self.code is not None:
            doc["code"] = self.code
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Outcome:
        """The outcome the ledger kept."""
        doc = json.loads(text)
        return cls(doc["status"], doc.get("error"), doc.get("value"), "value" in doc,
                   doc.get("code"))


def reply_doc(gateway: str, fields: Mapping[str, Any], outcome: Outcome, ts: int,
              first: Outcome | None = None) -> dict[str, Any]:
    """The reply of interfaces.md: `fields` from the request (id, device, action, point).

    For a `duplicate`, `first` is the first delivery's outcome, under `first`; its value is
    also the reply's `value`.
    """
    doc: dict[str, Any] = {"v": 1, "id": fields.get("id"), "gateway": gateway,
                           "device": fields.get("device"), "action": fields.get("action")}
    if fields.get("point") is not None:
        doc["point"] = fields["point"]
    doc["status"] = outcome.status
    shown = first if first is not None else outcome
    if shown.has_value:
        doc["value"] = shown.value
    doc["ts"] = ts
    if outcome.error is not None:
        doc["error"] = outcome.error
    if outcome.code is not None:
        doc["code"] = outcome.code
    if first is not None:
        doc["first"] = json.loads(first.to_json())
    return doc
