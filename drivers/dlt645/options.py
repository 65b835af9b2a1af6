"""Config model of `driver: dlt645`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator

from drivers.dlt645.bus import BusSettings, TcpSettings
from drivers.dlt645.frame import normalize_address
from drivers.dlt645.items import DataItem, lookup
from drivers.serial_line.link import PortSettings
from gateway.driver import DeviceOptions, StrictModel
from gateway.units import Duration


class SerialTransportOptions(StrictModel):
    """`type: serial`: the meters' RS-485 bus on a local serial port."""

    type: Literal["serial"]
    port: str = Field(min_length=1, description="Prefer /dev/serial/by-id/...")
    baudrate: int = Field(default=2400, ge=300, le=115200,
                          description="DL/T 645-2007 meters default to 2400 8E1.")
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "E"
    stopbits: Literal[1, 2] = 1
    delay: Duration = Field(default=0.05, ge=0, le=5,
                            description="Bus silence between one reply and the next request.")

    def settings(self) -> BusSettings:
        """What identifies the bus."""
        return PortSettings(self.port, self.baudrate, self.bytesize, self.parity, self.stopbits)


class TcpTransportOptions(StrictModel):
    """`type: tcp`: the bus behind a transparent serial device server."""

    type: Literal["tcp"]
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    delay: Duration = Field(default=0.05, ge=0, le=5,
                            description="Bus silence between one reply and the next request.")

    def settings(self) -> BusSettings:
        """What identifies the bus."""
        return TcpSettings(self.host, self.port)


TransportOptions = Annotated[SerialTransportOptions | TcpTransportOptions,
                             Field(discriminator="type")]


def _di_from_int(value: object) -> object:
    """An unquoted all-decimal DI (02010100) that YAML read as a number, back as 8 digits."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**8:
        return f"{value:08d}"
    return value


class ItemOptions(StrictModel):
    """A data item with its own metric name, unit or scale (e.g. a CT ratio)."""

    item: str = Field(description="Friendly name (voltage_a) or 8-hex-digit DI (02010100).")
    metric: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]*$")
    unit: str | None = None
    scale: float = Field(default=1.0, description="Multiplies the decoded value.")
    decimals: int | None = Field(default=None, ge=0, le=8,
                                 description="Decimals of a DI the table does not know.")
    signed: bool | None = Field(default=None, description="Sign bit, for an unknown DI.")

    @field_validator("item", mode="before")
    @classmethod
    def _unquoted(cls, value: object) -> object:
        return _di_from_int(value)


@dataclass(frozen=True, slots=True)
class Point:
    """A configured data item: what to ask for and how to name and scale the answer."""

    item: DataItem
    metric: str
    unit: str | None
    scale: float = 1.0


class Dlt645Options(DeviceOptions):
    """Options of `driver: dlt645`."""

    driver: Literal["dlt645"] = "dlt645"
    timeout: Duration = Field(default=10.0, gt=0,
                              description="Longest one poll may take, bus waits included.")
    transport: TransportOptions
    address: str = Field(description="Meter address as on the nameplate (up to 12 digits).")
    items: list[str | ItemOptions] = Field(min_length=1, max_length=200)
    response_timeout: Duration = Field(
        default=1.0, gt=0, le=30,
        description="Wait for one reply; a dead meter costs this once per poll.")
    wakeup: bool = Field(default=True, description="Send FE FE FE FE before each request.")
    time_zone: str | None = Field(default=None, description=(
        "IANA zone of the meters' clocks for `sync_time` (e.g. Asia/Shanghai); default: "
        "the gateway's local time."))

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r}: write an IANA name such as "
                                 "Asia/Shanghai") from None
        return value

    @field_validator("address", mode="before")
    @classmethod
    def _address(cls, value: object) -> str:
        # unquoted, YAML 1.2 reads 000012345678 as the number 12345678: the address is
        # always 12 digits, so padding gives it back
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**12:
            value = f"{value:012d}"
        if not isinstance(value, str):
            raise ValueError(
                "the address is up to 12 digits, such as '000012345678'")
        return normalize_address(value)

    @field_validator("items", mode="before")
    @classmethod
    def _unquoted(cls, value: object) -> object:
        return [_di_from_int(v) for v in value] if isinstance(value, list) else value

    @field_validator("items")
    @classmethod
    def _known(cls, value: list[str | ItemOptions]) -> list[str | ItemOptions]:
        for i, entry in enumerate(value):
            try:
                lookup(entry if isinstance(entry, str) else entry.item)
            except ValueError as exc:
                raise ValueError(f"item {i + 1}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _resolve(self) -> Dlt645Options:
        points = self.points()
        names = [p.metric for p in points]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"metric names used twice: {', '.join(dupes)}")
        return self

    def points(self) -> list[Point]:
        """The configured items, resolved against the DI table (ValueError if unknown)."""
        out: list[Point] = []
        for entry in self.items:
            if isinstance(entry, str):
                item = lookup(entry)
                out.append(Point(item, item.name, item.unit))
                continue
            item = lookup(entry.item)
            if entry.decimals is not None or entry.signed is not None:
                item = replace(item, decimals=item.decimals if entry.decimals is None
                               else entry.decimals,
                               signed=item.signed if entry.signed is None else entry.signed)
            out.append(Point(item, entry.metric or item.name,
                             entry.unit if entry.unit is not None else item.unit, entry.scale))
        return out
