"""Durations (`250ms`, `5s`, `2m`, `1h`) and sizes (`64KiB`, `512MiB`, `2GB`) in config."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d)\s*$")
_DURATION_FACTORS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$")
_SIZE_FACTORS = {
    "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
}


def parse_duration(value: object) -> float:
    """Seconds from `250ms`, `5s`, `2m`, `1h`, `1d`; a bare number is seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 5s, 2m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_FACTORS[m.group(2)]
    else:
        raise ValueError(
            f"{value!r} is not a duration: write a number and a unit, such as 500ms, 5s, 2m or 1h")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from `64KiB`, `512MiB`, `2GB`; a bare number is bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 64KiB, 512MiB or 2GB")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        size = int(float(m.group(1)) * _SIZE_FACTORS[m.group(2) or "B"])
    else:
        raise ValueError(
            f"{value!r} is not a size: write a number and a unit, such as 64KiB, 512MiB or 2GB")
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


def format_duration(seconds: float) -> str:
    """The shortest exact config spelling of a duration."""
    for unit, factor in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3)):
        if seconds >= factor and abs(seconds / factor - round(seconds / factor)) < 1e-9:
            return f"{round(seconds / factor)}{unit}"
    return f"{seconds * 1000:g}ms"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?(us|ms|s|m|h|d)$",
                    "examples": ["250ms", "5s", "2m", "1h"]}),
]
"""A duration in seconds, written in config as `250ms`, `5s`, `2m`, `1h`."""

Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?$",
                    "examples": ["64KiB", "512MiB", "2GB"]}),
]
"""A size in bytes, written in config as `64KiB`, `512MiB`, `2GB`."""
