"""Fakes at bleak's own backend boundary (BaseBleakScanner / BaseBleakClient).

They hand the driver real `BLEDevice` / `AdvertisementData` objects built from recorded
adverts, exactly as bleak's BlueZ backend would. They are selected by the hidden
`scanner_backend` / `client_backend` options (or `parkgate ble scan --backend`), and read
their script from a JSON file named by an environment variable, so a gateway subprocess can
use them too:

* `PARKGATE_TEST_BLE_REPLAY`: {"interval": s, "repeat": bool, "adverts": [advert, ...]}
  where an advert is {"address", "name", "rssi", "service_data": {uuid: hex},
  "manufacturer_data": {"0x0499": hex}}.
* `PARKGATE_TEST_BLE_FAIL`: {"reason": "no_adapter"|..., "times": N} makes `start()` fail N
  times (per process) the way BlueZ does before the replay starts.
* `PARKGATE_TEST_GATT`: {"chars": {uuid: hex}, "notify": {uuid: [hex, ...]},
  "notify_interval": s, "disconnect_after_notify": bool, "fail_connects": N,
  "connect_delay": s, "refuse_writes": {uuid: message}, "ignore_writes": bool}.
  Writes are logged in `FakeGattClient.writes` and read back from `FakeGattClient.written`.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import (
    BleakBluetoothNotAvailableError,
    BleakBluetoothNotAvailableReason,
    BleakDBusError,
    BleakError,
)

from drivers.ble.advert import normalize_uuid

REPLAY_ENV = "PARKGATE_TEST_BLE_REPLAY"
FAIL_ENV = "PARKGATE_TEST_BLE_FAIL"
GATT_ENV = "PARKGATE_TEST_GATT"


def _load(env: str) -> dict[str, Any]:
    path = os.environ.get(env)
    return json.loads(Path(path).read_text()) if path else {}


def advertisement(advert: dict[str, Any]) -> AdvertisementData:
    """bleak's AdvertisementData from a fixture advert, keys as BlueZ reports them."""
    return AdvertisementData(
        local_name=advert.get("name"),
        manufacturer_data={int(k, 0): bytes.fromhex(v)
                           for k, v in advert.get("manufacturer_data", {}).items()},
        service_data={normalize_uuid(k): bytes.fromhex(v)
                      for k, v in advert.get("service_data", {}).items()},
        service_uuids=[normalize_uuid(k) for k in advert.get("service_data", {})],
        tx_power=None,
        rssi=int(advert.get("rssi", -70)),
        platform_data=(),
    )


def _failure(reason: str) -> Exception:
    if reason == "no_adapter":
        return BleakBluetoothNotAvailableError("No Bluetooth adapters found.",
                                               BleakBluetoothNotAvailableReason.NO_BLUETOOTH)
    if reason == "powered_off":
        return BleakBluetoothNotAvailableError("No powered Bluetooth adapters found.",
                                               BleakBluetoothNotAvailableReason.POWERED_OFF)
    if reason == "bluez_not_running":
        return BleakDBusError("org.freedesktop.DBus.Error.ServiceUnknown",
                              ["The name org.bluez was not provided by any .service files"])
    if reason == "permission_denied":
        return BleakDBusError("org.freedesktop.DBus.Error.AccessDenied",
                              ["Rejected send message"])
    if reason == "passive_unsupported":
        return BleakDBusError("org.freedesktop.DBus.Error.UnknownMethod",
                              ["AdvertisementMonitorManager1 unknown"])
    if reason == "no_dbus":
        return FileNotFoundError(2, "No such file or directory")
    return BleakError(reason)


class ReplayScanner(BaseBleakScanner):
    """Replays recorded adverts through bleak's detection callbacks."""

    starts: ClassVar[int] = 0
    modes: ClassVar[list[str]] = []

    def __init__(self, detection_callback: Any, service_uuids: Any,
                 scanning_mode: str = "active", **_kw: Any) -> None:
        super().__init__(detection_callback, service_uuids)
        self.scanning_mode = scanning_mode
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Fail as configured, else start replaying."""
        cls = type(self)
        cls.starts += 1
        cls.modes.append(self.scanning_mode)
        fail = _load(FAIL_ENV)
        if fail:
            reasons = fail["reason"] if isinstance(fail["reason"], list) else [fail["reason"]]
            if cls.starts <= int(fail.get("times", 1)):
                raise _failure(reasons[(cls.starts - 1) % len(reasons)])
            if self.scanning_mode == "passive" and fail.get("passive") == "unsupported":
                raise _failure("passive_unsupported")
        self.seen_devices = {}
        self._task = asyncio.create_task(self._replay(_load(REPLAY_ENV)))

    async def stop(self) -> None:
        """Stop replaying."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _replay(self, script: dict[str, Any]) -> None:
        interval = float(script.get("interval", 0.05))
        while True:
            for advert in script.get("adverts", []):
                adv = advertisement(advert)
                address = advert["address"]
                device = self.create_or_update_device(address, address, advert.get("name"),
                                                      None, adv)
                self.call_detection_callbacks(device, adv)
                await asyncio.sleep(interval)
            if not script.get("repeat", True):
                return


