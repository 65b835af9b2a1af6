"""Sparkplug B payloads: pure functions between our readings and the specification's protobuf.

Everything here is bytes in, bytes out (tests/core/test_sparkplug_codec.py checks it
against the specification's examples); topics are in topics.py.

`seq` is left out of every payload built here and appended when the message is handed to
the MQTT client (`with_seq`): protobuf fields may come in any order, and only the moment of
publishing knows the message's place in the session's 0-255 sequence.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.uplink.dialects.sparkplug import sparkplug_b_pb2 as pb

REBIRTH = "Node Control/Rebirth"
BDSEQ = "bdSeq"

# DataType values (the specification's enum)
INT32 = 3
INT64 = 4
UINT64 = 8
DOUBLE = 10
BOOLEAN = 11
STRING = 12

QUALITY_CODES = {"good": 192, "uncertain": 500, "bad": 0}
"""`quality` as the specification's `Quality` property codes (0 BAD, 192 GOOD, 500 STALE, the
only three it allows: `uncertain` goes out as STALE); sent only when not good."""

_SEQ_TAG = b"\x18"  # field 3 (Payload.seq), wire type 0 (varint)


def serialize(payload: Any) -> bytes:
    """A Payload's wire bytes."""
    data: bytes = payload.SerializeToString()
    return data


def varint(n: int) -> bytes:
    """A protobuf base-128 varint of a non-negative integer (the short ones unrolled: seqs,
    aliases and lengths are nearly always below 2**28)."""
    if n < 0x80:
        return bytes((n,))
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    if n < 0x200000:
        return bytes((n & 0x7F | 0x80, (n >> 7) & 0x7F | 0x80, n >> 14))
    if n < 0x10000000:
        return bytes((n & 0x7F | 0x80, (n >> 7) & 0x7F | 0x80, (n >> 14) & 0x7F | 0x80,
                      n >> 21))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def with_seq(payload: bytes, seq: int) -> bytes:
    """`payload` with its `seq` field (0-255) appended."""
    return payload + _SEQ_TAG + varint(seq)


_NUMBERS = frozenset({INT64, UINT64, DOUBLE})


def datatype_of(value: object) -> int:
    """The Sparkplug DataType for a reading's value (None: Double, a number yet unknown)."""
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int):
        if -(2**63) <= value < 2**63:
            return INT64
        return UINT64 if 0 <= value < 2**64 else DOUBLE
    if isinstance(value, str):
        return STRING
    return DOUBLE


def fits(datatype: int, value: object) -> bool:
    """Whether `value` can go out under a metric born with `datatype`."""
    if value is None or datatype == STRING:
        return True
    kind = datatype_of(value)
    return kind == datatype or (datatype == DOUBLE and kind in _NUMBERS)


def widen(datatype: int, other: int) -> int:
    """The type under which values of both types can go out: Double for two kinds of
    number, String for anything else that differs (a metric whose values change kind)."""
    if datatype == other:
        return datatype
    return DOUBLE if datatype in _NUMBERS and other in _NUMBERS else STRING


