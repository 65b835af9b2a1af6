"""GATT: decode characteristic values, and a per-adapter limit on concurrent connections."""

from __future__ import annotations

import asyncio
import math
import struct

from drivers.ble.options import GattCharacteristic

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


class ConnectionSlots:
    """How many GATT connections one adapter may hold at once (a shared semaphore)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.semaphore = asyncio.Semaphore(limit)

    async def aclose(self) -> None:
        """Nothing to release: connections are closed by their owners."""
