"""Writes to GATT characteristics: only those listed with a `write:` block.

A write uses the notify-mode connection when the device holds one, otherwise it connects
for the write (within the adapter's connection limit) and disconnects after, the way a
poll cycle does; the device's GATT lock keeps a write and a poll cycle from connecting at
once. With `verify` (default: where the characteristic is read) the value is read back
and compared byte for byte.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from drivers.ble.gatt import ConnectionSlots, decode_value, encode_value
from drivers.ble.options import BleOptions, GattCharacteristic
from drivers.ble.scanner import classify
from gateway.driver import Commandable, WriteLimits
from gateway.errors import DeviceRejected, TransientError, VerifyFailed, WriteRefused
from gateway.model import Reading, Value

if TYPE_CHECKING:
    from prometheus_client import Counter


class GattCommands(Commandable):
    """`Commandable` for the BLE driver (mixed into `BleDriver`)."""

    o: BleOptions
    _slots: ConnectionSlots | None
    _gatt_lock: asyncio.Lock
    _live: Any
    _gatt_errors: Counter
    _connect: Callable[..., Any]
    _disconnect: Callable[[Any], Any]
    _reading: Callable[[GattCharacteristic, bytes | None], Reading]

    def _spec(self, point: str) -> GattCharacteristic | None:
        gatt = self.o.gatt
        if gatt is None:
            return None
        return next((c for c in gatt.characteristics if c.metric == point), None)

    def writable(self) -> Mapping[str, WriteLimits]:
        """Characteristics with a `write:` block, by metric name."""
        gatt = self.o.gatt
        if gatt is None:
            return {}
        return {c.metric: c.write for c in gatt.characteristics if c.write is not None}

    async def write(self, point: str, value: Value) -> Value | None:
        """Encode and write one characteristic; read it back when `verify` is on."""
        spec = self._spec(point)
        if spec is None or spec.write is None:
            raise WriteRefused(f"{point}: not a writable characteristic of {self.o.name}")
        data = encode_value(value, spec)
        verify = spec.write.verify if spec.write.verify is not None else spec.read
        got = await self._with_client(lambda client: self._write_with(client, spec, data,
                                                                      verify))
        return got if verify else None

    async def read_point(self, point: str) -> Reading:
        """Read one configured characteristic now."""
        spec = self._spec(point)
        if spec is None:
            raise WriteRefused(f"{point}: no such characteristic on {self.o.name}")

        async def read(client: Any) -> bytes:
            data: bytes = await self._gatt_call(client, spec, client.read_gatt_char(spec.uuid),
                                                "read")
            return data

        return self._reading(spec, await self._with_client(read))

    async def _with_client(self, use: Callable[[Any], Any]) -> Any:
        live = self._live
        if live is not None and live.is_connected:
            return await use(live)
        if self._slots is None:
            raise TransientError(f"{self.o.name} is not open", kind="state")
        async with self._gatt_lock, self._slots.semaphore, asyncio.timeout(self.o.timeout):
            client = await self._connect()
            try:
                return await use(client)
            finally:
                await self._disconnect(client)

    async def _gatt_call(self, client: Any, spec: GattCharacteristic, call: Any,
                         what: str) -> Any:
        try:
            result = await call
        except Exception as exc:  # noqa: BLE001 - BlueZ fails in many ways; sorted below
            reason, message = classify(exc)
            self._gatt_errors.labels(device=self.o.name, reason=reason).inc()
            if not client.is_connected:
                raise TransientError(f"{self.o.address} disconnected during a {what} of "
                                     f"{spec.uuid}: {message}", device=self.o.name,
                                     kind="disconnected") from None
            raise DeviceRejected(f"{spec.metric}: the device refused the {what} of "
                                 f"{spec.uuid}: {message}", device=self.o.name,
                                 address=self.o.address) from None
        return bytes(result) if what == "read" else result

    async def _write_with(self, client: Any, spec: GattCharacteristic, data: bytes,
                          verify: bool) -> Value | None:
        await self._gatt_call(client, spec, client.write_gatt_char(
            spec.uuid, data, response=spec.response), "write")
        if not verify:
            return None
        back: bytes = await self._gatt_call(client, spec, client.read_gatt_char(spec.uuid),
                                            "read")
        if back != data:
            raise VerifyFailed(f"{spec.metric}: wrote {data.hex()} to {spec.uuid}, read back "
                               f"{back.hex()}", device=self.o.name, address=self.o.address)
        return decode_value(back, spec)
