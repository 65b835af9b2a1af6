"""Options of `driver: modbus`: the transport, the unit, and the register map."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from gateway.driver import DeviceOptions, StrictModel
from gateway.units import Duration

from . import profiles
from .registermap import (
    WRITABLE_TABLES,
    Order,
    Point,
    RegisterDefaults,
    RegisterSpec,
    check_unique,
    merge,
    parse_ref,
    resolve,
)

DEFAULT_MAX_GAP = 10
MAX_READ_REGISTERS = 125


class _Link(StrictModel):
    connect_timeout: Duration = Field(default=3.0, gt=0,
                                      description="Longest one connect attempt may take.")
    reconnect_max: Duration = Field(default=30.0, gt=0, description=(
        "Cap of the jittered backoff between connect attempts of a dead link."))


class TcpTransport(_Link):
    """Modbus TCP (MBAP framing) to a meter or a TCP gateway."""

    type: Literal["tcp"]
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    delay: Duration = Field(default=0.0, ge=0, description=(
        "Quiet time between two requests on this connection (some gateways need it)."))


class RtuOverTcpTransport(_Link):
    """RTU frames (with CRC) tunnelled through TCP by a serial device server."""

    type: Literal["rtu-over-tcp"]
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    delay: Duration = Field(default=0.02, ge=0, description=(
        "Quiet time between two requests on the serial bus behind the server."))


class RtuTransport(_Link):
    """Modbus RTU on a serial port (RS-485)."""

    type: Literal["rtu"]
    port: str = Field(min_length=1, description="Serial device, e.g. /dev/ttyUSB0.")
    baudrate: int = Field(default=9600, ge=300, le=4_000_000)
    parity: Literal["N", "E", "O"] = "N"
    bytesize: Literal[7, 8] = 8
    stopbits: Literal[1, 2] = 1
    delay: Duration = Field(default=0.02, ge=0, description=(
        "Quiet time between two requests on the bus (meters need a few ms to turn "
        "their RS-485 driver around)."))


Transport = Annotated[TcpTransport | RtuTransport | RtuOverTcpTransport,
                      Field(discriminator="type")]


class ModbusOptions(DeviceOptions):
    """Options of `driver: modbus`."""

    driver: Literal["modbus"] = "modbus"
    transport: Transport
    unit: int = Field(ge=0, le=255, description="Unit id (slave address), 1..247 on RTU.")
    profile: str | None = Field(default=None, description=(
        "Register map of a known meter (eastron-sdm630, ...) or a path to a profile file."))
    profile_dirs: list[str] = Field(default_factory=list,
                                    description="Extra directories searched for profiles.")
    registers: list[RegisterSpec] = Field(default_factory=list, description=(
        "Registers to read, or to add to / change in the profile."))
    only: list[str] | None = Field(default=None,
                                   description="Read only these registers of the profile.")
    exclude: list[str] = Field(default_factory=list,
                               description="Do not read these registers of the profile.")
    order: Order | None = Field(default=None, description=(
        "Default byte order for registers that do not give one (overrides the profile's)."))
    request_timeout: Duration = Field(default=1.0, gt=0,
                                      description="Longest wait for one answer.")
    retries: int = Field(default=1, ge=0, le=10,
                         description="Extra attempts after a request timed out.")
    max_registers: int | None = Field(default=None, ge=1, le=MAX_READ_REGISTERS, description=(
        "Most registers per read (default: the profile's, else 125)."))
    write_multiple: bool = Field(default=False, description=(
        "Write single registers and coils with FC16/FC15 too, for devices that lack "
        "FC06/FC05 (some PLCs)."))
    max_gap: int | None = Field(default=None, ge=0, le=MAX_READ_REGISTERS - 1, description=(
        "Unused registers one read may bridge to save a request (default: the profile's, "
        "else 10)."))

    _points: tuple[Point, ...] = PrivateAttr(default=())
    _limits: tuple[int, int] = PrivateAttr(default=(MAX_READ_REGISTERS, DEFAULT_MAX_GAP))

    @model_validator(mode="after")
    def _resolve(self) -> ModbusOptions:
        t = self.transport
        if t.type == "rtu" and not 1 <= self.unit <= 247:
            raise ValueError(f"unit {self.unit}: on an RTU bus meters answer on unit ids "
                             "1..247 (0 is broadcast, which nobody answers)")
        if self.profile is None and not self.registers:
            raise ValueError("nothing to read: give `profile:` (e.g. eastron-sdm630) and/or "
                             "`registers:`")
        defaults = RegisterDefaults()
        specs = list(self.registers)
        max_registers, max_gap = MAX_READ_REGISTERS, DEFAULT_MAX_GAP
        if self.profile is not None:
            loaded = profiles.load(self.profile, self.profile_dirs)
            prof = loaded.profile
            defaults = prof.defaults
            max_registers = prof.max_registers or max_registers
            max_gap = prof.max_gap if prof.max_gap is not None else max_gap
            specs = merge(prof.registers, self.registers, only=self.only,
                          exclude=self.exclude, source=f"profile {prof.profile}")
        elif self.only is not None or self.exclude:
            raise ValueError("`only` and `exclude` pick registers of a profile; "
                             "this device has no `profile:`")
        if self.order is not None:
            defaults = defaults.model_copy(update={"order": self.order})
        _check_writes(self.registers, specs, defaults)
        points = resolve(specs, defaults, self.interval)
        if not points:
            raise ValueError("no registers left to read (check `only` and `exclude`)")
        check_unique(points)
        max_registers = self.max_registers or max_registers
        max_gap = self.max_gap if self.max_gap is not None else max_gap
        too_wide = [p.name for p in points if p.table in ("holding", "input")
                    and p.width > max_registers]
        if too_wide:
            raise ValueError(f"{', '.join(too_wide)}: wider than max_registers "
                             f"({max_registers})")
        self._points = points
        self._limits = (max_registers, max_gap)
        # The specs live on in `points()`, resolved and compact; a site with 10,000 inline
        # registers would otherwise keep 10,000 pydantic models (7.5 MB) alive for nothing.
        # Equality (what a reload compares) still sees every register through `_points`.
        self.__dict__["registers"] = []
        return self

    def points(self) -> tuple[Point, ...]:
        """The resolved register map: profile, `only`/`exclude` and `registers` applied."""
        return self._points

    def limits(self) -> tuple[int, int]:
        """(max registers per read, max gap bridged) in effect."""
        return self._limits


def _check_writes(own: list[RegisterSpec], merged: list[RegisterSpec],
                  defaults: RegisterDefaults) -> None:
    """`write:` only where Modbus can write, reported at the `write:` key of the register."""
    by_name = {m.name: m for m in merged}
    errors: list[InitErrorDetails] = []
    for i, spec in enumerate(own):
        m = by_name.get(spec.name)
        if spec.write is None or m is None:
            continue
        table = parse_ref(m.ref)[0] if m.ref is not None else (m.table or defaults.table)
        dtype = m.type or defaults.type
        if table is not None and table not in WRITABLE_TABLES:
            what = "discrete inputs are" if table == "discrete" else "input registers are"
            message = (f"register '{spec.name}': {what} read-only in Modbus; only holding "
                       "registers (or one `bit` of one) and coils take `write:`")
        elif dtype == "string":
            message = (f"register '{spec.name}': strings cannot be written; `write:` is for "
                       "numbers, bits and coils")
        else:
            continue
        errors.append(InitErrorDetails(type=PydanticCustomError("config", message),
                                       loc=("registers", i, "write"), input=None))
    if errors:
        raise ValidationError.from_exception_data("config", errors)
