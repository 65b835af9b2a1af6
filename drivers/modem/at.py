"""An AT command engine on a serial port: one command at a time, URCs set aside.

A command is written, then lines are collected until a final result code (`OK`, `ERROR`,
`+CME ERROR: n`, `+CMS ERROR: n`) or a timeout. Lines that do not belong to the command are
unsolicited result codes (`RING`, `RDY`, `+QIURC: ...`, `+CREG: 1`) and are logged, not
returned. The command's echo is dropped when the modem has echo on (ATE1).

A command that timed out leaves an orphan: its reply may still come. A final result code
that arrives while an orphan is live, before the current command printed any line of its
own, is the orphan's; orphans expire after a grace period (a modem may drop a command
altogether). And a command that always prints a line (`body=True`, implied by `prefix`)
ignores a bare `OK`: it is a late reply to something else (say, from before the port was
reopened). So one slow reply cannot shift every later reply by one. Should the modem
really answer such a command with a bare `OK`, that answer stands when the timeout ends.

When the port goes away (USB modem reset, unplug), the pending command fails with a
`TransientError(kind="disconnected")`; `ensure_open()` reopens it with capped, jittered
backoff so a missing port is not hammered.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import serial
import structlog
from serial_asyncio_fast import create_serial_connection
from structlog.typing import FilteringBoundLogger

from gateway.backoff import Backoff
from gateway.errors import DeviceError, TransientError

_MAX_LINE = 4096
_FINAL_ERRORS = ("ERROR", "+CME ERROR:", "+CMS ERROR:")
_URC_WORDS = frozenset({"RING", "RDY", "NO CARRIER", "POWERED DOWN", "NORMAL POWER DOWN",
                        "UNDER_VOLTAGE POWER DOWN", "OVER_VOLTAGE POWER DOWN"})


def _reason(exc: BaseException) -> str:
    """`No such file or directory` rather than pyserial's nested restatement of the path."""
    for e in (exc.__context__, exc):
        if isinstance(e, OSError) and e.strerror and not isinstance(e, serial.SerialException):
            return e.strerror
    return str(exc) or type(exc).__name__


class AtCommandError(DeviceError):
    """The modem answered ERROR, +CME ERROR: n or +CMS ERROR: n."""

    kind = "at_error"

    def __init__(self, command: str, result: str) -> None:
        super().__init__(f"{command}: {result}")
        self.command = command
        self.result = result
        code = result.split(":", 1)[1].strip() if ":" in result else ""
        self.code: int | None = int(code) if code.isdigit() else None


def is_final(line: str) -> bool:
    """Whether `line` ends a command's response."""
    return line == "OK" or line.startswith(_FINAL_ERRORS)


@dataclass(slots=True)
class _Pending:
    command: str
    prefix: str | None
    done: asyncio.Future[str]
    body: bool = False
    lines: list[str] = field(default_factory=list)
    echo_seen: bool = False
    own_line_seen: bool = False
    bare_ok_seen: bool = False


class _LineProtocol(asyncio.Protocol):
    """Splits the byte stream into lines (CR, LF or both) and hands them on."""

    def __init__(self, on_line: Callable[[_LineProtocol, str], None],
                 on_lost: Callable[[_LineProtocol, Exception | None], None]) -> None:
        self._buf = bytearray()
        self._on_line = on_line
        self._on_lost = on_lost

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while True:
            cut = next((i for i, b in enumerate(self._buf) if b in (10, 13)), -1)
            if cut < 0:
                if len(self._buf) > _MAX_LINE:  # no line end in sight: noise, not a line
                    self._buf.clear()
                return
            raw = bytes(self._buf[:cut])
            del self._buf[: cut + 1]
            text = raw.decode("utf-8", "replace").strip()
            if text:
                self._on_line(self, text)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(self, exc)


