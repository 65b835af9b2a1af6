"""Line parsers for `driver: serial`: pure, from one line (bytes or str) to named values.

A parser returns a list of `Measurement`s, `None` for a line it deliberately ignores (an
empty line, an NMEA sentence nobody asked for), or raises `ParseError` whose `kind` is a
short metric label: `noise`, `partial`, `checksum`, `nomatch`, `value`, `json`.
Nothing else escapes: the driver counts the error and goes on with the next line.
"""

from __future__ import annotations

import abc
import csv
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from gateway.errors import ProtocolError

FieldType = Literal["number", "integer", "text", "bool"]
Raw = str | float | int | bool
ParsedValue = float | int | str | bool

_TRUE = frozenset({"1", "true", "on", "yes", "y", "t"})
_FALSE = frozenset({"0", "false", "off", "no", "n", "f"})
# C0 controls (except tab) and DEL never appear in a sensor's text line: they are line noise
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class ParseError(ProtocolError):
    """A line that does not parse; `kind` says why (a metric label)."""

    kind = "nomatch"


@dataclass(frozen=True, slots=True)
class Measurement:
    """One value taken from a line, already scaled, with its metric name and unit."""

    metric: str
    value: ParsedValue
    unit: str | None = None


@dataclass(frozen=True, slots=True)
class Field:
    """How one raw value becomes a measurement: `value * scale + offset`, then typed."""

    metric: str
    unit: str | None = None
    scale: float = 1.0
    offset: float = 0.0
    type: FieldType = "number"
    decimals: int | None = None

    def convert(self, raw: Raw, default_unit: str | None = None) -> Measurement:
        """The measurement for `raw`; `ParseError(kind="value")` if it is not one."""
        unit = self.unit if self.unit is not None else default_unit
        if self.type == "text":
            return Measurement(self.metric, str(raw), unit)
        if self.type == "bool":
            return Measurement(self.metric, _to_bool(raw, self.metric), unit)
        number = _to_number(raw, self.metric) * self.scale + self.offset
        if not math.isfinite(number):
            raise ParseError(f"{self.metric}: {raw!r} scales to a non-finite number",
                             kind="value")
        if self.type == "integer":
            return Measurement(self.metric, round(number), unit)
        if self.decimals is not None:
            number = round(number, self.decimals)
        elif self.scale != 1.0 or self.offset != 0.0:
            number = float(f"{number:.12g}")  # drop binary noise such as 2.1500000000000004
        return Measurement(self.metric, number, unit)


def _to_number(raw: Raw, name: str) -> float:
    if isinstance(raw, bool):
        return 1.0 if raw else 0.0
    if isinstance(raw, int | float):
        value = float(raw)
    else:
        text = raw.strip()
        try:
            value = float(text)
        except ValueError:
            raise ParseError(f"{name}: {text[:40]!r} is not a number", kind="value") from None
    if not math.isfinite(value):
        raise ParseError(f"{name}: {raw!r} is not a finite number", kind="value")
    return value


def _to_bool(raw: Raw, name: str) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int | float):
        return raw != 0
    text = raw.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ParseError(f"{name}: {raw[:40]!r} is not a boolean", kind="value")


def _implicit(raw: Raw) -> ParsedValue:
    """Best guess for a value nobody described: a finite number if it is one, else as is."""
    if isinstance(raw, bool | int):
        return raw
    if isinstance(raw, float):
        return raw if math.isfinite(raw) else str(raw)
    try:
        value = float(raw)
    except ValueError:
        return raw
    return value if math.isfinite(value) else raw


def to_text(line: str | bytes, encoding: str = "utf-8") -> str:
    """The line as text without its line ending; `ParseError(kind="noise")` for garbage."""
    if isinstance(line, bytes | bytearray):
        try:
            line = bytes(line).decode(encoding)
        except (UnicodeDecodeError, LookupError):
            raise ParseError("bytes that are not text (line noise or wrong baud rate?)",
                             kind="noise") from None
    text = line.rstrip("\r\n")
    if _CONTROL.search(text):
        raise ParseError("control characters in the line (line noise or wrong baud rate?)",
                         kind="noise")
    return text


