"""Config model of `driver: serial` and the parser it builds."""

from __future__ import annotations

import codecs
import re
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from drivers.serial_line.commands import CommandOptions, valid_regex
from drivers.serial_line.framing import LineFramer
from drivers.serial_line.parsers import (
    CsvParser,
    FieldType,
    JsonLinesParser,
    KeyValueParser,
    LineParser,
    NmeaParser,
    RegexParser,
)
from drivers.serial_line.parsers import Field as ParserField
from gateway.driver import DeviceOptions, StrictModel
from gateway.units import Duration

_METRIC = r"^[A-Za-z_][A-Za-z0-9_.:-]*$"


def unescape(text: str) -> bytes:
    r"""Bytes of a config string with C escapes (`\r\n`, `\x03`) taken literally or not.

    YAML double quotes already turn `"\r\n"` into CR LF; single-quoted or plain `'\r\n'`
    reaches us as backslashes, which field engineers mean as escapes too.
    """
    try:
        decoded = codecs.decode(text.encode("latin-1", "backslashreplace"), "unicode_escape")
    except UnicodeDecodeError as exc:
        raise ValueError(f"bad escape sequence in {text!r}: {exc.reason}") from None
    try:
        return decoded.encode("latin-1")
    except UnicodeEncodeError:
        return decoded.encode("utf-8")


class FieldOptions(StrictModel):
    """One value of a line: its metric name, unit, scale and type."""

    metric: str | None = Field(default=None, pattern=_METRIC,
                               description="Metric name upstream; default: the key itself.")
    unit: str | None = Field(default=None, description="Unit such as °C, %, hPa, m/s.")
    scale: float = Field(default=1.0, description="value = raw * scale + offset")
    offset: float = 0.0
    type: FieldType = "number"
    decimals: int | None = Field(default=None, ge=0, le=12,
                                 description="Round to this many decimals.")

    def build(self, key: str) -> ParserField:
        """The parser's field for the raw value named `key`."""
        metric = self.metric or re.sub(r"[^A-Za-z0-9_.:-]", "_", key)
        return ParserField(metric, self.unit, self.scale, self.offset, self.type, self.decimals)


Fields = dict[str, FieldOptions] | None


def _fields(fields: Fields) -> dict[str, ParserField] | None:
    return None if fields is None else {k: v.build(k) for k, v in fields.items()}


class _ParserBase(StrictModel):
    ignore: str | None = Field(default=None,
                               description="Regex of lines to skip silently (headers, banners).")

    @field_validator("ignore")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        return valid_regex(value)


class RegexParserOptions(_ParserBase):
    """`type: regex`: named groups of a regular expression."""

    type: Literal["regex"]
    pattern: str = Field(description="Regex with named groups, e.g. 'T=(?P<temp>[-0-9.]+)'.")
    fields: Fields = Field(default=None, description="By group name; default: every group.")

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        if not compiled.groupindex:
            raise ValueError("the pattern needs named groups such as (?P<temp>[-0-9.]+)")
        return value

    @model_validator(mode="after")
    def _groups_exist(self) -> RegexParserOptions:
        missing = set(self.fields or ()) - set(re.compile(self.pattern).groupindex)
        if missing:
            raise ValueError(f"fields {sorted(missing)} are not groups of the pattern")
        return self

    def build(self, encoding: str) -> LineParser:
        """The parser."""
        return RegexParser(self.pattern, _fields(self.fields), ignore=self.ignore,
                           encoding=encoding)


class KeyValueParserOptions(_ParserBase):
    """`type: kv`: `key=value` pairs."""

    type: Literal["kv"]
    separator: str | None = Field(default=None,
                                  description="Between pairs; default: comma, ; or blanks.")
    assign: str = Field(default="=", min_length=1, description="Between key and value.")
    fields: Fields = Field(default=None, description="By key; default: every key.")

    def build(self, encoding: str) -> LineParser:
        """The parser."""
        return KeyValueParser(_fields(self.fields), separator=self.separator, assign=self.assign,
                              ignore=self.ignore, encoding=encoding)


class CsvParserOptions(_ParserBase):
    """`type: csv`: columns by 0-based position."""

    type: Literal["csv"]
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    columns: dict[int, FieldOptions] = Field(
        min_length=1, description="0-based column -> field; `metric` is required.")
    expect_columns: int | None = Field(default=None, ge=1,
                                       description="Exact column count of a good line.")

    @field_validator("columns")
    @classmethod
    def _named(cls, value: dict[int, FieldOptions]) -> dict[int, FieldOptions]:
        for index, spec in value.items():
            if index < 0:
                raise ValueError("column numbers start at 0")
            if spec.metric is None:
                raise ValueError(f"column {index} needs a metric name")
        return value

    def build(self, encoding: str) -> LineParser:
        """The parser."""
        return CsvParser({i: f.build(str(i)) for i, f in self.columns.items()},
                         delimiter=self.delimiter, expect_columns=self.expect_columns,
                         ignore=self.ignore, encoding=encoding)


