"""Links to Modbus devices: one `Bus` per serial port or TCP connection, shared by devices.

A bus is one pymodbus client, one `asyncio.Lock` and a quiet time between requests (Home
Assistant's ModbusHub idea): requests of all devices on it, reads and writes alike, are
serialized, a dead meter costs the bus its own timeout only, and a link that drops is
reconnected with capped, jittered backoff on the next request that needs it. `hold()`
keeps the bus for several requests in a row (a read-modify-write of one bit).

What a request came to is decided by `classify.classify`, a pure function; this module
does the I/O, the link bookkeeping and the metrics.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from gateway.backoff import Backoff
from gateway.errors import DeviceError, ProtocolError, TransientError

from .busmetrics import BusMetrics
from .classify import (
    BUSY_CODES,
    EXCEPTION_NAMES,
    GATEWAY_CODES,
    ExceptionReply,
    Where,
    classify,
    worth_retrying,
)
from .link import LinkSettings, Tally
from .replies import REPLIES

if TYPE_CHECKING:
    from gateway.metrics import Metrics

    from .registermap import Table

__all__ = ["BUSY_CODES", "EXCEPTION_NAMES", "GATEWAY_CODES", "Bus", "BusHold",
           "ExceptionReply", "LinkSettings", "Tally"]

TCP_DEAD_AFTER = 3
"""Consecutive unanswered requests after which a TCP link is presumed half-open."""
PYMODBUS_TIMEOUT = None
"""pymodbus's own response (and connect) timeout: none, `asyncio.timeout` bounds every call.

Without one, pymodbus awaits the reply's future itself rather than through
`asyncio.wait_for` (a timer, a waiter future and one more loop pass per request): 13 % of
the client's instructions per read (callgrind; 100 units on 10 TCP links, 100 registers)."""

_OURS: contextvars.ContextVar[bool] = contextvars.ContextVar("parkgate_modbus_bus",
                                                             default=False)
"""True while a `Bus` talks to pymodbus, and in the transport callbacks its links create."""


