"""DL/T 645-2007 frames: pure encoding and decoding, no I/O.

    FE FE FE FE | 68 | A0..A5 | 68 | C | L | DATA (each byte + 0x33) | CS | 16

The wake-up bytes FE are optional on receive. The address is 12 BCD digits sent lowest
byte first (`000012345678` goes out as `78 56 34 12 00 00`). C is the control code: bit 7
set in replies, bit 6 in exception replies (the data is then one error byte), bit 5 when
more frames follow, bits 0-4 the function (0x11 read data, 0x13 read address, 0x08
broadcast time sync). CS is the sum modulo 256 of every byte from the first 68 to the end
of DATA.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from gateway.errors import ProtocolError

PREAMBLE = b"\xfe\xfe\xfe\xfe"
START = 0x68
END = 0x16
OFFSET = 0x33
MAX_DATA = 200
"""Longest data field the standard allows."""

READ_DATA = 0x11
READ_MORE = 0x12
READ_ADDRESS = 0x13
BROADCAST_TIME = 0x08
REPLY = 0x80
EXCEPTION = 0x40
MORE = 0x20
FUNCTION = 0x1F

WILDCARD = "aaaaaaaaaaaa"
"""The read-address command goes to every meter on the bus (only one may be connected)."""
BROADCAST = "999999999999"
"""Broadcast time sync goes to every meter on the bus; none answers."""

ERRORS = {
    0x01: "other error",
    0x02: "no such data (the meter does not support this DI)",
    0x04: "wrong password or not authorised",
    0x08: "baud rate cannot be changed",
    0x10: "too many year time zones",
    0x20: "too many day periods",
    0x40: "too many tariffs",
}
ERROR_LABELS = {0x01: "other", 0x02: "no_data", 0x04: "unauthorised", 0x08: "baud_rate",
                0x10: "time_zones", 0x20: "day_periods", 0x40: "tariffs"}

_ADDRESS = re.compile(r"^(?:[0-9]{1,12}|[Aa]{12})$")
_DI = re.compile(r"^[0-9A-Fa-f]{8}$")


class FrameError(ProtocolError):
    """Bytes that are not a valid DL/T 645 frame."""

    kind = "frame"


class MeterException(ProtocolError):
    """The meter answered with an exception reply; `code` is its error byte."""

    kind = "exception"

    def __init__(self, code: int, *, address: str | None = None, di: int | None = None) -> None:
        super().__init__(f"meter {address} refused {di_text(di) if di is not None else 'it'}: "
                         f"{error_text(code)}", address=address)
        self.code = code
        self.di = di

    @property
    def label(self) -> str:
        """Short name of the (lowest) error bit set, for a metric label."""
        return next((v for bit, v in ERROR_LABELS.items() if self.code & bit), "unknown")


def error_text(code: int) -> str:
    """Every error bit of an exception reply, in words."""
    texts = [text for bit, text in ERRORS.items() if code & bit]
    return "; ".join(texts) if texts else f"error byte 0x{code:02X}"


@dataclass(frozen=True, slots=True)
class Frame:
    """A decoded frame; `data` has the 0x33 offset removed."""

    address: str
    """12 hex digits, most significant first, as printed on the nameplate."""
    control: int
    data: bytes = b""

    @property
    def function(self) -> int:
        """Bits 0-4 of the control code (0x11 read data, 0x13 read address...)."""
        return self.control & FUNCTION

    @property
    def is_reply(self) -> bool:
        """Sent by a meter (bit 7)."""
        return bool(self.control & REPLY)

    @property
    def is_exception(self) -> bool:
        """An exception reply (bit 6): `data` is one error byte."""
        return bool(self.control & EXCEPTION)

    @property
    def has_more(self) -> bool:
        """More frames follow (bit 5)."""
        return bool(self.control & MORE)


def normalize_address(text: str) -> str:
    """`12345678` -> `000012345678`; the wildcard becomes lower case; ValueError if bad."""
    text = text.strip().replace(" ", "")
    if not _ADDRESS.match(text):
        raise ValueError(f"{text!r} is not a meter address: up to 12 digits as on the "
                         "nameplate, such as 000012345678")
    return text.lower().zfill(12)


def address_bytes(address: str) -> bytes:
    """Wire order (lowest byte first) of a normalized address."""
    return bytes.fromhex(address)[::-1]


def address_text(wire: bytes) -> str:
    """The printed address of 6 wire-order bytes."""
    return wire[::-1].hex()


def parse_di(text: str) -> int:
    """`02010100` -> 0x02010100; ValueError if it is not 8 hex digits."""
    if not _DI.match(text.strip()):
        raise ValueError(f"{text!r} is not a data identifier: 8 hex digits such as 02010100")
    return int(text, 16)


def di_text(di: int) -> str:
    """0x02010100 -> `02010100`."""
    return f"{di:08X}"


def encode(address: str, control: int, data: bytes = b"", *, preamble: bool = True) -> bytes:
    """A complete frame; `address` as from `normalize_address`."""
    if len(data) > MAX_DATA:
        raise ValueError(f"data field of {len(data)} bytes; at most {MAX_DATA}")
    body = bytearray((START, *address_bytes(address), START, control & 0xFF, len(data)))
    body += bytes((b + OFFSET) & 0xFF for b in data)
    body += bytes((sum(body) & 0xFF, END))
    return (PREAMBLE if preamble else b"") + bytes(body)


def read_data(address: str, di: int, *, preamble: bool = True) -> bytes:
    """Request 0x11: read the data item `di`."""
    return encode(address, READ_DATA, di.to_bytes(4, "little"), preamble=preamble)


def read_address(*, preamble: bool = True) -> bytes:
    """Request 0x13 to the wildcard address: the only meter on the bus says who it is."""
    return encode(WILDCARD, READ_ADDRESS, preamble=preamble)


def _bcd(n: int) -> int:
    return (n // 10) << 4 | n % 10


def broadcast_time(when: datetime, *, preamble: bool = True) -> bytes:
    """Broadcast time sync (0x08): every meter on the bus sets its clock to `when`.

    The data is YYMMDDhhmmss in BCD, sent lowest byte first like every multi-byte value of
    the standard (seconds first on the wire). Meters do not answer a broadcast.
    """
    if not 2000 <= when.year <= 2099:
        raise ValueError(f"{when:%Y}: DL/T 645 clocks hold years 2000..2099")
    fields = (when.second, when.minute, when.hour, when.day, when.month, when.year % 100)
    return encode(BROADCAST, BROADCAST_TIME, bytes(_bcd(f) for f in fields),
                  preamble=preamble)


def _frame_at(buf: bytes | bytearray, i: int) -> tuple[Frame | FrameError | None, int]:
    """Decode a frame whose first 68 is at `i`: (frame, end), (error, end) or (None, -1)."""
    n = len(buf)
    if n - i < 12:
        return None, -1
    if buf[i + 7] != START:
        return FrameError("no second 68", kind="frame"), i + 1
    length = buf[i + 9]
    if length > MAX_DATA:
        return FrameError(f"data length {length} > {MAX_DATA}", kind="frame"), i + 1
    end = i + 12 + length
    if n < end:
        return None, -1
    if buf[end - 1] != END:
        return FrameError("no end byte 16", kind="frame"), i + 1
    cs = sum(buf[i:end - 2]) & 0xFF
    if cs != buf[end - 2]:
        return FrameError(f"checksum {buf[end - 2]:02X}, computed {cs:02X}",
                          kind="checksum"), end
    data = bytes((b - OFFSET) & 0xFF for b in buf[i + 10:end - 2])
    return Frame(address_text(bytes(buf[i + 1:i + 7])), buf[i + 8], data), end


def scan(buf: bytes | bytearray) -> tuple[Frame | FrameError | None, int]:
    """The first frame in a receive buffer and how many bytes to drop.

    Returns `(Frame, used)`, `(FrameError, used)` for a well-delimited frame with a bad
    checksum, or `(None, used)` when more bytes are needed; `used` bytes (wake-up bytes,
    noise, the frame) can be removed from the buffer. A 68 that does not start a frame is
    skipped, and a complete frame behind an incomplete candidate is still found.
    """
    n = len(buf)
    waiting = -1
    i = buf.find(START)
    while 0 <= i < n:
        result, end = _frame_at(buf, i)
        if result is None:
            if waiting < 0:
                waiting = i
        elif isinstance(result, Frame) or result.kind == "checksum":
            return result, end
        i = buf.find(START, i + 1)
    return None, (waiting if waiting >= 0 else n)


def decode(raw: bytes | bytearray) -> Frame:
    """Exactly one frame, optionally after FE wake-up bytes; `FrameError` otherwise."""
    body = bytes(raw).lstrip(b"\xfe")
    if not body:
        raise FrameError("empty frame", kind="short")
    if body[0] != START:
        raise FrameError(f"frame starts with {body[0]:02X}, not 68", kind="frame")
    result, end = _frame_at(body, 0)
    if result is None:
        raise FrameError(f"frame cut short after {len(body)} bytes", kind="short")
    if isinstance(result, FrameError):
        raise result
    if end != len(body):
        raise FrameError(f"{len(body) - end} bytes after the end of the frame", kind="frame")
    return result
