"""What drivers/bacnet/link.py takes from bacpypes3's internals, pinned so that an upgrade
that moves them fails here and not on site; and the classification of device answers."""

from __future__ import annotations

import asyncio
import inspect

import pytest
from bacpypes3.apdu import AbortPDU, Error, ErrorRejectAbortNack, RejectPDU
from bacpypes3.appservice import ApplicationServiceAccessPoint
from bacpypes3.basetypes import ErrorType
from bacpypes3.ipv4 import IPv4DatagramServer
from bacpypes3.ipv4.app import ForeignApplication, NormalApplication
from bacpypes3.ipv4.service import BIPForeign
from bacpypes3.local.device import DeviceObject
from bacpypes3.pdu import IPv4Address
from bacpypes3.service import cov, device

from drivers.bacnet.link import answer_error

from .conftest import free_udp_port


@pytest.mark.parametrize(("answer", "pdu", "code", "number", "flags"), [
    (RejectPDU(reason="unrecognizedService"), "reject", "unrecognized-service", 9,
     {"unsupported_service"}),
    (AbortPDU(reason="segmentationNotSupported"), "abort", "segmentation-not-supported", 4,
     {"too_big"}),
    (ErrorType(errorClass="object", errorCode="unknownObject"), "error", "unknown-object", 31,
     {"unknown_object"}),
    (Error(service_choice=14, errorClass="services", errorCode="serviceRequestDenied"),
     "error", "service-request-denied", 29, {"unsupported_service"}),
    (ErrorType(errorClass="property", errorCode="writeAccessDenied"), "error",
     "write-access-denied", 40, set()),
])
def test_answers_are_classified(answer: object, pdu: str, code: str, number: int,
                                flags: set[str]) -> None:
    err = answer_error(answer)  # type: ignore[arg-type]
    assert (err.pdu, err.code, err.number) == (pdu, code, number)
    assert {f for f in ("unsupported_service", "too_big", "unknown_object")
            if getattr(err, f)} == flags


def test_error_answers_are_base_exceptions() -> None:
    # Link._call catches them by name: `except Exception` would let them through
    assert issubclass(ErrorRejectAbortNack, BaseException)
    assert not issubclass(ErrorRejectAbortNack, Exception)


async def test_internals_the_link_reaches_into() -> None:
    dev = DeviceObject(objectIdentifier=("device", 4194001), objectName="pin",
                       vendorIdentifier=999)
    app = NormalApplication(dev, IPv4Address(f"127.0.0.1:{free_udp_port()}"))
    try:
        server = app.normal.server
        assert isinstance(server, IPv4DatagramServer)
        assert isinstance(server._local_transport_ready, asyncio.Event)
        await asyncio.wait_for(server._local_transport_ready.wait(), 5)
        assert isinstance(app._cov_contexts, dict)
        assert type(app.asap) is ApplicationServiceAccessPoint  # Link swaps its class
    finally:
        app.close()
    # COV notifications are routed by (source address, process id) to an object with
    # `monitored_object_identifier` and an awaitable `put(property_value)`
    src = inspect.getsource(cov.ChangeOfValueServices.do_UnconfirmedCOVNotificationRequest)
    assert "self._cov_contexts.get((address, subscriber_process_identifier)" in src
    assert "scm.monitored_object_identifier" in src
    assert "await scm.put(property_value)" in src
    # Who-Is collectors: WhoIsFuture(app, address, low, high, timeout) in _who_is_futures
    params = list(inspect.signature(device.WhoIsFuture.__init__).parameters)
    assert params == ["self", "app", "address", "low_limit", "high_limit", "timeout"]
    assert "self.app._who_is_futures.remove(self)" in inspect.getsource(
        device.WhoIsFuture.who_is_done)
    # foreign registration: an event set by the BVLC result, and the result code
    assert "_registration_event" in inspect.getsource(BIPForeign.__init__)
    assert "bbmdRegistrationStatus" in inspect.getsource(BIPForeign.__init__)
    assert "self.foreign = BIPForeign()" in inspect.getsource(ForeignApplication.__init__)
    assert "self.server = IPv4DatagramServer(" in inspect.getsource(ForeignApplication.__init__)
    # RPM answers are decoded by drivers/bacnet/rpm.py: the ASAP decodes complex ACKs in
    # sap_response and passes them on through ServiceAccessPoint.sap_response
    src = inspect.getsource(ApplicationServiceAccessPoint.sap_response)
    assert "xpdu = APCISequence.decode(apdu)" in src
    assert "await ServiceAccessPoint.sap_response(self, xpdu)" in src
    assert "self.asap = ApplicationServiceAccessPoint(" in inspect.getsource(
        NormalApplication.__init__)