class FakeGattClient(BaseBleakClient):
    """A GATT server in memory: read values, notifications, flaky connects."""

    active: ClassVar[int] = 0
    max_active: ClassVar[int] = 0
    connects: ClassVar[int] = 0
    writes: ClassVar[list[tuple[str, str, bool]]] = []
    """(uuid, hex, with response) of every write that reached the device."""
    written: ClassVar[dict[str, str]] = {}
    """uuid -> hex the device holds after writes (what a later read returns)."""

    def __init__(self, address_or_ble_device: BLEDevice | str, **kwargs: Any) -> None:
        super().__init__(address_or_ble_device, disconnected_callback=kwargs.get(
            "disconnected_callback"), timeout=kwargs.get("timeout", 10.0))
        self.script = _load(GATT_ENV)
        self._connected = False
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def mtu_size(self) -> int:
        return 23

    @property
    def is_connected(self) -> bool:
        return self._connected

    def _services(self) -> BleakGATTServiceCollection:
        coll = BleakGATTServiceCollection()
        svc = BleakGATTService(None, 1, normalize_uuid("181a"))
        coll.add_service(svc)
        uuids = (set(self.script.get("chars", {})) | set(self.script.get("notify", {}))
                 | set(self.script.get("write_only", [])))
        for handle, uuid in enumerate(sorted(uuids), start=2):
            coll.add_characteristic(BleakGATTCharacteristic(
                None, handle, normalize_uuid(uuid), ["read", "write", "notify"], lambda: 20,
                svc))
        return coll

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        cls = type(self)
        cls.connects += 1
        await asyncio.sleep(float(self.script.get("connect_delay", 0.0)))
        if cls.connects <= int(self.script.get("fail_connects", 0)):
            raise BleakError(f"Device with address {self.address} was not found.")
        self.services = self._services()
        self._connected = True
        cls.active += 1
        cls.max_active = max(cls.max_active, cls.active)

    async def disconnect(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._connected:
            self._connected = False
            type(self).active -= 1

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError

    async def unpair(self) -> None:
        raise NotImplementedError

    async def read_gatt_char(self, characteristic: BleakGATTCharacteristic, *,
                             use_cached: bool = False, **kwargs: Any) -> bytearray:
        chars = {normalize_uuid(k): v for k, v in self.script.get("chars", {}).items()}
        chars.update(type(self).written)
        if characteristic.uuid not in chars:
            raise BleakError("read not permitted")
        await asyncio.sleep(0.01)
        return bytearray.fromhex(chars[characteristic.uuid])

    async def read_gatt_descriptor(self, descriptor: BleakGATTDescriptor, *,
                                   use_cached: bool = False, **kwargs: Any) -> bytearray:
        raise NotImplementedError

    async def write_gatt_char(self, characteristic: BleakGATTCharacteristic, data: Any,
                              response: bool) -> None:
        cls = type(self)
        uuid = characteristic.uuid
        cls.writes.append((uuid, bytes(data).hex(), response))
        refused = {normalize_uuid(k): v for k, v in self.script.get("refuse_writes", {}).items()}
        if uuid in refused:
            raise BleakError(refused[uuid])
        await asyncio.sleep(0.01)
        if not self.script.get("ignore_writes"):
            cls.written[uuid] = bytes(data).hex()

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: Any) -> None:
        raise NotImplementedError

    async def start_notify(self, characteristic: BleakGATTCharacteristic,
                           callback: NotifyCallback, **kwargs: Any) -> None:
        values = {normalize_uuid(k): v for k, v in self.script.get("notify", {}).items()}
        sequence = values.get(characteristic.uuid, [])
        self._tasks.append(asyncio.create_task(self._notify(sequence, callback)))

    async def _notify(self, sequence: list[str], callback: Callable[[bytearray], None]) -> None:
        for value in sequence:
            await asyncio.sleep(float(self.script.get("notify_interval", 0.02)))
            callback(bytearray.fromhex(value))
        if self.script.get("disconnect_after_notify"):
            self._connected = False
            type(self).active -= 1
            if self._disconnected_callback is not None:
                self._disconnected_callback()

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        return None


class NoAdapterScanner(BaseBleakScanner):
    """An adapter that is never there: every start fails as BlueZ reports it."""

    def __init__(self, detection_callback: Any, service_uuids: Any, *_a: Any,
                 **_kw: Any) -> None:
        super().__init__(detection_callback, service_uuids)

    async def start(self) -> None:
        """Fail like bleak does on a box without a Bluetooth adapter."""
        raise _failure("no_adapter")

    async def stop(self) -> None:
        """Nothing was started."""
