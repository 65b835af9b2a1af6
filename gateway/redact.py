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


def forms(secret: str) -> set[str]:
    """The ways `secret` can appear in formatted text."""
    out = {secret}
    for text in (secret, repr(secret)[1:-1], ascii(secret)[1:-1],
                 repr(secret.replace("'", '"'))[1:-1]):
        out.add(text)
        out.add(json.dumps(text)[1:-1])
        out.add(json.dumps(text, ensure_ascii=False)[1:-1])
    out.add(secret.encode("unicode_escape").decode("ascii"))
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
