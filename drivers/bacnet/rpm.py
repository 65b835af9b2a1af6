"""Lean decoders of the two messages a gateway gets all day: ReadPropertyMultiple-ACK (every
poll) and UnconfirmedCOVNotification (every change).

bacpypes3 decodes an answer into a tree of generic sequence objects and casts each value by
the object's class: about 0.5 ms of CPU per value read, a hundred times what a Modbus value
costs, which a Pi-class gateway with hundreds of points cannot spend. This module walks the
ASN.1 tags of the answer once (ASHRAE 135 clause 20.2) and returns plain numbers; it is
pure (bytes in, tuples out) and tested against bacpypes3's own decoder as the oracle
(tests/bacnet/test_rpm.py). Values of a type it does not know (dates, octet strings,
constructed values) come back as `Unparsed` and the caller reads them the slow way.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_REAL = struct.Struct(">f")
_DOUBLE = struct.Struct(">d")


class DecodeError(ValueError):
    """The answer does not follow the encoding rules."""


@dataclass(frozen=True, slots=True)
class Failed:
    """A property the device could not give: its error class and code numbers."""

    error_class: int
    error_code: int


@dataclass(frozen=True, slots=True)
class Unparsed:
    """A value this decoder does not decode (constructed, or an unusual type)."""


Value = float | int | bool | str | list[int] | None | Failed | Unparsed
Result = tuple[int, int, int, int | None, Value]
"""(object type number, instance, property number, array index, value)."""


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def more(self) -> bool:
        return self.pos < len(self.data)

    def tag(self) -> tuple[int, bool, int, int]:
        """(tag number, context class, lvt, length or opening/closing marker) at pos."""
        data = self.data
        try:
            first = data[self.pos]
            self.pos += 1
            number = first >> 4
            if number == 15:
                number = data[self.pos]
                self.pos += 1
            context = bool(first & 0x08)
            lvt = first & 0x07
            if context and lvt in (6, 7):
                return number, context, lvt, 0
            if not context and number == 1:  # application Boolean: value in the LVT
                return number, context, lvt, 0
            length = lvt
            if lvt == 5:
                length = data[self.pos]
                self.pos += 1
                if length == 254:
                    length = int.from_bytes(data[self.pos:self.pos + 2], "big")
                    self.pos += 2
                elif length == 255:
                    length = int.from_bytes(data[self.pos:self.pos + 4], "big")
                    self.pos += 4
        except IndexError:
            raise DecodeError("answer ends inside a tag") from None
        if self.pos + length > len(data):
            raise DecodeError("tag length runs past the end of the answer")
        return number, context, lvt, length

    def take(self, length: int) -> bytes:
        chunk = self.data[self.pos:self.pos + length]
        self.pos += length
        return chunk

    def expect_closing(self, number: int) -> None:
        got, context, lvt, _ = self.tag()
        if not (context and lvt == 7 and got == number):
            raise DecodeError(f"expected closing tag {number}")

    def skip_to_closing(self, number: int) -> None:
        """Skip a constructed value up to its closing tag `number` (nested tags counted)."""
        depth = 0
        while True:
            got, context, lvt, length = self.tag()
            if context and lvt == 6:
                depth += 1
            elif context and lvt == 7:
                if depth == 0:
                    if got != number:
                        raise DecodeError(f"expected closing tag {number}")
                    return
                depth -= 1
            else:
                self.pos += length


def _unsigned(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def _primitive(r: _Reader, number: int, lvt: int, length: int) -> Value:
    if number == 0:
        return None
    if number == 1:
        return bool(lvt)
    raw = r.take(length)
    if number in (2, 9):  # Unsigned, Enumerated
        return _unsigned(raw)
    if number == 3:
        return int.from_bytes(raw, "big", signed=True)
    if number == 4 and length == 4:
        return float(_REAL.unpack(raw)[0])
    if number == 5 and length == 8:
        return float(_DOUBLE.unpack(raw)[0])
    if number == 7 and raw[:1] == b"\x00":  # CharacterString, UTF-8
        return raw[1:].decode("utf-8", "replace")
    if number == 8 and raw:  # BitString: first octet = unused bits in the last
        bits = (len(raw) - 1) * 8 - raw[0]
        return [(raw[1 + i // 8] >> (7 - i % 8)) & 1 for i in range(bits)]
    return Unparsed()


def decode_ack(data: bytes) -> list[Result]:
    """The results of a ReadPropertyMultiple-ACK's service data (after the APDU header)."""
    r = _Reader(data)
    out: list[Result] = []
    while r.more():
        number, context, _lvt, length = r.tag()
        if not (context and number == 0 and length == 4):
            raise DecodeError("expected an object identifier [0]")
        word = _unsigned(r.take(4))
        otype, instance = word >> 22, word & 0x3FFFFF
        number, context, lvt, _ = r.tag()
        if not (context and number == 1 and lvt == 6):
            raise DecodeError("expected the list of results [1]")
        while True:
            number, context, lvt, length = r.tag()
            if context and number == 1 and lvt == 7:
                break
            if not (context and number == 2):
                raise DecodeError("expected a property identifier [2]")
            prop = _unsigned(r.take(length))
            index: int | None = None
            number, context, lvt, length = r.tag()
            if context and number == 3 and lvt not in (6, 7):
                index = _unsigned(r.take(length))
                number, context, lvt, length = r.tag()
            if context and number == 4 and lvt == 6:
                out.append((otype, instance, prop, index, _value(r)))
            elif context and number == 5 and lvt == 6:
                klass_tag = r.tag()
                klass = _unsigned(r.take(klass_tag[3]))
                code_tag = r.tag()
                code = _unsigned(r.take(code_tag[3]))
                r.expect_closing(5)
                out.append((otype, instance, prop, index, Failed(klass, code)))
            else:
                raise DecodeError("expected a property value [4] or an error [5]")
    return out


