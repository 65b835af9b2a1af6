"""One passive scanner per adapter, shared by every BLE device configured on it.

The scanner runs in its own task: it starts bleak's scanner, restarts it with backoff when
BlueZ fails (no adapter, bluetoothd down, adapter reset, permission denied) and when the
adapter has gone silent for `watchdog` seconds, which is how a reset adapter that bleak did
not notice shows itself. Subscribers get every advert synchronously in the callback and do
their own cheap filtering, so one scanner serves any number of sensors.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import structlog

from gateway.backoff import Backoff

if TYPE_CHECKING:
    from bleak.backends.device import BLEDevice
    from bleak.backends.scanner import AdvertisementData

    from gateway.metrics import Metrics

Listener = Callable[["BLEDevice", "AdvertisementData"], None]
ScanMode = Literal["auto", "passive", "active"]

START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0

# Passive scanning needs BlueZ advertisement-monitor patterns; these let through the
# formats we decode: BTHome and 0x181A service data, Ruuvi and iBeacon manufacturer data.
PASSIVE_PATTERNS: tuple[tuple[int, int, bytes], ...] = (
    (0, 0x16, b"\xd2\xfc"),
    (0, 0x16, b"\x1a\x18"),
    (0, 0xFF, b"\x99\x04"),
    (0, 0xFF, b"\x4c\x00\x02\x15"),
)

_DBUS_REASONS = {
    "org.freedesktop.DBus.Error.ServiceUnknown": "bluez_not_running",
    "org.freedesktop.DBus.Error.NameHasNoOwner": "bluez_not_running",
    "org.freedesktop.DBus.Error.AccessDenied": "permission_denied",
    "org.freedesktop.DBus.Error.AuthFailed": "permission_denied",
    "org.bluez.Error.NotPermitted": "permission_denied",
    "org.bluez.Error.NotAuthorized": "permission_denied",
    "org.bluez.Error.NotReady": "adapter_not_ready",
    "org.bluez.Error.InProgress": "busy",
    "org.freedesktop.DBus.Error.UnknownObject": "no_adapter",
    "org.freedesktop.DBus.Error.UnknownMethod": "passive_unsupported",
    "org.freedesktop.DBus.Error.UnknownInterface": "passive_unsupported",
    "org.bluez.Error.NotSupported": "passive_unsupported",
}
_HINTS = {
    "no_dbus": "cannot reach the D-Bus system bus (is dbus running, is "
               "/run/dbus/system_bus_socket mounted into the container?)",
    "bluez_not_running": "BlueZ (bluetoothd) is not running: systemctl start bluetooth",
    "no_adapter": "no Bluetooth adapter found (check `bluetoothctl list`, rfkill, the "
                  "adapter name)",
    "powered_off": "the Bluetooth adapter is powered off: bluetoothctl power on",
    "permission_denied": "permission denied by D-Bus/BlueZ: run as a user allowed to use "
                         "org.bluez (e.g. in the bluetooth group)",
    "adapter_not_ready": "the Bluetooth adapter is not ready (resetting?)",
    "busy": "the adapter is busy with another scan",
    "passive_unsupported": "BlueZ does not support passive scanning here (needs BlueZ >= 5.56 "
                           "with --experimental); use scan_mode: active",
    "timeout": "BlueZ did not answer in time",
}


def classify(exc: BaseException) -> tuple[str, str]:
    """A short metric label and a one-line explanation of a scanner/connection failure."""
    reason = "error"
    dbus_name = getattr(exc, "dbus_error", None) or getattr(exc, "type", None)
    if isinstance(dbus_name, str) and dbus_name in _DBUS_REASONS:
        reason = _DBUS_REASONS[dbus_name]
    elif isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
        reason = "no_dbus"
    elif isinstance(exc, PermissionError):
        reason = "permission_denied"
    elif isinstance(exc, TimeoutError):
        reason = "timeout"
    else:
        why = getattr(exc, "reason", None)
        name = getattr(why, "name", "")
        if name in {"NO_BLUETOOTH", "NO_BLE_CENTRAL_ROLE"}:
            reason = "no_adapter"
        elif name == "POWERED_OFF":
            reason = "powered_off"
        elif name.startswith("DENIED") or type(exc).__name__ == "AuthError":
            reason = "permission_denied"
        elif "not found" in str(exc) and "adapter" in str(exc):
            reason = "no_adapter"
        elif "or_patterns" in str(exc) or "AdvertisementMonitor" in str(exc):
            reason = "passive_unsupported"
    detail = str(exc).strip() or type(exc).__name__
    hint = _HINTS.get(reason)
    return reason, f"{hint} ({detail})" if hint else detail


def load_class(spec: str) -> type[Any]:
    """`module:Class` -> the class (the hidden test hook for bleak backends)."""
    module, _, name = spec.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not isinstance(cls, type):
        raise TypeError(f"{spec} is not a class")
    return cls


class SharedScanner:
    """A bleak scanner on one adapter, restarted with backoff, fanned out to listeners."""

    def __init__(self, adapter: str | None, metrics: Metrics, *, mode: ScanMode = "auto",
                 watchdog: float = 300.0, backend: str | None = None,
                 backoff: Backoff | None = None) -> None:
        self.adapter = adapter
        self.mode: ScanMode = mode
        self.watchdog = watchdog
        self.backend = backend
        self.log = structlog.get_logger("parkgate.ble").bind(adapter=adapter or "default")
        label = adapter or "default"
        self._errors = metrics.counter("ble_scanner_errors", "BLE scanner failures by reason",
                                       ["adapter", "reason"])
        self._up = metrics.gauge("ble_scanner_up", "1 while the adapter is scanning",
                                 ["adapter"]).labels(adapter=label)
        self._adverts = metrics.counter("ble_adverts", "Advertisements received",
                                        ["adapter"]).labels(adapter=label)
        self._listeners: dict[int, Listener] = {}
        self._next_id = 0
        self._backoff = backoff or Backoff(base=1.0, cap=60.0)
        self._last_advert = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self.running = asyncio.Event()
        self.last_error: tuple[str, str] | None = None

    def _errors_for(self, reason: str) -> Any:
        return self._errors.labels(adapter=self.adapter or "default", reason=reason)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(device, advert)` for every advert; returns the unsubscribe."""
        key = self._next_id
        self._next_id += 1
        self._listeners[key] = listener

        def unsubscribe() -> None:
            self._listeners.pop(key, None)

        return unsubscribe

    def start(self) -> None:
        """Start the scanning task (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(),
                                             name=f"ble-scanner[{self.adapter or 'default'}]")

    async def aclose(self) -> None:
        """Stop scanning; called by the resource pool when the last device lets go."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._up.set(0)

    def _on_advert(self, device: BLEDevice, adv: AdvertisementData) -> None:
        self._last_advert = time.monotonic()
        self._adverts.inc()
        for listener in list(self._listeners.values()):
            try:
                listener(device, adv)
            except Exception:  # one broken listener must not starve the rest
                self.log.exception("ble listener failed", address=device.address)

    def _make(self, mode: Literal["passive", "active"]) -> Any:
        from bleak import BleakScanner  # noqa: PLC0415 - bleak only when BLE is configured

        bluez: dict[str, Any] = {}
        if self.adapter:
            bluez["adapter"] = self.adapter
        if mode == "passive":
            from bleak.args.bluez import OrPattern  # noqa: PLC0415
            from bleak.assigned_numbers import AdvertisementDataType  # noqa: PLC0415

            bluez["or_patterns"] = [OrPattern(pos, AdvertisementDataType(kind), content)
                                    for pos, kind, content in PASSIVE_PATTERNS]
        backend = load_class(self.backend) if self.backend else None
        return BleakScanner(self._on_advert, scanning_mode=mode, bluez=bluez,  # type: ignore[arg-type]
                            backend=backend)

    async def _supervise(self) -> None:
        mode: Literal["passive", "active"] = "active" if self.mode == "active" else "passive"
        while True:
            scanner: Any = None
            try:
                scanner = self._make(mode)
                async with asyncio.timeout(START_TIMEOUT):
                    await scanner.start()
            except Exception as exc:  # noqa: BLE001 - every BlueZ failure is retried
                reason, msg = classify(exc)
                self.last_error = (reason, msg)
                self._errors_for(reason).inc()
                self._up.set(0)
                if reason == "passive_unsupported" and self.mode == "auto" and mode == "passive":
                    self.log.warning("ble passive scanning unavailable, using active scanning",
                                     reason=reason, error=msg)
                    mode = "active"
                    continue
                delay = self._backoff.next_delay()
                # a known failure: one clear line, no traceback
                self.log.error("ble scanner failed to start",
                               reason=reason, error=msg, retry_in=round(delay, 1), mode=mode)
                await asyncio.sleep(delay)
                continue
            self._up.set(1)
            self.last_error = None
            self.running.set()
            self.log.info("ble scanning", mode=mode, backend=self.backend or "bluez")
            self._last_advert = time.monotonic()
            try:
                await self._watch()
                self._errors_for("watchdog").inc()
                self.log.warning("ble adapter silent, restarting the scan",
                                 silent_for=self.watchdog)
            finally:
                self.running.clear()
                self._up.set(0)
                try:
                    async with asyncio.timeout(STOP_TIMEOUT):
                        await scanner.stop()
                except Exception as exc:  # noqa: BLE001 - a reset adapter may refuse to stop
                    self.log.warning("ble scanner stop failed", error=classify(exc)[1])

    async def _watch(self) -> None:
        """Return when no advert at all arrived for `watchdog` seconds."""
        while True:
            left = self._last_advert + self.watchdog - time.monotonic()
            if left <= 0:
                self._backoff.reset()
                return
            await asyncio.sleep(left)
            if time.monotonic() - self._last_advert < self.watchdog:
                self._backoff.reset()
