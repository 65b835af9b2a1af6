"""The bacpypes3 side of the port: the application classes the link runs (which hand RPM
answers and COV notifications to rpm.py and I-Ams to the link), and bacpypes3 values
turned into plain ones.

The reach-ins into bacpypes3's internals here are pinned by tests/bacnet/test_link.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bacpypes3.apdu import ComplexAckPDU
from bacpypes3.appservice import ApplicationServiceAccessPoint
from bacpypes3.basetypes import (
    BinaryPV,
    EngineeringUnits,
    ErrorClass,
    ErrorCode,
    ErrorType,
    Reliability,
)
from bacpypes3.comm import ServiceAccessPoint
from bacpypes3.constructeddata import Choice
from bacpypes3.ipv4.app import ForeignApplication, NormalApplication
from bacpypes3.primitivedata import (
    CharacterString,
    Enumerated,
    Null,
    ObjectIdentifier,
    PropertyIdentifier,
)
from bacpypes3.vendor import get_vendor_info

from .answers import answer_error
from .objects import Kind
from .port import CovCallback, IAmCallback, PropertyValue
from .rpm import Failed

PROP_NAMES: dict[int, str] = {}
"""Property numbers to the names the driver uses, for those the link has asked for."""


def prop_id(name: str) -> Any:
    """The PropertyIdentifier of `name`, remembered for decoding answers by number."""
    prop = PropertyIdentifier(name)
    PROP_NAMES[int(prop)] = str(prop)
    return prop


for _name_ in ("present-value", "status-flags", "reliability", "units", "out-of-service"):
    prop_id(_name_)


def lean_value(kind: Kind, prop: str, raw: object) -> PropertyValue:
    """What `to_value` gives for the same property, from the lean decoder's plain value."""
    if isinstance(raw, Failed):
        return answer_error(_ErrorNames(_enum(ErrorClass, raw.error_class),
                                        _enum(ErrorCode, raw.error_code)))
    if prop == "present-value" and kind == "binary" and isinstance(raw, int):
        return raw == 1
    if prop == "reliability" and isinstance(raw, int):
        return str(_enum(Reliability, raw))
    if prop == "units" and isinstance(raw, int):
        return str(_enum(EngineeringUnits, raw))
    return raw


def _enum(kind: Any, number: int) -> Any:
    """The named enumeration value; a proprietary number (no name) stays a number."""
    try:
        return kind(number)
    except (ValueError, TypeError):
        return number


@dataclass(frozen=True, slots=True)
class _ErrorNames:
    errorClass: Any
    errorCode: Any


def to_value(value: object) -> PropertyValue:
    """A plain Python value of a decoded BACnet property."""
    if isinstance(value, ErrorType):
        return answer_error(value)
    if value is None or isinstance(value, Null):
        return None
    if isinstance(value, BinaryPV):
        return int(value) == 1
    if isinstance(value, Enumerated):
        return str(value)
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, CharacterString | str):
        return str(value)
    if isinstance(value, ObjectIdentifier):
        return f"{value[0]},{value[1]}"
    if isinstance(value, Choice):  # a priority-array slot and the like: the chosen value
        chosen = getattr(value, "_choice", None)  # bacpypes3 internal: the chosen element
        return None if chosen is None else to_value(getattr(value, chosen, None))
    if isinstance(value, list | tuple):
        return [to_value(x) for x in value]
    return str(value)


class CovSink:
    """What bacpypes3 looks up in `_cov_contexts` to deliver a notification."""

    def __init__(self, objid: ObjectIdentifier, callback: CovCallback) -> None:
        self.monitored_object_identifier = objid  # read by bacpypes3's do_*COVNotification
        self._class = get_vendor_info(0).get_object_class(objid[0])
        self._callback = callback

    async def put(self, property_value: Any) -> None:
        """One property of a notification: decode by the object's class and hand it on."""
        prop = property_value.propertyIdentifier
        kind = self._class.get_property_type(prop) if self._class else None
        if kind is None:
            return
        value = property_value.value.cast_out(kind)
        self._callback(str(prop), to_value(value))


class _Listening:
    """Mixed into the bacpypes3 applications: I-Ams also go to the link's listeners (a
    device announces itself when it starts: it has forgotten our COV subscriptions)."""

    i_am_listeners: dict[Any, list[IAmCallback]]
    """By bacpypes3 Address: "192.168.1.5" and "192.168.1.5:47808" are one station."""

    async def do_IAmRequest(self, apdu: Any) -> None:
        await super().do_IAmRequest(apdu)  # type: ignore[misc]
        for callback in list(self.i_am_listeners.get(apdu.pduSource, ())):
            callback(int(apdu.iAmDeviceIdentifier[1]))


RPM_SERVICE = 14
"""Confirmed service choice of ReadPropertyMultiple."""


COV_SERVICE = 2
"""Unconfirmed service choice of UnconfirmedCOVNotification."""
LeanCov = Callable[[Any, bytes], bool]


class LeanASAP(ApplicationServiceAccessPoint):  # type: ignore[misc]
    """Hands ReadPropertyMultiple-ACKs up undecoded, and COV notifications of our own
    subscriptions to `lean_cov`: drivers/bacnet/rpm.py decodes both at a fraction of the
    cost (everything else takes bacpypes3's own path)."""

    lean_cov: LeanCov | None = None

    async def confirmation(self, pdu: Any) -> None:
        data = pdu.pduData
        handler = self.lean_cov
        # an unconfirmed request (APDU type 1) whose service is a COV notification
        if handler is not None and len(data) > 2 and data[0] >> 4 == 1 \
                and data[1] == COV_SERVICE and handler(pdu.pduSource, bytes(data[2:])):
            return
        await super().confirmation(pdu)

    async def sap_response(self, apdu: Any) -> None:
        if isinstance(apdu, ComplexAckPDU) and apdu.apduService == RPM_SERVICE:
            await ServiceAccessPoint.sap_response(self, apdu)
            return
        await super().sap_response(apdu)


class Normal(_Listening, NormalApplication):  # type: ignore[misc]
    pass


class Foreign(_Listening, ForeignApplication):  # type: ignore[misc]
    pass
