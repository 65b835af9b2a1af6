"""Register words to values, compiled once per point so a poll only unpacks.

Orders name where the value's bytes A (most significant) .. D travel on the wire. A block
is packed once big-endian (`be`, the wire bytes) and, if any point needs it, once with the
bytes of every register swapped (`sw`). Then every order is one `unpack_from`:

    ABCD  big-endian unpack of be      DCBA  little-endian unpack of be
    BADC  big-endian unpack of sw      CDAB  little-endian unpack of sw

which holds for 16-, 32- and 64-bit values alike (CDAB on a float64 reverses the four
words, as Modbus devices that send the low word first do). Single-register values (int16,
uint16, bit) skip the packing and read the register integers directly: a meter of 100
scaled 16-bit registers decodes without one struct call.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import replace

from gateway.model import Reading, Value

from .registermap import Point

Decoder = Callable[[Sequence[int], bytes, bytes], Value]
"""(registers, wire bytes of the block, byte-swapped bytes) -> value (None if invalid)."""

_FORMATS = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q",
            "uint64": "Q", "float32": "f", "float64": "d"}
_SWAPPED = frozenset({"BADC", "CDAB"})
_LITTLE = frozenset({"DCBA", "CDAB"})
_BYTESWAP_16 = frozenset({"BADC", "DCBA"})
"""Orders that swap the two bytes of a single-register value."""
_new_tuple = tuple.__new__


def needs_bytes(point: Point) -> bool:
    """Whether the point decodes from packed bytes (multi-register values and strings)."""
    return point.type not in ("int16", "uint16", "bit")


def needs_swap(point: Point) -> bool:
    """Whether the point reads the byte-swapped copy of the block."""
    if point.type == "string":
        return point.order in _BYTESWAP_16
    return needs_bytes(point) and point.order in _SWAPPED


def _power_of_ten_divisor(scale: float) -> int | None:
    """10**k if scale == 10**-k (k >= 1): dividing by it is exact where multiplying is not."""
    for k in range(1, 10):
        if scale == 10.0 ** -k:
            return int(10**k)
    return None


def _divisor(point: Point) -> int | None:
    """10**k when the point's only change to the raw value is an exact division by it."""
    if point.scale is None or point.offset is not None:
        return None
    divisor = _power_of_ten_divisor(point.scale)
    decimals = point.decimals
    if divisor is not None and (decimals is None or decimals >= round(math.log10(divisor))):
        return divisor
    return None


def _post(point: Point) -> Callable[[float], Value] | None:
    """raw -> value for scale/offset/decimals; None when the raw value is the value."""
    scale = point.scale if point.scale is not None else 1.0
    shift = point.offset or 0.0
    decimals = point.decimals
    if point.scale is None and point.offset is None:
        if decimals is None:
            return None
        return lambda raw: round(raw, decimals)
    divisor = _divisor(point)
    if divisor is not None:
        # 2304 / 10 is the double nearest 230.4; 2304 * 0.1 is 230.40000000000003
        return lambda raw: raw / divisor
    if decimals is None:
        return lambda raw: raw * scale + shift
    return lambda raw: round(raw * scale + shift, decimals)


def _word(point: Point, index: int) -> Decoder:
    """int16 / uint16 / bit straight from the register integers."""
    swap = point.order in _BYTESWAP_16
    post = _post(point)
    if point.type == "bit":
        mask = 1 << (point.bit or 0)

        def decode_bit(regs: Sequence[int], be: bytes, sw: bytes) -> Value:
            return bool(regs[index] & mask)

        return decode_bit
    signed = point.type == "int16"
    if not swap and not signed and post is None:
        def decode_u16(regs: Sequence[int], be: bytes, sw: bytes) -> Value:
            return regs[index]

        return decode_u16
    divisor = _divisor(point)
    if not swap and divisor is not None:
        # the common meter register (a scaled 16-bit value): one call per value, not two
        if signed:
            def decode_s16_div(regs: Sequence[int], be: bytes, sw: bytes) -> Value:
                r = regs[index]
                return (r - 65536 if r > 32767 else r) / divisor

            return decode_s16_div

        def decode_u16_div(regs: Sequence[int], be: bytes, sw: bytes) -> Value:
            return regs[index] / divisor

        return decode_u16_div
    if not swap and post is not None:
        if signed:
            def decode_s16_post(regs: Sequence[int], be: bytes, sw: bytes) -> Value:
                r = regs[index]
                return post(r - 65536 if r > 32767 else r)

            return decode_s16_post

        def decode_u16_post(regs: Sequence[int], be: bytes, sw: bytes) -> Value:
            return post(regs[index])

        return decode_u16_post

    def decode_word(regs: Sequence[int], be: bytes, sw: bytes) -> Value:
        r = regs[index]
        if swap:
            r = ((r & 0xFF) << 8) | (r >> 8)
        if signed and r > 32767:
            r -= 65536
        return r if post is None else post(r)

    return decode_word


