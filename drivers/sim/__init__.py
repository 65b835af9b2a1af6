"""`driver: sim`: synthetic readings for demos, tests and benchmarks; writable variables."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import Field, model_validator

from gateway.driver import (
    Commandable,
    DeviceOptions,
    DriverContext,
    PollingDriver,
    StrictModel,
    WriteLimits,
)
from gateway.errors import DeviceRejected, TransientError, VerifyFailed, WriteRefused
from gateway.model import Reading, Value
from gateway.units import Duration


class SimVariable(StrictModel):
    """A point that holds a value: read by every poll, writable only with a `write:` block."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]*$")
    initial: bool | int | float | str = Field(
        default=0, description="Value at start; its type is the type writes must have.")
    unit: str | None = None
    write: WriteLimits | None = Field(default=None, description=(
        "Makes the variable writable, within these limits; without it writes are refused."))
    reject_code: int | None = Field(default=None, ge=1, le=255, description=(
        "The simulated device refuses every write with this code (as a Modbus exception)."))
    drift: bool = Field(default=False, description=(
        "The device keeps something else than was written (a verify failure), for tests."))


class SimOptions(DeviceOptions):
    """Options of `driver: sim`."""

    driver: Literal["sim"] = "sim"
    interval: Duration = Field(default=1.0, ge=0.001, description="Down to 1ms.")
    points: int = Field(default=1, ge=0, le=100_000, description="Readings per poll.")
    pattern: Literal["counter", "sine", "random"] = "counter"
    period: Duration = Field(default=60.0, gt=0, description="Period of the sine pattern.")
    unit: str | None = Field(default=None, description="Unit attached to every reading.")
    fail_every: int = Field(default=0, ge=0,
                            description="Raise on every Nth poll (0: never); for fault tests.")
    variables: tuple[SimVariable, ...] = Field(default=(), description=(
        "Points holding a value, read with every poll after p0..pN; writable with write:."))
    write_delay: Duration = Field(default=0.0, ge=0.0, le=60.0, description=(
        "How long a write or a single read takes on the simulated bus."))

    @model_validator(mode="after")
    def _names(self) -> SimOptions:
        names = [v.name for v in self.variables]
        taken = {f"p{i}" for i in range(self.points)}
        for v in names:
            if v in taken:
                raise ValueError(f"variable name '{v}' is taken (by p0..p{self.points - 1} "
                                 "or another variable)")
            taken.add(v)
        return self


class SimDriver(PollingDriver, Commandable):
    """Produces `points` readings per poll named `p0`..`pN`, then its variables."""

    Options = SimOptions

    def __init__(self, options: SimOptions, ctx: DriverContext) -> None:
        super().__init__(options, ctx)
        self.o = options
        self._n = 0
        self._rng = random.Random(options.name)  # noqa: S311 - repeatable test data
        self._metrics = [f"p{i}" for i in range(options.points)]
        self._vars = {v.name: v for v in options.variables}
        self.values: dict[str, Value] = {v.name: v.initial for v in options.variables}
        self.writes = 0
        """Writes that reached the simulated device (tests count them)."""
        self.clock_synced_at: int | None = None

    async def poll(self) -> Sequence[Reading]:
        """One reading per point, following the configured pattern, then the variables."""
        self._n += 1
        o = self.o
        if o.fail_every and self._n % o.fail_every == 0:
            raise TransientError(f"simulated failure on poll {self._n}", kind="simulated")
        ts = self.ctx.clock()
        dev, unit = o.name, o.unit
        if o.pattern == "counter":
            n = self._n
            out = [Reading(dev, m, n, ts, unit) for m in self._metrics]
        elif o.pattern == "sine":
            phase = 2 * math.pi * (ts / 1000.0) / o.period
            out = [Reading(dev, m, round(math.sin(phase + i), 6), ts, unit)
                   for i, m in enumerate(self._metrics)]
        else:
            rnd = self._rng.random
            out = [Reading(dev, m, round(rnd() * 100, 3), ts, unit) for m in self._metrics]
        if self._vars:
            out += [Reading(dev, name, self.values[name], ts, v.unit)
                    for name, v in self._vars.items()]
        return out

    # -- commands ----------------------------------------------------------------------------
    def writable(self) -> Mapping[str, WriteLimits]:
        """Variables with a `write:` block."""
        return {v.name: v.write for v in self.o.variables if v.write is not None}

    async def write(self, point: str, value: Value) -> Value | None:
        """Store `value` (of the variable's type) after `write_delay`; read back unless
        `verify: false`."""
        var = self._vars.get(point)
        if var is None or var.write is None:
            raise WriteRefused(f"{point}: not a writable point of this device")
        kind = type(var.initial)
        if kind is float and type(value) is int:
            value = float(value)
        if type(value) is not kind and not (kind is int and type(value) is float
                                            and float(value).is_integer()):
            raise WriteRefused(f"{point} holds a {kind.__name__}; cannot write {value!r}")
        if kind is int:
            value = int(value)
        await asyncio.sleep(self.o.write_delay)
        self.writes += 1
        if var.reject_code is not None:
            raise DeviceRejected(f"{point}: the device refused the write "
                                 f"(exception code {var.reject_code})", code=var.reject_code,
                                 device=self.o.name, address=point)
        self.values[point] = (not value if isinstance(value, bool) else
                              value + 1 if isinstance(value, int | float) else
                              value + "?") if var.drift else value
        if var.write.verify is False:
            return None
        back = self.values[point]
        if back != value:
            raise VerifyFailed(f"{point}: wrote {value!r} but the device holds {back!r}",
                               device=self.o.name, address=point)
        return back

    async def read_point(self, point: str) -> Reading:
        """A variable's value, or a fresh pattern value of `pN`."""
        await asyncio.sleep(self.o.write_delay)
        if point in self.values:
            var = self._vars[point]
            return Reading(self.o.name, point, self.values[point], self.ctx.clock(), var.unit)
        if point in self._metrics:
            readings = await self.poll()
            return next(r for r in readings if r.metric == point)
        raise WriteRefused(f"{point}: no such point on device '{self.o.name}'")

    async def sync_time(self) -> None:
        """Remembers when it was asked (the simulated device has a clock to set)."""
        await asyncio.sleep(self.o.write_delay)
        self.clock_synced_at = self.ctx.clock()
