"""Links to Modbus devices: one `Bus` per serial port or TCP connection, shared by devices.

A bus is one pymodbus client, one `asyncio.Lock` and a quiet time between requests (Home
Assistant's ModbusHub idea): requests of all devices on it are serialized, a dead meter
costs the bus its own timeout only, and a link that drops is reconnected with capped,
jittered backoff on the next request that needs it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from gateway.backoff import Backoff
from gateway.errors import DeviceError, ProtocolError, TransientError

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge

    from gateway.metrics import Metrics

    from .options import RtuOverTcpTransport, RtuTransport, TcpTransport
    from .registermap import Table

EXCEPTION_NAMES = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value",
    4: "server device failure", 5: "acknowledge", 6: "server device busy",
    7: "negative acknowledge", 8: "memory parity error", 10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
BUSY_CODES = frozenset({5, 6})
GATEWAY_CODES = frozenset({10, 11})
TCP_DEAD_AFTER = 3
"""Consecutive unanswered requests after which a TCP link is presumed half-open."""
PYMODBUS_TIMEOUT = 3600.0
"""pymodbus's own response timeout: out of the way, `asyncio.timeout` bounds every call."""


class ExceptionReply(DeviceError):
    """The device answered a read with a Modbus exception."""

    kind = "exception"

    def __init__(self, unit: int, code: int, table: str, address: int, count: int) -> None:
        last = address + count - 1
        where = f"{table} {address}" + (f"..{last}" if last != address else "")
        super().__init__(f"unit {unit} answered exception {code} "
                         f"({EXCEPTION_NAMES.get(code, 'unknown')}) for {where}",
                         address=address)
        self.unit = unit
        self.code = code


@dataclass(slots=True)
class Tally:
    """What a caller's requests cost: requests on the wire, and failures by kind."""

    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        """Count one failed request."""
        self.errors[kind] = self.errors.get(kind, 0) + 1


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """Everything that identifies a link and must agree between devices sharing it."""

    kind: Literal["tcp", "rtu", "rtu-over-tcp"]
    target: str
    """host for TCP kinds, serial device for RTU."""
    port: int = 0
    baudrate: int = 9600
    parity: str = "N"
    bytesize: int = 8
    stopbits: int = 1
    delay: float = 0.0
    connect_timeout: float = 3.0
    reconnect_max: float = 30.0

    @classmethod
    def of(cls, t: TcpTransport | RtuTransport | RtuOverTcpTransport) -> LinkSettings:
        """Settings of a device's `transport:`."""
        if t.type == "rtu":
            return cls("rtu", t.port, baudrate=t.baudrate, parity=t.parity,
                       bytesize=t.bytesize, stopbits=t.stopbits, delay=t.delay,
                       connect_timeout=t.connect_timeout, reconnect_max=t.reconnect_max)
        return cls(t.type, t.host, port=t.port, delay=t.delay,
                   connect_timeout=t.connect_timeout, reconnect_max=t.reconnect_max)

    @property
    def key(self) -> tuple[str | int, ...]:
        """Resource-pool key: one bus per serial port, one per TCP endpoint and framing."""
        if self.kind == "rtu":
            return ("modbus-serial", self.target)
        framer = "rtu" if self.kind == "rtu-over-tcp" else "socket"
        return ("modbus-tcp", self.target, self.port, framer)

    @property
    def label(self) -> str:
        """Short name for logs and the `bus` metric label."""
        if self.kind == "rtu":
            return f"rtu:{self.target}"
        return f"{self.kind}://{self.target}:{self.port}"

    def describe(self) -> str:
        """Label plus line settings."""
        if self.kind == "rtu":
            return f"{self.label} {self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"
        return self.label

    def differences(self, other: LinkSettings) -> list[str]:
        """`key: mine vs theirs` for every setting that differs."""
        return [f"{name}: {getattr(self, name)} vs {getattr(other, name)}"
                for name in self.__slots__ if getattr(self, name) != getattr(other, name)]


@dataclass(slots=True)
class _BusMetrics:
    link_up: Gauge
    reconnects: Counter
    connect_errors: Counter
    garbage: Counter
    busy: Counter

    @classmethod
    def create(cls, metrics: Metrics, label: str) -> _BusMetrics:
        m = metrics
        return cls(
            link_up=m.gauge("modbus_link_up", "1 while the Modbus link (port or connection) "
                            "is open", ["bus"]).labels(bus=label),
            reconnects=m.counter("modbus_reconnects", "Modbus links re-opened after a loss",
                                 ["bus"]).labels(bus=label),
            connect_errors=m.counter("modbus_connect_errors", "Failed attempts to open a "
                                     "Modbus link", ["bus"]).labels(bus=label),
            garbage=m.counter("modbus_garbage", "Unexpected or garbled data received on a "
                              "Modbus link (noise, late or foreign replies)",
                              ["bus"]).labels(bus=label),
            busy=m.counter("modbus_bus_busy_seconds", "Time a Modbus link spent in "
                           "transactions", ["bus"]).labels(bus=label),
        )


