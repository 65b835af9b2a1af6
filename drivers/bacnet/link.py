"""The gateway's BACnet/IP port: one bacpypes3 application on one UDP port, shared by every
BACnet device of the agent through `DriverContext.resources`.

Everything taken from bacpypes3's internals lives in this module, each reach-in marked, and
tests/bacnet/test_link.py pins them so an upgrade fails in CI, not on site.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from bacpypes3.apdu import (
    ConfirmedRequestPDU,
    ErrorRejectAbortNack,
    ReadPropertyMultipleRequest,
    SubscribeCOVRequest,
    WhoIsRequest,
)
from bacpypes3.basetypes import (
    PropertyReference,
    ReadAccessSpecification,
)
from bacpypes3.constructeddata import SequenceOf
from bacpypes3.ipv4.app import ForeignApplication, NormalApplication
from bacpypes3.local.device import DeviceObject
from bacpypes3.pdu import Address, IPv4Address
from bacpypes3.primitivedata import (
    Null,
    ObjectIdentifier,
    ObjectType,
    Real,
    Unsigned,
)
from bacpypes3.service.device import WhoIsFuture

from gateway.errors import DeviceConfigError, DeviceError, TransientError

from .answers import AnswerError, answer_error
from .objects import Kind, ObjectRef
from .port import Capabilities, CovCallback, IAm, IAmCallback, LinkSettings, PropertyValue
from .rpm import DecodeError, Unparsed, decode_ack, decode_cov
from .stack import (
    PROP_NAMES,
    RPM_SERVICE,
    CovSink,
    Foreign,
    LeanASAP,
    Normal,
    lean_value,
    prop_id,
    to_value,
)

T = TypeVar("T")
READY_TIMEOUT = 5.0
"""Longest wait for the UDP socket to be bound (bacpypes3 retries a failed bind forever)."""
REGISTER_TIMEOUT = 5.0
"""Longest wait for a BBMD to accept the foreign-device registration."""

MAX_PLANS = 4096
"""Encoded RPM requests kept (one per distinct batch)."""


class Link:
    """One bacpypes3 application: reads, writes, COV and Who-Is for all BACnet devices."""

    def __init__(self, settings: LinkSettings) -> None:
        self.settings = settings
        self.capabilities: dict[str, Capabilities] = {}
        self._app: NormalApplication | ForeignApplication | None = None
        self._next_spid = 1
        self._i_am: dict[Any, list[IAmCallback]] = {}
        self._cov: dict[tuple[Any, int], tuple[tuple[int, int], Kind, CovCallback]] = {}
        self._plans: dict[Any, tuple[bytes, dict[tuple[int, int], ObjectRef],
                                     dict[ObjectRef, Kind]]] = {}

    # -- life cycle ----------------------------------------------------------------------------
    @classmethod
    async def start(cls, settings: LinkSettings) -> Link:
        """Bind the port (and register with the BBMD); `DeviceConfigError` if it cannot."""
        link = cls(settings)
        await link._open()
        return link

    async def _open(self) -> None:
        s = self.settings
        host = s.address.split("/")[0]
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:  # bacpypes3 binds with SO_REUSEPORT and retries failures forever: check first
            probe.bind((host, s.port))
        except OSError as exc:
            raise DeviceConfigError(f"{s.label}: cannot bind ({exc.strerror}); another BACnet "
                                    "program on this box, or an address not on it?",
                                    kind="config") from None
        finally:
            probe.close()
        device = DeviceObject(
            objectIdentifier=("device", s.device_id), objectName=f"parkgate-{s.device_id}",
            vendorIdentifier=999, maxApduLengthAccepted=1476,
            segmentationSupported="segmented-both",
            # our own timeouts and retries bound every request (asyncio.timeout)
            apduTimeout=60_000, numberOfApduRetries=0)
        local = IPv4Address(f"{s.address}:{s.port}")
        if s.bbmd is None:
            app: NormalApplication | ForeignApplication = Normal(device, local)
            server = app.normal.server
        else:
            app = Foreign(device, local)
            server = app.server
        app.i_am_listeners = self._i_am
        app.asap.__class__ = LeanASAP  # bacpypes3 builds its ASAP in __init__: swap its class
        app.asap.lean_cov = self._on_cov
        self._app = app
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await server._local_transport_ready.wait()  # noqa: SLF001 - bacpypes3 internal: bind finished (pinned in test_link.py)
            if s.bbmd is not None:
                await self._register(app)
        except BaseException:
            app.close()
            self._app = None
            raise

    async def _register(self, app: Any) -> None:
        s = self.settings
        assert s.bbmd is not None
        app.register(IPv4Address(s.bbmd), s.ttl)
        foreign = app.foreign
        try:
            async with asyncio.timeout(REGISTER_TIMEOUT):
                # bacpypes3 internal: set by a successful BVLC result only
                await foreign._registration_event.wait()  # noqa: SLF001 - no public registration result (pinned in test_link.py)
        except TimeoutError:
            pass
        status = foreign.bbmdRegistrationStatus  # -2 none, -1 waiting, 0 ok, >0 BVLC NAK
        if status < 0:
            raise TransientError(f"BBMD {s.bbmd} did not answer the foreign-device "
                                 "registration", kind="timeout")
        if status > 0:
            raise DeviceConfigError(f"BBMD {s.bbmd} refused the foreign-device registration "
                                    f"(BVLC result {status}); is this gateway allowed in its "
                                    "foreign device table?", kind="config")

    @property
    def registered(self) -> bool:
        """Foreign mode: whether the BBMD currently holds our registration."""
        app = self._app
        return app is not None and getattr(getattr(app, "foreign", None),
                                           "bbmdRegistrationStatus", -2) == 0

    async def aclose(self) -> None:
        """Unbind the port (the last BACnet device left)."""
        app, self._app = self._app, None
        if app is not None:
            if self.settings.bbmd is not None:
                with contextlib.suppress(Exception):
                    app.unregister()
            app.close()
            # asyncio closes a datagram socket on the next loop turn: until then the port
            # is taken, and a device reopened at once would find it "in use"
            await asyncio.sleep(0)
            await asyncio.sleep(0)

    def listen_i_am(self, address: str, callback: IAmCallback) -> Callable[[], None]:
        """Call `callback` for each I-Am from `address`; returns the function that stops it."""
        station = Address(address)
        self._i_am.setdefault(station, []).append(callback)

        def stop() -> None:
            callbacks = self._i_am.get(station, [])
            if callback in callbacks:
                callbacks.remove(callback)
            if not callbacks:
                self._i_am.pop(station, None)
        return stop

    def caps(self, address: str) -> Capabilities:
        """What the device at `address` supports (learnt so far)."""
        return self.capabilities.setdefault(address, Capabilities())

    @property
    def app(self) -> NormalApplication | ForeignApplication:
        """The bacpypes3 application; TransientError once closed."""
        if self._app is None:
            raise TransientError("the BACnet port is closed", kind="disconnected")
        return self._app

    # -- requests ------------------------------------------------------------------------------
    async def _call(self, make: Callable[[], Awaitable[T]], *, reply_timeout: float, retries: int,
                    what: str) -> T:
        for _ in range(retries + 1):
            try:
                async with asyncio.timeout(reply_timeout):
                    return await make()
            except TimeoutError:
                continue
            except ErrorRejectAbortNack as exc:  # a BaseException in bacpypes3
                raise answer_error(exc) from None
        raise TransientError(f"no answer to {what} within {reply_timeout:g}s "
                             f"({retries + 1} attempts)", kind="timeout")

    async def read(self, address: str, ref: ObjectRef, prop: str, *, reply_timeout: float,
                   retries: int) -> PropertyValue:
        """ReadProperty; `AnswerError` if the device refuses."""
        app = self.app
        objid = ObjectIdentifier((ref.type, ref.instance))
        value = await self._call(lambda: app.read_property(Address(address), objid, prop),
                                 reply_timeout=reply_timeout, retries=retries,
                                 what=f"ReadProperty {ref} {prop}")
        return to_value(value)

    async def read_multiple(self, address: str, specs: Sequence[tuple[ObjectRef, Sequence[str]]],
                            *, reply_timeout: float, retries: int
                            ) -> dict[tuple[ObjectRef, str], PropertyValue]:
        """ReadPropertyMultiple: each (object, property) to its value or `AnswerError`."""
        app = self.app
        dest = Address(address)
        encoded, refs, kinds = self._plan(specs)

        def request() -> Awaitable[Any]:
            # the service data is encoded once per batch; each send is a fresh APDU
            apdu = ConfirmedRequestPDU(destination=dest)
            apdu.apduService = RPM_SERVICE
            apdu.put_data(encoded)
            sent: Awaitable[Any] = app.request(apdu)
            return sent

        ack = await self._call(request, reply_timeout=reply_timeout, retries=retries,
                               what=f"ReadPropertyMultiple of {len(specs)} objects")
        try:
            results = decode_ack(bytes(ack.pduData))
        except (DecodeError, AttributeError) as exc:
            raise AnswerError(f"undecodable ReadPropertyMultiple answer: {exc}", pdu="ack",
                              error_class=None, code="invalid-tag", number=-1) from None
        out: dict[tuple[ObjectRef, str], PropertyValue] = {}
        slow: list[tuple[ObjectRef, str]] = []
        for otype, instance, prop_number, _index, raw in results:
            ref = refs.get((otype, instance))
            prop = PROP_NAMES.get(prop_number)
            if ref is None or prop is None:
                continue
            if isinstance(raw, Unparsed):
                slow.append((ref, prop))
                continue
            out[(ref, prop)] = lean_value(kinds[ref], prop, raw)
        for ref, prop in slow:  # a type the lean decoder leaves alone: the library's way
            try:
                out[(ref, prop)] = await self.read(address, ref, prop,
                                                   reply_timeout=reply_timeout, retries=retries)
            except AnswerError as exc:
                out[(ref, prop)] = exc
        return out

    def _plan(self, specs: Sequence[tuple[ObjectRef, Sequence[str]]]
              ) -> tuple[bytes, dict[tuple[int, int], ObjectRef], dict[ObjectRef, Kind]]:
        """The request's service data, encoded once per distinct batch."""
        key = tuple((ref, tuple(props)) for ref, props in specs)
        plan = self._plans.get(key)
        if plan is None:
            access = SequenceOf(ReadAccessSpecification)([
                ReadAccessSpecification(
                    objectIdentifier=ObjectIdentifier((ref.type, ref.instance)),
                    listOfPropertyReferences=[
                        PropertyReference(propertyIdentifier=prop_id(p)) for p in props])
                for ref, props in specs])
            refs = {(int(ObjectType(ref.type)), ref.instance): ref for ref, _ in specs}
            kinds = {ref: ref.kind for ref, _ in specs}
            encoded = bytes(ReadPropertyMultipleRequest(listOfReadAccessSpecs=access)
                            .encode().pduData)
            plan = (encoded, refs, kinds)
            if len(self._plans) >= MAX_PLANS:  # objects whose properties change: stay bounded
                self._plans.clear()
            self._plans[key] = plan
        return plan

    async def write(self, address: str, ref: ObjectRef, kind: Kind,
                    value: float | int | str | None, priority: int | None, *,
                    reply_timeout: float) -> None:
        """WriteProperty present-value (None: relinquish, NULL at `priority`); no retries:
        a write that got no answer may have been carried out."""
        app = self.app
        objid = ObjectIdentifier((ref.type, ref.instance))
        encoded: Any
        if value is None:
            encoded = Null(())
        elif kind == "analog":
            encoded = Real(value)
        elif kind in ("multistate", "unsigned"):
            encoded = Unsigned(value)
        else:
            encoded = value  # binary words and integers: cast by the property's own type
        await self._call(lambda: app.write_property(Address(address), objid, "present-value",
                                                    encoded, priority=priority),
                         reply_timeout=reply_timeout, retries=0, what=f"WriteProperty {ref}")

    async def identify(self, address: str, wait: float) -> int | None:
        """Who-Is sent to one device; the instance of its I-Am (None if it stayed silent)."""
        app = self.app
        try:
            async with asyncio.timeout(wait + 1.0):
                iams = await app.who_is(None, None, Address(address), timeout=wait)
        except TimeoutError:
            return None
        return int(iams[0].iAmDeviceIdentifier[1]) if iams else None

    async def discover(self, low: int | None, high: int | None, to: str | None,
                       wait: float) -> list[IAm]:
        """Who-Is to `to` (a directed broadcast such as 192.168.20.255, or one device), or
        broadcast; every I-Am heard within `wait` seconds."""
        app = self.app
        s = self.settings
        if to is None and s.bbmd is None and "/" not in s.address:
            to = f"255.255.255.255:{s.port or 47808}"  # bound to any interface: no subnet
        if to is None:
            future = app.who_is(low, high, None, timeout=wait)
        else:
            # bacpypes3's who_is() keeps only I-Ams from the address it was sent to, which
            # a directed broadcast never is: collect them like a broadcast Who-Is does
            request = WhoIsRequest(destination=Address(to))
            if low is not None and high is not None:
                request.deviceInstanceRangeLowLimit = low
                request.deviceInstanceRangeHighLimit = high
            collector = WhoIsFuture(app, None, low, high, wait)
            if not hasattr(app, "_who_is_futures"):
                app._who_is_futures = []  # noqa: SLF001 - bacpypes3 internal: pending Who-Is collectors (pinned in test_link.py)
            app._who_is_futures.append(collector)  # noqa: SLF001 - bacpypes3 internal: routes I-Ams (pinned in test_link.py)
            app.request(request)
            future = collector.future
        try:
            async with asyncio.timeout(wait + 1.0):
                iams = await future
        except TimeoutError:
            iams = []
        found = [IAm(int(iam.iAmDeviceIdentifier[1]), str(iam.pduSource), int(iam.vendorID),
                     int(iam.maxAPDULengthAccepted), str(iam.segmentationSupported))
                 for iam in iams or ()]
        return sorted(found, key=lambda i: i.instance)

    # -- change of value -----------------------------------------------------------------------
    async def subscribe(self, address: str, ref: ObjectRef, lifetime: int,
                        callback: CovCallback, *, reply_timeout: float, retries: int,
                        spid: int | None = None) -> int:
        """SubscribeCOV (unconfirmed notifications) for `lifetime` seconds, or renew the
        subscription `spid`; returns its subscriber process id."""
        app = self.app
        if spid is None:
            spid = self._next_spid
            self._next_spid = self._next_spid % 4_000_000 + 1
        objid = ObjectIdentifier((ref.type, ref.instance))
        dest = Address(address)
        contexts: dict[Any, Any] = app._cov_contexts  # noqa: SLF001 - bacpypes3 internal: notification routing (pinned in test_link.py)
        contexts[(dest, spid)] = CovSink(objid, callback)  # confirmed or undecodable ones
        self._cov[(dest, spid)] = ((int(objid[0]), ref.instance), ref.kind, callback)

        def request() -> Awaitable[Any]:
            sent: Awaitable[Any] = app.request(SubscribeCOVRequest(
                subscriberProcessIdentifier=spid, monitoredObjectIdentifier=objid,
                issueConfirmedNotifications=False, lifetime=lifetime, destination=dest))
            return sent

        try:
            await self._call(request, reply_timeout=reply_timeout, retries=retries,
                             what=f"SubscribeCOV {ref}")
        except BaseException:
            contexts.pop((dest, spid), None)
            self._cov.pop((dest, spid), None)
            raise
        return spid

    def _on_cov(self, source: Any, data: bytes) -> bool:
        """A COV notification's service data; False leaves it to bacpypes3."""
        try:
            note = decode_cov(data)
        except DecodeError:
            return False
        route = self._cov.get((source, note.spid))
        if route is None or route[0] != (note.object_type, note.instance):
            return False
        _obj, kind, callback = route
        for prop_number, _index, raw in note.values:
            prop = PROP_NAMES.get(prop_number)
            if prop is not None and not isinstance(raw, Unparsed):
                callback(prop, lean_value(kind, prop, raw))
        return True

    def forget(self, address: str, spid: int) -> None:
        """Stop delivering notifications of subscription `spid` (at once, no request)."""
        self._cov.pop((Address(address), spid), None)
        if self._app is not None:
            self._app._cov_contexts.pop((Address(address), spid), None)  # noqa: SLF001 - bacpypes3 internal (pinned in test_link.py)

    async def unsubscribe(self, address: str, ref: ObjectRef, spid: int, *,
                          reply_timeout: float) -> None:
        """Cancel a subscription (best effort: the device may be gone)."""
        app = self._app
        if app is None:
            return
        self.forget(address, spid)
        dest = Address(address)
        objid = ObjectIdentifier((ref.type, ref.instance))
        with contextlib.suppress(DeviceError, TimeoutError):
            await self._call(lambda: app.request(SubscribeCOVRequest(
                subscriberProcessIdentifier=spid, monitoredObjectIdentifier=objid,
                destination=dest)), reply_timeout=reply_timeout, retries=0,
                             what="cancel SubscribeCOV")


__all__ = [
    "AnswerError",
    "Capabilities",
    "IAm",
    "Link",
    "LinkSettings",
    "answer_error",
    "to_value",
]