class LineParser(abc.ABC):
    """Turns one line into measurements; subclasses implement `extract`."""

    default_units: Mapping[str, str] = {}

    def __init__(self, fields: Mapping[str, Field] | None = None, *,
                 ignore: str | None = None, encoding: str = "utf-8") -> None:
        self.fields = dict(fields) if fields else None
        self.ignore = re.compile(ignore) if ignore else None
        self.encoding = encoding

    def parse(self, line: str | bytes) -> list[Measurement] | None:
        """Measurements in `line`, `None` if the line is to be skipped."""
        text = to_text(line, self.encoding)
        if not text.strip() or (self.ignore is not None and self.ignore.search(text)):
            return None
        raw = self.extract(text)
        if raw is None:
            return None
        return self.apply(raw)

    @abc.abstractmethod
    def extract(self, text: str) -> Mapping[str, Raw] | None:
        """Raw values by key, `None` to skip the line; raise `ParseError` if it is bad."""

    def apply(self, raw: Mapping[str, Raw]) -> list[Measurement]:
        """Apply the field map (or, without one, keep every value under its own key)."""
        units = self.default_units
        if self.fields is None:
            if not raw:
                raise ParseError("no values in the line", kind="nomatch")
            return [Measurement(key, _implicit(value), units.get(key))
                    for key, value in raw.items()]
        out = [spec.convert(raw[key], units.get(key))
               for key, spec in self.fields.items() if key in raw]
        if not out:
            raise ParseError("none of the configured fields is in the line", kind="nomatch")
        return out


class RegexParser(LineParser):
    """Named groups of a regular expression (`search`, so it may match inside the line)."""

    def __init__(self, pattern: str, fields: Mapping[str, Field] | None = None, *,
                 ignore: str | None = None, encoding: str = "utf-8") -> None:
        super().__init__(fields, ignore=ignore, encoding=encoding)
        self.pattern = re.compile(pattern)
        if not self.pattern.groupindex:
            raise ValueError("the pattern has no named groups such as (?P<temp>[-0-9.]+)")

    def extract(self, text: str) -> Mapping[str, Raw] | None:
        """Values of the named groups that took part in the match."""
        m = self.pattern.search(text)
        if m is None:
            raise ParseError("the line does not match the pattern", kind="nomatch")
        return {k: v for k, v in m.groupdict().items() if v is not None}


class KeyValueParser(LineParser):
    """`key=value` pairs separated by commas, semicolons or blanks (`T=21.5,H=40`)."""

    def __init__(self, fields: Mapping[str, Field] | None = None, *, separator: str | None = None,
                 assign: str = "=", ignore: str | None = None, encoding: str = "utf-8") -> None:
        super().__init__(fields, ignore=ignore, encoding=encoding)
        if not assign:
            raise ValueError("assign must not be empty")
        self.split = re.compile(re.escape(separator) if separator else r"[,;\s]+")
        self.assign = assign

    def extract(self, text: str) -> Mapping[str, Raw] | None:
        """Every `key=value` token; tokens without `=` (a prefix, a unit) are skipped."""
        out: dict[str, Raw] = {}
        for token in self.split.split(text.strip()):
            key, sep, value = token.partition(self.assign)
            key = key.strip()
            if sep and key:
                out[key] = value.strip()
        if not out:
            raise ParseError(f"no key{self.assign}value pairs in the line", kind="nomatch")
        return out


