"""Line parsers and the framer: known lines, every kind of bad line, and hypothesis."""

from __future__ import annotations

import pytest
from emulators.nmea_source import gga, rmc, sentence
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.serial_line.framing import Chunk, LineFramer
from drivers.serial_line.options import SerialOptions, unescape
from drivers.serial_line.parsers import (
    CsvParser,
    Field,
    JsonLinesParser,
    KeyValueParser,
    LineParser,
    Measurement,
    NmeaParser,
    ParseError,
    RegexParser,
    nmea_checksum,
)


def kinds(parser: LineParser, line: str | bytes) -> str:
    with pytest.raises(ParseError) as err:
        parser.parse(line)
    return err.value.kind


# --- NMEA -------------------------------------------------------------------------------

GGA = "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"
RMC = "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A"


def test_nmea_textbook_sentences() -> None:
    p = NmeaParser()
    got = {m.metric: (m.value, m.unit) for m in p.parse(GGA) or []}
    assert got == {"latitude": (48.1173, "deg"), "longitude": (11.5166667, "deg"),
                   "fix_quality": (1, None), "satellites": (8, None), "hdop": (0.9, None),
                   "altitude": (545.4, "m"), "geoid_separation": (46.9, "m")}
    got = {m.metric: (m.value, m.unit) for m in p.parse(RMC + "\r\n") or []}
    assert got == {"valid": (True, None), "latitude": (48.1173, "deg"),
                   "longitude": (11.5166667, "deg"), "speed_knots": (22.4, "kn"),
                   "course": (84.4, "deg")}


def test_nmea_south_west_no_fix_and_fields() -> None:
    p = NmeaParser({"latitude": Field("lat"), "speed_knots": Field("speed", "km/h", 1.852)})
    line = sentence(rmc(-12.5, -45.25, 10.0, 0.0))
    assert p.parse(line) == [Measurement("lat", -12.5, "deg"),
                             Measurement("speed", 18.52, "km/h")]
    nofix = NmeaParser().parse(sentence(gga(0, 0, 0, quality=0, sats=0)))
    assert nofix == [Measurement("fix_quality", 0), Measurement("satellites", 0)]
    assert NmeaParser().parse(sentence(rmc(1, 1, 1, 1, valid=False))) == [
        Measurement("valid", False)]
    assert NmeaParser().parse(sentence(gga(29.5, 106.5, 1.0, talker="GN")))


def test_nmea_bad_lines() -> None:
    p = NmeaParser()
    assert kinds(p, GGA[:-2] + "00") == "checksum"
    assert kinds(p, GGA[:40]) == "partial"                 # cut short, no *hh
    assert kinds(p, GGA[10:]) == "partial"                 # start lost
    assert kinds(p, GGA[:30] + GGA) == "partial"           # two glued together
    assert kinds(p, b"$GPGGA,\xff\xfe*00") == "noise"
    assert kinds(p, "$GPGGA,1\x00,2*00") == "noise"
    body = "GPGGA,1,9907.0,N,01131.0,E,1,08,0.9,1,M,1,M,,"
    assert kinds(p, f"${body}*{nmea_checksum(body):02X}") == "value"   # 99 degrees
    body = "GPRMC,1,X,,,,,,,,"
    assert kinds(p, f"${body}*{nmea_checksum(body):02X}") == "value"
    body = "GPGGA,1,2"
    assert kinds(p, f"${body}*{nmea_checksum(body):02X}") == "partial"
    assert NmeaParser(checksum=False).parse(GGA[:-2] + "00")


def test_nmea_ignores_what_was_not_asked_for() -> None:
    p = NmeaParser(sentences=("GGA",))
    assert p.parse(RMC) is None
    body = "PUBX,00,1"
    assert p.parse(f"${body}*{nmea_checksum(body):02X}") is None
    body = "GPGSV,3,1,11"
    assert p.parse(f"${body}*{nmea_checksum(body):02X}") is None
    assert p.parse("") is None
    assert p.parse("\r\n") is None
    with pytest.raises(ValueError, match="unsupported"):
        NmeaParser(sentences=("VTG",))


# --- key=value, regex, CSV, JSON ---------------------------------------------------------

