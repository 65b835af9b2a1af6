"""Values to register words: the exact inverse of decode.py, for writes.

`raw = (value - offset) / scale`, computed in decimal so that 21.5 with scale 0.1 is 215
and not 214.99999999999997; integer types round half away from zero and refuse what does
not fit the type; floats refuse NaN, infinities and what overflows float32. The raw value
is packed as decode.py unpacks it: big- or little-endian by `order`, and for BADC/CDAB the
bytes of every register swapped, so `decode(encode(v)) == v` for every type and order.
"""

from __future__ import annotations

import math
import struct
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from gateway.errors import WriteRefused
from gateway.model import Value

from .registermap import INTEGER_TYPES, Point

_FORMATS = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q",
            "uint64": "Q", "float32": "f", "float64": "d"}
_RANGES = {"int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1),
           "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1),
           "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1)}
_SWAPPED = frozenset({"BADC", "CDAB"})
_LITTLE = frozenset({"DCBA", "CDAB"})


def encode_bool(point: Point, value: Value) -> bool:
    """A coil's or a register bit's new state: true/false or 1/0, nothing else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    raise WriteRefused(f"{point.name}: a {'coil' if point.type == 'bool' else 'bit'} takes "
                       f"true/false or 1/0, not {value!r}")


def _number(point: Point, value: Value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WriteRefused(f"{point.name}: {point.type} takes a number, not {value!r}")
    if not math.isfinite(value):
        raise WriteRefused(f"{point.name}: {value!r} cannot be written")
    return value


def raw_value(point: Point, value: Value) -> int | float:
    """The number that goes into the registers: scale and offset undone, rounded, checked."""
    number = _number(point, value)
    if point.type in INTEGER_TYPES:
        try:
            raw = Decimal(repr(number))
            if point.offset is not None:
                raw -= Decimal(repr(point.offset))
            if point.scale is not None:
                raw /= Decimal(repr(point.scale))
            whole = int(raw.quantize(Decimal(1), rounding=ROUND_HALF_UP))
        except (InvalidOperation, OverflowError):
            raise WriteRefused(f"{point.name}: {value!r} cannot be written") from None
        lo, hi = _RANGES[point.type]
        if not lo <= whole <= hi:
            raise WriteRefused(
                f"{point.name}: {value!r} is {whole} in the register, outside {point.type} "
                f"({lo}..{hi}){_scaled(point)}")
        return whole
    raw_f = (number - (point.offset or 0.0)) / (point.scale if point.scale is not None else 1.0)
    if point.type == "float32" and abs(raw_f) > 3.4028234663852886e38:
        raise WriteRefused(f"{point.name}: {value!r} does not fit a float32{_scaled(point)}")
    if not math.isfinite(raw_f):
        raise WriteRefused(f"{point.name}: {value!r} does not fit a {point.type}")
    return raw_f


def _scaled(point: Point) -> str:
    if point.scale is None and point.offset is None:
        return ""
    return f" after scale {point.scale or 1:g} and offset {point.offset or 0:g}"


def encode_words(point: Point, value: Value) -> list[int]:
    """Register words of `value` for a numeric point, in wire order; `WriteRefused` if not."""
    if point.type not in _FORMATS:
        raise WriteRefused(f"{point.name}: {point.type} values are not written as numbers")
    raw = raw_value(point, value)
    fmt = ("<" if point.order in _LITTLE else ">") + _FORMATS[point.type]
    data = struct.pack(fmt, raw)
    words = len(data) // 2
    regs = struct.unpack(("<" if point.order in _SWAPPED else ">") + f"{words}H", data)
    return list(regs)


def with_bit(word: int, bit: int, on: bool) -> int:
    """`word` with bit number `bit` (0 = least significant) set or cleared."""
    return (word | (1 << bit)) if on else (word & ~(1 << bit) & 0xFFFF)