class CsvParser(LineParser):
    """Delimited columns mapped by 0-based position: `{0: temperature, 2: humidity}`."""

    def __init__(self, columns: Mapping[int, Field], *, delimiter: str = ",",
                 expect_columns: int | None = None, ignore: str | None = None,
                 encoding: str = "utf-8") -> None:
        if not columns:
            raise ValueError("a CSV parser needs at least one column")
        if len(delimiter) != 1:
            raise ValueError("the CSV delimiter is one character")
        super().__init__({str(i): f for i, f in columns.items()}, ignore=ignore,
                         encoding=encoding)
        self.delimiter = delimiter
        self.need = max(columns) + 1
        self.expect = expect_columns

    def extract(self, text: str) -> Mapping[str, Raw] | None:
        """The configured columns; too few columns means a truncated line."""
        try:
            cells = next(csv.reader([text], delimiter=self.delimiter), [])
        except csv.Error as exc:
            raise ParseError(f"bad CSV: {exc}", kind="nomatch") from None
        if len(cells) < max(self.need, self.expect or 0):
            raise ParseError(f"{len(cells)} columns, expected {max(self.need, self.expect or 0)}",
                             kind="partial")
        if self.expect is not None and len(cells) != self.expect:
            raise ParseError(f"{len(cells)} columns, expected {self.expect}", kind="nomatch")
        return {str(i): cells[i] for i in range(self.need)}


class JsonLinesParser(LineParser):
    """One JSON object per line; fields by dotted path (`sensor.temp`)."""

    def extract(self, text: str) -> Mapping[str, Raw] | None:
        """Scalar leaves by dotted path."""
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError):
            # ValueError covers JSONDecodeError and integers beyond the digit limit
            raise ParseError("not valid JSON (a truncated line?)", kind="json") from None
        if not isinstance(doc, dict):
            raise ParseError("the line is JSON but not an object", kind="json")
        return dict(_leaves(doc, ""))


def _leaves(node: object, prefix: str, depth: int = 0) -> Iterator[tuple[str, Raw]]:
    """Scalars under nested objects as `a.b.c`; lists and very deep nesting are skipped."""
    if isinstance(node, dict):
        if depth < 16:
            for key, value in node.items():
                yield from _leaves(value, f"{prefix}{key}.", depth + 1)
    elif isinstance(node, bool | int | float | str) and prefix:
        yield prefix[:-1], node


def nmea_checksum(body: str) -> int:
    """XOR of the characters between `$` and `*`."""
    value = 0
    for ch in body.encode("ascii", "replace"):
        value ^= ch
    return value


_NMEA = re.compile(r"^[$!](?P<body>[^$!*]*)\*(?P<cs>[0-9A-Fa-f]{2})\s*$")


class NmeaParser(LineParser):
    """NMEA 0183 sentences from GNSS receivers: GGA and RMC, checksum checked.

    Values: `latitude`, `longitude` (deg, south and west negative), GGA `fix_quality`,
    `satellites`, `hdop`, `altitude` (m), `geoid_separation` (m); RMC `valid` (status A),
    `speed_knots` (kn), `course` (deg).
    """

    SENTENCES = ("GGA", "RMC")
    default_units: Mapping[str, str] = {
        "latitude": "deg", "longitude": "deg", "altitude": "m", "geoid_separation": "m",
        "speed_knots": "kn", "course": "deg"}

    def __init__(self, fields: Mapping[str, Field] | None = None, *,
                 sentences: tuple[str, ...] = SENTENCES, checksum: bool = True,
                 ignore: str | None = None, encoding: str = "ascii") -> None:
        super().__init__(fields, ignore=ignore, encoding=encoding)
        unknown = set(sentences) - set(self.SENTENCES)
        if unknown:
            raise ValueError(f"unsupported NMEA sentences {sorted(unknown)}; "
                             f"known: {', '.join(self.SENTENCES)}")
        self.sentences = frozenset(sentences)
        self.checksum = checksum

    def extract(self, text: str) -> Mapping[str, Raw] | None:
        """Check framing and checksum, then decode the sentence's fields."""
        text = text.strip()
        m = _NMEA.match(text)
        if m is None:
            if text[:1] not in ("$", "!"):
                raise ParseError("no $ at the start: the first part of the sentence is lost",
                                 kind="partial")
            if "*" not in text or text.count("$") + text.count("!") > 1:
                raise ParseError("sentence cut short (no *checksum at the end)", kind="partial")
            raise ParseError("malformed NMEA sentence", kind="nomatch")
        body = m.group("body")
        if self.checksum and nmea_checksum(body) != int(m.group("cs"), 16):
            raise ParseError(f"checksum {m.group('cs')} does not match "
                             f"{nmea_checksum(body):02X}", kind="checksum")
        parts = body.split(",")
        address = parts[0]
        if len(address) != 5 or address[0] == "P":
            return None  # proprietary ($PUBX, $PGRM...) or malformed address: not ours
        kind = address[2:]
        if kind not in self.sentences:
            return None
        if kind == "GGA":
            return _gga(parts)
        return _rmc(parts)


