"""The lean ReadPropertyMultiple-ACK decoder against bacpypes3's encoder as the oracle."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from bacpypes3.apdu import ReadPropertyMultipleACK
from bacpypes3.basetypes import (
    ErrorType,
    PriorityArray,
    PriorityValue,
    ReadAccessResult,
    ReadAccessResultElement,
    ReadAccessResultElementChoice,
    StatusFlags,
)
from bacpypes3.constructeddata import Any as AnyValue
from bacpypes3.primitivedata import (
    Boolean,
    CharacterString,
    Date,
    Double,
    Enumerated,
    Integer,
    Null,
    ObjectIdentifier,
    Real,
    Unsigned,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.bacnet.rpm import DecodeError, Failed, Unparsed, decode_ack


def element(prop: str, value: Any = None, *, error: tuple[str, str] | None = None,
            index: int | None = None) -> ReadAccessResultElement:
    if error is None:
        choice = ReadAccessResultElementChoice(propertyValue=AnyValue(value))
    else:
        choice = ReadAccessResultElementChoice(
            propertyAccessError=ErrorType(errorClass=error[0], errorCode=error[1]))
    el = ReadAccessResultElement(propertyIdentifier=prop, readResult=choice)
    if index is not None:
        el.propertyArrayIndex = index
    return el


def encode(*results: tuple[str, list[ReadAccessResultElement]]) -> bytes:
    ack = ReadPropertyMultipleACK(listOfReadAccessResults=[
        ReadAccessResult(objectIdentifier=ObjectIdentifier(obj), listOfResults=els)
        for obj, els in results])
    return bytes(ack.encode().pduData)


def test_every_kind_of_value_a_poll_meets() -> None:
    data = encode(
        ("analog-input,1", [element("present-value", Real(21.5)),
                            element("status-flags", StatusFlags([0, 1, 0, 1])),
                            element("reliability", error=("property", "unknownProperty")),
                            element("units", Enumerated(62))]),
        ("binary-output,7", [element("present-value", Enumerated(1)),
                             element("out-of-service", Boolean(True)),
                             element("event-state", Enumerated(0))]),
        ("multi-state-value,4194302", [element("present-value", Unsigned(3)),
                                       element("object-name", CharacterString("Zone 3 °C")),
                                       element("priority-array", PriorityArray(
                                           [PriorityValue(null=())] * 16)),
                                       element("priority-array", Unsigned(16), index=0)]),
        ("integer-value,2", [element("present-value", Integer(-70000)),
                             element("description", Null(()))]),
        ("large-analog-value,9", [element("present-value", Double(1.5e300)),
                                  element("present-value", error=("object", "unknownObject"))]),
        ("analog-value,3", [element("present-value", Date("2026-11-30"))]),
    )
    assert decode_ack(data) == [
        (0, 1, 85, None, 21.5), (0, 1, 111, None, [0, 1, 0, 1]),
        (0, 1, 103, None, Failed(2, 32)), (0, 1, 117, None, 62),
        (4, 7, 85, None, 1), (4, 7, 81, None, True), (4, 7, 36, None, 0),
        (19, 4194302, 85, None, 3), (19, 4194302, 77, None, "Zone 3 °C"),
        (19, 4194302, 87, None, Unparsed()), (19, 4194302, 87, 0, 16),
        (45, 2, 85, None, -70000), (45, 2, 28, None, None),
        (46, 9, 85, None, 1.5e300), (46, 9, 85, None, Failed(1, 31)),
        (2, 3, 85, None, Unparsed()),
    ]


def test_long_values_use_extended_lengths() -> None:
    for n in (4, 5, 253, 254, 300, 70000):
        got = decode_ack(encode(("analog-value,1", [element("description",
                                                            CharacterString("x" * n))])))
        assert got == [(2, 1, 28, None, "x" * n)]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["analog-input", "analog-value", "binary-value", "multi-state-input"]),
    st.integers(0, 4194302),
    st.one_of(st.floats(width=32, allow_nan=False).map(lambda f: ("real", f)),
              st.integers(0, 2**32 - 1).map(lambda i: ("unsigned", i)),
              st.integers(-(2**31), 2**31 - 1).map(lambda i: ("signed", i)),
              st.lists(st.integers(0, 1), min_size=4, max_size=4).map(lambda b: ("flags", b)),
              st.text(max_size=40).map(lambda t: ("text", t)))), min_size=1, max_size=20))
def test_agrees_with_the_encoder(items: list[tuple[str, int, tuple[str, Any]]]) -> None:
    wrap = {"real": Real, "unsigned": Unsigned, "signed": Integer,
            "flags": StatusFlags, "text": CharacterString}
    data = encode(*((f"{t},{i}", [element("present-value", wrap[k](v))])
                    for t, i, (k, v) in items))
    got = decode_ack(data)
    assert len(got) == len(items)
    for (_t, instance, (kind, value)), (_ot, inst, prop, index, decoded) in zip(items, got,
                                                                               strict=True):
        assert (inst, prop, index) == (instance, 85, None)
        if kind == "real":
            assert decoded == struct.unpack(">f", struct.pack(">f", value))[0] or (
                math.isinf(value) and decoded == value)
        else:
            assert decoded == value


@pytest.mark.parametrize("data", [
    b"\x0c\x00\x00", b"\x0c\x00\x00\x00\x01\x1e\x29\x55\x4e\x44\x41", b"\x1e",
    b"\x0c\x00\x00\x00\x01\x1e\x29\x55\x6e", b"\x0c\x00\x00\x00\x01\x1e\x39\x55",
])
def test_truncated_or_wrong_answers_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_ack(data)


def cov_bytes(values: list[Any], *, spid: int = 7, obj: str = "analog-value,2") -> bytes:
    from bacpypes3.apdu import UnconfirmedCOVNotificationRequest
    from bacpypes3.basetypes import PropertyValue

    note = UnconfirmedCOVNotificationRequest(
        subscriberProcessIdentifier=spid,
        initiatingDeviceIdentifier=ObjectIdentifier("device,4194302"),
        monitoredObjectIdentifier=ObjectIdentifier(obj), timeRemaining=299,
        listOfValues=[PropertyValue(**v) for v in values])
    encoded = note.encode()
    assert encoded.apduService == 2
    return bytes(encoded.pduData)


def test_cov_notification() -> None:
    from drivers.bacnet.rpm import CovNotification, decode_cov

    data = cov_bytes([
        {"propertyIdentifier": "present-value", "value": AnyValue(Real(25.5))},
        {"propertyIdentifier": "status-flags", "value": AnyValue(StatusFlags([0, 0, 0, 1])),
         "priority": 8},
        {"propertyIdentifier": "priority-array", "propertyArrayIndex": 3,
         "value": AnyValue(Null(()))},
        {"propertyIdentifier": "priority-array",
         "value": AnyValue(PriorityArray([PriorityValue(null=())] * 16))},
        {"propertyIdentifier": "reliability", "value": AnyValue(Enumerated(7))},
    ], spid=4_000_000, obj="multi-state-value,4194302")
    assert decode_cov(data) == CovNotification(
        4_000_000, 4194302, 19, 4194302, 299,
        ((85, None, 25.5), (111, None, [0, 0, 0, 1]), (87, 3, None), (87, None, Unparsed()),
         (103, None, 7)))


@pytest.mark.parametrize("cut", [1, 5, 12, 20])
def test_truncated_cov_notification_raises(cut: int) -> None:
    from drivers.bacnet.rpm import decode_cov

    data = cov_bytes([{"propertyIdentifier": "present-value", "value": AnyValue(Real(1.0))}])
    with pytest.raises(DecodeError):
        decode_cov(data[:cut])
