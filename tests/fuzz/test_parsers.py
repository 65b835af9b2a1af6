"""Every protocol parser on random bytes: only the documented error type (or None) comes out.

Each driver module documents what its parsers raise: Modbus register decoding never raises
(NaN/inf give None), serial line parsers raise `ParseError`, DL/T 645 `scan` never raises
and `decode` raises `FrameError`, Quectel AT parsers never raise, BLE advert decoders never
raise (bad bytes give None or a `Decoded` with `error`) and GATT decoding gives None for
short data. Anything else escaping is a crash of the device task on hostile input.
"""

from __future__ import annotations

import math
import struct
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.ble import advert, atc, bthome, ibeacon, ruuvi
from drivers.ble.gatt import decode_value
from drivers.ble.options import GattCharacteristic
from drivers.dlt645 import frame as dlt
from drivers.dlt645.items import decode_bcd, lookup
from drivers.modbus.decode import BitBlock, RegisterBlock, decode_values
from drivers.modbus.registermap import WIDTH, Point
from drivers.modem import at_parse
from drivers.serial_line.framing import LineFramer
from drivers.serial_line.parsers import (
    CsvParser,
    Field,
    JsonLinesParser,
    KeyValueParser,
    NmeaParser,
    ParseError,
    RegexParser,
)

