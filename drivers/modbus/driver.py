"""`driver: modbus`: polls a register map, coalesced into few reads, on a shared bus."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.driver import Commandable, DriverContext, PollingDriver, WriteLimits
from gateway.errors import DeviceConfigError, TransientError, WriteRefused
from gateway.model import Reading, Value

from . import command
from .decode import BitBlock, RegisterBlock
from .options import ModbusOptions
from .planner import Read, covering, plan
from .registermap import BIT_TABLES, Point
from .transport import Bus, ExceptionReply, LinkSettings, Tally

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge

SPLIT_CODES = frozenset({2, 3, 4})
"""Exceptions that may concern one register of a read: isolate it by splitting the read."""
CONFIG_CODES = frozenset({1, 2, 3})
"""Exceptions that mean the map does not fit the device (when nothing at all reads)."""


@dataclass(slots=True)
class _PollState:
    """What one poll learnt: exception codes seen, and whether a device went quiet."""

    codes: set[int] = field(default_factory=set)
    interrupted: bool = False


Codec = RegisterBlock | BitBlock
CODECS_KEY = ("modbus-codecs",)
"""Resource-pool key of the decoders shared by every Modbus device of an agent."""
MAX_SHARED_CODECS = 10_000


class Codecs:
    """Compiled decoders by read, shared by the Modbus devices of one agent.

    Meters of one profile plan equal reads, so they share one decoder per read instead of
    compiling a closure per register each: at 100 meters x 100 registers that is 3.5 MiB
    less in tracemalloc and 5.7 MiB less peak RSS (bench/footprint.py). Decoding takes the
    device name as an argument, nothing per device is kept in here. Lives in the resource
    pool, so it goes with the last Modbus device.
    """

    def __init__(self) -> None:
        self._by_read: dict[Read, Codec] = {}

    def get(self, read: Read) -> Codec:
        """The decoder of `read`, compiled on first use."""
        codec = self._by_read.get(read)
        if codec is None:
            codec = (BitBlock(read.start, read.points) if read.table in BIT_TABLES
                     else RegisterBlock(read.start, read.count, read.points))
            if len(self._by_read) < MAX_SHARED_CODECS:  # re-plans add reads: stay bounded
                self._by_read[read] = codec
        return codec

    async def aclose(self) -> None:
        """Drop the decoders (the last Modbus device left)."""
        self._by_read.clear()


class _Planned:
    """A read with its decoder, ready for the hot path."""

    __slots__ = ("codec", "read")

    def __init__(self, read: Read, codec: Codec) -> None:
        self.read = read
        self.codec = codec


class ModbusDriver(PollingDriver, Commandable):
    """Reads holding/input registers, coils and discrete inputs of one unit; writes the
    holding registers, register bits and coils that have a `write:` block."""

    Options = ModbusOptions

    def __init__(self, options: ModbusOptions, ctx: DriverContext) -> None:
        super().__init__(options, ctx)
        self.o = options
        self._points = options.points()
        self._by_name = {p.name: p for p in self._points}
        self._max_registers, self._max_gap = options.limits()
        self._settings = LinkSettings.of(options.transport)
        self._bus: Bus | None = None
        self._tick = 0
        self._everies = sorted({p.every for p in self._points})
        self._bad: dict[tuple[str, int], int] = {}
        """(table, address) -> exception code, for registers the device rejects."""
        self._cuts: set[tuple[str, int]] = set()
        self._plans: dict[tuple[int, ...], list[_Planned]] = {}
        self._codecs = Codecs()  # its own until open() joins the agent's shared one
        self._shared = False
        self._warned: set[tuple[str, int]] = set()
        m, dev = ctx.metrics, options.name
        self._m_requests: Counter = m.counter(
            "modbus_requests", "Modbus requests sent (retries included)",
            ["device"]).labels(device=dev)
        self._m_per_poll: Gauge = m.gauge(
            "modbus_requests_per_poll", "Modbus requests the last poll of a device took",
            ["device"]).labels(device=dev)
        self._m_bad: Gauge = m.gauge(
            "modbus_bad_registers", "Registers a device rejects, read alone and reported "
            "with bad quality", ["device"]).labels(device=dev)
        self._m_exceptions = m.counter(
            "modbus_exceptions", "Modbus exception replies by code", ["device", "code"])
        self._m_errors = m.counter(
            "modbus_request_errors", "Modbus requests that failed: timeout, crc, protocol, "
            "disconnected", ["device", "kind"])

    async def open(self) -> None:
        """Join the shared bus of this device's port or TCP endpoint."""
        if not self._shared:
            self._codecs = await self.ctx.resources.acquire(CODECS_KEY, Codecs)
            self._shared = True
            self._plans.clear()  # planned before open: with decoders of its own
        settings = self._settings
        self._bus = await self.ctx.resources.acquire(
            settings.key, lambda: Bus(settings, self.ctx.metrics, self.ctx.log))
        if self._bus.settings != settings:
            diff = "; ".join(self._bus.settings.differences(settings))
            raise DeviceConfigError(
                f"{settings.label} is shared with another device configured differently "
                f"({diff}); every device on one bus must use the same transport settings",
                kind="config")

    async def close(self) -> None:
        """Leave the bus; the last device to leave closes it."""
        if self._bus is not None:
            self._bus = None
            await self.ctx.resources.release(self._settings.key)
        if self._shared:
            self._shared = False
            self._codecs = Codecs()
            self._plans.clear()
            await self.ctx.resources.release(CODECS_KEY)

    # -- planning ------------------------------------------------------------------------------
    def _plan(self, due: tuple[int, ...]) -> list[_Planned]:
        planned = self._plans.get(due)
        if planned is None:
            pts = [p for p in self._points if p.every in due]
            reads = plan(pts, max_registers=self._max_registers, max_gap=self._max_gap,
                         isolated=self._bad.keys(), cuts=self._cuts)
            planned = self._plans[due] = [_Planned(r, self._codecs.get(r)) for r in reads]
        return planned

    def plan_now(self) -> list[Read]:
        """The reads the next poll will send (for tests and diagnostics)."""
        due = tuple(e for e in self._everies if self._tick % e == 0)
        return [p.read for p in self._plan(due)]

    # -- polling -------------------------------------------------------------------------------
    async def poll(self) -> Sequence[Reading]:
        """Read every register due this tick; rejected registers come back as bad."""
        bus = self._bus
        if bus is None:
            raise TransientError("poll before open", kind="internal")
        due = tuple(e for e in self._everies if self._tick % e == 0)
        self._tick += 1
        planned = self._plan(due)
        ts = self.ctx.clock()
        tally = Tally()
        out: list[Reading] = []
        answered = good = False
        state = _PollState()
        try:
            for i, item in enumerate(planned):
                try:
                    got, ok = await self._read(bus, item, ts, tally, state)
                except TransientError as exc:
                    if not answered:
                        raise
                    self.ctx.log.warning("device stopped answering during a poll; the rest "
                                         "of its registers are reported bad",
                                         error=str(exc), kind=exc.kind)
                    for rest in planned[i:]:
                        out.extend(self._bad_readings(rest.read.points, ts))
                    state.interrupted = True
                    break
                answered = True
                good = good or ok
                out.extend(got)
        finally:
            self._account(tally)
        if not good and not state.interrupted and state.codes and state.codes <= CONFIG_CODES:
            codes = ", ".join(str(c) for c in sorted(state.codes))
            raise DeviceConfigError(
                f"unit {self.o.unit} rejects every register of this map (exception {codes}): "
                "wrong profile, unit id or register table?", kind="exception")
        return out

    async def _read(self, bus: Bus, item: _Planned, ts: int, tally: Tally,
                    state: _PollState) -> tuple[list[Reading], bool]:
        """Readings of one planned read and whether any was good; isolates bad registers."""
        read = item.read
        try:
            data = await bus.read(self.o.unit, read.table, read.start, read.count,
                                  reply_timeout=self.o.request_timeout, retries=self.o.retries,
                                  tally=tally)
        except ExceptionReply as exc:
            state.codes.add(exc.code)
            self._m_exceptions.labels(device=self.o.name, code=str(exc.code)).inc()
            if exc.code in SPLIT_CODES:
                return await self._isolate(bus, list(read.points), exc, ts=ts, tally=tally,
                                           state=state)
            key = (read.table, exc.code)
            if key not in self._warned:
                self._warned.add(key)
                self.ctx.log.warning("read rejected; its registers are reported bad",
                                     error=str(exc), registers=[p.name for p in read.points])
            return self._bad_readings(read.points, ts), False
        if self._bad:
            recovered = {p.key for p in read.points} & self._bad.keys()
            if recovered:
                for loc in recovered:
                    del self._bad[loc]
                self._changed()
                self.ctx.log.info("register reads again", location=read.describe(),
                                  registers=[p.name for p in read.points])
        return item.codec.readings(data, self.o.name, ts), True  # type: ignore[arg-type]

    async def _isolate(self, bus: Bus, points: list[Point], exc: ExceptionReply, *, ts: int,
                       tally: Tally, state: _PollState) -> tuple[list[Reading], bool]:
        """Split a rejected read until the rejected registers are found; remember them."""
        locations = sorted({p.key for p in points})
        if len(locations) == 1:
            key = locations[0]
            if self._bad.get(key) != exc.code:
                self._bad[key] = exc.code
                self._changed()
                self.ctx.log.warning(
                    "register rejected by the device; reporting it bad and reading it alone "
                    "from now on", error=str(exc), registers=[p.name for p in points],
                    location=covering(points).describe())
            return self._bad_readings(points, ts), False
        half = len(locations) // 2
        left_keys = set(locations[:half])
        halves = [[p for p in points if p.key in left_keys],
                  [p for p in points if p.key not in left_keys]]
        out: list[Reading] = []
        any_good = False
        clean = True
        for n, part in enumerate(halves):
            read = covering(part)
            try:
                data = await bus.read(self.o.unit, read.table, read.start, read.count,
                                      reply_timeout=self.o.request_timeout, retries=self.o.retries,
                                      tally=tally)
            except TransientError as lost:
                # the device answered the whole read, then went quiet: give up isolating
                self.ctx.log.warning("device stopped answering while a rejected read was "
                                     "split", error=str(lost), kind=lost.kind)
                for rest in halves[n:]:
                    out.extend(self._bad_readings(rest, ts))
                state.interrupted = True
                return out, any_good
            except ExceptionReply as sub:
                state.codes.add(sub.code)
                self._m_exceptions.labels(device=self.o.name, code=str(sub.code)).inc()
                clean = False
                if sub.code in SPLIT_CODES:
                    got, ok = await self._isolate(bus, part, sub, ts=ts, tally=tally,
                                                  state=state)
                else:
                    got, ok = self._bad_readings(part, ts), False
                out.extend(got)
                any_good = any_good or ok
                continue
            out.extend(self._codecs.get(read).readings(data, self.o.name, ts))  # type: ignore[arg-type]
            any_good = True
        if clean:
            # both halves read fine alone: the hole bridged between them is what was rejected
            first_right = min(p.address for p in halves[1])
            self._cuts.add((points[0].table, first_right))
            self._changed()
            self.ctx.log.info("read split for good: the device rejects the gap between two "
                              "register groups", error=str(exc),
                              before=halves[1][0].name)
        return out, any_good

    def _changed(self) -> None:
        self._plans.clear()
        self._m_bad.set(len(self._bad))

    # -- readings ------------------------------------------------------------------------------
    def _bad_readings(self, points: Sequence[Point], ts: int) -> list[Reading]:
        dev = self.o.name
        return [Reading(dev, p.name, None, ts, p.unit, "bad") for p in points]

    def _account(self, tally: Tally) -> None:
        self._m_requests.inc(tally.requests)
        self._m_per_poll.set(tally.requests)
        for kind, n in tally.errors.items():
            self._m_errors.labels(device=self.o.name, kind=kind).inc(n)

    # -- commands ------------------------------------------------------------------------------
    def writable(self) -> Mapping[str, WriteLimits]:
        """Registers and coils with a `write:` block."""
        return {p.name: p.write for p in self._points if p.write is not None}

    def plan_write(self, point: str, value: Value) -> command.Planned:
        """What writing `value` to `point` puts on the wire; `WriteRefused` if it cannot."""
        p = self._by_name.get(point)
        if p is None or p.write is None:
            raise WriteRefused(f"{point}: not a writable register of {self.o.name}"
                               if p is not None else f"{point}: no such register on "
                               f"{self.o.name}")
        return command.plan_write(p, value)

    async def write(self, point: str, value: Value) -> Value | None:
        """Write one point (FC05/06/15/16, a bit by read-modify-write) and verify it."""
        planned = self.plan_write(point, value)
        verify = planned.point.write is None or planned.point.write.verify is not False
        tally = Tally()
        try:
            return await command.execute(self._link(), planned, verify=verify, tally=tally)
        finally:
            self._account_command(tally)

    async def read_point(self, point: str) -> Reading:
        """Read one register or coil now."""
        p = self._by_name.get(point)
        if p is None:
            raise WriteRefused(f"{point}: no such register on {self.o.name}")
        tally = Tally()
        try:
            return await command.read_point(self._link(), p, self.ctx.clock(), tally)
        finally:
            self._account_command(tally)

    def _link(self) -> command.Link:
        if self._bus is None:
            raise TransientError(f"{self.o.name} is not open", kind="disconnected")
        return command.Link(self._bus, self.o.unit, self.o.name, self.o.request_timeout,
                            self.o.retries, self.o.write_multiple)

    def _account_command(self, tally: Tally) -> None:
        self._m_requests.inc(tally.requests)
        for kind, n in tally.errors.items():
            self._m_errors.labels(device=self.o.name, kind=kind).inc(n)
