"""`driver: serial`: line-oriented sensors on a serial port, pushed (stream) or polled."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping

from drivers.serial_line.commands import parse_template, render
from drivers.serial_line.framing import Chunk
from drivers.serial_line.link import PortSettings, SerialLink
from drivers.serial_line.options import SerialOptions, unescape
from drivers.serial_line.parsers import ParseError
from gateway.driver import Commandable, DriverContext, Emit, StreamingDriver, WriteLimits
from gateway.errors import DeviceRejected, TransientError, WriteRefused
from gateway.model import Reading, Value

LOG_EVERY = 30.0
"""Seconds between two warnings of the same kind of bad input (the counter counts them all)."""


def port_settings(o: SerialOptions) -> PortSettings:
    """The port settings of a device's options."""
    rs485 = None
    if o.rs485 is not None:
        r = o.rs485
        rs485 = (r.rts_level_for_tx, r.rts_level_for_rx, r.delay_before_tx, r.delay_before_rx)
    return PortSettings(o.port, o.baudrate, o.bytesize, o.parity, o.stopbits, rs485)


class SerialDriver(StreamingDriver, Commandable):
    """Reads lines from a serial port and parses them into readings.

    One class for both modes: in `stream` mode it reads whatever the sensor pushes; in
    `poll` mode it runs its own interval loop, sending `command` and parsing the reply.
    Bad input is counted by kind and never stops the device; a silent sensor or a lost
    port ends `run` with a `TransientError`, so the supervisor marks the device down and
    reopens the port with backoff (an unplugged USB adapter comes back by itself).
    """

    Options = SerialOptions

    def __init__(self, options: SerialOptions, ctx: DriverContext) -> None:
        super().__init__(options, ctx)
        self.o = options
        self.parser = options.build_parser()
        self.settings = port_settings(options)
        self.key = ("serial", options.port)
        self._templates = {n: parse_template(c.send) for n, c in options.commands.items()}
        framer = options.build_framer()
        self._forbidden = framer.terminator + framer.start
        self._link: SerialLink | None = None
        self._last_log: dict[str, tuple[float, int]] = {}
        dev, m = options.name, ctx.metrics
        self.m_lines = m.counter("serial_lines", "Lines parsed into readings",
                                 ["device"]).labels(dev)
        self.m_ignored = m.counter("serial_lines_ignored",
                                   "Lines skipped on purpose (empty, ignore pattern, "
                                   "NMEA sentences not asked for)", ["device"]).labels(dev)
        self.m_errors = m.counter("serial_parse_errors",
                                  "Input that could not be used, by kind (noise, partial, "
                                  "checksum, nomatch, value, json, overflow)", ["device", "kind"])
        self.m_silences = m.counter("serial_silences",
                                    "Times the sensor stayed quiet past `silence` or missed "
                                    "a polled reply", ["device"]).labels(dev)
        self.m_opens = m.counter("serial_port_opens",
                                 "Times the port was opened (more than one: it was reopened, "
                                 "e.g. after the USB adapter was unplugged)",
                                 ["device"]).labels(dev)
        self.m_last = m.gauge("serial_last_line_timestamp_seconds",
                              "Unix time of the last line parsed into readings",
                              ["device"]).labels(dev)

    async def open(self) -> None:
        """Take the (possibly shared) port and open it."""
        o, dev = self.o, self.o.name
        link = await self.ctx.resources.acquire(
            self.key, lambda: SerialLink(self.settings, o.build_framer, self.ctx.clock))
        self._link = link
        link.check(self.settings, o.build_framer(), dev)
        if o.mode == "stream":
            link.claim_stream(dev)
        link.users.add(dev)
        await self._ensure_open(link)

    async def _ensure_open(self, link: SerialLink) -> None:
        try:
            async with asyncio.timeout(self.o.timeout):
                opened = await link.ensure_open()
        except TimeoutError:
            raise TransientError(f"{self.o.port}: open took longer than {self.o.timeout:g}s",
                                 kind="timeout", device=self.o.name, address=self.o.port) from None
        if opened:
            self.m_opens.inc()
            self.ctx.log.info("serial port opened", port=self.o.port, opens=link.opens)

    async def close(self) -> None:
        """Let go of the port; the last device on it closes it."""
        link, self._link = self._link, None
        if link is None:
            return
        link.users.discard(self.o.name)
        if link.stream_owner == self.o.name:
            link.stream_owner = None
        await self.ctx.resources.release(self.key)

    async def run(self, emit: Emit) -> None:
        """Read (or poll) until cancelled; raises `TransientError` when the sensor is lost."""
        link = self._link
        if link is None:
            raise TransientError("run() before open()", kind="state")
        await self._ensure_open(link)
        if self.o.mode == "stream":
            await self._stream(link, emit)
        else:
            await self._poll(link, emit)

    async def _stream(self, link: SerialLink, emit: Emit) -> None:
        loop = asyncio.get_running_loop()
        silence = self.o.silence
        last_good = loop.time()
        while True:
            try:
                async with asyncio.timeout_at(last_good + silence if silence else None):
                    chunk = await link.next_chunk()
            except TimeoutError:
                self._lost_partial(link)
                self.m_silences.inc()
                self.ctx.log.warning("sensor silent", port=self.o.port, seconds=silence)
                raise TransientError(f"no usable line from {self.o.port} for {silence:g}s",
                                     kind="silent", device=self.o.name,
                                     address=self.o.port) from None
            readings = self.handle(chunk)
            if readings:
                emit(readings)
                last_good = loop.time()

    async def _poll(self, link: SerialLink, emit: Emit) -> None:
        loop = asyncio.get_running_loop()
        o = self.o
        command = unescape(o.command or "")
        next_at = loop.time()
        while True:
            readings = await self.transact(link, command)
            if readings:
                emit(readings)
            next_at += o.interval
            now = loop.time()
            next_at = max(next_at, now)  # overran: skip missed ticks instead of bursting
            await asyncio.sleep(next_at - now)

    async def transact(self, link: SerialLink, command: bytes) -> list[Reading]:
        """Send `command`, wait for `reply_lines` lines, return their readings."""
        o = self.o
        out: list[Reading] = []
        async with link.lock:
            for stale in link.discard():
                self._bad("unsolicited" if stale.kind == "line" else stale.kind, stale.data)
            link.write(command)
            got = 0
            try:
                async with asyncio.timeout(o.timeout):
                    while got < o.reply_lines:
                        chunk = await link.next_chunk()
                        got += chunk.kind == "line"
                        out += self.handle(chunk)
            except TimeoutError:
                self._lost_partial(link)
                self.m_silences.inc()
                raise TransientError(
                    f"{o.port}: no reply to {command!r} within {o.timeout:g}s "
                    f"({got} of {o.reply_lines} lines)", kind="timeout", device=o.name,
                    address=o.port) from None
        return out

    def handle(self, chunk: Chunk) -> list[Reading]:
        """Readings of one chunk; bad chunks are counted and logged (rate-limited)."""
        if chunk.kind != "line":
            self._bad(chunk.kind, chunk.data)
            return []
        try:
            values = self.parser.parse(chunk.data)
        except ParseError as exc:
            self._bad(exc.kind, chunk.data, str(exc))
            return []
        if values is None:
            self.m_ignored.inc()
            return []
        self.m_lines.inc()
        self.m_last.set(chunk.ts / 1000.0)
        dev, ts = self.o.name, chunk.ts
        return [Reading(dev, v.metric, v.value, ts, v.unit) for v in values]

    def _lost_partial(self, link: SerialLink) -> None:
        tail = link.flush_partial()
        if tail is not None:
            self._bad(tail.kind, tail.data)

    def _bad(self, kind: str, data: bytes, why: str = "") -> None:
        self.m_errors.labels(self.o.name, kind).inc()
        now = time.monotonic()
        last, suppressed = self._last_log.get(kind, (-LOG_EVERY, 0))
        if now - last < LOG_EVERY:
            self._last_log[kind] = (last, suppressed + 1)
            return
        self._last_log[kind] = (now, 0)
        self.ctx.log.warning("bad serial input", kind=kind, why=why or kind,
                             data=data[:80].decode("ascii", "backslashreplace"),
                             suppressed=suppressed)


    # -- commands ------------------------------------------------------------------------------
    def writable(self) -> Mapping[str, WriteLimits]:
        """The configured `commands:`, by name (a command without a value: no limits)."""
        return {n: c.write or WriteLimits() for n, c in self.o.commands.items()}

    async def write(self, point: str, value: Value) -> Value | None:
        """Send command `point` with `value` in its template; check the reply if it expects one.

        Takes the port's lock, so on a shared RS-485 line no poll comes in between. Returns
        None: a line device has nothing to read back.
        """
        cmd = self.o.commands.get(point)
        if cmd is None:
            raise WriteRefused(f"{point}: {self.o.name} has no such command (it sends only "
                               f"those under `commands:`: {', '.join(self.o.commands) or 'none'})")
        data = render(point, self._templates[point], value, self._forbidden)
        link = self._link
        if link is None:
            raise TransientError(f"{self.o.name} is not open", kind="state")
        await self._ensure_open(link)
        async with link.lock:
            if cmd.expect is None:
                link.write(data)
                return None
            for stale in link.discard():
                self._bad("unsolicited" if stale.kind == "line" else stale.kind, stale.data)
            link.write(data)
            try:
                async with asyncio.timeout(self.o.timeout):
                    chunk = await link.next_chunk()
                    while chunk.kind != "line":
                        self._bad(chunk.kind, chunk.data)
                        chunk = await link.next_chunk()
            except TimeoutError:
                self._lost_partial(link)
                raise TransientError(f"{self.o.port}: no reply to command {point} within "
                                     f"{self.o.timeout:g}s", kind="timeout", device=self.o.name,
                                     address=self.o.port) from None
        line = chunk.data.decode(self.o.framing.encoding, "backslashreplace").strip()
        if not re.search(cmd.expect, line):
            raise DeviceRejected(f"{point}: the device answered {line[:80]!r}, not "
                                 f"{cmd.expect!r}", device=self.o.name, address=self.o.port)
        return None
