"""`driver: sim`: synthetic readings for demos, tests and benchmarks."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from gateway.driver import DeviceOptions, DriverContext, PollingDriver
from gateway.model import Reading
from gateway.units import Duration


class SimOptions(DeviceOptions):
    """Options of `driver: sim`."""

    driver: Literal["sim"] = "sim"
    interval: Duration = Field(default=1.0, ge=0.001, description="Down to 1ms.")
    points: int = Field(default=1, ge=1, le=100_000, description="Readings per poll.")
    pattern: Literal["counter", "sine", "random"] = "counter"
    period: Duration = Field(default=60.0, gt=0, description="Period of the sine pattern.")
    unit: str | None = Field(default=None, description="Unit attached to every reading.")
    fail_every: int = Field(default=0, ge=0,
                            description="Raise on every Nth poll (0: never); for fault tests.")


class SimDriver(PollingDriver):
    """Produces `points` readings per poll named `p0`..`pN`."""

    Options = SimOptions

    def __init__(self, options: SimOptions, ctx: DriverContext) -> None:
        super().__init__(options, ctx)
        self.o = options
        self._n = 0
        self._rng = random.Random(options.name)  # noqa: S311 - repeatable test data
        self._metrics = [f"p{i}" for i in range(options.points)]

    async def poll(self) -> Sequence[Reading]:
        """One reading per point, following the configured pattern."""
        self._n += 1
        o = self.o
        if o.fail_every and self._n % o.fail_every == 0:
            from gateway.errors import TransientError  # noqa: PLC0415 - rare path

            raise TransientError(f"simulated failure on poll {self._n}", kind="simulated")
        ts = self.ctx.clock()
        dev, unit = o.name, o.unit
        if o.pattern == "counter":
            n = self._n
            return [Reading(dev, m, n, ts, unit) for m in self._metrics]
        if o.pattern == "sine":
            phase = 2 * math.pi * (ts / 1000.0) / o.period
            return [Reading(dev, m, round(math.sin(phase + i), 6), ts, unit)
                    for i, m in enumerate(self._metrics)]
        rnd = self._rng.random
        return [Reading(dev, m, round(rnd() * 100, 3), ts, unit) for m in self._metrics]
