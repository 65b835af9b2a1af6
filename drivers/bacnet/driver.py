"""`driver: bacnet`: one BACnet/IP device, read by COV where it can and polled where not.

The driver streams: COV notifications are emitted when they arrive, the other objects are
read every `interval` (ReadPropertyMultiple in batches, ReadProperty for devices without
it). A device that stops answering makes `run` raise `TransientError`, so the supervisor
backs off, reopens and subscribes again (which also covers a device that restarted and
forgot its subscriptions); an object that disappears is reported `bad` on its own while
the others keep flowing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from gateway.driver import DriverContext, Emit, StreamingDriver
from gateway.errors import DeviceConfigError, TransientError
from gateway.model import Quality, Reading, Value

from .answers import AnswerError
from .objects import ObjectRef, quality_of, unit_of
from .options import BacnetOptions, ObjectSpec
from .port import CovCallback, LinkSettings, PropertyValue
from .writes import BacnetWrites

if TYPE_CHECKING:
    from .link import Link

T = TypeVar("T")
RENEW_AT = 0.75
"""Share of a COV subscription's lifetime after which it is renewed."""
CANCEL_TIMEOUT = 0.5
"""Longest `close()` waits for the device to confirm cancelled subscriptions."""


class _Point:
    """One object: its config and what was learnt about it (units, flags, faults)."""

    __slots__ = ("cov", "flags", "name", "no_reliability", "priority", "ref", "reliability",
                 "spec", "unit", "unit_known", "value", "warned")

    def __init__(self, spec: ObjectSpec, default_priority: int) -> None:
        self.spec = spec
        self.name = spec.name
        self.ref = spec.ref
        self.unit: str | None = spec.unit
        self.unit_known = spec.unit is not None or self.ref.kind != "analog"
        self.priority = spec.priority or default_priority
        self.cov = False
        self.flags: list[int] | None = None
        self.reliability: str | None = None
        self.no_reliability = False
        self.value: Value = None
        self.warned = False

    def props(self) -> list[str]:
        """Properties one read of this object asks for."""
        out = ["present-value", "status-flags"]
        if not self.no_reliability:
            out.append("reliability")
        if not self.unit_known:
            out.append("units")
        return out


class _Again(Exception):  # control flow inside _read, never escapes
    """Read the same objects again with a changed plan (RPM off, or smaller batches)."""

    def __init__(self, size: int | None) -> None:
        super().__init__()
        self.size = size


@dataclass(frozen=True, slots=True)
class _Sub:
    spid: int
    due: float
    """Loop time at which it is renewed."""


