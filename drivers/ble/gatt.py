"""GATT: decode characteristic values, and a per-adapter limit on concurrent connections."""

from __future__ import annotations

import asyncio
import math
import struct
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from drivers.ble.options import GattCharacteristic
from gateway.errors import WriteRefused
from gateway.model import Value

_INTS = {"uint8": (1, False), "int8": (1, True), "uint16": (2, False), "int16": (2, True),
         "uint24": (3, False), "int24": (3, True), "uint32": (4, False), "int32": (4, True),
         "uint64": (8, False), "int64": (8, True)}
_FLOATS = {"float32": (4, "f"), "float64": (8, "d")}


def decode_value(data: bytes, spec: GattCharacteristic) -> float | int | str | bool | None:
    """The configured value inside a characteristic's bytes; None if it is too short."""
    raw = bytes(data[spec.byte_offset:])
    kind = spec.type
    if kind == "utf8":
        return raw.split(b"\x00", 1)[0].decode("utf-8", "replace")
    if kind == "hex":
        return raw.hex()
    if kind == "bool":
        return bool(raw[0]) if raw else None
    if kind in _INTS:
        size, signed = _INTS[kind]
        if len(raw) < size:
            return None
        value: float | int = int.from_bytes(raw[:size], spec.byte_order, signed=signed)
    else:
        size, code = _FLOATS[kind]
        if len(raw) < size:
            return None
        value = struct.unpack(("<" if spec.byte_order == "little" else ">") + code,
                              raw[:size])[0]
        if not math.isfinite(value):
            return None
    if spec.scale != 1.0 or spec.add != 0.0:
        value = round(value * spec.scale + spec.add, 9)
    return value


def encode_value(value: Value, spec: GattCharacteristic) -> bytes:
    """The bytes to write for `value`: the exact inverse of `decode_value` (offset 0).

    `raw = (value - add) / scale`, rounded half away from zero for integer types; a value
    that does not fit the type raises `WriteRefused` before anything is sent.
    """
    kind, name = spec.type, spec.metric
    if kind == "bool":
        if isinstance(value, bool) or (isinstance(value, int | float) and value in (0, 1)):
            return b"\x01" if value else b"\x00"
        raise WriteRefused(f"{name}: takes true/false or 1/0, not {value!r}")
    if kind in ("utf8", "hex"):
        if not isinstance(value, str):
            raise WriteRefused(f"{name}: takes text, not {value!r}")
        if kind == "utf8":
            return value.encode("utf-8")
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise WriteRefused(f"{name}: {value!r} is not hex bytes such as 01ff") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise WriteRefused(f"{name}: {kind} takes a number, not {value!r}")
    if kind in _FLOATS:
        size, code = _FLOATS[kind]
        raw_f = (value - spec.add) / spec.scale
        try:
            return struct.pack(("<" if spec.byte_order == "little" else ">") + code, raw_f)
        except OverflowError:
            raise WriteRefused(f"{name}: {value!r} does not fit a {kind}") from None
    size, signed = _INTS[kind]
    try:
        raw = (Decimal(repr(value)) - Decimal(repr(spec.add))) / Decimal(repr(spec.scale))
        whole = int(raw.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    except (InvalidOperation, OverflowError):
        raise WriteRefused(f"{name}: {value!r} cannot be written") from None
    lo = -(1 << (8 * size - 1)) if signed else 0
    hi = (1 << (8 * size - 1)) - 1 if signed else (1 << (8 * size)) - 1
    if not lo <= whole <= hi:
        raise WriteRefused(f"{name}: {value!r} is {whole} raw, outside {kind} ({lo}..{hi})")
    return whole.to_bytes(size, spec.byte_order, signed=signed)


class ConnectionSlots:
    """How many GATT connections one adapter may hold at once (a shared semaphore)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.semaphore = asyncio.Semaphore(limit)

    async def aclose(self) -> None:
        """Nothing to release: connections are closed by their owners."""