def set_value(metric: Any, datatype: int, value: object) -> None:
    """Fill the metric's value oneof for `datatype` (null when `value` is None)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        metric.is_null = True
    elif datatype == DOUBLE:
        metric.double_value = float(value)  # type: ignore[arg-type]
    elif datatype in (INT64, UINT64):
        metric.long_value = int(value) & 0xFFFFFFFFFFFFFFFF  # type: ignore[call-overload]
    elif datatype == BOOLEAN:
        metric.boolean_value = bool(value)
    else:
        metric.string_value = str(value)


def add_property(props: Any, key: str, datatype: int, value: int | str) -> None:
    """One entry of a PropertySet."""
    props.keys.append(key)
    pv = props.values.add()
    pv.type = datatype
    if datatype == STRING:
        pv.string_value = value
    elif datatype == INT32:
        pv.int_value = value
    else:
        pv.long_value = value


@dataclass(frozen=True, slots=True)
class Reading:
    """A stored reading as the dialect needs it."""

    seq: int
    metric: str
    value: object
    unit: str | None
    ts: int
    quality: str


def readings(items: bytes) -> list[Reading]:
    """The readings of stored chunk items (comma-separated JSON objects)."""
    docs = json.loads(b"[" + items + b"]")
    # every stored item has every key (gateway/buffer/encoder.py)
    return [Reading(d["seq"], d["metric"], d["value"], d["unit"], d["ts"], d["quality"])
            for d in docs]


def fill_reading(metric: Any, alias: int, datatype: int, r: Reading, *,
                 historical: bool) -> None:
    """A DDATA metric: alias, timestamp, value, and the properties `seq` and `Quality`."""
    metric.alias = alias
    metric.timestamp = r.ts
    if historical:
        metric.is_historical = True
    set_value(metric, datatype, r.value)
    props = metric.properties
    add_property(props, "seq", UINT64, r.seq)
    if r.quality != "good":
        add_property(props, "Quality", INT32, QUALITY_CODES.get(r.quality, 0))


def birth_metric(metric: Any, name: str, alias: int, datatype: int, value: object, *,
                 ts: int, unit: str | None = None) -> None:
    """A BIRTH metric: name, alias, datatype, the current value, `engUnit` when known."""
    metric.name = name
    metric.alias = alias
    metric.timestamp = ts
    metric.datatype = datatype
    set_value(metric, datatype, value)
    if unit:
        add_property(metric.properties, "engUnit", STRING, unit)


def death(bd_seq: int, ts: int) -> bytes:
    """An NDEATH payload: the `bdSeq` of the session it ends, no `seq`."""
    payload = pb.Payload(timestamp=ts)
    m = payload.metrics.add()
    m.name = BDSEQ
    m.datatype = INT64
    m.long_value = bd_seq
    return serialize(payload)


def device_death(ts: int) -> bytes:
    """A DDEATH payload (its `seq` is appended on sending)."""
    return serialize(pb.Payload(timestamp=ts))


def text_metric(name: str, alias: int, text: str, ts: int) -> bytes:
    """An NDATA payload of one String metric by alias."""
    payload = pb.Payload(timestamp=ts)
    m = payload.metrics.add()
    m.alias = alias
    m.timestamp = ts
    m.string_value = text
    return serialize(payload)


def state_online(payload: bytes) -> tuple[bool, int] | None:
    """(online, timestamp) of a Sparkplug 3.0 STATE payload, or None when it is not one."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("online"), bool):
        return None
    ts = doc.get("timestamp")
    return doc["online"], ts if isinstance(ts, int) and not isinstance(ts, bool) else 0


def decode(payload: bytes) -> Any | None:
    """A Payload message, or None when the bytes are not one."""
    msg = pb.Payload()
    try:
        msg.ParseFromString(payload)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError and friends: not a payload
        return None
    return msg


def metric_value(metric: Any, datatype: int | None = None) -> object:
    """A received metric's value as Python (None when null or absent); `datatype` from its
    birth when the metric itself has none (DATA and CMD metrics need not carry it)."""
    if metric.is_null:
        return None
    kind = metric.WhichOneof("value")
    if kind is None:
        return None
    value = getattr(metric, kind)
    if metric.HasField("datatype") or datatype is None:
        datatype = metric.datatype
    if kind == "long_value" and datatype in (1, 2, 3, 4) and value >= 2**63:
        return value - 2**64  # signed types travel as two's complement
    if kind == "int_value" and datatype in (1, 2, 3) and value >= 2**31:
        return value - 2**32
    return value if kind in ("int_value", "long_value", "float_value", "double_value",
                             "boolean_value", "string_value") else None


def properties(metric: Any) -> dict[str, object]:
    """A received metric's PropertySet as a dict of simple values."""
    out: dict[str, object] = {}
    props = metric.properties
    for key, pv in zip(props.keys, props.values, strict=False):
        kind = pv.WhichOneof("value")
        out[key] = None if kind is None or pv.is_null else getattr(pv, kind)
    return out


def asks_rebirth(payload: bytes, names: Mapping[int, str] | None = None) -> bool:
    """Whether an NCMD payload sets `Node Control/Rebirth` to true (by name or alias)."""
    msg = decode(payload)
    if msg is None:
        return False
    for m in msg.metrics:
        name = m.name or (names or {}).get(m.alias, "")
        if name == REBIRTH and m.WhichOneof("value") == "boolean_value" and m.boolean_value:
            return True
    return False


def names_of(metrics: Iterable[Any]) -> list[str]:
    """The names of metrics (for tests and logs)."""
    return [m.name for m in metrics]
