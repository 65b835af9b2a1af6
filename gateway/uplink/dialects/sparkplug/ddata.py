"""DDATA payloads written directly as protobuf bytes: the hot path of the Sparkplug dialect.

Building a `Payload` message object per reading costs about 4x the native dialect's CPU
(bench/pipeline.py --dialects parkgate,sparkplug); these bytes are the same that protobuf
writes for the same message (fields in number order), which
tests/core/test_sparkplug_codec.py checks against the generated module for every value kind.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from gateway.uplink.dialects.sparkplug.codec import (
    BOOLEAN,
    DOUBLE,
    INT64,
    QUALITY_CODES,
    UINT64,
    Reading,
    varint,
)

if TYPE_CHECKING:
    from gateway.uplink.dialects.sparkplug.registry import Known

_double = struct.Struct("<d").pack
_MASK = 0xFFFFFFFFFFFFFFFF
_SEQ_KEY = b"\x0a\x03seq"          # PropertySet.keys (1): "seq"
_QUALITY_KEY = b"\x0a\x07Quality"  # PropertySet.keys (1): "Quality"
_HISTORICAL = b"\x28\x01"          # Metric.is_historical (5) = true
_NULL = b"\x38\x01"                # Metric.is_null (7) = true


def _value(datatype: int, value: object) -> bytes:
    """The value field of a metric (or is_null), as `codec.set_value` would set it."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return b""
    if datatype == DOUBLE:
        return b"\x69" + _double(float(value))  # type: ignore[arg-type]
    if datatype in (INT64, UINT64):
        return b"\x58" + varint(int(value) & _MASK)  # type: ignore[call-overload]
    if datatype == BOOLEAN:
        return b"\x70\x01" if value else b"\x70\x00"
    data = str(value).encode()
    return b"\x7a" + varint(len(data)) + data


def _properties(seq: int, quality: str) -> bytes:
    """Metric.properties (9): `seq` (UInt64) and, when not good, `Quality` (Int32)."""
    pv_seq = b"\x08\x08\x20" + varint(seq)  # type 8 (UInt64), long_value (4)
    if quality == "good":  # every length below 128: one byte each
        return (b"\x4a" + bytes((len(pv_seq) + 7,)) + _SEQ_KEY + b"\x12"
                + bytes((len(pv_seq),)) + pv_seq)
    pv_q = b"\x08\x03\x18" + varint(QUALITY_CODES.get(quality, 0))  # Int32, int_value
    body = (_SEQ_KEY + _QUALITY_KEY + b"\x12" + varint(len(pv_seq)) + pv_seq
            + b"\x12" + varint(len(pv_q)) + pv_q)
    return b"\x4a" + varint(len(body)) + body


def encode(metrics: Mapping[str, Known], readings: Sequence[Reading], ts: int, *,
           historical: bool) -> bytes:
    """A DDATA payload without `seq`: the readings by alias (every metric known)."""
    parts = [b"\x08" + varint(ts)]
    append = parts.append
    flag = _HISTORICAL if historical else b""
    heads: dict[str, bytes] = {}  # alias per metric name, once per message
    kinds: dict[str, int] = {}
    stamps: dict[int, bytes] = {}  # the readings of one poll share their ts
    double = DOUBLE
    for r in readings:
        head = heads.get(r.metric)
        if head is None:
            head = heads[r.metric] = b"\x10" + varint(metrics[r.metric].alias)
            kinds[r.metric] = metrics[r.metric].datatype
        stamp = stamps.get(r.ts)
        if stamp is None:
            stamp = stamps[r.ts] = b"\x18" + varint(r.ts) + flag
        v = r.value
        if kinds[r.metric] == double and v.__class__ is float and math.isfinite(v):
            value = b"\x69" + _double(v)
        else:
            value = _value(kinds[r.metric], v)
        body = (head + stamp + (b"" if value else _NULL) + _properties(r.seq, r.quality)
                + value)
        append(b"\x12" + varint(len(body)) + body)
    return b"".join(parts)
