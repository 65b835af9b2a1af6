"""`driver: dlt645`: DL/T 645-2007 electricity meters on RS-485 (local port or TCP)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from drivers.dlt645.bus import Dlt645Bus, bus_name
from drivers.dlt645.frame import (
    READ_DATA,
    WILDCARD,
    Frame,
    MeterException,
    broadcast_time,
    read_data,
)
from drivers.dlt645.options import Dlt645Options, Point
from gateway.driver import Commandable, DriverContext, PollingDriver
from gateway.errors import DeviceRejected, ProtocolError, TransientError, WriteRefused
from gateway.model import Reading, Value


def meter_time(time_zone: str | None, now: float | None = None) -> datetime:
    """Wall-clock time for the meters: in `time_zone`, or the gateway's local time."""
    ts = time.time() if now is None else now
    zone = ZoneInfo(time_zone) if time_zone else None
    return datetime.fromtimestamp(ts, zone) if zone else datetime.fromtimestamp(ts)  # noqa: DTZ006 - local time on purpose


class Dlt645Driver(PollingDriver, Commandable):
    """Reads the configured data items of one meter, one request per item.

    Meters on the same bus share one `Dlt645Bus` from the resource pool. A meter that
    does not answer its first request is given up for this poll (it costs one
    `response_timeout`); single items the meter refuses (exception reply) or garbles come
    back as readings with `quality="bad"` while the others are good.
    """

    Options = Dlt645Options

    def __init__(self, options: Dlt645Options, ctx: DriverContext) -> None:
        super().__init__(options, ctx)
        self.o = options
        self.points = options.points()
        self.settings = options.transport.settings()
        self.key = ("dlt645", bus_name(self.settings))  # the bus, whatever its settings
        self.bus: Dlt645Bus | None = None
        dev, m = options.name, ctx.metrics
        self.m_requests = m.counter("dlt645_requests", "Requests sent to a meter",
                                    ["device"]).labels(dev)
        self.m_errors = m.counter("dlt645_errors",
                                  "Failed requests by kind (timeout, checksum, exception, bcd, "
                                  "length, disconnected, unplugged, connect)", ["device", "kind"])
        self.m_exceptions = m.counter("dlt645_exception_replies",
                                      "Exception replies by error bit (no_data, "
                                      "unauthorised, ...)", ["device", "error"])
        self.m_duration = m.histogram("dlt645_request_duration_seconds",
                                      "Request to reply, bus wait excluded",
                                      ["device"]).labels(dev)
        self.m_wait = m.histogram("dlt645_bus_wait_seconds",
                                  "Time a request waited for the shared bus", ["bus"])

    async def open(self) -> None:
        """Join the (possibly shared) bus; the link itself opens on the first request."""
        delay = self.o.transport.delay
        bus = await self.ctx.resources.acquire(
            self.key, lambda: Dlt645Bus(self.settings, delay=delay))
        self.bus = bus
        bus.check(self.settings, delay, self.o.name)
        bus.users.add(self.o.name)

    async def close(self) -> None:
        """Leave the bus; the last meter on it closes the link."""
        bus, self.bus = self.bus, None
        if bus is not None:
            bus.users.discard(self.o.name)
            await self.ctx.resources.release(self.key)

    async def poll(self) -> Sequence[Reading]:
        """One reading per configured item."""
        dev = self.o.name
        readings: list[Reading] = []
        answered = False
        last: TransientError | None = None
        for point in self.points:
            try:
                value = await self.read(point)
            except MeterException as exc:
                answered = True
                self.m_exceptions.labels(dev, exc.label).inc()
                self._failed(exc)
                readings.append(Reading(dev, point.metric, None, self.ctx.clock(), point.unit,
                                        "bad"))
                continue
            except ProtocolError as exc:
                last = exc
                self._failed(exc)
                readings.append(Reading(dev, point.metric, None, self.ctx.clock(), point.unit,
                                        "bad"))
                continue
            except TransientError as exc:
                self._failed(exc)
                if not answered:
                    raise  # a dead meter costs one timeout, not one per item
                last = exc
                readings.append(Reading(dev, point.metric, None, self.ctx.clock(), point.unit,
                                        "bad"))
                continue
            answered = True
            readings.append(Reading(dev, point.metric, value, self.ctx.clock(), point.unit))
        if not answered and last is not None:
            raise last
        return readings

    async def sync_time(self) -> None:
        """Broadcast time sync (0x08): sets the clock of EVERY meter on this bus; no reply.

        Meters apply it only within their own rules (most refuse a change of more than
        five minutes, and any around midnight, when they freeze billing data); the
        broadcast cannot tell, read the meter's clock to be sure.
        """
        bus = self.bus
        if bus is None:
            raise TransientError(f"{self.o.name} is not open", kind="state")
        request = broadcast_time(meter_time(self.o.time_zone), preamble=self.o.wakeup)
        self.m_requests.inc()
        await bus.send(request, self.o.response_timeout)
        self.ctx.log.info("broadcast time sync sent", bus=bus.name,
                          meters=sorted(bus.users))

    async def read_point(self, point: str) -> Reading:
        """Read one configured item now."""
        found = next((p for p in self.points if p.metric == point), None)
        if found is None:
            raise WriteRefused(f"{point}: no such item on {self.o.name}")
        try:
            value = await self.read(found)
        except MeterException as exc:
            raise DeviceRejected(str(exc), code=exc.code, device=self.o.name,
                                 address=self.o.address) from None
        return Reading(self.o.name, found.metric, value, self.ctx.clock(), found.unit)

    def _failed(self, exc: TransientError) -> None:
        self.m_errors.labels(self.o.name, exc.kind).inc()
        self.ctx.log.debug("dlt645 request failed", kind=exc.kind, error=str(exc))

    async def read(self, point: Point) -> Value:
        """Read one item; raises `MeterException`, `ProtocolError` or `TransientError`."""
        bus = self.bus
        if bus is None:
            raise TransientError("poll() before open()", kind="state")
        reply = await self.request(bus, point.item.di)
        value = point.item.decode(reply.data[4:])
        if point.scale != 1.0:
            return float(f"{value * point.scale:.12g}")
        return value

    async def request(self, bus: Dlt645Bus, di: int) -> Frame:
        """Send read-data for `di` and return the checked reply frame."""
        self.m_requests.inc()
        started = time.perf_counter()
        reply, took = await read_item(bus, self.o.address, di, self.o.response_timeout,
                                      wakeup=self.o.wakeup)
        self.m_wait.labels(bus.name).observe(max(0.0, time.perf_counter() - started - took))
        self.m_duration.observe(took)
        return reply


async def read_item(bus: Dlt645Bus, address: str, di: int, response_timeout: float, *,
                    wakeup: bool = True) -> tuple[Frame, float]:
    """Read data item `di` from the meter at `address`: the reply and the seconds it took.

    Raises `MeterException` for an exception reply, `FrameError` for a garbled reply,
    `TransientError` for none.
    """
    echo = di.to_bytes(4, "little")

    def mine(frame: Frame) -> bool:
        # a late reply about another DI (after a cancelled poll) is skipped, not an error
        return (frame.function == READ_DATA and address in (WILDCARD, frame.address)
                and (frame.is_exception or frame.data[:4] == echo))

    reply, took = await bus.transact(read_data(address, di, preamble=wakeup), mine,
                                     response_timeout)
    if reply.is_exception:
        raise MeterException(reply.data[0] if reply.data else 0, address=reply.address, di=di)
    return reply, took
