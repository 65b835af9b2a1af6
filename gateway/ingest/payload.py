"""What arrives on `parkgate/+/+/+`: data batches, status messages and drop notices.

The three share the topic depth (status is `parkgate/{site}/{gateway}/status`, a device
could be called `status` too), so they are told apart by payload only:
- data: `{"v": 1, "gateway", "site", "readings": [{"seq", "device", "metric", "value",
  "unit", "ts", "quality"}]}` (gateway/uplink/dialects/parkgate.py writes it);
- status: `{"state": "online" | "offline", "gateway", ...}`, retained, and the will;
- drop notice: `{"v": 1, "gateway", "site", "dropped": [{"first", "last", "reason"}]}`:
  seqs the agent's buffer dropped by policy (`max_bytes`, `max_age`), inclusive ranges.

`classify()` is pure: bytes in, one of the dataclasses below out, never an exception.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

QUALITIES = frozenset({"good", "uncertain", "bad"})
MAX_TS_MS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z: PostgreSQL's timestamptz holds it, Python's datetime too."""

Row = tuple[str, int, str, str, str, int, float | None, str | None, str | None, str]
"""(gateway, seq, site, device, metric, ts_ms, value, value_text, unit, quality)."""


@dataclass(frozen=True, slots=True)
class Data:
    """A batch of readings; `bad` holds the readings that could not become rows."""

    gateway: str
    rows: list[Row]
    bad: list[tuple[str, str]]
    """(reason, the reading's JSON) for readings without a usable seq, ts or name."""


@dataclass(frozen=True, slots=True)
class Status:
    """A gateway's online/offline message."""

    gateway: str
    state: str


@dataclass(frozen=True, slots=True)
class DropNotice:
    """Seq ranges the agent dropped on purpose."""

    gateway: str
    ranges: list[tuple[int, int, str]]
    """(first, last, reason), inclusive."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that is none of the above; kept in the rejected table, never retried."""

    reason: str


Message = Data | Status | DropNotice | Rejected


def _name(value: object) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= 256 else None


def _seq(value: object) -> int | None:
    # bool is an int in Python; a seq of `true` is a broken producer, not seq 1
    if type(value) is int and 0 < value < 2**63:
        return value
    return None


def reading_row(gateway: str, site: str, r: object) -> Row | str:
    """One reading as a row, or the reason it cannot be one."""
    if not isinstance(r, dict):
        return "reading is not an object"
    seq = _seq(r.get("seq"))
    if seq is None:
        return "seq missing or not a positive integer"
    device, metric = _name(r.get("device")), _name(r.get("metric"))
    if device is None or metric is None:
        return "device or metric missing"
    ts = r.get("ts")
    if type(ts) is not int or not 0 <= ts <= MAX_TS_MS:
        return "ts missing or not epoch milliseconds"
    quality = r.get("quality", "good")
    if quality not in QUALITIES:
        return f"quality {quality!r} is not good, uncertain or bad"
    unit = r.get("unit")
    unit = unit if isinstance(unit, str) else None
    v = r.get("value")
    value: float | None
    text: str | None
    if type(v) is bool:
        value, text = (1.0 if v else 0.0), ("true" if v else "false")
    elif type(v) in (int, float):
        value, text = float(v), None  # type: ignore[arg-type]
        if not math.isfinite(value):
            value = None
    elif v is None:
        value, text = None, None
    elif isinstance(v, str):
        value, text = None, v
    else:
        value, text = None, json.dumps(v, separators=(",", ":"))
    return (gateway, seq, site, device, metric, ts, value, text, unit, str(quality))


def classify(payload: bytes) -> Message:
    """Tell a data batch, a status message and a drop notice apart; reject anything else."""
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return Rejected("not UTF-8 JSON")
    if not isinstance(doc, dict):
        return Rejected("not a JSON object")
    gateway = _name(doc.get("gateway"))
    if "readings" in doc:
        site = _name(doc.get("site"))
        readings = doc["readings"]
        if gateway is None or site is None or not isinstance(readings, list):
            return Rejected("data batch without gateway, site or a readings list")
        rows: list[Row] = []
        bad: list[tuple[str, str]] = []
        for r in readings:
            row = reading_row(gateway, site, r)
            if isinstance(row, str):
                bad.append((row, json.dumps(r, separators=(",", ":"), default=str)))
            else:
                rows.append(row)
        return Data(gateway, rows, bad)
    if "dropped" in doc:
        ranges = doc["dropped"]
        if gateway is None or not isinstance(ranges, list):
            return Rejected("drop notice without gateway or a dropped list")
        out: list[tuple[int, int, str]] = []
        for item in ranges:
            if not isinstance(item, dict):
                return Rejected("drop notice range is not an object")
            first, last = _seq(item.get("first")), _seq(item.get("last"))
            reason = _name(item.get("reason")) or "unknown"
            if first is None or last is None or last < first:
                return Rejected("drop notice range without first <= last")
            out.append((first, last, reason))
        return DropNotice(gateway, out)
    if "state" in doc and gateway is not None and isinstance(doc["state"], str):
        return Status(gateway, doc["state"])
    return Rejected("neither readings, a drop notice nor a status message")