class AtEngine:
    """AT commands over one serial port (shareable: commands are serialised by a lock)."""

    def __init__(self, port: str, *, baudrate: int = 115200, timeout: float = 2.0,
                 log: FilteringBoundLogger | None = None,
                 backoff: Backoff | None = None) -> None:
        self.port = port
        self.baudrate = baudrate
        self.timeout = timeout
        self.log: FilteringBoundLogger = log or structlog.get_logger().bind(port=port)
        self.backoff = backoff or Backoff(base=0.5, cap=30.0)
        self.urcs = 0
        self.opens = 0
        self._transport: asyncio.BaseTransport | None = None
        self._proto: _LineProtocol | None = None
        self._pending: _Pending | None = None
        self._orphans: list[float] = []  # monotonic expiry of each orphaned command
        self._synced = asyncio.Event()
        self._synced.set()
        self._lock = asyncio.Lock()
        self._next_open = 0.0
        self._closed = False

    @property
    def connected(self) -> bool:
        """True while the port is open."""
        return self._transport is not None

    async def ensure_open(self) -> None:
        """Open the port (and check the modem answers `AT`) unless it already is."""
        async with self._lock:
            if self._transport is not None:
                return
            if self._closed:
                raise TransientError(f"AT port {self.port} is closed", kind="disconnected")
            wait = self._next_open - time.monotonic()
            if wait > 0:
                raise TransientError(f"AT port {self.port} unavailable; retrying in {wait:.1f}s",
                                     kind="disconnected")
            try:
                await self._open()
            except TransientError:
                self._next_open = time.monotonic() + self.backoff.next_delay()
                raise
            try:
                await self._command("AT", None, self.timeout)
            except (TransientError, AtCommandError) as exc:
                self._drop_transport()
                self._next_open = time.monotonic() + self.backoff.next_delay()
                raise TransientError(f"no modem answers AT on {self.port}: {exc}",
                                     kind=exc.kind) from exc
            self.backoff.reset()

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        proto = _LineProtocol(self._on_line, self._on_lost)
        try:
            async with asyncio.timeout(self.timeout):
                transport, _ = await create_serial_connection(
                    loop, lambda: proto, url=self.port, baudrate=self.baudrate)
        except (OSError, serial.SerialException, TimeoutError) as exc:
            raise TransientError(f"cannot open AT port {self.port}: {_reason(exc)}",
                                 kind="disconnected") from exc
        self._transport, self._proto = transport, proto
        port = getattr(transport, "serial", None)
        if port is not None:  # what the OS kept from before is stale
            with contextlib.suppress(OSError, serial.SerialException):
                port.reset_input_buffer()
        self._orphans.clear()
        self._synced.set()
        self.opens += 1
        self.log.info("modem.at_port_opened", port=self.port, baudrate=self.baudrate)

    async def command(self, command: str, *, prefix: str | None = None,
                      body: bool | None = None, limit: float | None = None) -> list[str]:
        """Send `command`, return its response lines (no echo, no URCs, no final code).

        `prefix` (such as `+CSQ:`) names the command's own lines; without it, every line
        that does not look like a URC belongs to the command (ATI, AT+CGMM). `body` says the
        command always prints a line before OK (default: when it has a prefix).
        `limit` overrides the engine's timeout for this command. Raises `AtCommandError` on
        ERROR, `TransientError` on timeout or disconnection.
        """
        async with self._lock:
            if self._transport is None:
                raise TransientError(f"AT port {self.port} is not open", kind="disconnected")
            return await self._command(command, prefix, limit or self.timeout,
                                       prefix is not None if body is None else body)

    async def _command(self, command: str, prefix: str | None, limit: float,
                       body: bool = False) -> list[str]:
        await self._settle_orphans(limit)
        transport = self._transport
        if not isinstance(transport, asyncio.WriteTransport):
            raise TransientError(f"AT port {self.port} is not open", kind="disconnected")
        pending = _Pending(command, prefix, asyncio.get_running_loop().create_future(), body)
        self._pending = pending
        try:
            transport.write(command.encode("ascii", "replace") + b"\r")
            async with asyncio.timeout(limit):
                final = await pending.done
        except TimeoutError:
            if pending.bare_ok_seen:  # the modem did mean a bare OK
                return pending.lines
            self._orphan(limit)
            raise TransientError(f"{command}: no reply within {limit:g}s from {self.port}",
                                 kind="timeout") from None
        except asyncio.CancelledError:
            self._orphan(limit)
            raise
        finally:
            self._pending = None
        if final != "OK":
            raise AtCommandError(command, final)
        return pending.lines

    def _orphan(self, timeout: float) -> None:
        self._orphans.append(time.monotonic() + max(5.0, 4 * timeout))
        self._synced.clear()

    def _live_orphans(self) -> bool:
        now = time.monotonic()
        self._orphans = [t for t in self._orphans if t > now]
        if not self._orphans:
            self._synced.set()
        return bool(self._orphans)

    async def _settle_orphans(self, limit: float) -> None:
        """Give a late reply to an earlier command a moment to arrive before the next one."""
        if not self._live_orphans():
            return
        try:
            async with asyncio.timeout(limit):
                await self._synced.wait()
        except TimeoutError:
            self.log.debug("modem.at_orphan_pending", port=self.port, orphans=len(self._orphans))

    def _on_line(self, proto: _LineProtocol, line: str) -> None:
        if proto is not self._proto:
            return  # a port closed earlier still flushing
        p = self._pending
        if p is None or p.done.done():
            if is_final(line) and self._live_orphans():
                self._orphans.pop(0)
                self._live_orphans()
                return
            self._urc(line)
            return
        if not p.echo_seen and not p.lines and line.upper() == p.command.upper():
            p.echo_seen = True
            return
        if is_final(line):
            if p.body and not p.own_line_seen:
                if self._live_orphans():
                    self.log.debug("modem.at_late_reply", port=self.port, result=line)
                    self._orphans.pop(0)
                    self._live_orphans()
                    return
                if line == "OK":
                    self.log.debug("modem.at_stray_ok", port=self.port, command=p.command)
                    p.bare_ok_seen = True
                    return
            p.done.set_result(line)
            return
        if p.prefix is not None:
            if line[: len(p.prefix)].upper() == p.prefix.upper():
                p.own_line_seen = True
                p.lines.append(line)
            else:
                self._urc(line)
        elif line.startswith("+") or line in _URC_WORDS:
            self._urc(line)
        else:
            p.own_line_seen = True
            p.lines.append(line)

    def _urc(self, line: str) -> None:
        self.urcs += 1
        self.log.debug("modem.urc", port=self.port, line=line)

    def _on_lost(self, proto: _LineProtocol, exc: Exception | None) -> None:
        if proto is not self._proto:
            return  # the end of a port we closed ourselves
        self._transport = self._proto = None
        self.log.warning("modem.at_port_lost", port=self.port, error=str(exc) if exc else None)
        p = self._pending
        if p is not None and not p.done.done():
            p.done.set_exception(TransientError(f"AT port {self.port} went away",
                                                kind="disconnected"))
        self._next_open = time.monotonic() + self.backoff.next_delay()

    def _drop_transport(self) -> None:
        transport, self._transport, self._proto = self._transport, None, None
        if isinstance(transport, asyncio.WriteTransport):
            transport.abort()
        elif transport is not None:
            transport.close()

    async def aclose(self) -> None:
        """Close the port for good."""
        self._closed = True
        self._drop_transport()

    def __repr__(self) -> str:
        return f"AtEngine({self.port!r}, connected={self.connected})"

