"""Rate limit for repeated log lines: a burst per kind of line and window, the rest counted.

A fault that repeats in a tight loop (asyncio's accept loop at the descriptor limit logged
40,000 lines in 30 s) must not fill the disk or the journal and drown the one line that
explains it. Lines are of one kind when their level, logger and first line agree with
numbers and addresses masked. Past `burst` lines of a kind in `window` seconds the rest
are dropped; the next line of that kind let through says how many were (`suppressed`).
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

BURST = 20
WINDOW_S = 60.0
MAX_KINDS = 1000
"""Kinds remembered at once (least recently seen forgotten first): bounded memory."""

_VARIABLE = re.compile(r"0x[0-9a-fA-F]+|\d+")


def kind_of(level: str, logger: str, message: str) -> tuple[str, str, str]:
    """The kind of a line: its first line with numbers and addresses masked, cut to 160."""
    first = message.split("\n", 1)[0]
    return level, logger, _VARIABLE.sub("#", first)[:160]


class LogThrottle:
    """Counts lines per kind in fixed windows; one instance serves structlog and stdlib."""

    def __init__(self, burst: int = BURST, window: float = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.window = window
        self.clock = clock
        # kind -> [window start, lines let through in it, lines suppressed not yet reported]
        self._kinds: OrderedDict[tuple[str, str, str], list[float]] = OrderedDict()

    def admit(self, kind: tuple[str, str, str]) -> int | None:
        """None to drop this line, else how many of its kind were dropped before it."""
        now = self.clock()
        entry = self._kinds.get(kind)
        if entry is None:
            entry = [now, 0.0, 0.0]
            self._kinds[kind] = entry
            if len(self._kinds) > MAX_KINDS:
                self._kinds.popitem(last=False)
        else:
            self._kinds.move_to_end(kind)
            if now - entry[0] >= self.window:
                entry[0], entry[1] = now, 0.0
        if entry[1] >= self.burst:
            entry[2] += 1
            return None
        entry[1] += 1
        suppressed, entry[2] = int(entry[2]), 0.0
        return suppressed

    def processor(self, _logger: Any, _name: str, event: MutableMapping[str, Any]
                  ) -> MutableMapping[str, Any]:
        """structlog processor (after `add_log_level`): drops lines over the rate."""
        # per device: one failing device must not hide the others' lines
        source = f'{event.get("component", "")}/{event.get("device", "")}'
        kind = kind_of(str(event.get("level", "")), source, str(event.get("event", "")))
        suppressed = self.admit(kind)
        if suppressed is None:
            raise structlog.DropEvent
        if suppressed:
            event["suppressed"] = suppressed
        return event


class ThrottleFilter(logging.Filter):
    """The same limit for standard-library records (asyncio, paho, pymodbus)."""

    def __init__(self, throttle: LogThrottle) -> None:
        super().__init__()
        self.throttle = throttle

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a library's bad format string: let it through
            return True
        suppressed = self.throttle.admit(kind_of(record.levelname.lower(), record.name,
                                                 message))
        if suppressed is None:
            return False
        if suppressed:
            record.msg = f"{message} [{suppressed} similar lines suppressed]"
            record.args = None
        return True