def _value(r: _Reader, closing: int = 4) -> Value:
    """The value after an opening tag, up to and including its closing tag `closing`."""
    start = r.pos
    number, context, lvt, length = r.tag()
    if context:
        r.pos = start
        r.skip_to_closing(closing)
        return Unparsed()
    value = _primitive(r, number, lvt, length)
    after = r.pos
    number, context, lvt, _ = r.tag()
    if context and lvt == 7 and number == closing:
        return value
    r.pos = after  # more than one value (a list): not a scalar
    r.skip_to_closing(closing)
    return Unparsed()


@dataclass(frozen=True, slots=True)
class CovNotification:
    """An UnconfirmedCOVNotification: who sent it for which object, and the values."""

    spid: int
    device: int
    object_type: int
    instance: int
    time_remaining: int
    values: tuple[tuple[int, int | None, Value], ...]
    """(property number, array index, value) for each property."""


def decode_cov(data: bytes) -> CovNotification:
    """The service data of an UnconfirmedCOVNotification-Request (after its 2-byte header)."""
    r = _Reader(data)
    fields: list[int] = []
    for want in range(4):  # [0] process id, [1] device, [2] object, [3] time remaining
        number, context, lvt, length = r.tag()
        if not (context and number == want and lvt not in (6, 7)):
            raise DecodeError(f"expected context tag {want}")
        fields.append(_unsigned(r.take(length)))
    number, context, lvt, _ = r.tag()
    if not (context and number == 4 and lvt == 6):
        raise DecodeError("expected the list of values [4]")
    values: list[tuple[int, int | None, Value]] = []
    while True:
        number, context, lvt, length = r.tag()
        if context and number == 4 and lvt == 7:
            break
        if not (context and number == 0):
            raise DecodeError("expected a property identifier [0]")
        prop = _unsigned(r.take(length))
        index: int | None = None
        number, context, lvt, length = r.tag()
        if context and number == 1 and lvt not in (6, 7):
            index = _unsigned(r.take(length))
            number, context, lvt, length = r.tag()
        if not (context and number == 2 and lvt == 6):
            raise DecodeError("expected a value [2]")
        values.append((prop, index, _value(r, 2)))
        if r.more():  # an optional priority [3]
            mark = r.pos
            number, context, lvt, length = r.tag()
            if context and number == 3 and lvt not in (6, 7):
                r.pos += length
            else:
                r.pos = mark
    device, obj = fields[1], fields[2]
    return CovNotification(fields[0], device & 0x3FFFFF, obj >> 22, obj & 0x3FFFFF, fields[3],
                           tuple(values))
