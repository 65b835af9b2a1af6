"""DL/T 645-2007 codec: hand-built frames from the standard, value formats, hypothesis."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.dlt645.frame import (
    READ_ADDRESS,
    WILDCARD,
    Frame,
    FrameError,
    MeterException,
    decode,
    encode,
    normalize_address,
    parse_di,
    read_address,
    read_data,
    scan,
)
from drivers.dlt645.items import BY_NAME, DataItem, decode_bcd, encode_bcd, lookup
from drivers.dlt645.options import Dlt645Options
from gateway.errors import ProtocolError


def hexb(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def with_cs(body: str) -> bytes:
    """A frame body from hex, plus checksum and 16 (computed here, not by the codec)."""
    raw = hexb(body)
    return raw + bytes([sum(raw) % 256, 0x16])


def test_read_address_broadcast_is_the_textbook_frame() -> None:
    assert read_address(preamble=False) == hexb("68 AA AA AA AA AA AA 68 13 00 DF 16")
    assert read_address() == hexb("FE FE FE FE 68 AA AA AA AA AA AA 68 13 00 DF 16")


def test_read_data_request_bytes() -> None:
    # DI 02010100 goes out low byte first, each byte + 33: 33 34 34 35
    assert read_data("000000000001", 0x02010100) == hexb(
        "FE FE FE FE 68 01 00 00 00 00 00 68 11 04 33 34 34 35 B6 16")
    assert read_data("000012345678", 0x00010000, preamble=False) == with_cs(
        "68 78 56 34 12 00 00 68 11 04 33 33 34 33")


def test_decode_reply_and_exception() -> None:
    # meter 000012345678 answers 0x91 with DI 02010100 and 231.4 V (BCD 2314 -> 14 23)
    reply = hexb("FE FE FE FE") + with_cs("68 78 56 34 12 00 00 68 91 06 33 34 34 35 47 56")
    f = decode(reply)
    assert f == Frame("000012345678", 0x91, hexb("00 01 01 02 14 23"))
    assert (f.is_reply, f.is_exception, f.has_more, f.function) == (True, False, False, 0x11)
    assert BY_NAME["voltage_a"].decode(f.data[4:]) == 231.4
    exc = decode(with_cs("68 78 56 34 12 00 00 68 D1 01 35"))
    assert exc.is_exception
    assert exc.data == b"\x02"
    err = MeterException(exc.data[0], address=exc.address, di=0x02800002)
    assert err.label == "no_data"
    assert "02800002" in str(err)
    assert "no such data" in str(err)
    assert MeterException(0x05).label == "other"


def test_decode_rejects_bad_frames() -> None:
    good = with_cs("68 78 56 34 12 00 00 68 91 06 33 34 34 35 47 56")
    bad_cs = good[:-2] + bytes([(good[-2] + 1) % 256, 0x16])
    cases = {b"": "short", good[:-1]: "short", bad_cs: "checksum", b"\x00" + good: "frame",
             good[:-1] + b"\x17": "frame", good + b"\x00": "frame"}
    for raw, kind in cases.items():
        with pytest.raises(FrameError) as err:
            decode(raw)
        assert err.value.kind == kind, raw.hex()


def test_scan_skips_noise_echo_and_finds_split_frames() -> None:
    reply = with_cs("68 78 56 34 12 00 00 68 91 06 33 34 34 35 47 56")
    request = read_data("000012345678", 0x02010100)
    stream = b"\x00\x68\x11\xff" + request + b"\xfe\xfe" + reply
    frame, used = scan(stream)
    assert isinstance(frame, Frame)
    assert not frame.is_reply  # the echo of our own request comes first
    frame, used2 = scan(stream[used:])
    assert isinstance(frame, Frame)
    assert frame.is_reply
    assert used + used2 == len(stream)
    assert scan(reply[:7]) == (None, 0)
    assert scan(b"\x01\x02\x03") == (None, 3)
    # a stray 68 that looks like a start must not hide a complete frame behind it
    frame, _ = scan(b"\x68\x00\x00" + reply)
    assert isinstance(frame, Frame)
    bad = reply[:-2] + bytes([(reply[-2] + 1) % 256, 0x16])
    found, used = scan(bad)
    assert isinstance(found, FrameError)
    assert found.kind == "checksum"
    assert used == len(bad)


@pytest.mark.parametrize(("name", "raw", "value", "unit"), [
    ("energy_import", "67 45 23 01", 12345.67, "kWh"),
    ("energy_total", "67 45 23 81", -12345.67, "kWh"),   # combined energy is signed
    ("energy_import_t2", "00 00 00 00", 0.0, "kWh"),
    ("voltage_b", "08 23", 230.8, "V"),
    ("current_a", "23 51 00", 5.123, "A"),
    ("current_b", "67 45 80", -4.567, "A"),
    ("power_total", "45 23 01", 1.2345, "kW"),
    ("power_c", "00 25 80", -0.25, "kW"),
    ("power_factor_total", "87 09", 0.987, None),
    ("power_factor_a", "00 85", -0.5, None),
    ("frequency", "01 50", 50.01, "Hz"),
    ("meter_temperature", "25 81", -12.5, "°C"),
    ("neutral_current", "00 00 00", 0.0, "A"),
])
def test_value_formats_from_the_standard(name: str, raw: str, value: float,
                                         unit: str | None) -> None:
    item = BY_NAME[name]
    assert item.decode(hexb(raw)) == value
    assert item.unit == unit
    assert encode_bcd(value, item.length or 0, item.decimals, signed=item.signed) == hexb(raw)


def test_di_table_and_lookup() -> None:
    assert lookup("voltage_a").di == 0x02010100
    assert lookup("02010100") is BY_NAME["voltage_a"]
    assert lookup("00010300").name == "energy_import_t3"
    assert lookup("0203FF00").name == "di_0203ff00"
    assert lookup("02030300").name == "power_c"
    assert lookup("02060000").name == "power_factor_total"
    assert lookup("02800002").name == "frequency"
    assert lookup("0280000a").decode(hexb("65 87 09 00")) == 98765
    assert lookup("Voltage_A") is BY_NAME["voltage_a"]
    with pytest.raises(ValueError, match=r"did you mean .*frequency"):
        lookup("frequncy")
    with pytest.raises(ValueError, match="8 hex digits"):
        parse_di("0201010")
    with pytest.raises(ProtocolError) as err:
        BY_NAME["voltage_a"].decode(hexb("1A 23"))
    assert err.value.kind == "bcd"
    with pytest.raises(ProtocolError) as err:
        BY_NAME["voltage_a"].decode(hexb("14 23 00"))
    assert err.value.kind == "length"
    with pytest.raises(ValueError, match="does not fit"):
        encode_bcd(1000.0, 2, 1)


def test_addresses() -> None:
    assert normalize_address("12345678") == "000012345678"
    assert normalize_address(" 0000 1234 5678 ") == "000012345678"
    assert normalize_address("AAAAAAAAAAAA") == WILDCARD
    for bad in ("1234567890123", "12345x", "", "AAAA"):
        with pytest.raises(ValueError, match="not a meter address"):
            normalize_address(bad)
    frame = encode("000012345678", 0x93, hexb("78 56 34 12 00 00"))
    assert decode(frame).data == hexb("78 56 34 12 00 00")


def test_options_validation() -> None:
    base = {"name": "m", "driver": "dlt645", "address": "12345678",
            "transport": {"type": "serial", "port": "/dev/ttyUSB0"}}
    o = Dlt645Options.model_validate({**base, "items": [
        "voltage_a", "02800002", {"item": "current_a", "metric": "ia", "scale": 40},
        {"item": "0280000A", "metric": "run_minutes", "unit": "min"}]})
    assert o.address == "000012345678"
    assert o.transport.baudrate == 2400
    assert o.transport.parity == "E"
    assert [(p.metric, p.unit, p.scale) for p in o.points()] == [
        ("voltage_a", "V", 1.0), ("frequency", "Hz", 1.0), ("ia", "A", 40),
        ("run_minutes", "min", 1.0)]
    unquoted = Dlt645Options.model_validate({**base, "address": 12345678,
                                             "items": [2010100, {"item": 10000, "metric": "e"}]})
    assert unquoted.address == "000012345678"
    assert [p.item.di for p in unquoted.points()] == [0x02010100, 0x00010000]
    bad_items: list[object] = [["voltage_x"], [-1], [], ["voltage_a", "02010100"],
                               [{"item": 10**9}], [1.5]]
    for items in bad_items:
        with pytest.raises(ValidationError):
            Dlt645Options.model_validate({**base, "items": items})
    for extra in ({"address": 10**12}, {"address": "12x"}, {"address": 1.5},
                  {"transport": {"type": "tcp", "host": "h"}},
                  {"transport": {"type": "serial", "port": "/dev/x", "parity": "X"}}):
        with pytest.raises(ValidationError):
            Dlt645Options.model_validate({**base, "items": ["voltage_a"], **extra})


# --- hypothesis: the decoder never raises anything but FrameError/ProtocolError ---------

VALID = [
    with_cs("68 78 56 34 12 00 00 68 91 06 33 34 34 35 47 56"),
    with_cs("68 78 56 34 12 00 00 68 D1 01 35"),
    read_address(), read_data("000012345678", 0x02020100),
    encode("000012345678", 0x93, hexb("78 56 34 12 00 00")),
]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes(raw: bytes) -> None:
    with contextlib.suppress(FrameError):
        decode(raw)
    found, used = scan(raw)
    assert 0 <= used <= len(raw)
    assert found is None or isinstance(found, Frame | FrameError)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(VALID), st.data())
def test_truncated_and_corrupted_frames(frame: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(frame) - 1))
    with pytest.raises(FrameError):
        decode(frame[:cut])
    assert scan(frame[:cut])[0] is None
    pos = data.draw(st.integers(0, len(frame) - 1))
    flip = data.draw(st.integers(1, 255))
    mutated = frame[:pos] + bytes([frame[pos] ^ flip]) + frame[pos + 1:]
    with contextlib.suppress(FrameError):
        decode(mutated)
    _found, used = scan(mutated)
    assert 0 <= used <= len(mutated)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="0123456789", min_size=12, max_size=12), st.integers(0, 255),
       st.binary(max_size=200), st.booleans())
def test_encode_decode_round_trip(address: str, control: int, payload: bytes,
                                  preamble: bool) -> None:
    raw = encode(address, control, payload, preamble=preamble)
    assert decode(raw) == Frame(address, control, payload)
    assert scan(b"\x00\xfe" + raw) == (Frame(address, control, payload), len(raw) + 2)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=8), st.integers(0, 6), st.booleans(),
       st.sampled_from([None, 2, 3, 4]))
def test_value_decoder_on_random_bytes(raw: bytes, decimals: int, signed: bool,
                                       length: int | None) -> None:
    item = DataItem(0x02800099, "x", None, length, decimals, signed)
    try:
        value = item.decode(raw)
    except ProtocolError as exc:
        kind = exc.kind
    else:
        assert isinstance(value, int | float)
        return
    assert kind in {"bcd", "length"}


@given(st.integers(-(10**7) + 1, 10**7 - 1), st.integers(0, 4))
def test_bcd_round_trip(number: int, decimals: int) -> None:
    value = number / 10**decimals
    raw = encode_bcd(value, 4, decimals, signed=True)
    assert decode_bcd(raw, decimals, signed=True) == pytest.approx(value)


def test_read_address_function_code() -> None:
    assert decode(read_address()).function == READ_ADDRESS