class JsonParserOptions(_ParserBase):
    """`type: json`: one JSON object per line."""

    type: Literal["json"]
    fields: Fields = Field(default=None,
                           description="By dotted path (`env.temp`); default: every scalar.")

    def build(self, encoding: str) -> LineParser:
        """The parser."""
        return JsonLinesParser(_fields(self.fields), ignore=self.ignore, encoding=encoding)


class NmeaParserOptions(_ParserBase):
    """`type: nmea`: NMEA 0183 from a GNSS receiver."""

    type: Literal["nmea"]
    sentences: list[Literal["GGA", "RMC"]] = Field(default=["GGA", "RMC"], min_length=1)
    checksum: bool = Field(default=True, description="Reject sentences with a bad checksum.")
    fields: Fields = Field(
        default=None,
        description="Rename/scale latitude, longitude, altitude, speed_knots, course, "
                    "fix_quality, satellites, hdop, geoid_separation, valid; default: all.")

    def build(self, encoding: str) -> LineParser:
        """The parser."""
        return NmeaParser(_fields(self.fields), sentences=tuple(self.sentences),
                          checksum=self.checksum, ignore=self.ignore, encoding=encoding)


ParserOptions = Annotated[
    RegexParserOptions | KeyValueParserOptions | CsvParserOptions | JsonParserOptions
    | NmeaParserOptions,
    Field(discriminator="type"),
]


class FramingOptions(StrictModel):
    """How the byte stream is cut into lines."""

    terminator: str = Field(default="\n", min_length=1,
                            description=r"End of a line; \n also ends \r\n lines.")
    start: str | None = Field(default=None,
                              description="Bytes that begin a line; default $! for NMEA, "
                                          "none otherwise.")
    max_length: int = Field(default=1024, ge=8, le=1_048_576)
    encoding: str = Field(default="utf-8", description="utf-8, ascii or latin-1.")

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None
        return value

    @field_validator("terminator", "start")
    @classmethod
    def _escapes(cls, value: str | None) -> str | None:
        if value is not None:
            unescape(value)
        return value

    @model_validator(mode="after")
    def _no_overlap(self) -> FramingOptions:
        if set(unescape(self.start or "")) & set(unescape(self.terminator)):
            raise ValueError("start bytes and terminator overlap")
        return self


class Rs485Options(StrictModel):
    """Kernel RS-485 mode (TIOCSRS485) for adapters that switch the driver by RTS."""

    rts_level_for_tx: bool = True
    rts_level_for_rx: bool = False
    delay_before_tx: Duration | None = None
    delay_before_rx: Duration | None = None


class SerialOptions(DeviceOptions):
    """Options of `driver: serial`."""

    driver: Literal["serial"] = "serial"
    port: str = Field(min_length=1, description="Prefer /dev/serial/by-id/... (stable names).")
    baudrate: int = Field(default=9600, ge=50, le=4_000_000)
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["N", "E", "O", "M", "S"] = "N"
    stopbits: float = Field(default=1, description="1, 1.5 or 2.")
    rs485: Rs485Options | None = Field(default=None, description="Enable kernel RS-485 mode.")
    mode: Literal["stream", "poll"] = Field(
        default="stream",
        description="stream: the sensor talks on its own; poll: send `command` every interval.")
    command: str | None = Field(default=None, description=r"Poll mode: what to send, e.g. 'R\r\n'.")
    reply_lines: int = Field(default=1, ge=1, le=100, description="Poll mode: lines per reply.")
    silence: Duration | None = Field(
        default=60.0, gt=0,
        description="Stream mode: no good line for this long marks the device down and "
                    "reopens the port; null: never.")
    framing: FramingOptions = FramingOptions()
    parser: ParserOptions
    commands: dict[Annotated[str, Field(pattern=_METRIC, max_length=64)], CommandOptions] = Field(
        default_factory=dict, description=(
            "Named commands that `write` commands may send; nothing else is ever sent."))

    @field_validator("stopbits")
    @classmethod
    def _stopbits(cls, value: float) -> float:
        if value not in (1, 1.5, 2):
            raise ValueError("stop bits are 1, 1.5 or 2")
        return value

    @field_validator("command")
    @classmethod
    def _command(cls, value: str | None) -> str | None:
        if value is not None:
            unescape(value)
        return value

    @model_validator(mode="after")
    def _mode(self) -> SerialOptions:
        if self.mode == "poll" and not self.command:
            raise ValueError("mode: poll needs a command to send")
        if self.mode == "stream" and self.command:
            raise ValueError("command is only used with mode: poll")
        waits = [n for n, c in self.commands.items() if c.expect is not None]
        if self.mode == "stream" and waits:
            raise ValidationError.from_exception_data("config", [InitErrorDetails(
                type=PydanticCustomError("config", "`expect` needs mode: poll (a streaming "
                                         "sensor's own lines and a reply cannot be told apart)"),
                loc=("commands", n, "expect"), input=None) for n in waits])
        return self

    def build_parser(self) -> LineParser:
        """The configured line parser."""
        return self.parser.build(self.framing.encoding)

    def build_framer(self) -> LineFramer:
        """The configured line framer; NMEA lines start at `$` or `!` unless told otherwise."""
        f = self.framing
        start = f.start if f.start is not None else ("$!" if self.parser.type == "nmea" else "")
        return LineFramer(unescape(f.terminator), unescape(start), f.max_length)
