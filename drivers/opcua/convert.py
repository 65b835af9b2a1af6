"""OPC UA values to readings and back: variant types, status codes, timestamps.

Pure functions beside the I/O that calls them, tested with tables of cases.
"""

from __future__ import annotations

import base64
import json
import math
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from asyncua import ua

from gateway.errors import WriteRefused
from gateway.model import Quality, Value

VT = ua.VariantType

INT_RANGES: dict[ua.VariantType, tuple[int, int]] = {
    VT.SByte: (-(2**7), 2**7 - 1), VT.Byte: (0, 2**8 - 1),
    VT.Int16: (-(2**15), 2**15 - 1), VT.UInt16: (0, 2**16 - 1),
    VT.Int32: (-(2**31), 2**31 - 1), VT.UInt32: (0, 2**32 - 1),
    VT.Int64: (-(2**63), 2**63 - 1), VT.UInt64: (0, 2**64 - 1),
}
FLOAT32_MAX = 3.4028234663852886e38
DATA_TYPE_VARIANTS = {int(t): t for t in (
    VT.Boolean, VT.SByte, VT.Byte, VT.Int16, VT.UInt16, VT.Int32, VT.UInt32, VT.Int64,
    VT.UInt64, VT.Float, VT.Double, VT.String, VT.DateTime, VT.Guid, VT.ByteString)}
"""Standard DataType NodeIds (ns=0;i=1..15) are numbered like the variant types."""


def quality(code: int) -> Quality:
    """Quality of an OPC UA StatusCode by its severity bits (Part 4 7.39)."""
    severity = code >> 30
    if severity == 0:
        return "good"
    if severity == 1:
        return "uncertain"
    return "bad"


def status_name(code: int) -> str:
    """`BadNodeIdUnknown (0x80340000)` for messages and logs."""
    try:
        name = ua.StatusCode(ua.UInt32(code)).name
    except Exception:  # noqa: BLE001 - an unknown code still deserves its number
        name = "Unknown"
    return f"{name} (0x{code:08X})"


def epoch_ms(when: datetime | None) -> int | None:
    """Epoch milliseconds of an OPC UA DateTime (naive means UTC); None when unset."""
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    ms = int(when.timestamp() * 1000)
    return ms if ms > 0 else None  # DateTime.MinValue: "no timestamp"


def timestamp(dv: ua.DataValue, fallback: Callable[[], int]) -> int:
    """`ts` of a value: source timestamp, else server timestamp, else the gateway clock."""
    ts = epoch_ms(dv.SourceTimestamp)
    if ts is None:
        ts = epoch_ms(dv.ServerTimestamp)
    return fallback() if ts is None else ts


def _float32(x: float) -> float:
    """A Float as the 7 significant digits it holds, not its double expansion."""
    return float(f"{x:.7g}")


def _scalar(vtype: ua.VariantType, v: Any) -> Value:
    if v is None:
        return None
    if vtype == VT.Boolean:
        return bool(v)
    if vtype in INT_RANGES or vtype == VT.StatusCode:
        return int(v.value if isinstance(v, ua.StatusCode) else v)
    if vtype == VT.Float:
        return _float32(float(v))
    if vtype == VT.Double:
        return float(v)
    if vtype == VT.DateTime:
        if not isinstance(v, datetime):
            return str(v)
        when = v if v.tzinfo else v.replace(tzinfo=UTC)
        return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if vtype == VT.ByteString:
        return bytes(v).hex()
    if vtype == VT.LocalizedText:
        return str(v.Text) if v.Text is not None else None
    if vtype == VT.QualifiedName:
        return f"{v.NamespaceIndex}:{v.Name}"
    if vtype in (VT.NodeId, VT.ExpandedNodeId):
        return str(v.to_string())
    if vtype == VT.Guid:
        return str(v)
    return str(v)


