"""Masking secrets in text that is already formatted, in every form a value takes there.

A secret reaches output raw, inside a `repr()` (`'a\\\\b'`), JSON-escaped by a log
renderer, or both (a repr inside a JSON log line). Masking after formatting catches all of
them, including secrets inside exception messages and formatted tracebacks.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

MASK = "***"
MIN_SECRET_LEN = 4
"""Shorter values would mask innocent text everywhere."""


_DEPTH = 3
"""Escaping applied up to this many times over: a repr inside an exception's repr inside
a JSON log line is three."""


def _escapes(text: str) -> set[str]:
    return {repr(text)[1:-1], repr(text.replace("'", '"'))[1:-1], ascii(text)[1:-1],
            json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1]}


def forms(secret: str) -> set[str]:
    """The ways `secret` can appear in formatted text: raw, and escaped by repr(), ascii()
    or JSON, up to three times over."""
    out = {secret}
    layer = {secret}
    for _ in range(_DEPTH):
        layer = {escaped for text in layer for escaped in _escapes(text)} - out
        if not layer:
            break
        out |= layer
    return {f for f in out if f}


class Masker:
    """Replaces every form of the given secrets by `***`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        every: set[str] = set()
        for secret in secrets:
            if len(secret) >= MIN_SECRET_LEN:
                every |= forms(secret)
        # longest first: a form that contains another is masked whole
        self.forms = tuple(sorted(every, key=len, reverse=True))

    def __bool__(self) -> bool:
        return bool(self.forms)

    def __call__(self, text: str) -> str:
        """`text` with every secret masked."""
        for form in self.forms:
            if form in text:
                text = text.replace(form, MASK)
        return text
