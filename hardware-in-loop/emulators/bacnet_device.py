"""A BACnet/IP device for tests and benchmarks, served by bacpypes3 (the driver's library).

Script:
    python hardware-in-loop/emulators/bacnet_device.py --address 127.0.0.1:47901 \\
        --device-id 1001 [--no-rpm] [--no-cov] [--points 100]

Tests:
    `BacnetDevice` serves analog-input/-value/-output, binary-value/-output and
    multi-state-value objects (COV increment 0.1 on analogs), optionally without
    ReadPropertyMultiple or SubscribeCOV (the stack then rejects them with
    unrecognized-service, like a small controller), and can stop, start again on the same
    address (a restart: subscriptions are forgotten) and delete objects.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

from bacpypes3.apdu import AbortPDU
from bacpypes3.basetypes import EngineeringUnits
from bacpypes3.ipv4.app import BBMDApplication, NormalApplication
from bacpypes3.local.analog import AnalogInputObject, AnalogOutputObject, AnalogValueObjectCmd
from bacpypes3.local.binary import BinaryOutputObject, BinaryValueObjectCmd
from bacpypes3.local.device import DeviceObject
from bacpypes3.local.multistate import MultiStateValueObject
from bacpypes3.pdu import Address, IPv4Address


class _NoRpm(NormalApplication):  # type: ignore[misc]
    do_ReadPropertyMultipleRequest = None  # the stack answers Reject unrecognized-service


class _NoCov(NormalApplication):  # type: ignore[misc]
    do_SubscribeCOVRequest = None


class _NoBoth(NormalApplication):  # type: ignore[misc]
    do_ReadPropertyMultipleRequest = None
    do_SubscribeCOVRequest = None


def _small_rpm(limit: int) -> type:
    """A controller whose buffers hold answers for at most `limit` objects: bigger RPMs are
    aborted with segmentation-not-supported, as small controllers do."""

    class SmallRpm(NormalApplication):  # type: ignore[misc]
        async def do_ReadPropertyMultipleRequest(self, apdu: Any) -> None:
            if len(apdu.listOfReadAccessSpecs) > limit:
                # answered by hand: bacpypes3 turns a raised AbortException into an Abort
                # without its server flag, which clients ignore
                await self.response(AbortPDU(True, apdu.apduInvokeID,
                                             "segmentationNotSupported", context=apdu))
                return
            await super().do_ReadPropertyMultipleRequest(apdu)

    return SmallRpm


OK = [0, 0, 0, 0]


def standard_objects(extra_analog: int = 0) -> list[Any]:
    """The objects of the test device (fresh instances: bacpypes3 binds them to one app)."""
    objs: list[Any] = [
        AnalogInputObject(objectIdentifier=("analog-input", 1), objectName="supply-temp",
                          presentValue=21.5, units=EngineeringUnits.degreesCelsius,
                          statusFlags=OK, covIncrement=0.1),
        AnalogValueObjectCmd(objectIdentifier=("analog-value", 2), objectName="setpoint",
                             presentValue=20.0, units=EngineeringUnits.degreesCelsius,
                             statusFlags=OK, relinquishDefault=18.0, covIncrement=0.1),
        AnalogOutputObject(objectIdentifier=("analog-output", 3), objectName="valve",
                           presentValue=40.0, units=EngineeringUnits.percent,
                           statusFlags=OK, relinquishDefault=0.0, covIncrement=0.1),
        BinaryValueObjectCmd(objectIdentifier=("binary-value", 4), objectName="enable",
                             presentValue="inactive", statusFlags=OK,
                             relinquishDefault="inactive"),
        BinaryOutputObject(objectIdentifier=("binary-output", 5), objectName="pump",
                           presentValue="active", statusFlags=OK,
                           relinquishDefault="inactive"),
        MultiStateValueObject(objectIdentifier=("multi-state-value", 6), objectName="mode",
                              presentValue=2, numberOfStates=3, statusFlags=OK),
    ]
    objs += [AnalogInputObject(objectIdentifier=("analog-input", 100 + i),
                               objectName=f"sensor-{i}", presentValue=float(i),
                               units=EngineeringUnits.kilowatts, statusFlags=OK,
                               covIncrement=0.1)
             for i in range(extra_analog)]
    return objs


class BacnetDevice:
    """One simulated device on `address` (HOST:PORT); `start()` again after `stop()` is a
    restart with the same objects and values."""

    def __init__(self, address: str, device_id: int, *, rpm: bool = True, cov: bool = True,
                 extra_analog: int = 0, bbmd: bool = False, rpm_limit: int = 0) -> None:
        self.address = address
        self.device_id = device_id
        self.rpm = rpm
        self.cov = cov
        self.bbmd = bbmd
        self.extra_analog = extra_analog
        self.rpm_limit = rpm_limit
        self.app: Any = None
        self.objects: dict[str, Any] = {}
        self._values: dict[str, Any] = {}

    async def start(self) -> BacnetDevice:
        """Bind and serve; values survive a stop/start like a controller's retained RAM."""
        cls: Any = NormalApplication
        if self.bbmd:
            cls = BBMDApplication
        elif not self.rpm and not self.cov:
            cls = _NoBoth
        elif not self.rpm:
            cls = _NoRpm
        elif self.rpm_limit:
            cls = _small_rpm(self.rpm_limit)
        elif not self.cov:
            cls = _NoCov
        device = DeviceObject(objectIdentifier=("device", self.device_id),
                              objectName=f"sim-{self.device_id}", vendorIdentifier=999,
                              maxApduLengthAccepted=1476, segmentationSupported="segmented-both")
        self.app = cls(device, IPv4Address(self.address))
        server = self.app.normal.server if hasattr(self.app, "normal") else self.app.server
        await asyncio.wait_for(server._local_transport_ready.wait(), 5)  # noqa: SLF001 - bound
        if self.bbmd:  # a BBMD re-broadcasts on its own subnet only when its BDT holds it
            self.app.add_peer(IPv4Address(self.address))
        self.objects = {}
        for obj in standard_objects(self.extra_analog):
            key = str(obj.objectIdentifier)
            if key in self._values:
                with contextlib.suppress(Exception):
                    obj.presentValue = self._values[key]
            if key in self._deleted:
                continue
            self.app.add_object(obj)
            self.objects[key] = obj
        return self

    _deleted: set[str] = set()  # noqa: RUF012 - replaced per instance in delete()

    def obj(self, ref: str) -> Any:
        """The object `analog-value,2`."""
        return self.objects[ref]

    def set(self, ref: str, value: Any) -> None:
        """Change a present-value (triggers COV notifications)."""
        self.objects[ref].presentValue = value

    def announce(self, to: str) -> None:
        """I-Am, as a device sends on start (by broadcast on a real subnet; to `to` here)."""
        self.app.i_am(Address(to))

    def delete(self, ref: str) -> None:
        """Remove an object: reads of it get unknown-object from now on."""
        self._deleted = {*self._deleted, ref}
        obj = self.objects.pop(ref)
        self.app.delete_object(obj)

    async def stop(self) -> None:
        """Unbind: the device falls silent (its subscriptions are forgotten)."""
        if self.app is not None:
            for key, obj in self.objects.items():
                with contextlib.suppress(Exception):
                    self._values[key] = obj.presentValue
            self.app.close()
            self.app = None
            await asyncio.sleep(0.05)


async def _main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--address", default="127.0.0.1:47901",
                   help="HOST:PORT of the first device; more devices take the next ports")
    p.add_argument("--device-id", type=int, default=1001)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--no-rpm", action="store_true")
    p.add_argument("--no-cov", action="store_true")
    p.add_argument("--points", type=int, default=0, help="extra analog inputs 100..")
    p.add_argument("--change", type=float, default=0.0, metavar="SECONDS",
                   help="give every extra analog input a new value this often (COV)")
    a = p.parse_args()
    host, port = a.address.rsplit(":", 1)
    devs = [await BacnetDevice(f"{host}:{int(port) + i}", a.device_id + i, rpm=not a.no_rpm,
                               cov=not a.no_cov, extra_analog=a.points).start()
            for i in range(a.devices)]
    print(f"serving {a.devices} BACnet device(s) from {a.address}", flush=True)
    try:
        tick = 0
        while True:
            await asyncio.sleep(a.change or 3600)
            tick += 1
            for dev in devs:
                for i in range(a.points):
                    dev.set(f"analog-input,{100 + i}", float(i + tick % 2))
    finally:
        for dev in devs:
            await dev.stop()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main())
