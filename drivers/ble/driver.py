"""`driver: ble`: one BLE sensor per configured device, by its adverts or over GATT."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from drivers.ble import ibeacon
from drivers.ble.advert import APPLE_COMPANY, Decoded, FormatChoice, Scalar, decode_advert
from drivers.ble.gatt import ConnectionSlots, decode_value
from drivers.ble.gatt_commands import GattCommands
from drivers.ble.options import BleOptions, GattCharacteristic
from drivers.ble.scanner import SharedScanner, classify, load_class
from gateway.backoff import Backoff
from gateway.driver import DriverContext, Emit, StreamingDriver
from gateway.errors import TransientError
from gateway.model import Quality, Reading

if TYPE_CHECKING:
    from bleak.backends.device import BLEDevice
    from bleak.backends.scanner import AdvertisementData

QUEUE_SIZE = 32
DISCONNECT_TIMEOUT = 5.0
CONNECT_BACKOFF_BASE = 1.0
REFUSED_LOG_INTERVAL = 60.0
"""Seconds between two log lines about refused adverts of one device (each is counted)."""
COUNTER_RESTART = 100
"""An encryption counter below this after a higher one is a sensor that restarted (a
battery change), as Home Assistant's BTHome decoder takes it; at or above it, a counter
lower than the last accepted one is an old advert replayed."""


class Throttle:
    """Report a value when it changes (at most every `min_interval`) or every `heartbeat`."""

    def __init__(self, min_interval: float, heartbeat: float) -> None:
        self.min_interval = min_interval
        self.heartbeat = heartbeat
        self._last: dict[str, tuple[Scalar | None, float]] = {}

    def due(self, metric: str, value: Scalar | None, now: float) -> bool:
        """Whether to report `value` now; remembers it if so."""
        last = self._last.get(metric)
        if last is not None:
            age = now - last[1]
            if age < (self.min_interval if value != last[0] else self.heartbeat):
                return False
        self._last[metric] = (value, now)
        return True

    def forget(self) -> None:
        """Report everything afresh (after the sensor was absent)."""
        self._last.clear()


def _error_kind(message: str) -> str:
    """A low-cardinality metric label for a decoder's error text."""
    for needle, kind in (("decryption failed", "decrypt_failed"), ("bindkey", "no_bindkey"),
                         ("cryptography", "no_crypto"), ("MAC address", "no_address"),
                         ("truncated", "truncated"), ("too short", "truncated"),
                         ("unknown object", "unknown_object"), ("unsupported", "unsupported"),
                         ("expected", "truncated"), ("data in the advert", "no_data"),
                         ("format, not", "wrong_format")):
        if needle in message:
            return kind
    return "other"