def test_choice_values_name_their_chosen_element() -> None:
    from bacpypes3.basetypes import PriorityValue

    from drivers.bacnet.stack import to_value

    assert PriorityValue(real=12.0)._choice == "real"  # what to_value reads
    assert to_value(PriorityValue(real=12.0)) == 12.0
    assert to_value(PriorityValue(null=())) is None


def test_loopback_short_circuit_that_shapes_the_tests() -> None:
    # bacpypes3 delivers a unicast to any 127.x.x.x on its own port to itself, so tests put
    # the gateway and the devices on different ports (or devices on 127.0.0.2+ sharing one)
    src = inspect.getsource(IPv4DatagramServer.indication)
    assert 'pdu_destination[0].startswith("127.")' in src
    # and it binds with SO_REUSEPORT (why Link checks the port is free before binding)
    assert "reuse_port" in inspect.getsource(IPv4DatagramServer.retrying_create_datagram_endpoint)


async def test_rpm_falls_back_to_read_property_for_values_the_lean_decoder_skips() -> None:
    from emulators.bacnet_device import BacnetDevice

    from drivers.bacnet.link import Link, LinkSettings
    from drivers.bacnet.objects import ObjectRef

    dev = await BacnetDevice(f"127.0.0.1:{free_udp_port()}", 3001).start()
    link = await Link.start(LinkSettings("127.0.0.1", free_udp_port(), 4194001))
    try:
        av = ObjectRef("analog-value", 2)
        got = await link.read_multiple(dev.address, [
            (av, ["present-value", "priority-array", "units"]),
            (ObjectRef("analog-input", 77), ["present-value"])],
            reply_timeout=2.0, retries=0)
        assert got[(av, "present-value")] == 20.0
        assert got[(av, "units")] == "degrees-celsius"
        assert isinstance(got[(av, "priority-array")], list)  # read again, the library's way
        assert len(got[(av, "priority-array")]) == 16
        missing = got[(ObjectRef("analog-input", 77), "present-value")]
        assert getattr(missing, "unknown_object", False)
    finally:
        await link.aclose()
        await dev.stop()


async def test_i_am_listeners_match_the_station_whatever_its_spelling() -> None:
    from bacpypes3.apdu import IAmRequest
    from bacpypes3.primitivedata import ObjectIdentifier

    from drivers.bacnet.link import Link, LinkSettings

    link = await Link.start(LinkSettings("127.0.0.1", free_udp_port(), 4194001))
    heard: list[int] = []
    try:
        stop = link.listen_i_am("192.168.20.31:47808", heard.append)
        i_am = IAmRequest(iAmDeviceIdentifier=ObjectIdentifier("device,1031"),
                          maxAPDULengthAccepted=1476, segmentationSupported="segmented-both",
                          vendorID=5)
        i_am.pduSource = IPv4Address("192.168.20.31")  # how the default port is printed
        await link.app.do_IAmRequest(i_am)
        assert heard == [1031]
        stop()
        await link.app.do_IAmRequest(i_am)
        assert heard == [1031]
    finally:
        await link.aclose()


async def test_a_port_closed_is_free_at_once_for_the_next_open() -> None:
    """The supervisor reopens a failed device right away: the port its link just closed
    must not read as taken (asyncio closes datagram sockets a loop turn later)."""
    from drivers.bacnet.link import Link, LinkSettings

    settings = LinkSettings("127.0.0.1", free_udp_port(), 4194001)
    for _ in range(3):
        link = await Link.start(settings)
        await link.aclose()
