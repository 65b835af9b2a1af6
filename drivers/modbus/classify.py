"""What one Modbus request came to: a pure function beside the I/O that calls it.

`classify` looks at what pymodbus handed back (a reply, or the exception the request
raised) and at two facts about the link at that moment, and says whether the request
succeeded or why it failed, as the error the caller raises or retries on. It does no I/O
and keeps no state, so every case is one row of a table test (tests/modbus/test_classify.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymodbus.exceptions import ModbusException

from gateway.errors import DeviceError, ProtocolError, TransientError

EXCEPTION_NAMES = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value",
    4: "server device failure", 5: "acknowledge", 6: "server device busy",
    7: "negative acknowledge", 8: "memory parity error", 10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
BUSY_CODES = frozenset({5, 6})
"""Exceptions worth repeating the request for (the device is busy, not unwilling)."""
GATEWAY_CODES = frozenset({10, 11})
"""A TCP gateway saying that the unit behind it did not answer: a timeout, not a refusal."""


@dataclass(frozen=True, slots=True)
class Where:
    """Which request: for messages and for the exception it may be answered with."""

    bus: str
    unit: int
    table: str
    address: int
    count: int = 1
    timeout: float = 1.0
    action: str = "read"

    @property
    def span(self) -> str:
        """`holding 100..101` style location."""
        last = self.address + self.count - 1
        return f"{self.table} {self.address}" + (f"..{last}" if last != self.address else "")


class ExceptionReply(DeviceError):
    """The device answered a request with a Modbus exception."""

    kind = "exception"

    def __init__(self, unit: int, code: int, table: str, address: int, count: int, *,
                 action: str = "read") -> None:
        last = address + count - 1
        where = f"{table} {address}" + (f"..{last}" if last != address else "")
        verb = "" if action == "read" else f"a {action} of "
        super().__init__(f"unit {unit} answered exception {code} "
                         f"({EXCEPTION_NAMES.get(code, 'unknown')}) for {verb}{where}",
                         address=address)
        self.unit = unit
        self.code = code


def classify(reply: Any, error: BaseException | None, *, connected: bool, garbled: bool,
             where: Where) -> DeviceError | None:
    """None when `reply` is a good answer, else the error the request came to.

    `error` is what awaiting the request raised (TimeoutError from our `asyncio.timeout`,
    a ModbusException or OSError from pymodbus), `connected` whether the link was still
    open afterwards, `garbled` whether bytes arrived during the request that never made a
    frame. Kinds: `exception` (ExceptionReply), `timeout`, `crc`, `protocol`,
    `disconnected`.
    """
    w = where
    if error is None:
        if reply is None:
            return ProtocolError(f"unit {w.unit}: no answer object for {w.span}",
                                 kind="protocol")
        if not reply.isError():
            return None
        code = int(reply.exception_code)
        if code in GATEWAY_CODES:
            return TransientError(f"gateway: unit {w.unit} did not respond "
                                  f"(exception {code}, {EXCEPTION_NAMES[code]})",
                                  kind="timeout")
        return ExceptionReply(w.unit, code, w.table, w.address, w.count, action=w.action)
    if isinstance(error, TimeoutError):
        if not connected:
            return TransientError(f"{w.bus} closed during a request to unit {w.unit}",
                                  kind="disconnected")
        if garbled:
            return ProtocolError(f"unit {w.unit}: garbled answer for {w.span} (CRC error or "
                                 "noise; check baud rate, parity, wiring and termination)",
                                 kind="crc")
        return TransientError(f"unit {w.unit} did not answer {w.span} within "
                              f"{w.timeout:g}s", kind="timeout")
    if isinstance(error, ModbusException | OSError):
        if connected:
            return ProtocolError(f"unit {w.unit}: bad answer for {w.span}: {error}",
                                 kind="protocol")
        return TransientError(f"{w.bus} dropped during a request: {error}",
                              kind="disconnected")
    raise error


def worth_retrying(failure: DeviceError) -> bool:
    """Whether repeating the same request may succeed (busy device, no or bad answer)."""
    if isinstance(failure, ExceptionReply):
        return failure.code in BUSY_CODES
    return isinstance(failure, TransientError)
