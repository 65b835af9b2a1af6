"""Register words to values, compiled once per point so a poll only unpacks.

Orders name where the value's bytes A (most significant) .. D travel on the wire. A block
is packed once big-endian (`be`, the wire bytes) and, if any point needs it, once with the
bytes of every register swapped (`sw`). Then every order is one `unpack_from`:

    ABCD  big-endian unpack of be      DCBA  little-endian unpack of be
    BADC  big-endian unpack of sw      CDAB  little-endian unpack of sw

which holds for 16-, 32- and 64-bit values alike (CDAB on a float64 reverses the four
words, as Modbus devices that send the low word first do).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import replace

from gateway.model import Value

from .registermap import Point

Decoder = Callable[[bytes, bytes], Value]
"""(wire bytes of the block, byte-swapped bytes of the block) -> value (None if invalid)."""

_FORMATS = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q",
            "uint64": "Q", "float32": "f", "float64": "d"}
_SWAPPED = frozenset({"BADC", "CDAB"})
_LITTLE = frozenset({"DCBA", "CDAB"})


def needs_swap(point: Point) -> bool:
    """Whether the point reads the byte-swapped copy of the block."""
    return point.type != "bit" and point.order in _SWAPPED


def _number(point: Point, offset: int) -> Decoder:
    fmt = ("<" if point.order in _LITTLE else ">") + _FORMATS[point.type]
    unpack_from = struct.Struct(fmt).unpack_from
    swapped = point.order in _SWAPPED
    scale = point.scale if point.scale is not None else 1.0
    shift = point.offset or 0.0
    decimals = point.decimals
    scaled = point.scale is not None or point.offset is not None
    isfinite = math.isfinite

    if point.type in ("float32", "float64"):
        # float32 carries ~7 significant digits: print it that way (230.4, not 230.39999389)
        digits = "{:.7g}" if point.type == "float32" else "{:.15g}"
        fmt_digits = digits.format

        def decode_float(be: bytes, sw: bytes) -> Value:
            raw: float = unpack_from(sw if swapped else be, offset)[0]
            if not isfinite(raw):
                return None
            if scaled:
                raw = raw * scale + shift
            elif point.type == "float64":
                return float(raw) if decimals is None else round(raw, decimals)
            value = float(fmt_digits(raw))
            return value if decimals is None else round(value, decimals)

        return decode_float

    if not scaled and decimals is None:
        def decode_int(be: bytes, sw: bytes) -> Value:
            return int(unpack_from(sw if swapped else be, offset)[0])

        return decode_int

    def decode_scaled(be: bytes, sw: bytes) -> Value:
        value: float = unpack_from(sw if swapped else be, offset)[0] * scale + shift
        return round(value, decimals) if decimals is not None else value

    return decode_scaled


def _bit(point: Point, offset: int) -> Decoder:
    unpack_from = struct.Struct(">H").unpack_from
    mask = 1 << (point.bit or 0)

    def decode_bit(be: bytes, sw: bytes) -> Value:
        return bool(unpack_from(be, offset)[0] & mask)

    return decode_bit


def _string(point: Point, offset: int) -> Decoder:
    length = 2 * point.width
    # words reversed for CDAB/DCBA, bytes swapped within words for BADC/DCBA
    reverse = point.order in _LITTLE
    byteswap = point.order in ("BADC", "DCBA")

    def decode_string(be: bytes, sw: bytes) -> Value:
        data = (sw if byteswap else be)[offset:offset + length]
        if reverse:
            data = b"".join(data[i:i + 2] for i in range(len(data) - 2, -1, -2))
        return data.split(b"\0", 1)[0].decode("utf-8", errors="replace").rstrip()

    return decode_string


def compile_decoder(point: Point, start: int) -> Decoder:
    """Decoder of `point` within a block of registers starting at address `start`."""
    offset = 2 * (point.address - start)
    if point.type == "bit":
        return _bit(point, offset)
    if point.type == "string":
        return _string(point, offset)
    return _number(point, offset)


class RegisterBlock:
    """Decodes the answer to one read of `count` registers starting at `start`."""

    __slots__ = ("_pack_be", "_pack_sw", "items")

    def __init__(self, start: int, count: int, points: Sequence[Point]) -> None:
        self._pack_be = struct.Struct(f">{count}H").pack
        swap = any(needs_swap(p) for p in points)
        self._pack_sw = struct.Struct(f"<{count}H").pack if swap else None
        self.items = [(p, compile_decoder(p, start)) for p in points]

    def decode(self, registers: Sequence[int]) -> list[tuple[Point, Value]]:
        """(point, value) for every point; value None where the device sent NaN or inf."""
        be = self._pack_be(*registers)
        sw = self._pack_sw(*registers) if self._pack_sw is not None else b""
        return [(p, fn(be, sw)) for p, fn in self.items]


class BitBlock:
    """Decodes the answer to one read of coils or discrete inputs."""

    __slots__ = ("items",)

    def __init__(self, start: int, points: Sequence[Point]) -> None:
        self.items = [(p, p.address - start) for p in points]

    def decode(self, bits: Sequence[bool]) -> list[tuple[Point, Value]]:
        """(point, value) for every point."""
        return [(p, bool(bits[i])) for p, i in self.items]


def decode_values(registers: Sequence[int], point: Point) -> list[Value]:
    """Consecutive values of `point`'s type across `registers` (for the CLI)."""
    be = struct.pack(f">{len(registers)}H", *registers)
    sw = struct.pack(f"<{len(registers)}H", *registers)
    return [compile_decoder(replace(point, address=i), 0)(be, sw)
            for i in range(0, len(registers) - point.width + 1, point.width)]
