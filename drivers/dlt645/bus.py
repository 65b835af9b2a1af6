"""One DL/T 645 bus: a serial port or a TCP serial device server, one request at a time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from drivers.dlt645.frame import Frame, FrameError, scan
from drivers.serial_line.link import PortSettings, open_serial
from gateway.errors import DeviceConfigError, TransientError


@dataclass(frozen=True, slots=True)
class TcpSettings:
    """A transparent serial device server (RS-485 to Ethernet) at host:port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


BusSettings = PortSettings | TcpSettings


def bus_name(settings: BusSettings) -> str:
    """The bus in logs and metric labels: the port path or host:port."""
    return settings.port if isinstance(settings, PortSettings) else str(settings)


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


class Dlt645Bus:
    """Shared by every meter on one RS-485 line (like a Modbus RTU hub).

    `transact` holds `lock` for one request and its reply and keeps `delay` seconds of
    silence between the end of one exchange and the next request, so a meter that never
    answers costs only its own timeout. The link is (re)opened lazily by the next request
    after it was lost, so an unplugged adapter or a restarted device server heals itself.
    """

    def __init__(self, settings: BusSettings, *, delay: float = 0.05) -> None:
        self.settings = settings
        self.delay = delay
        self.name = bus_name(settings)
        self.lock = asyncio.Lock()
        self.users: set[str] = set()
        self.opens = 0
        self._rx = bytearray()
        self._event = asyncio.Event()
        self._transport: asyncio.Transport | None = None
        self._closed = asyncio.Event()
        self._closed.set()
        self._lost: str | None = None
        self._idle_since = 0.0

    def check(self, settings: BusSettings, delay: float, device: str) -> None:
        """Fail if `device` describes the shared bus differently from its first user."""
        if settings != self.settings or delay != self.delay:
            raise DeviceConfigError(
                f"{self.name} is shared with {', '.join(sorted(self.users)) or 'another device'}"
                " but configured differently (baud rate, parity, delay must match)",
                kind="config", device=device, address=self.name)

    @property
    def is_open(self) -> bool:
        """True while the link is up."""
        return self._transport is not None

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        s = self.settings
        self._rx.clear()
        self._lost = None
        if isinstance(s, TcpSettings):
            try:
                transport, _ = await loop.create_connection(
                    lambda: _Protocol(self._on_data, self._on_lost), s.host, s.port)
            except OSError as exc:
                raise TransientError(f"{s}: {exc.strerror or exc}", kind="connect",
                                     address=str(s)) from exc
        else:
            transport = await open_serial(s, lambda: _Protocol(self._on_data, self._on_lost))
        self._transport = transport
        self._closed.clear()
        self.opens += 1

    async def transact(self, request: bytes, accept: Callable[[Frame], bool],
                       response_timeout: float) -> tuple[Frame, float]:
        """Send `request`, return the first reply `accept`ed and the seconds it took.

        `response_timeout` covers opening the link, sending and the reply, not the wait for the
        bus. Frames from other meters, echoes of our own request and late replies to an
        earlier request are skipped; a reply with a bad checksum raises `FrameError`.
        """
        loop = asyncio.get_running_loop()
        async with self.lock:
            quiet = self._idle_since + self.delay - loop.time()
            if quiet > 0:
                await asyncio.sleep(quiet)
            started = time.perf_counter()
            try:
                async with asyncio.timeout(response_timeout):
                    if self._transport is None:
                        await self._open()
                    self._rx.clear()
                    self._write(request)
                    frame = await self._reply(accept)
            except TimeoutError:
                raise TransientError(f"no reply on {self.name} within {response_timeout:g}s",
                                     kind="timeout", address=self.name) from None
            finally:
                self._idle_since = loop.time()
            return frame, time.perf_counter() - started

    async def send(self, request: bytes, response_timeout: float) -> None:
        """Send a frame nobody answers (a broadcast) under the bus lock and its quiet time.

        The next request waits the bus `delay` after it as after any exchange, plus the
        time the frame takes on the wire at the port's baud rate.
        """
        loop = asyncio.get_running_loop()
        async with self.lock:
            quiet = self._idle_since + self.delay - loop.time()
            if quiet > 0:
                await asyncio.sleep(quiet)
            try:
                async with asyncio.timeout(response_timeout):
                    if self._transport is None:
                        await self._open()
                    self._write(request)
            except TimeoutError:
                raise TransientError(f"could not open {self.name} within "
                                     f"{response_timeout:g}s", kind="timeout",
                                     address=self.name) from None
            finally:
                s = self.settings
                on_wire = len(request) * 11 / s.baudrate if isinstance(s, PortSettings) else 0.0
                self._idle_since = loop.time() + on_wire

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise TransientError(f"{self.name} is not open", kind="disconnected",
                                 address=self.name)
        transport.write(data)

    async def _reply(self, accept: Callable[[Frame], bool]) -> Frame:
        while True:
            found, used = scan(self._rx)
            if used:
                del self._rx[:used]
            if isinstance(found, FrameError):
                raise found
            if found is None:
                if self._transport is None:
                    raise TransientError(f"{self.name} lost: {self._lost or 'closed'}",
                                         kind="disconnected", address=self.name)
                self._event.clear()
                await self._event.wait()
                continue
            if found.is_reply and accept(found):
                return found

    def _on_data(self, data: bytes) -> None:
        self._rx += data
        if len(self._rx) > 4096:  # nobody is reading: a chattering bus, keep the tail
            del self._rx[:-1024]
        self._event.set()

    def _on_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._lost = str(exc) if exc else None
        self._closed.set()
        self._event.set()

    async def aclose(self) -> None:
        """Close the link; waits (briefly) until it let go of the port."""
        transport = self._transport
        if transport is None:
            return
        transport.close()
        try:
            async with asyncio.timeout(2.0):
                await self._closed.wait()
        except TimeoutError:
            transport.abort()
        self._transport = None