class BacnetDriver(StreamingDriver, BacnetWrites):
    """Reads (and, where the YAML allows, writes) the objects of one BACnet/IP device."""

    Options = BacnetOptions

    def __init__(self, options: BacnetOptions, ctx: DriverContext) -> None:
        super().__init__(options, ctx)
        self.o = options
        self._settings = LinkSettings.of(options.network)
        self._link: Link | None = None
        self._points = [_Point(s, options.priority) for s in options.objects]
        self._by_name = {p.name: p for p in self._points}
        self._subs: dict[str, _Sub] = {}
        self._emit: Emit | None = None
        self._flush: asyncio.Handle | None = None
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._stop_listening: Callable[[], None] | None = None
        m, dev = ctx.metrics, options.name
        self._m_requests = m.counter("bacnet_requests", "BACnet confirmed requests sent",
                                     ["device", "service"])
        self._m_cov = m.counter("bacnet_cov_notifications", "COV notifications received",
                                ["device"]).labels(device=dev)
        self._m_subscribed = m.gauge("bacnet_cov_subscriptions", "Objects of a device read "
                                     "by COV subscription", ["device"]).labels(device=dev)

    # -- life cycle ----------------------------------------------------------------------------
    async def open(self) -> None:
        """Join the gateway's BACnet port; check the device id with Who-Is when given."""
        # bacpypes3 is loaded here, not at import: `parkgate check` validates BACnet devices
        # without it (1 s and 9.5 MB less)
        from .link import Link  # noqa: PLC0415

        settings = self._settings
        self._link = await self.ctx.resources.acquire(settings.key,
                                                      lambda: Link.start(settings))
        if self._link.settings != settings:
            diff = "; ".join(self._link.settings.differences(settings))
            raise DeviceConfigError(
                f"{settings.label} is shared with another BACnet device configured "
                f"differently ({diff}); every BACnet device must give the same `network:`",
                kind="config")
        if self.o.device_id is not None:
            await self._check_identity(self._link)
        self._stop_listening = self._link.listen_i_am(self.o.address, self._on_i_am)

    def _on_i_am(self, _instance: int) -> None:
        """The device announced itself: it (re)started and forgot our subscriptions."""
        if not self._subs:
            return
        self.ctx.log.info("device announced itself (I-Am): subscribing again")
        self._subs = {name: _Sub(sub.spid, 0.0) for name, sub in self._subs.items()}
        self._wake.set()

    async def _check_identity(self, link: Link) -> None:
        want = self.o.device_id
        got = await link.identify(self.o.address, self.o.request_timeout)
        if got is None:
            raise TransientError(f"no I-Am from {self.o.address} (expected device {want})",
                                 kind="timeout")
        if got != want:
            raise DeviceConfigError(f"{self.o.address} is device {got}, not {want}",
                                    kind="config")

    async def close(self) -> None:
        """Cancel subscriptions (best effort) and leave the port; the last one closes it."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._stop_listening is not None:
            self._stop_listening()
            self._stop_listening = None
        self._emit = None
        link, self._link = self._link, None
        if link is None:
            return
        subs, self._subs = self._subs, {}
        for sub in subs.values():
            link.forget(self.o.address, sub.spid)  # nothing is emitted after close
        self._m_subscribed.set(0)
        try:
            # cancelled on the device in parallel, bounded: after a failure it is gone
            async with asyncio.timeout(CANCEL_TIMEOUT):
                await asyncio.gather(*(
                    link.unsubscribe(self.o.address, self._by_name[name].ref, sub.spid,
                                     reply_timeout=CANCEL_TIMEOUT)
                    for name, sub in subs.items()))
        except TimeoutError:
            pass
        finally:
            await self.ctx.resources.release(self._settings.key)

    def _need_link(self) -> Link:
        if self._link is None:
            raise TransientError("BACnet device used before open", kind="internal")
        return self._link

    # -- streaming -----------------------------------------------------------------------------
    async def run(self, emit: Emit) -> None:
        """First values of every object, COV subscriptions, then polls every `interval`."""
        link = self._need_link()
        self._emit = emit
        loop = asyncio.get_running_loop()
        emit(await self._read(self._points))
        if self.o.cov:
            await self._subscribe_all(link, loop.time())
        deadline = loop.time() + self.o.interval
        while True:
            # wake for the next poll, the next renewal, or an I-Am (a device restart)
            renew = min((sub.due for sub in self._subs.values()), default=deadline)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, min(deadline, renew) - loop.time())):
                    await self._wake.wait()
            self._wake.clear()
            now = loop.time()
            await self._renew_due(link, now)
            if now < deadline:
                continue
            deadline += self.o.interval
            if now > deadline:
                deadline = now + self.o.interval  # overran: skip ticks rather than burst
            polled = [p for p in self._points if not p.cov]
            if polled:
                emit(await self._read(polled))
            else:  # every object by COV: one cheap read proves the device still answers
                await self._probe(link)

    async def _probe(self, link: Link) -> None:
        point = self._points[0]
        with contextlib.suppress(AnswerError):  # an error answer is an answer: alive
            await self._request(link.read(self.o.address, point.ref, "status-flags",
                                          reply_timeout=self.o.request_timeout,
                                          retries=self.o.retries), "read")

    # -- reading -------------------------------------------------------------------------------
    async def _request(self, call: Awaitable[T], service: str) -> T:
        """Await one request, counted by service."""
        self._m_requests.labels(device=self.o.name, service=service).inc()
        return await call

    async def _read(self, points: Sequence[_Point]) -> list[Reading]:
        """Read `points` (RPM batches, or one by one); a dead device raises TransientError."""
        link = self._need_link()
        caps = link.caps(self.o.address)
        ts = self.ctx.clock()
        out: list[Reading] = []
        size = caps.max_per_request or self.o.max_per_request
        answered = False
        i = 0
        while i < len(points):
            batch = self.o.rpm and caps.rpm
            chunk = points[i:i + size] if batch else points[i:i + 1]
            try:
                got = await self._read_chunk(link, chunk, batch)
            except _Again as again:
                size = again.size or size
                continue
            except TransientError:
                if not answered:
                    raise
                self.ctx.log.warning("device stopped answering during a read; the rest of "
                                     "its objects are reported bad")
                out.extend(self._bad(points[i:], ts))
                break
            answered = True
            out.extend(self._reading(point, got, ts) for point in chunk)
            i += len(chunk)
        return out

    async def _read_chunk(self, link: Link, chunk: Sequence[_Point], batch: bool
                          ) -> dict[tuple[ObjectRef, str], PropertyValue]:
        """One RPM (or the reads of one object); `_Again` when the plan must change."""
        if not batch:
            return await self._read_one(link, chunk[0])
        caps = link.caps(self.o.address)
        try:
            return await self._read_rpm(link, chunk)
        except AnswerError as exc:
            if exc.unsupported_service:
                caps.rpm = False
                self.ctx.log.warning("device does not take ReadPropertyMultiple; reading its "
                                     "objects one by one from now on", error=str(exc))
                raise _Again(None) from None
            if exc.too_big and len(chunk) > 1:
                size = caps.max_per_request = max(1, len(chunk) // 2)
                self.ctx.log.info("answer too big; asking for fewer objects at once",
                                  max_per_request=size)
                raise _Again(size) from None
            error = exc
        # the request as a whole was refused: read its objects alone this time
        self.ctx.log.debug("ReadPropertyMultiple refused; objects read alone", error=str(error))
        got: dict[tuple[ObjectRef, str], PropertyValue] = {}
        for point in chunk:
            got.update(await self._read_one(link, point))
        return got

    async def _read_rpm(self, link: Link, chunk: Sequence[_Point]
                        ) -> dict[tuple[ObjectRef, str], PropertyValue]:
        return await self._request(link.read_multiple(
            self.o.address, [(p.ref, p.props()) for p in chunk],
            reply_timeout=self.o.request_timeout, retries=self.o.retries), "rpm")

    async def _read_one(self, link: Link, point: _Point
                        ) -> dict[tuple[ObjectRef, str], PropertyValue]:
        got: dict[tuple[ObjectRef, str], PropertyValue] = {}
        for prop in point.props():
            try:
                got[(point.ref, prop)] = await self._request(link.read(
                    self.o.address, point.ref, prop, reply_timeout=self.o.request_timeout,
                    retries=self.o.retries), "read")
            except AnswerError as exc:
                got[(point.ref, prop)] = exc
                if prop == "present-value":
                    break  # the object itself is the problem: do not ask for the rest
        return got

    def _reading(self, point: _Point, got: Mapping[tuple[ObjectRef, str], PropertyValue],
                 ts: int) -> Reading:
        """The reading of one object from what a read returned; learns units and faults."""
        ref = point.ref
        units = got.get((ref, "units"))
        if units is not None and not isinstance(units, AnswerError):
            point.unit, point.unit_known = unit_of(str(_camel(units))), True
        elif isinstance(units, AnswerError):
            point.unit_known = True  # no units property: none
        rel = got.get((ref, "reliability"))
        if isinstance(rel, AnswerError):
            point.no_reliability = True
            point.reliability = None
        elif rel is not None:
            point.reliability = str(rel)
        flags = got.get((ref, "status-flags"))
        point.flags = flags if isinstance(flags, list) else None
        value = got.get((ref, "present-value"))
        if isinstance(value, AnswerError) or (ref, "present-value") not in got:
            if not point.warned:
                point.warned = True
                self.ctx.log.warning("object cannot be read; reported bad",
                                     point=point.name, object=str(ref),
                                     error=str(value) if value is not None else "no answer")
            return Reading(self.o.name, point.name, None, ts, point.unit, "bad")
        if point.warned:
            point.warned = False
            self.ctx.log.info("object reads again", point=point.name, object=str(ref))
        point.value = value
        return Reading(self.o.name, point.name, value, ts, point.unit, self._quality(point))

    def _quality(self, point: _Point) -> Quality:
        return quality_of(point.flags, point.reliability)

    def _bad(self, points: Sequence[_Point], ts: int) -> list[Reading]:
        return [Reading(self.o.name, p.name, None, ts, p.unit, "bad") for p in points]

    # -- change of value -----------------------------------------------------------------------
    async def _subscribe_all(self, link: Link, now: float) -> None:
        caps = link.caps(self.o.address)
        for point in self._points:
            wants = point.spec.cov if point.spec.cov is not None else self.o.cov
            if not wants or point.ref in caps.no_cov:
                continue
            await self._subscribe(link, point, now)

    async def _subscribe(self, link: Link, point: _Point, now: float) -> None:
        lifetime = int(self.o.cov_lifetime)
        old = self._subs.get(point.name)
        try:
            spid = await self._request(link.subscribe(
                self.o.address, point.ref, lifetime, self._on_cov(point),
                reply_timeout=self.o.request_timeout, retries=self.o.retries,
                spid=old.spid if old else None), "subscribe-cov")
        except AnswerError as exc:
            link.caps(self.o.address).no_cov.add(point.ref)
            self._subs.pop(point.name, None)
            point.cov = False
            self.ctx.log.info("object refuses COV; polled instead", point=point.name,
                              object=str(point.ref), error=str(exc))
        else:
            self._subs[point.name] = _Sub(spid, now + lifetime * RENEW_AT)
            point.cov = True
        self._m_subscribed.set(len(self._subs))

    async def _renew_due(self, link: Link, now: float) -> None:
        for name, sub in list(self._subs.items()):
            if now >= sub.due:
                await self._subscribe(link, self._by_name[name], now)

    def _on_cov(self, point: _Point) -> CovCallback:
        def callback(prop: str, value: PropertyValue) -> None:
            if prop == "present-value":
                point.value = value
                self._m_cov.inc()
            elif prop == "status-flags":
                point.flags = value if isinstance(value, list) else None
            elif prop == "reliability":
                point.reliability = None if value is None else str(value)
            else:
                return
            self._dirty.add(point.name)
            if self._flush is None:
                # the properties of one notification arrive in one go: emit them as one
                self._flush = asyncio.get_running_loop().call_soon(self._flush_cov)
        return callback

    def _flush_cov(self) -> None:
        self._flush = None
        names, self._dirty = self._dirty, set()
        if self._emit is None:
            return
        ts = self.ctx.clock()
        self._emit([Reading(self.o.name, p.name, p.value, ts, p.unit, self._quality(p))
                    for p in (self._by_name[n] for n in sorted(names))])


def _camel(units: object) -> str:
    """bacpypes3 prints units hyphenated (degrees-celsius); the table is keyed camelCase."""
    words = str(units).split("-")
    return words[0] + "".join(w[:1].upper() + w[1:] for w in words[1:])
