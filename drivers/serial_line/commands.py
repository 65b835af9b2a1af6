"""Named command templates of a serial device: the only bytes a command can make it send.

    commands:
      reset: {send: "RST\r\n"}
      set_rate: {send: "RATE {value:d}\r\n", expect: "^OK", write: {min: 1, max: 60}}

A template is literal text with at most one `{value}` placeholder and an optional format
spec (`{value:d}`, `{value:.1f}`, `{value:03d}`). The value is formatted alone and must come
out as printable ASCII without the framing's terminator or start bytes, so no value can end
the line early or smuggle in a second command; `{value.attr}`, `{value[0]}`, `{value!r}` and
nested fields are refused at check time (they would reach into Python objects).
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass

from pydantic import Field, field_validator, model_validator

from gateway.driver import StrictModel, WriteLimits
from gateway.errors import WriteRefused
from gateway.model import Value

_INT_TYPES = frozenset("bcdoxXn")
_FLOAT_TYPES = frozenset("eEfFgG%")
_SPEC = re.compile(r"^[<>=^]?[+\- ]?#?0?\d{0,3}[,_]?(?:\.\d{1,2})?[bdoxXeEfFgG%s]?$")
_PRINTABLE = re.compile(r"^[\x20-\x7e]*$")


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed `send:`: literal bytes before and after the value, and how to format it."""

    before: bytes
    after: bytes
    spec: str | None
    """None: the command takes no value."""

    @property
    def kind(self) -> str:
        """`int`, `float`, `text` or `none`: what the placeholder takes."""
        if self.spec is None:
            return "none"
        last = self.spec[-1:] if self.spec else ""
        if last in _INT_TYPES:
            return "int"
        if last in _FLOAT_TYPES:
            return "float"
        return "text"


def parse_template(text: str) -> Template:
    """Split `text` around its one `{value}` placeholder; ValueError if it is not safe."""
    from drivers.serial_line.options import unescape  # noqa: PLC0415 - options imports us

    pieces: list[str] = []
    spec: str | None = None
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"bad template {text!r}: {exc} (write {{{{ and }}}} for braces)") \
            from None
    for literal, field, fmt, conversion in parsed:
        pieces.append(literal)
        if field is None:
            continue
        if field != "value" or conversion is not None or (fmt and "{" in fmt):
            raise ValueError(f"bad placeholder {{{field}{'!' + conversion if conversion else ''}"
                             f"{':' + fmt if fmt else ''}}}: write {{value}} or {{value:SPEC}} "
                             "such as {value:d} or {value:.1f}")
        if spec is not None:
            raise ValueError("a template takes the value once: one {value} placeholder")
        if fmt and not _SPEC.match(fmt):
            raise ValueError(f"format spec {fmt!r}: use d, 03d, x, .1f, e or s style specs")
        spec = fmt or ""
        pieces.append("\0")  # where the value goes
    joined = "".join(pieces)
    before, _, after = joined.partition("\0")
    return Template(unescape(before), unescape(after), spec)


def valid_regex(value: str | None) -> str | None:
    """`value` if it is None or compiles as a regular expression (a field validator)."""
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
    return value


class CommandOptions(StrictModel):
    """One named command: the bytes to send, the reply to expect, the values it takes."""

    send: str = Field(min_length=1, description=(
        r"What to send, e.g. 'RST\r\n' or 'RATE {value:d}\r\n' (one {value} at most)."))
    expect: str | None = Field(default=None, description=(
        "Regex the first reply line must match (poll mode); a different line fails the "
        "command. Without it nothing is awaited."))
    write: WriteLimits | None = Field(default=None, description=(
        "Limits of the value (required when `send` has a {value})."))

    @field_validator("send")
    @classmethod
    def _template(cls, value: str) -> str:
        parse_template(value)
        return value

    @field_validator("expect")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        return valid_regex(value)

    @model_validator(mode="after")
    def _limited(self) -> CommandOptions:
        if parse_template(self.send).spec is not None:
            w = self.write
            if w is None or (w.min is None and w.max is None and w.values is None):
                raise ValueError("a command that takes a {value} needs `write:` with min/max "
                                 "or values: [...], so no value outside them is ever sent")
        return self


def render(name: str, template: Template, value: Value, forbidden: bytes) -> bytes:
    """The bytes of one command with `value` in it; `WriteRefused` if it cannot be sent."""
    if template.spec is None:
        return template.before + template.after
    kind = template.kind
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                value):
            raise WriteRefused(f"{name}: takes a number, not {value!r}")
        if kind == "int":
            if value != int(value):
                raise WriteRefused(f"{name}: takes a whole number, not {value!r}")
            value = int(value)
    elif isinstance(value, bool) or value is None:
        raise WriteRefused(f"{name}: takes a value, not {value!r}")
    try:
        text = format(value, template.spec)
    except (ValueError, TypeError) as exc:
        raise WriteRefused(f"{name}: {value!r} does not fit {{value:{template.spec}}}: {exc}") \
            from None
    bad = sorted({c for c in text.encode("latin-1", "replace") if c in forbidden})
    if not _PRINTABLE.match(text) or bad:
        raise WriteRefused(f"{name}: {value!r} would put control, non-ASCII or framing "
                           "characters on the line; refused")
    return template.before + text.encode("ascii") + template.after