class Bus:
    """One Modbus link shared by every device on it; see the module docstring."""

    def __init__(self, settings: LinkSettings, metrics: Metrics | None = None,
                 log: Any = None) -> None:
        self.settings = settings
        self._log = log
        self._metrics = _BusMetrics.create(metrics, settings.label) if metrics else None
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
        # pymodbus logs every timeout and skipped frame at error level; this module reports
        # the same events once, with context, through the agent's logger and metrics
        logging.getLogger("pymodbus.logging").setLevel(logging.CRITICAL)
        self._client = self._make_client()
        c = self._client
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
            elif self._metrics:
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
            if self._metrics:
                self._metrics.connect_errors.inc()
                self._metrics.link_up.set(0)
            why = reason or ("refused, unreachable or port busy" if s.kind != "rtu"
                             else "cannot open the port (busy or no permission?)")
            raise TransientError(f"cannot open {s.describe()}: {why}", kind="disconnected")
        self._backoff.reset()
        self._retry_at = 0.0
        self._unanswered = 0
        if self._metrics:
            self._metrics.link_up.set(1)
            if self._ever_connected:
                self._metrics.reconnects.inc()
        if self._log is not None and self._ever_connected:
            self._log.info("modbus link re-opened", bus=s.label)
        self._ever_connected = True

    def _drop(self) -> None:
        """Close the link; the next request reconnects."""
        self._client.close()
        if self._metrics:
            self._metrics.link_up.set(0)

    async def read(self, unit: int, table: Table, address: int, count: int, *,
                   reply_timeout: float, retries: int = 0,
                   tally: Tally | None = None) -> Sequence[int] | Sequence[bool]:
        """Registers (or bits) `address..address+count-1` of `unit`.

        Raises `ExceptionReply` for a Modbus exception, `TransientError` with kind
        `timeout`, `crc` (bytes came but never a valid frame) or `disconnected`.
        """
        failure: DeviceError | None = None
        call = self._calls[table]
        for _attempt in range(retries + 1):
            reply, failure = await self._transact(call, unit=unit, table=table, address=address,
                                                  count=count, reply_timeout=reply_timeout,
                                                  tally=tally)
            if reply is None:
                if failure is not None and failure.kind == "disconnected" and not \
                        self.connected and self._loop.time() < self._retry_at:
                    break  # the link is down: retrying now would only fail again
                continue
            if reply.isError():
                code = int(reply.exception_code)
                if code in BUSY_CODES and _attempt < retries:
                    failure = ExceptionReply(unit, code, table, address, count)
                    continue
                if code in GATEWAY_CODES:
                    failure = TransientError(
                        f"gateway: unit {unit} did not respond "
                        f"(exception {code}, {EXCEPTION_NAMES[code]})", kind="timeout")
                    if tally:
                        tally.error("timeout")
                    continue
                raise ExceptionReply(unit, code, table, address, count)
            values: Sequence[int] | Sequence[bool] = (
                reply.bits if table in ("coil", "discrete") else reply.registers)
            if len(values) < count:
                failure = ProtocolError(f"unit {unit} answered {len(values)} values for a "
                                        f"read of {count}", kind="protocol")
                continue
            return values[:count] if len(values) != count else values
        assert failure is not None
        raise failure

    async def _transact(self, call: Callable[..., Awaitable[Any]], *, unit: int, table: str,
                        address: int, count: int, reply_timeout: float,
                        tally: Tally | None) -> tuple[Any, DeviceError | None]:
        """One request under the bus lock: (reply, None) or (None, why it failed)."""
        loop = self._loop
        where = f"{table} {address}" + (f"..{address + count - 1}" if count > 1 else "")
        async with self._lock:
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
            failure: DeviceError | None = None
            try:
                async with asyncio.timeout(reply_timeout):
                    reply = await call(address, count=count, device_id=unit)
            except TimeoutError:
                if not self._client.connected:
                    failure = TransientError(f"{self.settings.label} closed during a request "
                                             f"to unit {unit}", kind="disconnected")
                elif self._rx_in_request:
                    failure = ProtocolError(
                        f"unit {unit}: garbled answer for {where} (CRC error or noise; "
                        "check baud rate, parity, wiring and termination)", kind="crc")
                else:
                    failure = TransientError(f"unit {unit} did not answer {where} within "
                                             f"{reply_timeout:g}s", kind="timeout")
            except (ModbusException, OSError) as exc:
                if self._client.connected:
                    failure = ProtocolError(f"unit {unit}: bad answer for {where}: {exc}",
                                            kind="protocol")
                else:
                    failure = TransientError(f"{self.settings.label} dropped during a "
                                             f"request: {exc}", kind="disconnected")
            finally:
                self._in_request = False
                done = loop.time()
                self._ready_at = done + self.settings.delay
                if self._metrics:
                    self._metrics.busy.inc(done - started)
            if reply is not None:
                self._unanswered = 0
                return reply, None
            if failure is not None and failure.kind in ("crc", "protocol") and self._metrics:
                self._metrics.garbage.inc()
            if failure is not None and failure.kind == "disconnected":
                self._drop()
            elif self.settings.kind != "rtu":
                self._unanswered += 1
                if self._unanswered >= TCP_DEAD_AFTER:
                    # nobody behind this connection answers: it may be half-open
                    self._unanswered = 0
                    self._drop()
            if tally and failure is not None:
                tally.error(failure.kind)
            return None, failure

    async def aclose(self) -> None:
        """Close the link (the resource pool calls this when the last device leaves)."""
        async with self._lock:
            self._closed = True
            self._drop()