def _jsonable(v: Value) -> Value:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def convert(variant: ua.Variant | None) -> tuple[Value, bool]:
    """(reading value, usable) of a variant; NaN and infinities are not usable.

    Scalars map to bool, int, float or str (DateTime as ISO 8601 UTC, ByteString as hex,
    LocalizedText as its text); arrays become the JSON text of their elements.
    """
    if variant is None or variant.VariantType == VT.Null:
        return None, True
    vtype = variant.VariantType
    v = variant.Value
    if isinstance(v, list | tuple):
        items = [_jsonable(_scalar(vtype, x)) for x in v]
        return json.dumps(items, separators=(",", ":")), True
    out = _scalar(vtype, v)
    if isinstance(out, float) and not math.isfinite(out):
        return None, False
    return out, True


def variant_of_data_type(data_type: ua.NodeId) -> ua.VariantType | None:
    """The variant type of a standard DataType NodeId, None for others (structures, enums)."""
    if data_type.NamespaceIndex != 0 or not isinstance(data_type.Identifier, int):
        return None
    return DATA_TYPE_VARIANTS.get(data_type.Identifier)


def _number(value: Value, vtype: ua.VariantType) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WriteRefused(f"{value!r} is not a number; the node holds {vtype.name}")
    return value


def encode(value: Value, vtype: ua.VariantType) -> ua.Variant:
    """`value` as a variant of the node's own type; `WriteRefused` when it does not fit."""
    if vtype == VT.Boolean:
        if isinstance(value, bool):
            return ua.Variant(value, vtype)
        if isinstance(value, int | float) and value in (0, 1):
            return ua.Variant(bool(value), vtype)
        raise WriteRefused(f"{value!r} is not a Boolean (true/false, 1/0)")
    if vtype in INT_RANGES:
        n = _number(value, vtype)
        if isinstance(n, float):
            if not n.is_integer():
                raise WriteRefused(f"{n} is not a whole number; the node holds {vtype.name}")
            n = int(n)
        lo, hi = INT_RANGES[vtype]
        if not lo <= n <= hi:
            raise WriteRefused(f"{n} does not fit {vtype.name} ({lo}..{hi})")
        return ua.Variant(n, vtype)
    if vtype in (VT.Float, VT.Double):
        x = float(_number(value, vtype))
        if not math.isfinite(x):
            raise WriteRefused(f"{value!r} is not a finite number")
        if vtype == VT.Float and abs(x) > FLOAT32_MAX:
            raise WriteRefused(f"{x} does not fit Float (32-bit, at most {FLOAT32_MAX:.7g})")
        return ua.Variant(x, vtype)
    if vtype == VT.String:
        if not isinstance(value, str):
            raise WriteRefused(f"{value!r} is not text; the node holds a String")
        return ua.Variant(value, vtype)
    if vtype == VT.ByteString:
        if not isinstance(value, str):
            raise WriteRefused(f"{value!r}: give a ByteString as hex text")
        try:
            return ua.Variant(bytes.fromhex(value), vtype)
        except ValueError:
            raise WriteRefused(f"{value!r} is not hex; a ByteString is written as hex "
                               "text") from None
    if vtype == VT.DateTime:
        if not isinstance(value, str):
            raise WriteRefused(f"{value!r}: give a DateTime as ISO 8601 text")
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise WriteRefused(f"{value!r} is not an ISO 8601 date and time") from None
        if when.tzinfo is None:
            raise WriteRefused(f"{value!r} has no time zone; add Z or +08:00")
        return ua.Variant(when.astimezone(UTC), vtype)
    if vtype == VT.Guid:
        try:
            return ua.Variant(uuid.UUID(str(value)), vtype)
        except ValueError:
            raise WriteRefused(f"{value!r} is not a GUID") from None
    raise WriteRefused(f"writing {vtype.name} values is not supported")


def same(written: ua.Variant, got: Value) -> bool:
    """Whether a read-back value is what was written (Float compared at its precision)."""
    want, _ = convert(written)
    if isinstance(want, float) and isinstance(got, int | float):
        return math.isclose(want, got, rel_tol=1e-6, abs_tol=1e-12)
    return want == got


def b64(data: bytes) -> str:
    """Base64 text (for certificates in JSON output)."""
    return base64.b64encode(data).decode("ascii")
