"""One opened serial port, cut into lines and shared by the devices configured on it."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import termios
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import serial
import serial.rs485
import serial_asyncio_fast

from drivers.serial_line.framing import Chunk, LineFramer
from gateway.errors import DeviceConfigError, TransientError

QUEUE_LIMIT = 4096
"""Chunks kept when nobody reads them; the oldest are dropped beyond this."""


@dataclass(frozen=True, slots=True)
class PortSettings:
    """Everything that identifies how a port is opened; devices sharing it must agree."""

    port: str
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1
    rs485: tuple[bool, bool, float | None, float | None] | None = None
    """(rts_level_for_tx, rts_level_for_rx, delay_before_tx, delay_before_rx)"""

    def open(self) -> serial.Serial:
        """Open the port (blocking: run it in an executor)."""
        ser = serial.Serial()
        ser.port = self.port
        ser.baudrate = self.baudrate
        ser.bytesize = self.bytesize
        ser.parity = self.parity
        ser.stopbits = self.stopbits
        ser.exclusive = True  # keeps ModemManager or a second agent from reading our lines
        if self.rs485 is not None:
            tx, rx, before_tx, before_rx = self.rs485
            ser.rs485_mode = serial.rs485.RS485Settings(
                rts_level_for_tx=tx, rts_level_for_rx=rx,
                delay_before_tx=before_tx, delay_before_rx=before_rx)
        ser.open()
        return ser


def open_error(settings: PortSettings, exc: BaseException) -> TransientError | DeviceConfigError:
    """The parkgate error for a failed open, with a hint a field engineer can act on."""
    port = settings.port
    code = getattr(exc, "errno", None)
    if isinstance(exc, ValueError):
        return DeviceConfigError(f"{port}: {exc}", kind="config", address=port)
    if isinstance(exc, termios.error):
        return DeviceConfigError(f"{port} refused the settings (baud rate, parity, stop bits): "
                                 f"{exc}", kind="config", address=port)
    if code == errno.ENOENT:
        return TransientError(f"{port} does not exist (adapter unplugged?)", kind="unplugged",
                              address=port)
    if code == errno.EACCES:
        return DeviceConfigError(f"{port}: permission denied (is the service user in the "
                                 f"dialout group?)", kind="permission", address=port)
    if code in (errno.EAGAIN, errno.EBUSY):
        return TransientError(f"{port} is in use by another program", kind="busy", address=port)
    return TransientError(f"{port}: {exc}", kind="open", address=port)


async def open_serial(settings: PortSettings,
                      protocol: Callable[[], asyncio.Protocol]) -> asyncio.Transport:
    """Open a port (in an executor) as an asyncio transport; parkgate errors on failure.

    Cancelled (by a timeout) while the executor is still opening, the port is closed as
    soon as the open finishes instead of leaking.
    """
    loop = asyncio.get_running_loop()
    opening = loop.run_in_executor(None, settings.open)
    try:
        ser = await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(close_when_opened)
        raise
    except (serial.SerialException, OSError, ValueError, termios.error) as exc:
        raise open_error(settings, exc) from exc
    try:
        transport, _ = await serial_asyncio_fast.connection_for_serial(loop, protocol, ser)
    except (serial.SerialException, OSError, ValueError, termios.error) as exc:
        ser.close()
        raise open_error(settings, exc) from exc
    return transport


class _Protocol(asyncio.Protocol):
    """Hands the transport's events to its owner's (private) handlers."""

    def __init__(self, on_data: Callable[[bytes], None],
                 on_lost: Callable[[Exception | None], None]) -> None:
        self._on_data = on_data
        self._on_lost = on_lost

    def data_received(self, data: bytes) -> None:
        self._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(exc)


class SerialLink:
    """A serial port as a queue of line chunks, reopened on demand after it was lost.

    Poll-mode devices on one RS-485 bus take `lock` around each command and reply;
    a stream-mode device claims the port for itself (`claim_stream`).
    """

    def __init__(self, settings: PortSettings, framer: Callable[[], LineFramer],
                 clock: Callable[[], int]) -> None:
        self.settings = settings
        self.framer_factory = framer
        self.clock = clock
        self.lock = asyncio.Lock()
        self.stream_owner: str | None = None
        self.users: set[str] = set()
        self.opens = 0
        """Successful opens; more than one means the port was reopened."""
        self.dropped = 0
        """Chunks dropped because nobody read them."""
        self.bytes_received = 0
        self._open_lock = asyncio.Lock()
        self._framer = framer()
        self._queue: deque[Chunk] = deque()
        self._ready = asyncio.Event()
        self._transport: asyncio.Transport | None = None
        self._closed = asyncio.Event()
        self._closed.set()
        self._lost: str | None = None

    @property
    def is_open(self) -> bool:
        """True while the port is open and not lost."""
        return self._transport is not None

    def claim_stream(self, device: str) -> None:
        """Take the port for a streaming device; fails if another device uses it."""
        others = self.users - {device}
        if others:
            raise DeviceConfigError(
                f"{self.settings.port} is also used by {', '.join(sorted(others))}; "
                "a stream-mode device needs the port to itself", kind="config",
                device=device, address=self.settings.port)
        self.stream_owner = device

    def check(self, settings: PortSettings, framer: LineFramer, device: str) -> None:
        """Fail if `device` wants the shared port with other settings than its first user."""
        mine = self._framer
        if settings != self.settings or (framer.terminator, framer.start, framer.max_length) != (
                mine.terminator, mine.start, mine.max_length):
            raise DeviceConfigError(
                f"{self.settings.port} is shared with {', '.join(sorted(self.users))} "
                "but configured differently (baud rate, parity, framing must match)",
                kind="config", device=device, address=self.settings.port)
        if self.stream_owner and self.stream_owner != device:
            raise DeviceConfigError(f"{self.settings.port} is claimed by stream-mode device "
                                    f"{self.stream_owner}", kind="config", device=device,
                                    address=self.settings.port)

    async def ensure_open(self) -> bool:
        """Open the port unless it is open; True if it was opened now.

        Run it under `asyncio.timeout()`: a port given up on is closed once the open
        (in an executor thread) finishes.
        """
        async with self._open_lock:
            if self._transport is not None:
                return False
            self._framer = self.framer_factory()
            self._queue.clear()
            self._lost = None
            transport = await open_serial(self.settings,
                                          lambda: _Protocol(self._on_data, self._on_lost))
            self._closed.clear()
            self._transport = transport
            self.opens += 1
            return True

    def write(self, data: bytes) -> None:
        """Send bytes (buffered by the transport)."""
        if self._transport is None:
            raise TransientError(f"{self.settings.port} is not open", kind="disconnected",
                                 address=self.settings.port)
        self._transport.write(data)

    def discard(self) -> list[Chunk]:
        """Take every queued chunk and the line in progress (before sending a command)."""
        out = list(self._queue)
        self._queue.clear()
        tail = self._framer.flush(self.clock())
        if tail is not None:
            out.append(tail)
        return out

    def flush_partial(self) -> Chunk | None:
        """Give up on the line in progress (the sensor went quiet mid-line)."""
        return self._framer.flush(self.clock())

    async def next_chunk(self) -> Chunk:
        """The next chunk; `TransientError(kind="disconnected")` once the port is gone."""
        while not self._queue:
            if self._transport is None:
                raise TransientError(
                    f"{self.settings.port} lost: {self._lost or 'closed'}", kind="disconnected",
                    address=self.settings.port)
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    def _on_data(self, data: bytes) -> None:
        self.bytes_received += len(data)
        chunks = self._framer.feed(data, self.clock())
        if not chunks:
            return
        self._queue.extend(chunks)
        excess = len(self._queue) - QUEUE_LIMIT
        if excess > 0:
            for _ in range(excess):
                self._queue.popleft()
            self.dropped += excess
        self._ready.set()

    def _on_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._lost = str(exc) if exc else None
        self._closed.set()
        self._ready.set()

    async def aclose(self) -> None:
        """Close the port; waits (briefly) until the transport let go of it."""
        transport = self._transport
        if transport is None:
            return
        transport.close()
        try:
            async with asyncio.timeout(2.0):
                await self._closed.wait()
        except TimeoutError:
            transport.abort()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._closed.wait()
        self._transport = None


def close_when_opened(fut: asyncio.Future[serial.Serial]) -> None:
    """An open that finished after we gave up on it: close the port again."""
    if not fut.cancelled() and fut.exception() is None:
        with contextlib.suppress(Exception):
            fut.result().close()
