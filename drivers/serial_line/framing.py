"""Cuts a byte stream into lines: pure, no I/O, safe on any input."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

ChunkKind = Literal["line", "partial", "noise", "overflow"]


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of the stream: a complete `line` (terminator removed) or something to count.

    `partial`: a line whose end never came (a new start marker arrived first, or the sensor
    went quiet mid-line); `noise`: bytes outside any line; `overflow`: a line longer than
    `max_length`, dropped up to its terminator.
    """

    kind: ChunkKind
    data: bytes
    ts: int = 0


class LineFramer:
    """Incremental line splitter with an optional set of start bytes (`$!` for NMEA)."""

    def __init__(self, terminator: bytes = b"\n", start: bytes = b"",
                 max_length: int = 1024) -> None:
        if not terminator:
            raise ValueError("the line terminator must not be empty")
        if max_length < 1:
            raise ValueError("max_length must be at least 1")
        if start and any(b in terminator for b in start):
            raise ValueError("start bytes and terminator must not overlap")
        self.terminator = terminator
        self.start = start
        self.max_length = max_length
        self._start = re.compile(b"[" + re.escape(start) + b"]") if start else None
        self._buf = bytearray()
        self._in_line = False  # with start bytes: inside a line that began with one
        self._skipping = False  # after an overflow: drop bytes up to the next terminator

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a line."""
        return len(self._buf)

    def feed(self, data: bytes, ts: int = 0) -> list[Chunk]:
        """Chunks completed by `data`, in stream order."""
        self._buf += data
        out: list[Chunk] = []
        term, tlen = self.terminator, len(self.terminator)
        while self._buf:
            buf = self._buf
            if self._skipping:
                end = buf.find(term)
                if end < 0:
                    # keep a possible partial terminator, drop the rest
                    del buf[:max(0, len(buf) - tlen + 1)]
                    break
                del buf[:end + tlen]
                self._skipping = False
                continue
            if self._start is not None and not self._in_line:
                m = self._start.search(buf)
                if m is None:
                    if bytes(buf).strip():
                        out.append(Chunk("noise", bytes(buf), ts))
                    buf.clear()
                    break
                if m.start() and bytes(buf[:m.start()]).strip():
                    out.append(Chunk("noise", bytes(buf[:m.start()]), ts))
                del buf[:m.start()]
                self._in_line = True
            end = buf.find(term)
            if self._start is not None:
                m = self._start.search(buf, 1)
                if m is not None and (end < 0 or m.start() < end):
                    if m.start() > self.max_length:  # cut short, and too long anyway
                        out.append(Chunk("overflow", bytes(buf[:self.max_length]), ts))
                    else:
                        out.append(Chunk("partial", bytes(buf[:m.start()]), ts))
                    del buf[:m.start()]
                    continue
            if end >= 0:
                if end > self.max_length:
                    out.append(Chunk("overflow", bytes(buf[:self.max_length]), ts))
                else:
                    out.append(Chunk("line", bytes(buf[:end]), ts))
                del buf[:end + tlen]
                self._in_line = False
                continue
            if len(buf) > self.max_length + tlen:
                out.append(Chunk("overflow", bytes(buf[:self.max_length]), ts))
                buf.clear()
                self._in_line = False
                self._skipping = True
            break
        return out

    def flush(self, ts: int = 0) -> Chunk | None:
        """Give up on the line in progress (the sensor went quiet): it is a partial line."""
        data = bytes(self._buf)
        self._buf.clear()
        self._in_line = False
        skipping, self._skipping = self._skipping, False
        if skipping or not data.strip():
            return None
        return Chunk("partial", data, ts)