def test_key_value() -> None:
    p = KeyValueParser({"T": Field("temperature", "°C"), "P": Field("pressure", "kPa", 0.1)})
    assert p.parse("$WX T=21.5, H=40 P=1013.2\r\n") == [
        Measurement("temperature", 21.5, "°C"), Measurement("pressure", 101.32, "kPa")]
    assert KeyValueParser().parse("a=1;b=x;c=2.5") == [
        Measurement("a", 1.0), Measurement("b", "x"), Measurement("c", 2.5)]
    assert KeyValueParser(separator="|", assign=":").parse("a:1|b:2") == [
        Measurement("a", 1.0), Measurement("b", 2.0)]
    assert kinds(p, "H=40") == "nomatch"
    assert kinds(p, "T=21.5x") == "value"
    assert kinds(p, "T=nan") == "value"
    assert kinds(KeyValueParser(), "hello world") == "nomatch"


def test_regex_types_and_ignore() -> None:
    p = RegexParser(r"ID(?P<id>\d+) (?P<state>ON|OFF) (?P<raw>-?\d+)(?: (?P<opt>\d+))?",
                    {"id": Field("sensor_id", type="text"), "state": Field("on", type="bool"),
                     "raw": Field("level", "mm", 0.5, 10, type="integer"), "opt": Field("opt")},
                    ignore="^#")
    assert p.parse("ID07 ON -20") == [Measurement("sensor_id", "07"), Measurement("on", True),
                                      Measurement("level", 0, "mm")]
    assert p.parse("# header") is None
    assert kinds(p, "nothing here") == "nomatch"
    assert kinds(p, "ID07 MAYBE 1") == "nomatch"
    with pytest.raises(ValueError, match="named groups"):
        RegexParser(r"\d+")


def test_csv() -> None:
    p = CsvParser({0: Field("t", "°C"), 2: Field("rh", "%", decimals=1)}, expect_columns=3)
    assert p.parse("21.5,ignored,45.04") == [Measurement("t", 21.5, "°C"),
                                             Measurement("rh", 45.0, "%")]
    assert p.parse('"21.5","x","45"') == [Measurement("t", 21.5, "°C"),
                                          Measurement("rh", 45.0, "%")]
    assert kinds(p, "21.5,1") == "partial"
    assert kinds(p, "21.5,1,2,3") == "nomatch"
    assert kinds(p, "abc,1,2") == "value"
    semi = CsvParser({1: Field("v")}, delimiter=";")
    assert semi.parse("a;1.5") == [Measurement("v", 1.5)]


def test_json_lines() -> None:
    p = JsonLinesParser({"env.t": Field("temperature", "°C"), "ok": Field("ok", type="bool")})
    assert p.parse('{"env": {"t": 21.5, "h": 40}, "ok": true}') == [
        Measurement("temperature", 21.5, "°C"), Measurement("ok", True)]
    assert JsonLinesParser().parse('{"a": 1, "b": {"c": "x"}, "l": [1, 2]}') == [
        Measurement("a", 1), Measurement("b.c", "x")]
    assert kinds(p, '{"env": {"t": 21.5') == "json"
    assert kinds(p, "[1, 2]") == "json"
    assert kinds(p, "[" * 5000 + "]" * 5000) == "json"
    assert kinds(p, "1" * 5000) == "json"
    assert kinds(p, '{"env": {"t": 1e999}}') == "value"
    assert kinds(p, '{"x": 1}') == "nomatch"


# --- hypothesis: nothing but ParseError (or None) escapes, whatever comes in ------------

PARSERS: list[LineParser] = [
    NmeaParser(),
    NmeaParser({"latitude": Field("lat", scale=2.0)}, checksum=False),
    KeyValueParser(),
    KeyValueParser({"T": Field("t", type="integer"), "B": Field("b", type="bool")}),
    RegexParser(r"T=(?P<t>[-+0-9.e]+)(?P<s>\w*)", {"t": Field("t", scale=1e300),
                                                   "s": Field("s", type="bool")}),
    CsvParser({0: Field("a"), 3: Field("b", type="integer")}),
    JsonLinesParser(),
    JsonLinesParser({"a.b": Field("x", decimals=2), "c": Field("c", type="bool")}),
]
VALID = [GGA, RMC, "T=21.5,B=1", "T=1e5s", "1,2,3,4", '{"a": {"b": 1.5}, "c": false}',
         sentence(gga(-1.5, 2.5, 3)).decode(), sentence(rmc(1, -2, 3, 4)).decode()]


def _check(parser: LineParser, line: str | bytes) -> None:
    try:
        out = parser.parse(line)
    except ParseError as exc:
        kind = exc.kind
    else:
        assert out is None or all(isinstance(m, Measurement) for m in out)
        return
    assert kind in {"noise", "partial", "checksum", "nomatch", "value", "json"}


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PARSERS), st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_random_input_only_parse_errors(parser: LineParser, line: str | bytes) -> None:
    _check(parser, line)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PARSERS), st.sampled_from(VALID), st.data())