class _QuietForOurBuses(logging.Filter):
    """Drops pymodbus's records about our own links below CRITICAL.

    pymodbus logs every timeout and skipped frame at error level; a `Bus` reports the same
    events once, with context, through the agent's logger and metrics. Records from other
    pymodbus users in the process (an emulator's server in a test) pass untouched, and the
    `pymodbus.logging` level stays what the process set. Asyncio callbacks run in the
    context copied when they were registered, so a link opened inside a `Bus` request
    carries `_OURS` into its reader callbacks, where pymodbus parses (and logs) replies.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.CRITICAL or not _OURS.get()


_FILTER = _QuietForOurBuses()


def _install_log_filter() -> None:
    logger = logging.getLogger("pymodbus.logging")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)


Send = Callable[[], Awaitable[Any]]


class Bus:
    """One Modbus link shared by every device on it; see the module docstring."""

    def __init__(self, settings: LinkSettings, metrics: Metrics | None = None,
                 log: Any = None) -> None:
        self.settings = settings
        self._log = log
        self._metrics = (BusMetrics.create(metrics, settings.label) if metrics is not None
                         else BusMetrics.none())
        self._lock = asyncio.Lock()
        self._loop = asyncio.get_running_loop()
        self._ready_at = 0.0
        self._retry_at = 0.0
        self._backoff = Backoff(base=0.25, cap=settings.reconnect_max)
        self._ever_connected = False
        self._in_request = False
        self._rx_in_request = 0
        self._unanswered = 0
        self._closed = False
        _install_log_filter()
        self._client = self._make_client()
        c = self._client
        for reply in REPLIES:  # read replies decoded in one call (replies.py)
            c.register(reply)
        self._calls: dict[str, Callable[..., Awaitable[Any]]] = {
            "holding": c.read_holding_registers, "input": c.read_input_registers,
            "coil": c.read_coils, "discrete": c.read_discrete_inputs}

    def _make_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        s = self.settings
        common: dict[str, Any] = {"timeout": PYMODBUS_TIMEOUT, "retries": 0,
                                  "reconnect_delay": 0, "trace_packet": self._trace,
                                  "name": s.label}
        if s.kind == "rtu":
            return AsyncModbusSerialClient(s.target, framer=FramerType.RTU,
                                           baudrate=s.baudrate, parity=s.parity,
                                           bytesize=s.bytesize, stopbits=s.stopbits, **common)
        framer = FramerType.RTU if s.kind == "rtu-over-tcp" else FramerType.SOCKET
        return AsyncModbusTcpClient(s.target, port=s.port, framer=framer, **common)

    def _trace(self, sending: bool, data: bytes) -> bytes:
        # called by pymodbus for every chunk on the wire; received data outside a request
        # is noise or a late answer, data during a request that never parses is garbled
        if not sending:
            if self._in_request:
                self._rx_in_request += 1
            else:
                self._metrics.garbage.inc()
        return data

    @property
    def connected(self) -> bool:
        """Whether the link is open right now."""
        return bool(self._client.connected)

    async def _connect(self) -> None:
        """Open the link, or raise TransientError(kind=disconnected) and back off."""
        s = self.settings
        now = self._loop.time()
        if now < self._retry_at:
            raise TransientError(f"{s.label} is down; next connect attempt in "
                                 f"{self._retry_at - now:.1f}s", kind="disconnected")
        reason = ""
        if s.kind == "rtu" and not os.path.exists(s.target):  # noqa: ASYNC240 - one stat of a device node
            ok, reason = False, f"serial port {s.target} does not exist (adapter unplugged?)"
        else:
            try:
                async with asyncio.timeout(s.connect_timeout):
                    ok = await self._client.connect()
            except TimeoutError:
                ok, reason = False, f"no connection within {s.connect_timeout:g}s"
            except (OSError, ModbusException) as exc:
                ok, reason = False, str(exc)
        if not ok:
            delay = self._backoff.next_delay()
            self._retry_at = self._loop.time() + delay
            self._metrics.connect_errors.inc()
            self._metrics.link_up.set(0)
            why = reason or ("refused, unreachable or port busy" if s.kind != "rtu"
                             else "cannot open the port (busy or no permission?)")
            raise TransientError(f"cannot open {s.describe()}: {why}", kind="disconnected")
        self._backoff.reset()
        self._retry_at = 0.0
        self._unanswered = 0
        self._metrics.link_up.set(1)
        if self._ever_connected:
            self._metrics.reconnects.inc()
            if self._log is not None:
                self._log.info("modbus link re-opened", bus=s.label)
        self._ever_connected = True

    def _drop(self) -> None:
        """Close the link; the next request reconnects."""
        self._client.close()
        self._metrics.link_up.set(0)

    # -- public requests (each takes the bus for itself) ---------------------------------------
    async def read(self, unit: int, table: Table, address: int, count: int, *,
                   reply_timeout: float, retries: int = 0,
                   tally: Tally | None = None) -> Sequence[int] | Sequence[bool]:
        """Registers (or bits) `address..address+count-1` of `unit`.

        Raises `ExceptionReply` for a Modbus exception, `TransientError` with kind
        `timeout`, `crc` (bytes came but never a valid frame) or `disconnected`.
        """
        return await self._read(unit, table, address, count, reply_timeout=reply_timeout,
                                retries=retries, tally=tally, held=False)

    async def write_registers(self, unit: int, address: int, words: Sequence[int], *,
                              reply_timeout: float, tally: Tally | None = None,
                              multiple: bool = False) -> None:
        """Write holding registers: FC06 for one word (unless `multiple`), else FC16.

        Never repeated.
        """
        await self._write_registers(unit, address, words, reply_timeout=reply_timeout,
                                    tally=tally, held=False, multiple=multiple)

    async def write_bits(self, unit: int, address: int, bits: Sequence[bool], *,
                         reply_timeout: float, tally: Tally | None = None,
                         multiple: bool = False) -> None:
        """Write coils: FC05 for one (unless `multiple`), else FC15. Never repeated."""
        await self._write_bits(unit, address, bits, reply_timeout=reply_timeout, tally=tally,
                               held=False, multiple=multiple)

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[BusHold]:
        """The bus to oneself for several requests: no other poll or write interleaves."""
        async with self._lock:
            yield BusHold(self._read, self._write_registers, self._write_bits)

    # -- request logic -------------------------------------------------------------------------
    async def _read(self, unit: int, table: Table, address: int, count: int, *,
                    reply_timeout: float, retries: int, tally: Tally | None,
                    held: bool) -> Sequence[int] | Sequence[bool]:
        where = Where(self.settings.label, unit, table, address, count, reply_timeout)
        call = self._calls[table]

        def send() -> Awaitable[Any]:
            return call(address, count=count, device_id=unit)

        failure: DeviceError | None = None
        for attempt in range(retries + 1):
            reply, failure = await self._once(send, where, tally, held)
            if failure is None:
                values: Sequence[int] | Sequence[bool] = (
                    reply.bits if table in ("coil", "discrete") else reply.registers)
                if len(values) >= count:
                    return values[:count] if len(values) != count else values
                failure = ProtocolError(f"unit {unit} answered {len(values)} values for a "
                                        f"read of {count}", kind="protocol")
                continue
            if not worth_retrying(failure):
                raise failure
            if isinstance(failure, ExceptionReply) and attempt == retries:
                break
            if failure.kind == "disconnected" and not self.connected \
                    and self._loop.time() < self._retry_at:
                break  # the link is down: retrying now would only fail again
        assert failure is not None
        raise failure

    async def _write_registers(self, unit: int, address: int, words: Sequence[int], *,
                               reply_timeout: float, tally: Tally | None, held: bool,
                               multiple: bool = False) -> None:
        c = self._client
        regs = [int(w) for w in words]
        where = Where(self.settings.label, unit, "holding", address, len(regs), reply_timeout,
                      "write")

        def send() -> Awaitable[Any]:
            if len(regs) == 1 and not multiple:
                return c.write_register(address, regs[0], device_id=unit)
            return c.write_registers(address, regs, device_id=unit)

        await self._write(send, where, tally, held)

    async def _write_bits(self, unit: int, address: int, bits: Sequence[bool], *,
                          reply_timeout: float, tally: Tally | None, held: bool,
                          multiple: bool = False) -> None:
        c = self._client
        values = [bool(b) for b in bits]
        where = Where(self.settings.label, unit, "coil", address, len(values), reply_timeout,
                      "write")

        def send() -> Awaitable[Any]:
            if len(values) == 1 and not multiple:
                return c.write_coil(address, values[0], device_id=unit)
            return c.write_coils(address, values, device_id=unit)

        await self._write(send, where, tally, held)

    async def _write(self, send: Send, where: Where, tally: Tally | None, held: bool) -> None:
        # a write is sent once: after a timeout nobody knows whether the device applied it,
        # and the command's reply must say so rather than write a second time
        _reply, failure = await self._once(send, where, tally, held)
        if failure is not None:
            raise failure

    async def _once(self, send: Send, where: Where, tally: Tally | None,
                    held: bool) -> tuple[Any, DeviceError | None]:
        if held:
            return await self._transact(send, where, tally)
        async with self._lock:
            return await self._transact(send, where, tally)

    async def _transact(self, send: Send, where: Where,
                        tally: Tally | None) -> tuple[Any, DeviceError | None]:
        """One request; the caller holds the bus lock. (reply, None) or (None, failure)."""
        token = _OURS.set(True)
        try:
            return await self._transact_ours(send, where, tally)
        finally:
            _OURS.reset(token)

    async def _transact_ours(self, send: Send, where: Where,
                             tally: Tally | None) -> tuple[Any, DeviceError | None]:
        loop = self._loop
        if self._closed:
            return None, TransientError(f"{self.settings.label} is closed",
                                        kind="disconnected")
        if not self._client.connected:
            try:
                await self._connect()
            except TransientError as exc:
                if tally:
                    tally.error("disconnected")
                return None, exc
        wait = self._ready_at - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        if tally:
            tally.requests += 1
        self._rx_in_request = 0
        self._in_request = True
        started = loop.time()
        reply: Any = None
        error: BaseException | None = None
        try:
            async with asyncio.timeout(where.timeout):
                reply = await send()
        except (TimeoutError, ModbusException, OSError) as exc:
            error = exc
        finally:
            self._in_request = False
            done = loop.time()
            self._ready_at = done + self.settings.delay
            self._metrics.busy.inc(done - started)
        failure = classify(reply, error, connected=bool(self._client.connected),
                           garbled=self._rx_in_request > 0, where=where)
        if error is None:
            self._unanswered = 0  # an answer, even an exception, proves the link alive
            if failure is None:
                return reply, None
        elif failure is not None:
            self._after_failure(failure)
        if tally and failure is not None and not isinstance(failure, ExceptionReply):
            tally.error(failure.kind)  # exceptions are counted by code, by the driver
        return None, failure

    def _after_failure(self, failure: DeviceError) -> None:
        """Link bookkeeping after a request that got no usable answer."""
        if failure.kind in ("crc", "protocol"):
            self._metrics.garbage.inc()
        if failure.kind == "disconnected":
            self._drop()
        elif self.settings.kind != "rtu":
            self._unanswered += 1
            if self._unanswered >= TCP_DEAD_AFTER:
                # nobody behind this connection answers: it may be half-open
                self._unanswered = 0
                self._drop()

    async def aclose(self) -> None:
        """Close the link (the resource pool calls this when the last device leaves)."""
        async with self._lock:
            self._closed = True
            self._drop()


class BusHold:
    """A bus held by one caller (`Bus.hold()`): the same requests, without re-locking."""

    __slots__ = ("_read", "_write_bits", "_write_registers")

    def __init__(self, read: Callable[..., Awaitable[Sequence[int] | Sequence[bool]]],
                 write_registers: Callable[..., Awaitable[None]],
                 write_bits: Callable[..., Awaitable[None]]) -> None:
        self._read = read
        self._write_registers = write_registers
        self._write_bits = write_bits

    async def read(self, unit: int, table: Table, address: int, count: int, *,
                   reply_timeout: float, retries: int = 0,
                   tally: Tally | None = None) -> Sequence[int] | Sequence[bool]:
        """As `Bus.read`."""
        return await self._read(unit, table, address, count, reply_timeout=reply_timeout,
                                retries=retries, tally=tally, held=True)

    async def write_registers(self, unit: int, address: int, words: Sequence[int], *,
                              reply_timeout: float, tally: Tally | None = None,
                              multiple: bool = False) -> None:
        """As `Bus.write_registers`."""
        await self._write_registers(unit, address, words, reply_timeout=reply_timeout,
                                    tally=tally, held=True, multiple=multiple)

    async def write_bits(self, unit: int, address: int, bits: Sequence[bool], *,
                         reply_timeout: float, tally: Tally | None = None,
                         multiple: bool = False) -> None:
        """As `Bus.write_bits`."""
        await self._write_bits(unit, address, bits, reply_timeout=reply_timeout, tally=tally,
                               held=True, multiple=multiple)