def _number(point: Point, offset: int) -> Decoder:
    fmt = ("<" if point.order in _LITTLE else ">") + _FORMATS[point.type]
    unpack_from = struct.Struct(fmt).unpack_from
    swapped = point.order in _SWAPPED
    post = _post(point)
    isfinite = math.isfinite

    if point.type == "float32":
        # float32 carries ~7 significant digits: print it that way (230.4, not 230.39999389)
        fmt7 = "{:.7g}".format

        def decode_float32(regs: Sequence[int], be: bytes, sw: bytes) -> Value:
            raw: float = unpack_from(sw if swapped else be, offset)[0]
            if not isfinite(raw):
                return None
            return float(fmt7(raw if post is None else post(raw)))

        return decode_float32

    if point.type == "float64":
        def decode_float64(regs: Sequence[int], be: bytes, sw: bytes) -> Value:
            raw: float = unpack_from(sw if swapped else be, offset)[0]
            if not isfinite(raw):
                return None
            return raw if post is None else post(raw)

        return decode_float64

    if post is None:
        def decode_int(regs: Sequence[int], be: bytes, sw: bytes) -> Value:
            return int(unpack_from(sw if swapped else be, offset)[0])

        return decode_int

    def decode_int_post(regs: Sequence[int], be: bytes, sw: bytes) -> Value:
        return post(unpack_from(sw if swapped else be, offset)[0])

    return decode_int_post


def _string(point: Point, offset: int) -> Decoder:
    length = 2 * point.width
    # words reversed for CDAB/DCBA, bytes swapped within words for BADC/DCBA
    reverse = point.order in _LITTLE
    byteswap = point.order in _BYTESWAP_16

    def decode_string(regs: Sequence[int], be: bytes, sw: bytes) -> Value:
        data = (sw if byteswap else be)[offset:offset + length]
        if reverse:
            data = b"".join(data[i:i + 2] for i in range(len(data) - 2, -1, -2))
        return data.split(b"\0", 1)[0].decode("utf-8", errors="replace").rstrip()

    return decode_string


def compile_decoder(point: Point, start: int) -> Decoder:
    """Decoder of `point` within a block of registers starting at address `start`."""
    index = point.address - start
    if not needs_bytes(point):
        return _word(point, index)
    if point.type == "string":
        return _string(point, 2 * index)
    return _number(point, 2 * index)


class RegisterBlock:
    """Decodes the answer to one read of `count` registers starting at `start`."""

    __slots__ = ("_pack_be", "_pack_sw", "items", "points")

    def __init__(self, start: int, count: int, points: Sequence[Point]) -> None:
        self.points = tuple(points)
        packs = any(needs_bytes(p) for p in points)
        self._pack_be = struct.Struct(f">{count}H").pack if packs else None
        swap = any(needs_swap(p) for p in points)
        self._pack_sw = struct.Struct(f"<{count}H").pack if swap else None
        self.items = [(p.name, p.unit, compile_decoder(p, start)) for p in points]

    def decode(self, registers: Sequence[int]) -> list[Value]:
        """Values in the order of `points`; None where the device sent NaN or inf."""
        be = self._pack_be(*registers) if self._pack_be is not None else b""
        sw = self._pack_sw(*registers) if self._pack_sw is not None else b""
        return [fn(registers, be, sw) for _n, _u, fn in self.items]

    def readings(self, registers: Sequence[int], device: str, ts: int) -> list[Reading]:
        """The hot path: readings straight from the answer's registers."""
        be = self._pack_be(*registers) if self._pack_be is not None else b""
        sw = self._pack_sw(*registers) if self._pack_sw is not None else b""
        new = _new_tuple  # Reading(...) without its Python-level __new__: 40 % cheaper
        return [new(Reading, (device, name, v, ts, unit, "good" if v is not None else "bad"))
                for name, unit, fn in self.items for v in (fn(registers, be, sw),)]


class BitBlock:
    """Decodes the answer to one read of coils or discrete inputs."""

    __slots__ = ("items", "points")

    def __init__(self, start: int, points: Sequence[Point]) -> None:
        self.points = tuple(points)
        self.items = [(p.name, p.unit, p.address - start) for p in points]

    def decode(self, bits: Sequence[bool]) -> list[Value]:
        """Values in the order of `points`."""
        return [bool(bits[i]) for _n, _u, i in self.items]

    def readings(self, bits: Sequence[bool], device: str, ts: int) -> list[Reading]:
        """Readings straight from the answer's bits."""
        return [Reading(device, name, bool(bits[i]), ts, unit) for name, unit, i in self.items]


def decode_values(registers: Sequence[int], point: Point) -> list[Value]:
    """Consecutive values of `point`'s type across `registers` (for the CLI)."""
    be = struct.pack(f">{len(registers)}H", *registers)
    sw = struct.pack(f"<{len(registers)}H", *registers)
    return [compile_decoder(replace(point, address=i), 0)(registers, be, sw)
            for i in range(0, len(registers) - point.width + 1, point.width)]