def test_truncated_and_mutated_lines(parser: LineParser, line: str, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(line)))
    _check(parser, line[:cut])
    _check(parser, line[cut:])
    pos = data.draw(st.integers(0, len(line)))
    junk = data.draw(st.text(max_size=3))
    _check(parser, line[:pos] + junk + line[pos + 1:])


# --- the framer -------------------------------------------------------------------------

def test_framer_lines_partials_noise_overflow() -> None:
    f = LineFramer(b"\r\n", b"$", max_length=16)
    out = f.feed(b"junk $A,1\r\n$B,")
    assert out == [Chunk("noise", b"junk "), Chunk("line", b"$A,1")]
    out = f.feed(b"2$C,3\r")
    assert out == [Chunk("partial", b"$B,2")]
    assert f.feed(b"\n") == [Chunk("line", b"$C,3")]
    out = f.feed(b"$" + b"x" * 40)
    assert out == [Chunk("overflow", b"$" + b"x" * 15)]
    assert f.feed(b"yyy\r\n$D\r\n") == [Chunk("line", b"$D")]
    f.feed(b"$E,unfinished")
    assert f.flush() == Chunk("partial", b"$E,unfinished")
    assert f.flush() is None
    plain = LineFramer(b"\n", max_length=8)
    assert plain.feed(b"a\r\nb") == [Chunk("line", b"a\r")]
    assert plain.feed(b"123456789012\nc\n") == [Chunk("overflow", b"b1234567"),
                                                Chunk("line", b"c")]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=20),
       st.sampled_from([b"\n", b"\r\n", b"\x03"]), st.sampled_from([b"", b"$!", b"\x02"]))
def test_framer_never_raises_and_lines_are_clean(parts: list[bytes], term: bytes,
                                                 start: bytes) -> None:
    f = LineFramer(term, start, max_length=32)
    total = sum(map(len, parts))
    got = 0
    for part in parts:
        for chunk in f.feed(part):
            assert chunk.kind in {"line", "partial", "noise", "overflow"}
            got += len(chunk.data)
            if chunk.kind in {"line", "partial"}:
                assert term not in chunk.data
                assert len(chunk.data) <= 32
                if start:
                    assert chunk.data[:1] in {bytes([b]) for b in start}
    tail = f.flush()
    got += len(tail.data) if tail else 0
    assert got <= total


@given(st.lists(st.binary(min_size=1, max_size=5), max_size=30))
def test_framer_split_anywhere_gives_the_same_lines(parts: list[bytes]) -> None:
    stream = b"".join(parts)
    whole = LineFramer(b"\r\n", max_length=1000).feed(stream)
    f = LineFramer(b"\r\n", max_length=1000)
    pieces = [c for part in parts for c in f.feed(part)]
    assert pieces == whole


# --- options ----------------------------------------------------------------------------

def test_options_validation() -> None:
    base = {"name": "s", "driver": "serial", "port": "/dev/ttyUSB0"}
    ok = SerialOptions.model_validate({**base, "parser": {"type": "nmea"}})
    assert ok.build_framer().terminator == b"\n"
    assert ok.parity == "N"
    assert ok.baudrate == 9600
    bad = [
        {"parser": {"type": "regex", "pattern": "("}},
        {"parser": {"type": "regex", "pattern": r"\d+"}},
        {"parser": {"type": "regex", "pattern": r"(?P<a>\d)", "fields": {"b": {}}}},
        {"parser": {"type": "csv", "columns": {0: {}}}},
        {"parser": {"type": "xml"}},
        {"parser": {"type": "kv"}, "mode": "poll"},
        {"parser": {"type": "kv"}, "command": "R"},
        {"parser": {"type": "kv"}, "stopbits": 3},
        {"parser": {"type": "kv"}, "framing": {"encoding": "klingon"}},
        {"parser": {"type": "kv"}, "framing": {"start": "\n"}},
        {"parser": {"type": "kv"}, "bogus": 1},
    ]
    for extra in bad:
        with pytest.raises(ValidationError):
            SerialOptions.model_validate({**base, **extra})
    assert unescape(r"R\r\n") == b"R\r\n"
    assert unescape("\x02A\x03") == b"\x02A\x03"
    assert unescape(r"\x02") == b"\x02"