class BleDriver(StreamingDriver, GattCommands):
    """A BLE sensor: decoded adverts from the shared scanner, or GATT reads/notifications
    (and writes of the characteristics with a `write:` block)."""

    Options = BleOptions

    def __init__(self, options: BleOptions, ctx: DriverContext) -> None:
        super().__init__(options, ctx)
        self.o = options
        self._bindkey = bytes.fromhex(options.bindkey) if options.bindkey else None
        self._queue: asyncio.Queue[tuple[str, AdvertisementData]] = asyncio.Queue(QUEUE_SIZE)
        self._unsubscribe: Callable[[], None] | None = None
        self._resource: tuple[str, str | None] | None = None
        self._slots: ConnectionSlots | None = None
        self._gatt_lock = asyncio.Lock()
        """One GATT connection of this device at a time (a poll cycle or a write)."""
        self._live: Any = None
        """The notify-mode connection while it is up (writes go through it)."""
        self._throttle = Throttle(options.min_interval, options.heartbeat)
        self._address_glob = options.address is not None and any(c in options.address
                                                                  for c in "*?[")
        m = ctx.metrics
        dev = options.name
        self._present = m.gauge("ble_present", "1 while the BLE sensor is heard",
                                ["device"]).labels(device=dev)
        self._rssi = m.gauge("ble_rssi_dbm", "Signal strength of the last advert",
                             ["device"]).labels(device=dev)
        self._last_seen = m.gauge("ble_last_seen_timestamp_seconds",
                                  "Unix time the BLE sensor was last heard",
                                  ["device"]).labels(device=dev)
        self._decode_errors = m.counter("ble_decode_errors", "Adverts that did not decode",
                                        ["device", "reason"])
        self._gatt_errors = m.counter("ble_gatt_errors", "Failed GATT connects or reads",
                                      ["device", "reason"])
        self._dropped = m.counter("ble_adverts_dropped",
                                  "Adverts dropped because the device fell behind",
                                  ["device"]).labels(device=dev)
        self._refused = m.counter("ble_adverts_refused",
                                  "Adverts refused as untrusted (plaintext from a sensor "
                                  "with a bindkey, or an old encrypted one replayed); "
                                  "nothing of them is reported",
                                  ["device", "reason"])
        self._refused_since_log = 0
        # last accepted encryption counter per sender (an address pattern may match several)
        self._counters: dict[str, int] = {}
        self._refused_logged_at: float | None = None
        # a sensor with a bindkey is an encrypted BTHome sensor: no other format is trusted
        self._format: FormatChoice = "bthome" if self._bindkey is not None else options.format
        self._last_error: str | None = None

    # --- life cycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Join the adapter's shared scanner, or its GATT connection limit."""
        o = self.o
        if o.gatt is not None:
            key = ("ble-connections", o.adapter)
            limit = o.gatt.max_connections
            self._slots = await self.ctx.resources.acquire(key, lambda: ConnectionSlots(limit))
            self._resource = key
            if self._slots.limit != limit:
                self.ctx.log.warning("ble max_connections differs between devices on one "
                                     "adapter; the first device's value is used",
                                     used=self._slots.limit)
            return
        key = ("ble-scanner", o.adapter)
        scanner = await self.ctx.resources.acquire(key, self._make_scanner)
        self._resource = key
        if (scanner.mode, scanner.backend) != (o.scan_mode, o.scanner_backend):
            self.ctx.log.warning("ble scan_mode differs between devices on one adapter; "
                                 "the first device's value is used", used=scanner.mode)
        self._unsubscribe = scanner.subscribe(self._on_advert)
        scanner.start()

    def _make_scanner(self) -> SharedScanner:
        o = self.o
        return SharedScanner(o.adapter, self.ctx.metrics, mode=o.scan_mode,
                             watchdog=o.scanner_watchdog, backend=o.scanner_backend)

    async def close(self) -> None:
        """Leave the scanner / connection limit; the last user closes it."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._resource is not None:
            key, self._resource = self._resource, None
            with contextlib.suppress(Exception):
                await self.ctx.resources.release(key)

    async def run(self, emit: Emit) -> None:
        """Report readings until cancelled."""
        if self.o.gatt is None:
            await self._run_adverts(emit)
        elif self.o.gatt.mode == "poll":
            await self._run_gatt_poll(emit)
        else:
            await self._run_gatt_notify(emit)

    # --- adverts ----------------------------------------------------------------------

    def matches(self, address: str, adv: AdvertisementData, name: str | None = None) -> bool:
        """Whether an advert comes from this device (every configured criterion holds)."""
        o = self.o
        if o.address is not None:
            addr = address.upper()
            if addr != o.address and not (self._address_glob
                                          and fnmatch.fnmatchcase(addr, o.address)):
                return False
        if o.local_name is not None:
            advertised = adv.local_name or name
            if advertised is None or not fnmatch.fnmatchcase(advertised, o.local_name):
                return False
        if o.ibeacon is not None:
            found = ibeacon.decode(adv.manufacturer_data.get(APPLE_COMPANY, b""))
            if found is None or found.error:
                return False
            want = o.ibeacon
            if (found.info["uuid"] != want.uuid[:36]
                    or (want.major is not None and found.info["major"] != want.major)
                    or (want.minor is not None and found.info["minor"] != want.minor)):
                return False
        return True

    def _on_advert(self, device: BLEDevice, adv: AdvertisementData) -> None:
        """Scanner callback (synchronous, for every advert nearby): filter and queue."""
        if not self.matches(device.address, adv, device.name):
            return
        if self._queue.full():
            # keep the newest: an old advert is worth less than a fresh one
            self._queue.get_nowait()
            self._dropped.inc()
        self._queue.put_nowait((device.address, adv))

    async def _run_adverts(self, emit: Emit) -> None:
        timeout = self.o.timeout
        loop = asyncio.get_running_loop()
        deadline: float | None = loop.time() + timeout
        present: bool | None = None
        last_packet: int | None = None
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    address, adv = await self._queue.get()
            except TimeoutError:
                if present is not False:
                    self._mark_absent(emit, timeout)
                present, deadline, last_packet = False, None, None
                continue
            decoded = self._decode(address, adv)
            if decoded is not None and decoded.refused:
                # not a sign of life either: an injected advert must not hide a dead sensor
                self._refuse(address, decoded)
                continue
            deadline = loop.time() + timeout
            if present is not True:
                self._throttle.forget()
            readings = self._advert_readings(adv, decoded, present is not True, last_packet)
            if decoded is not None and decoded.packet_id is not None:
                last_packet = decoded.packet_id
            present = True
            if readings:
                emit(readings)

    def _refuse(self, address: str, decoded: Decoded) -> None:
        """Count a refused advert; log it at most every REFUSED_LOG_INTERVAL seconds."""
        reason = decoded.refused or "other"
        self._refused.labels(device=self.o.name, reason=reason).inc()
        self._refused_since_log += 1
        now = time.monotonic()
        if (self._refused_logged_at is None
                or now - self._refused_logged_at >= REFUSED_LOG_INTERVAL):
            self.ctx.log.warning("ble advert refused", reason=reason, address=address,
                                 refused=self._refused_since_log, error=decoded.error)
            self._refused_logged_at = now
            self._refused_since_log = 0

    def _decode(self, address: str, adv: AdvertisementData) -> Decoded | None:
        fmt = self._format
        decoded = decode_advert(adv.service_data, adv.manufacturer_data, address=address,
                                bindkey=self._bindkey, fmt=fmt)
        if decoded is not None and decoded.refused:
            return decoded
        if decoded is not None and self._bindkey is not None:
            counter = decoded.info.get("counter")
            if isinstance(counter, int) and not isinstance(counter, bool):
                last = self._counters.get(address)
                if last is not None and COUNTER_RESTART <= counter < last:
                    return replace(decoded, values=(), refused="replayed", error=(
                        f"encrypted advert refused: its counter {counter} is below the last "
                        f"one accepted ({last}), so it is an old advert replayed"))
                self._counters[address] = counter
        error = decoded.error if decoded is not None else None
        if decoded is None and fmt != "auto":
            error = f"no {fmt} data in the advert"
        if error:
            self._decode_errors.labels(device=self.o.name, reason=_error_kind(error)).inc()
            if error != self._last_error:  # log a problem once, not at the advert rate
                self.ctx.log.warning("ble advert not decoded", error=error, address=address)
        elif self._last_error:
            self.ctx.log.info("ble adverts decode again")
        self._last_error = error
        return decoded

    def _advert_readings(self, adv: AdvertisementData, decoded: Decoded | None,
                         returning: bool, last_packet: int | None) -> list[Reading]:
        o = self.o
        now = time.monotonic()
        ts = self.ctx.clock()
        out: list[Reading] = []
        due = self._throttle.due
        self._present.set(1)
        self._last_seen.set(ts / 1000)
        self._rssi.set(adv.rssi)
        if returning:
            self.ctx.log.info("ble sensor heard", rssi=adv.rssi)
        if due("present", 1, now):
            out.append(Reading(o.name, "present", 1, ts))
        if o.rssi and due("rssi", adv.rssi, now):
            out.append(Reading(o.name, "rssi", adv.rssi, ts, "dBm"))
        if decoded is None:
            return out
        repeat = decoded.packet_id is not None and decoded.packet_id == last_packet
        for v in decoded.values:
            if v.event:
                if not repeat:
                    out.append(Reading(o.name, v.name, v.value, ts, v.unit))
            elif due(v.name, v.value, now):
                out.append(Reading(o.name, v.name, v.value, ts, v.unit))
        return out

    def _mark_absent(self, emit: Emit, timeout: float) -> None:
        self._present.set(0)
        self.ctx.log.warning("ble sensor not heard", silent_for=timeout)
        emit([Reading(self.o.name, "present", 0, self.ctx.clock())])
        self._throttle.forget()

    # --- GATT -------------------------------------------------------------------------

    def _client(self, disconnected: Callable[[Any], None] | None = None) -> Any:
        from bleak import BleakClient  # noqa: PLC0415 - bleak only when BLE is configured

        o = self.o
        assert o.gatt is not None
        assert o.address is not None
        backend = load_class(o.client_backend) if o.client_backend else None
        bluez: dict[str, Any] = {"adapter": o.adapter} if o.adapter else {}
        return BleakClient(o.address, disconnected, timeout=o.gatt.connect_timeout,
                           bluez=bluez, backend=backend)  # type: ignore[arg-type]

    async def _connect(self, disconnected: Callable[[Any], None] | None = None) -> Any:
        """A connected client, after up to `attempts` tries with backoff; else TransientError."""
        o = self.o
        assert o.gatt is not None
        backoff = Backoff(base=CONNECT_BACKOFF_BASE, cap=10.0)
        last = ("error", "")
        for attempt in range(1, o.gatt.attempts + 1):
            client = self._client(disconnected)
            try:
                async with asyncio.timeout(o.gatt.connect_timeout):
                    await client.connect()
                return client
            except Exception as exc:  # noqa: BLE001 - BlueZ fails in many ways; all retried
                last = classify(exc)
                self._gatt_errors.labels(device=o.name, reason=last[0]).inc()
                self.ctx.log.warning("ble connect failed", reason=last[0], error=last[1],
                                     attempt=attempt)
                await self._disconnect(client)
            if attempt < o.gatt.attempts:
                await asyncio.sleep(backoff.next_delay())
        raise TransientError(f"cannot connect to {o.address}: {last[1]}", device=o.name,
                             kind=last[0], address=o.address)

    async def _disconnect(self, client: Any) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(DISCONNECT_TIMEOUT):
                await client.disconnect()

    def _reading(self, spec: GattCharacteristic, data: bytes | None) -> Reading:
        value = decode_value(data, spec) if data is not None else None
        quality: Quality = "good" if value is not None else "bad"
        return Reading(self.o.name, spec.metric, value, self.ctx.clock(), spec.unit, quality)

    async def read_once(self) -> list[Reading]:
        """Connect, read every configured characteristic, disconnect."""
        o = self.o
        assert o.gatt is not None
        assert self._slots is not None
        async with self._gatt_lock, self._slots.semaphore, asyncio.timeout(o.timeout):
            client = await self._connect()
            try:
                out: list[Reading] = []
                for spec in o.gatt.characteristics:
                    if not spec.read:
                        continue
                    try:
                        data = bytes(await client.read_gatt_char(spec.uuid))
                    except Exception as exc:
                        if not client.is_connected:
                            raise
                        reason, msg = classify(exc)
                        self._gatt_errors.labels(device=o.name, reason=reason).inc()
                        self.ctx.log.warning("ble read failed", uuid=spec.uuid, error=msg)
                        data = None
                    out.append(self._reading(spec, data))
                return out
            finally:
                await self._disconnect(client)

    async def _run_gatt_poll(self, emit: Emit) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                readings: Sequence[Reading] = await self.read_once()
            except TimeoutError as exc:
                self._gatt_errors.labels(device=self.o.name, reason="timeout").inc()
                raise TransientError(f"GATT cycle took longer than {self.o.timeout:g}s",
                                     device=self.o.name, kind="timeout") from exc
            emit(readings)
            next_at += self.o.interval
            if next_at < loop.time():  # overran: skip the missed ticks, keep the phase
                next_at = loop.time() + self.o.interval
            await asyncio.sleep(next_at - loop.time())

    async def _run_gatt_notify(self, emit: Emit) -> None:
        o = self.o
        assert o.gatt is not None
        assert self._slots is not None
        lost = asyncio.Event()
        async with self._slots.semaphore:
            client = await self._connect(lambda _c: lost.set())
            try:
                subscribed = [c for c in o.gatt.characteristics if c.read]
                for spec in subscribed:
                    await client.start_notify(spec.uuid, self._notify_handler(spec, emit))
                self.ctx.log.info("ble subscribed", characteristics=len(subscribed))
                self._live = client
                await lost.wait()
            finally:
                self._live = None
                await self._disconnect(client)
        self._gatt_errors.labels(device=o.name, reason="disconnected").inc()
        raise TransientError(f"{o.address} disconnected", device=o.name, kind="disconnected")

    def _notify_handler(self, spec: GattCharacteristic,
                        emit: Emit) -> Callable[[Any, bytearray], None]:
        def handle(_char: Any, data: bytearray) -> None:
            reading = self._reading(spec, bytes(data))
            if self._throttle.due(spec.metric, reading.value, time.monotonic()):
                emit([reading])

        return handle