def _field(parts: list[str], i: int) -> str:
    return parts[i].strip() if i < len(parts) else ""


def _coordinate(value: str, hemisphere: str, degree_digits: int, limit: float) -> float | None:
    """`ddmm.mmmm` / `dddmm.mmmm` and N/S/E/W to signed decimal degrees."""
    if not value and not hemisphere:
        return None
    if hemisphere not in ("N", "S", "E", "W") or len(value) < degree_digits + 2:
        raise ParseError(f"bad coordinate {value!r} {hemisphere!r}", kind="value")
    deg_text, min_text = value[:degree_digits], value[degree_digits:]
    if not (deg_text.isascii() and deg_text.isdigit()):
        raise ParseError(f"bad coordinate {value!r}", kind="value")
    try:
        minutes = float(min_text)
    except ValueError:
        raise ParseError(f"bad coordinate {value!r}", kind="value") from None
    if not 0.0 <= minutes < 60.0:
        raise ParseError(f"bad coordinate minutes {value!r}", kind="value")
    degrees = int(deg_text) + minutes / 60.0
    if degrees > limit:
        raise ParseError(f"coordinate {value!r} out of range", kind="value")
    return round(-degrees if hemisphere in ("S", "W") else degrees, 7)


def _number(parts: list[str], i: int, name: str) -> float | None:
    text = _field(parts, i)
    return _to_number(text, name) if text else None


def _integer(parts: list[str], i: int, name: str) -> int | None:
    text = _field(parts, i)
    if not text:
        return None
    if not (text.isascii() and text.isdigit()):
        raise ParseError(f"{name}: {text[:20]!r} is not an integer", kind="value")
    return int(text)


def _gga(parts: list[str]) -> dict[str, Raw]:
    if len(parts) < 10:
        raise ParseError(f"GGA with {len(parts)} fields, expected at least 10", kind="partial")
    out: dict[str, Raw] = {}
    quality = _integer(parts, 6, "fix_quality")
    if quality is not None:
        out["fix_quality"] = quality
    sats = _integer(parts, 7, "satellites")
    if sats is not None:
        out["satellites"] = sats
    if quality:  # quality 0: no fix, so position fields are empty or stale
        lat = _coordinate(_field(parts, 2), _field(parts, 3), 2, 90.0)
        lon = _coordinate(_field(parts, 4), _field(parts, 5), 3, 180.0)
        found = (("latitude", lat), ("longitude", lon),
                 ("hdop", _number(parts, 8, "hdop")),
                 ("altitude", _number(parts, 9, "altitude")),
                 ("geoid_separation", _number(parts, 11, "geoid_separation")))
        out.update({name: value for name, value in found if value is not None})
    return out


def _rmc(parts: list[str]) -> dict[str, Raw]:
    if len(parts) < 10:
        raise ParseError(f"RMC with {len(parts)} fields, expected at least 10", kind="partial")
    status = _field(parts, 2)
    if status not in ("A", "V"):
        raise ParseError(f"RMC status {status[:8]!r} is neither A nor V", kind="value")
    out: dict[str, Raw] = {"valid": status == "A"}
    if status == "A":
        lat = _coordinate(_field(parts, 3), _field(parts, 4), 2, 90.0)
        lon = _coordinate(_field(parts, 5), _field(parts, 6), 3, 180.0)
        found = (("latitude", lat), ("longitude", lon),
                 ("speed_knots", _number(parts, 7, "speed_knots")),
                 ("course", _number(parts, 8, "course")))
        out.update({name: value for name, value in found if value is not None})
    return out
