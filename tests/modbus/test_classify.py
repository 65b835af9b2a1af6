"""`classify`: what one request came to, as a table of cases (no I/O)."""

from __future__ import annotations

from typing import Any

import pytest
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.pdu import ExceptionResponse
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse

from drivers.modbus.classify import ExceptionReply, Where, classify, worth_retrying
from gateway.errors import ProtocolError, TransientError

W = Where("tcp://10.0.0.5:502", unit=3, table="holding", address=100, count=2, timeout=0.5)
GOOD = ReadHoldingRegistersResponse(registers=[1, 2])

# reply, error, connected, garbled -> (error class or None, kind, code, words in the message)
CASES: list[tuple[str, Any, BaseException | None, bool, bool,
                  tuple[type | None, str | None, int | None, str]]] = [
    ("answer", GOOD, None, True, False, (None, None, None, "")),
    ("illegal address", ExceptionResponse(3, 2), None, True, False,
     (ExceptionReply, "exception", 2, "exception 2 (illegal data address) for holding 100..101")),
    ("busy", ExceptionResponse(3, 6), None, True, False,
     (ExceptionReply, "exception", 6, "server device busy")),
    ("gateway: path unavailable", ExceptionResponse(3, 10), None, True, False,
     (TransientError, "timeout", None, "gateway: unit 3 did not respond (exception 10")),
    ("gateway: target silent", ExceptionResponse(3, 11), None, True, False,
     (TransientError, "timeout", None, "exception 11")),
    ("silence", None, TimeoutError(), True, False,
     (TransientError, "timeout", None, "did not answer holding 100..101 within 0.5s")),
    ("bytes that never made a frame", None, TimeoutError(), True, True,
     (ProtocolError, "crc", None, "garbled answer for holding 100..101")),
    ("link closed while waiting", None, TimeoutError(), False, True,
     (TransientError, "disconnected", None, "closed during a request to unit 3")),
    ("pymodbus rejects the answer", None, ModbusIOException("bad length"), True, False,
     (ProtocolError, "protocol", None, "bad answer for holding 100..101")),
    ("connection dropped", None, ConnectionException("reset"), False, False,
     (TransientError, "disconnected", None, "dropped during a request")),
    ("socket error, link down", None, ConnectionResetError("peer"), False, False,
     (TransientError, "disconnected", None, "dropped during a request")),
]


@pytest.mark.parametrize(("reply", "error", "connected", "garbled", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_classify(reply: Any, error: BaseException | None, connected: bool, garbled: bool,
                  expected: tuple[type | None, str | None, int | None, str]) -> None:
    cls, kind, code, words = expected
    got = classify(reply, error, connected=connected, garbled=garbled, where=W)
    if cls is None:
        assert got is None
        return
    assert type(got) is cls
    assert got is not None
    assert got.kind == kind
    assert words in str(got)
    if code is not None:
        assert isinstance(got, ExceptionReply)
        assert (got.code, got.unit, got.address) == (code, 3, 100)


def test_a_write_says_so_in_its_exception() -> None:
    w = Where("rtu:/dev/ttyUSB0", unit=1, table="coil", address=7, action="write")
    got = classify(ExceptionResponse(5, 2), None, connected=True, garbled=False, where=w)
    assert isinstance(got, ExceptionReply)
    assert "for a write of coil 7" in str(got)


def test_an_unexpected_error_is_not_swallowed() -> None:
    with pytest.raises(KeyError):
        classify(None, KeyError("bug"), connected=True, garbled=False, where=W)


@pytest.mark.parametrize(("failure", "retry"), [
    (ExceptionReply(1, 6, "holding", 0, 1), True),
    (ExceptionReply(1, 5, "holding", 0, 1), True),
    (ExceptionReply(1, 2, "holding", 0, 1), False),
    (ExceptionReply(1, 4, "holding", 0, 1), False),
    (TransientError("t", kind="timeout"), True),
    (ProtocolError("p", kind="crc"), True),
    (TransientError("d", kind="disconnected"), True),
])
def test_worth_retrying(failure: Any, retry: bool) -> None:
    assert worth_retrying(failure) is retry
