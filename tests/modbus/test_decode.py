"""Decoding: known register words for every type and order, and a round trip."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from emulators.modbus_meter import encode
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.decode import RegisterBlock, decode_values
from drivers.modbus.registermap import Point

ORDERS = ("ABCD", "CDAB", "BADC", "DCBA")


def point(dtype: str, order: str = "ABCD", width: int | None = None, **kw: object) -> Point:
    widths = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4,
              "float32": 2, "float64": 4, "bit": 1}
    base = Point(name="x", table="holding", address=0, width=width or widths[dtype],
                 type=dtype, order=order, bit=None, scale=None, offset=None,  # type: ignore[arg-type]
                 decimals=None, unit=None, every=1)
    return replace(base, **kw)  # type: ignore[arg-type]


def decode(words: list[int], p: Point) -> object:
    return RegisterBlock(0, len(words), [p]).decode(words)[0]


# float32 230.5 = 0x43668000: bytes A=43 B=66 C=80 D=00
@pytest.mark.parametrize(("order", "words"), [
    ("ABCD", [0x4366, 0x8000]), ("CDAB", [0x8000, 0x4366]),
    ("BADC", [0x6643, 0x0080]), ("DCBA", [0x0080, 0x6643]),
])
def test_float32_known_words(order: str, words: list[int]) -> None:
    assert decode(words, point("float32", order)) == 230.5


# int32 -123456789 = 0xF8A432EB
@pytest.mark.parametrize(("order", "words"), [
    ("ABCD", [0xF8A4, 0x32EB]), ("CDAB", [0x32EB, 0xF8A4]),
    ("BADC", [0xA4F8, 0xEB32]), ("DCBA", [0xEB32, 0xA4F8]),
])
def test_int32_known_words(order: str, words: list[int]) -> None:
    assert decode(words, point("int32", order)) == -123456789


# uint64 0x0102030405060708 and float64 -2.5e-3
@pytest.mark.parametrize(("order", "words"), [
    ("ABCD", [0x0102, 0x0304, 0x0506, 0x0708]), ("CDAB", [0x0708, 0x0506, 0x0304, 0x0102]),
    ("BADC", [0x0201, 0x0403, 0x0605, 0x0807]), ("DCBA", [0x0807, 0x0605, 0x0403, 0x0201]),
])
def test_uint64_known_words(order: str, words: list[int]) -> None:
    assert decode(words, point("uint64", order)) == 0x0102030405060708


def test_16_bit_types_and_byte_swap() -> None:
    assert decode([0xFFFE], point("int16")) == -2
    assert decode([0xFFFE], point("uint16")) == 65534
    assert decode([0x3412], point("uint16", "BADC")) == 0x1234
    assert decode([0x3412], point("uint16", "CDAB")) == 0x3412


def test_bits_strings_scale_and_invalid_floats() -> None:
    assert decode([0b1000], point("bit", bit=3)) is True
    assert decode([0b1000], point("bit", bit=2)) is False
    assert decode([0x4142, 0x4300], point("string", width=2)) == "ABC"
    assert decode([0x4241, 0x0043], point("string", "BADC", width=2)) == "ABC"
    assert decode([0x4300, 0x4142], point("string", "CDAB", width=2)) == "ABC"
    assert decode([2304], point("uint16", scale=0.1, decimals=1)) == 230.4
    assert decode([2304], point("int16", scale=0.1, offset=-30.0, decimals=1)) == 200.4
    assert decode([0x4366, 0x6666], point("float32")) == 230.4  # not 230.39999389648438
    assert decode([2304], point("uint16", scale=0.1)) == 230.4  # not 230.40000000000003
    assert decode([0xFFFE], point("int16", scale=0.1)) == -0.2
    assert decode([0x0009], point("uint16", "BADC", scale=0.01)) == 23.04
    assert decode([0x4510, 0x0000], point("float32", scale=0.1)) == 230.4  # 2304.0 / 10
    assert decode([0x4510, 0x0000], point("float32", scale=0.5, offset=1.0)) == 1153.0
    assert decode([7], point("uint16", scale=10.0)) == 70.0
    assert decode([0x7FC0, 0x0000], point("float32")) is None  # NaN: no value
    assert decode([0x7F80, 0x0000], point("float32")) is None  # +inf


@given(raw=st.integers(-(2**15), 2**15 - 1), k=st.integers(1, 4),
       order=st.sampled_from(ORDERS))
def test_scaled_16_bit_values_are_the_decimal(raw: int, k: int, order: str) -> None:
    p = point("int16", order, scale=10.0 ** -k)
    assert decode(encode(raw * 10.0 ** -k, p), p) == float(f"{raw}e-{k}")


def test_many_points_in_one_block() -> None:
    pts = [point("uint16", address=0, name="a"), point("float32", "CDAB", address=1, name="b"),
           point("int16", "DCBA", address=3, name="c"), point("bit", address=4, bit=0, name="d")]
    block = RegisterBlock(0, 5, pts)
    words = [7, 0x8000, 0x4366, 0xFEFF, 1]
    assert block.decode(words) == [7, 230.5, -2, True]
    readings = block.readings(words, "dev", 123)
    assert [(r.metric, r.value, r.ts, r.quality) for r in readings] == [
        ("a", 7, 123, "good"), ("b", 230.5, 123, "good"), ("c", -2, 123, "good"),
        ("d", True, 123, "good")]


def test_decode_values_for_the_cli() -> None:
    assert decode_values([0x4366, 0x8000, 0x4366, 0x6666], point("float32")) == [230.5, 230.4]
    assert decode_values([1, 2, 3], point("uint16")) == [1, 2, 3]


_VALUES = {
    "int16": st.integers(-(2**15), 2**15 - 1), "uint16": st.integers(0, 2**16 - 1),
    "int32": st.integers(-(2**31), 2**31 - 1), "uint32": st.integers(0, 2**32 - 1),
    "int64": st.integers(-(2**63), 2**63 - 1), "uint64": st.integers(0, 2**64 - 1),
    "float64": st.floats(allow_nan=False, allow_infinity=False),
}


@given(data=st.data(), dtype=st.sampled_from(sorted(_VALUES)), order=st.sampled_from(ORDERS))
def test_round_trip_with_the_emulators_encoder(data: st.DataObject, dtype: str,
                                               order: str) -> None:
    value = data.draw(_VALUES[dtype])
    p = point(dtype, order)
    assert decode(encode(value, p), p) == value


@given(value=st.floats(width=32, allow_nan=False, allow_infinity=False),
       order=st.sampled_from(ORDERS))
def test_float32_round_trip(value: float, order: str) -> None:
    p = point("float32", order)
    got = decode(encode(value, p), p)
    assert isinstance(got, float)
    assert math.isclose(got, value, rel_tol=1e-6, abs_tol=1e-38)
