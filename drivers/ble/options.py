"""Config of `driver: ble`: one configured device is one BLE sensor."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from drivers.ble.advert import FormatChoice, normalize_mac, normalize_uuid
from gateway.driver import DeviceOptions, StrictModel, WriteLimits
from gateway.units import Duration

GattType = Literal["uint8", "int8", "uint16", "int16", "uint24", "int24", "uint32", "int32",
                   "uint64", "int64", "float32", "float64", "bool", "utf8", "hex"]
_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")
_GLOB_MAC = re.compile(r"^[0-9A-Fa-f:*?\[\]-]+$")


class IBeaconMatch(StrictModel):
    """Which iBeacon this device is; iBeacons are known by UUID/major/minor, not address."""

    uuid: str = Field(description="Proximity UUID, e.g. e2c56db5-dffb-48d2-b060-d0f5a71096e0.")
    major: int | None = Field(default=None, ge=0, le=65535)
    minor: int | None = Field(default=None, ge=0, le=65535)

    @field_validator("uuid")
    @classmethod
    def _uuid(cls, v: str) -> str:
        return normalize_uuid(v)


class GattCharacteristic(StrictModel):
    """One characteristic read (or subscribed to) and turned into one reading."""

    uuid: str = Field(description="Characteristic UUID: 2a6e or the full 128-bit form.")
    metric: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    type: GattType = "uint16"
    byte_order: Literal["little", "big"] = Field(default="little",
                                                 description="GATT values are little endian.")
    byte_offset: int = Field(default=0, ge=0, le=511,
                             description="Where the value starts inside the characteristic.")
    scale: float = Field(default=1.0, description="value = raw * scale + add")
    add: float = 0.0
    unit: str | None = None
    read: bool = Field(default=True, description=(
        "Read (or subscribe to) it every cycle; false for a characteristic only written."))
    write: WriteLimits | None = Field(default=None, description=(
        "Makes it writable by commands, encoded with `type`, `byte_order`, `scale` and "
        "`add`; without it nothing is ever written."))
    response: bool = Field(default=True, description=(
        "Write with response (the device acknowledges) rather than write-without-response."))

    @field_validator("uuid")
    @classmethod
    def _uuid(cls, v: str) -> str:
        return normalize_uuid(v)

    @model_validator(mode="after")
    def _writable(self) -> GattCharacteristic:
        if self.write is not None:
            if self.byte_offset:
                raise ValueError(f"{self.metric}: a writable characteristic is written whole: "
                                 "byte_offset must be 0")
            if self.scale == 0:
                raise ValueError(f"{self.metric}: scale 0 cannot be written")
        elif not self.read:
            raise ValueError(f"{self.metric}: read: false needs a `write:` block (a "
                             "characteristic neither read nor written is not needed)")
        return self


class GattOptions(StrictModel):
    """Connect to the device and read characteristics instead of listening to adverts."""

    mode: Literal["poll", "notify"] = Field(
        default="poll", description="poll: connect, read, disconnect every `interval`; "
                                    "notify: stay connected and report every notification.")
    characteristics: list[GattCharacteristic] = Field(min_length=1)
    connect_timeout: Duration = Field(default=20.0, gt=0,
                                      description="Longest one connect may take.")
    attempts: int = Field(default=3, ge=1, le=10,
                          description="Connect attempts per cycle, with backoff between.")
    max_connections: int = Field(default=2, ge=1, le=10,
                                 description="Concurrent connections on this adapter "
                                             "(shared by every GATT device on it).")


class BleOptions(DeviceOptions):
    """Options of `driver: ble`."""

    driver: Literal["ble"] = "ble"
    adapter: str | None = Field(default=None, pattern=r"^hci\d+$",
                                description="hci0, hci1 ...; default: BlueZ's default adapter.")
    address: str | None = Field(default=None, description=(
        "The sensor's MAC address, or a pattern such as A4:C1:38:*."))
    local_name: str | None = Field(default=None, description=(
        "Match the advertised name instead (a pattern such as ATC_*)."))
    ibeacon: IBeaconMatch | None = None
    format: FormatChoice = Field(default="auto", description=(
        "auto | bthome | ruuvi | atc | pvvx | ibeacon"))
    bindkey: str | None = Field(default=None, description=(
        "32 hex digits: the key of an encrypted BTHome sensor. With a bindkey only its "
        "encrypted BTHome adverts are trusted: plaintext ones are refused and counted."))
    timeout: Duration = Field(default=60.0, gt=0, description=(
        "Adverts: report the sensor absent (present=0) after this long unheard. "
        "GATT: longest one read cycle may take."))
    min_interval: Duration = Field(default=10.0, ge=0, description=(
        "A changing value is reported at most this often (0: every change)."))
    heartbeat: Duration = Field(default=300.0, gt=0, description=(
        "An unchanged value is reported again this often."))
    rssi: bool = Field(default=True, description="Report the signal strength (rssi, dBm).")
    scan_mode: Literal["auto", "passive", "active"] = Field(default="auto", description=(
        "auto: passive where BlueZ supports it, else active. Shared by the adapter."))
    scanner_watchdog: Duration = Field(default=300.0, gt=0, description=(
        "Restart the adapter's scan when nothing at all was heard for this long."))
    gatt: GattOptions | None = None
    scanner_backend: str | None = Field(default=None, pattern=r"^[\w.]+:\w+$", description=(
        "For tests only: a bleak BaseBleakScanner subclass as module:Class."))
    client_backend: str | None = Field(default=None, pattern=r"^[\w.]+:\w+$", description=(
        "For tests only: a bleak BaseBleakClient subclass as module:Class."))

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is None or any(c in v for c in "*?["):
            if v is not None and not _GLOB_MAC.match(v):
                raise ValueError(f"{v!r} is not an address pattern such as A4:C1:38:*")
            return v.upper() if v else v
        return normalize_mac(v)

    @field_validator("bindkey")
    @classmethod
    def _bindkey(cls, v: str | None) -> str | None:
        if v is not None and not _HEX32.match(v.strip()):
            raise ValueError("a bindkey is 32 hex digits (16 bytes)")
        return v.strip().lower() if v else v

    @model_validator(mode="after")
    def _target(self) -> BleOptions:
        if self.gatt is not None:
            if self.address is None or any(c in self.address for c in "*?["):
                raise ValueError("gatt needs the exact `address` of the device to connect to")
        elif self.address is None and self.local_name is None and self.ibeacon is None:
            raise ValueError("say which sensor this is: `address`, `local_name` or `ibeacon`")
        if self.ibeacon is not None and self.format not in ("auto", "ibeacon"):
            raise ValueError("`ibeacon` matching needs format auto or ibeacon")
        if self.bindkey is not None and self.format not in ("auto", "bthome"):
            raise ValueError("a bindkey is only used by the bthome format")
        return self