FUZZ = settings(max_examples=120, deadline=500, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
EACH = settings(FUZZ, max_examples=50)
"""For parametrized tests: the budget is per parser."""

# --- Modbus ------------------------------------------------------------------------------------

NUMERIC = ["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]


@st.composite
def points(draw: st.DrawFn) -> Point:
    """A register point of any type, order, scale at an address inside a 20-register block."""
    kind = draw(st.sampled_from([*NUMERIC, "bit", "string"]))
    width = WIDTH.get(kind) or draw(st.integers(1, 8))
    return Point(name="p", table="holding", address=draw(st.integers(0, 20 - width)),
                 width=width, type=kind,  # type: ignore[arg-type]
                 order=draw(st.sampled_from(["ABCD", "CDAB", "BADC", "DCBA"])),
                 bit=draw(st.integers(0, 15)) if kind == "bit" else None,
                 scale=draw(st.none() | st.floats(-1e6, 1e6, allow_nan=False)),
                 offset=draw(st.none() | st.floats(-1e6, 1e6, allow_nan=False)),
                 decimals=draw(st.none() | st.integers(0, 6)), unit=None, every=1)


@FUZZ
@given(st.lists(points(), min_size=1, max_size=6),
       st.lists(st.integers(0, 0xFFFF), min_size=20, max_size=20))
def test_modbus_register_block_decodes_any_words(pts: list[Point], words: list[int]) -> None:
    pts = [replace(p, name=f"p{i}") for i, p in enumerate(pts)]
    block = RegisterBlock(0, 20, pts)
    values = block.decode(words)
    readings = block.readings(words, "dev", 1)
    assert len(values) == len(pts)
    assert [r.value for r in readings if r.quality == "good"] == [v for v in values
                                                               if v is not None]
    for p, v in zip(pts, values, strict=True):
        if p.type == "bit":
            assert isinstance(v, bool)
        elif p.type == "string":
            assert isinstance(v, str)
        else:
            assert v is None or (isinstance(v, int | float) and math.isfinite(v))


@FUZZ
@given(points(), st.lists(st.integers(0, 0xFFFF), min_size=0, max_size=16))
def test_modbus_decode_values_any_words(point: Point, words: list[int]) -> None:
    values = decode_values(words, replace(point, address=0))
    assert len(values) == max(0, (len(words) - point.width) // point.width + 1)


@FUZZ
@given(st.lists(st.booleans(), min_size=16, max_size=16), st.sets(st.integers(0, 15)))
def test_modbus_bit_block(bits: list[bool], addresses: set[int]) -> None:
    pts = [Point(f"c{a}", "coil", a, 1, "bool", "ABCD", None, None, None, None, None, 1)
           for a in sorted(addresses)]
    assert BitBlock(0, pts).decode(bits) == [bits[a] for a in sorted(addresses)]


def test_modbus_float_nan_is_none() -> None:
    nan = struct.unpack(">2H", struct.pack(">f", math.nan))
    p = Point("f", "holding", 0, 2, "float32", "ABCD", None, None, None, None, None, 1)
    assert RegisterBlock(0, 2, [p]).decode(list(nan)) == [None]


# --- serial line parsers ---------------------------------------------------------------------

LINE = st.one_of(st.binary(max_size=120), st.text(max_size=120),
                 st.lists(st.sampled_from(["$GPGGA", "$GPRMC", ",", "*", "4", "7.5", "N", "E",
                                           "=", "temp", "{", "}", '"', ":", "\r", "-", "A"]),
                          max_size=40).map("".join))
SERIAL_PARSERS = {
    "regex": RegexParser(r"T=(?P<temp>[-0-9.]+)\s+H=(?P<hum>\S+)",
                         {"temp": Field("temperature", "°C", scale=0.1),
                          "hum": Field("humidity", "%", type="integer")}),
    "kv": KeyValueParser({"temp": Field("temperature"), "on": Field("on", type="bool")}),
    "kv_all": KeyValueParser(),
    "csv": CsvParser({0: Field("a"), 2: Field("b", type="integer", decimals=1)},
                     expect_columns=3),
    "json": JsonLinesParser(),
    "nmea": NmeaParser(),
    "nmea_nocheck": NmeaParser(checksum=False),
}


@EACH
@pytest.mark.parametrize("name", sorted(SERIAL_PARSERS))
@given(line=LINE)
def test_serial_parsers_raise_only_parse_error(name: str, line: str | bytes) -> None:
    try:
        out = SERIAL_PARSERS[name].parse(line)
    except ParseError as caught:
        kind = caught.kind
        assert kind in {"noise", "partial", "checksum", "nomatch", "value", "json"}
        return
    assert out is None or all(
        not isinstance(m.value, float) or math.isfinite(m.value) for m in out)


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_line_framer_any_stream(pieces: list[bytes]) -> None:
    framer = LineFramer(b"\r\n", start=b"$", max_length=40)
    total = 0
    for piece in pieces:
        for chunk in framer.feed(piece):
            assert chunk.kind in {"line", "partial", "noise", "overflow"}
            if chunk.kind == "line":
                assert len(chunk.data) <= 40 and b"\r\n" not in chunk.data
            total += 1
    framer.flush()


# --- DL/T 645 ----------------------------------------------------------------------------------

@st.composite
def dlt_buffers(draw: st.DrawFn) -> bytes:
    """Noise around real frames, some of them damaged."""
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        parts.append(draw(st.binary(max_size=20)))
        data = draw(st.binary(max_size=12))
        good = dlt.encode(draw(st.sampled_from(["000012345678", "aaaaaaaaaaaa"])),
                          draw(st.integers(0, 255)), data)
        if draw(st.booleans()):
            i = draw(st.integers(0, len(good) - 1))
            good = good[:i] + bytes([good[i] ^ draw(st.integers(1, 255))]) + good[i + 1:]
        if draw(st.booleans()):
            good = good[:draw(st.integers(0, len(good)))]
        parts.append(good)
    return b"".join(parts)


@FUZZ
@given(st.one_of(st.binary(max_size=300), dlt_buffers()))
def test_dlt645_scan_never_raises(buf: bytes) -> None:
    while buf:
        result, used = dlt.scan(buf)
        assert 0 <= used <= len(buf)
        assert result is None or isinstance(result, dlt.Frame | dlt.FrameError)
        if used == 0:
            break  # needs more bytes
        buf = buf[used:]


@FUZZ
@given(st.one_of(st.binary(max_size=300), dlt_buffers()))
def test_dlt645_decode_raises_only_frame_error(buf: bytes) -> None:
    try:
        f = dlt.decode(buf)
    except dlt.FrameError:
        return
    assert dlt.encode(f.address, f.control, f.data).lstrip(b"\xfe") == buf.lstrip(b"\xfe")


@FUZZ
@given(st.binary(max_size=8), st.sampled_from(["energy_total", "voltage_a", "current_a",
                                               "power_total", "frequency"]))
def test_dlt645_item_decode_raises_only_protocol_error(value: bytes, item: str) -> None:
    from gateway.errors import ProtocolError

    di = lookup(item)
    for fn in (lambda: di.decode(value), lambda: decode_bcd(value, 2, signed=True)):
        try:
            v = fn()
        except ProtocolError:
            continue
        assert isinstance(v, int | float) and math.isfinite(v)


# --- Quectel AT responses ----------------------------------------------------------------------

AT_LINE = st.one_of(
    st.text(max_size=80),
    st.lists(st.sampled_from(['+CSQ: ', '+COPS: ', '+CREG: ', '+CEREG: ', '+C5GREG: ',
                              '+QENG: ', '"servingcell"', '"LTE"', '"NR5G-NSA"', '"NR5G-SA"',
                              '"NOCONN"', '+QTEMP: ', '"soc-thermal"', ',', '-', '-32768',
                              '31', '99', '460', '"FDD"', '1A2B3C', '-95', '12', '"', 'RM500Q',
                              'Quectel', '\r', ' ']), max_size=30).map("".join))
AT_PARSERS = {"csq": at_parse.parse_csq, "cops": at_parse.parse_cops,
              "qeng": at_parse.parse_qeng, "qtemp": at_parse.parse_qtemp,
              "model": at_parse.parse_model,
              "creg": lambda lines: at_parse.parse_registration(lines, "CREG"),
              "cereg": lambda lines: at_parse.parse_registration(lines, "CEREG"),
              "c5greg": lambda lines: at_parse.parse_registration(lines, "C5GREG")}


@EACH
@pytest.mark.parametrize("name", sorted(AT_PARSERS))
@given(lines=st.lists(AT_LINE, max_size=6))
def test_at_parsers_never_raise(name: str, lines: list[str]) -> None:
    AT_PARSERS[name](lines)  # documented: "none of them raises"


@FUZZ
@given(st.lists(AT_LINE, max_size=6), st.lists(AT_LINE, max_size=6))
def test_at_build_status_from_anything(csq: list[str], qeng: list[str]) -> None:
    regs = [r for d in ("CREG", "CEREG", "C5GREG")
            if (r := at_parse.parse_registration(csq, d)) is not None]
    status = at_parse.build_status(model=at_parse.parse_model(csq),
                                   csq=at_parse.parse_csq(csq), cops=at_parse.parse_cops(qeng),
                                   cell=at_parse.parse_qeng(qeng), registrations=regs,
                                   temperatures=at_parse.parse_qtemp(qeng))
    assert status is not None


# --- BLE adverts ------------------------------------------------------------------------------

@FUZZ
@given(st.binary(max_size=40), st.none() | st.binary(min_size=16, max_size=16))
def test_ble_decoders_never_raise(data: bytes, key: bytes | None) -> None:
    for decode in (atc.decode, ruuvi.decode, ibeacon.decode):
        out = decode(data)
        assert out is None or isinstance(out, advert.Decoded)
    out = bthome.decode(data, address="A4:C1:38:02:83:F4", bindkey=key)
    assert out is None or isinstance(out, advert.Decoded)
    bthome_v2 = bytes([0x40 | (0x01 if key else 0)]) + data
    out = bthome.decode(bthome_v2, address="A4:C1:38:02:83:F4", bindkey=key)
    assert out is None or isinstance(out, advert.Decoded)


@FUZZ
@given(st.dictionaries(st.sampled_from(["fcd2", "181a", "0000fcd2-0000-1000-8000-00805f9b34fb",
                                        "feaa"]), st.binary(max_size=30), max_size=3),
       st.dictionaries(st.sampled_from([0x0499, 0x004C, 0x0059]), st.binary(max_size=30),
                       max_size=3),
       st.sampled_from(["auto", "bthome", "ruuvi", "atc", "pvvx", "ibeacon"]))
def test_ble_decode_advert_never_raises(sd: dict[str, bytes], md: dict[int, bytes],
                                        fmt: str) -> None:
    out = advert.decode_advert(sd, md, address="A4:C1:38:02:83:F4", fmt=fmt)  # type: ignore[arg-type]
    if out is not None:
        out.as_dict()


@FUZZ
@given(st.binary(max_size=12),
       st.sampled_from(["uint8", "int8", "uint16", "int16", "uint24", "int24", "uint32",
                        "int32", "uint64", "int64", "float32", "float64", "bool", "utf8",
                        "hex"]),
       st.sampled_from(["little", "big"]), st.integers(0, 6))
def test_gatt_decode_value(data: bytes, kind: str, order: str, offset: int) -> None:
    spec = GattCharacteristic.model_validate({"uuid": "2a6e", "metric": "m", "type": kind,
                                              "byte_order": order, "byte_offset": offset,
                                              "scale": 0.01})
    v = decode_value(data, spec)
    assert v is None or isinstance(v, int | float | str | bool)
    if isinstance(v, float):
        assert math.isfinite(v)
