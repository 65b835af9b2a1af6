"""Carries out authenticated, fresh, first-seen requests on devices, within their limits.

One command at a time per device (a lock per device; other devices are never held up),
each under a timeout. Staleness is checked again once the device's lock is held: a
request that waited behind a slow one may have expired meanwhile.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Protocol

from structlog.typing import FilteringBoundLogger

from gateway.commands.request import Outcome, Request
from gateway.driver import Commandable, DeviceOptions, Driver, WriteLimits
from gateway.errors import DeviceError, DeviceRejected, VerifyFailed, WriteRefused
from gateway.model import Value
from gateway.supervisor import DeviceState


class Devices(Protocol):
    """What the executor needs of the supervisor."""

    @property
    def devices(self) -> dict[str, DeviceOptions]: ...

    def driver(self, name: str) -> Driver | None: ...

    async def poll_now(self, name: str) -> int: ...

    async def wait_open(self, name: str) -> Driver: ...

    def state(self, name: str) -> DeviceState | None: ...


def _number(value: Value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(a: Value, b: Value) -> bool:
    """Equal and of the same kind: true is not 1, 1 is 1.0."""
    if _number(a) and _number(b):
        return a == b
    return type(a) is type(b) and a == b


def limit_problem(point: str, limits: WriteLimits, value: Value) -> str | None:
    """Why `value` may not be written to `point` under its `write:` block, or None."""
    if limits.values is not None:
        if not any(_same(value, allowed) for allowed in limits.values):
            shown = ", ".join(repr(v) for v in limits.values)
            return f"{point}: {value!r} is not one of the values allowed ({shown})"
        return None
    if limits.min is None and limits.max is None:
        return None
    if not _number(value) or not math.isfinite(float(value)):  # type: ignore[arg-type]
        return f"{point} takes a number; {value!r} is not one"
    number = float(value)  # type: ignore[arg-type]
    if limits.min is not None and number < limits.min:
        return f"{point}: {value!r} is below the minimum {limits.min:g}"
    if limits.max is not None and number > limits.max:
        return f"{point}: {value!r} is above the maximum {limits.max:g}"
    return None


def outcome_of(exc: BaseException, timeout: float) -> Outcome:
    """The reply for a command that raised `exc` (a table-tested pure function)."""
    if isinstance(exc, WriteRefused):
        return Outcome("refused", str(exc))
    if isinstance(exc, DeviceRejected):
        code = f" (code {exc.code})" if exc.code is not None and f"{exc.code}" not in str(exc) \
            else ""
        return Outcome("failed", f"the device refused: {exc}{code}", code=exc.code)
    if isinstance(exc, VerifyFailed):
        return Outcome("failed", f"the value read back differs: {exc}")
    if isinstance(exc, TimeoutError):
        return Outcome("failed", f"no answer from the device within {timeout:g} s")
    if isinstance(exc, DeviceError):
        return Outcome("failed", f"the device did not answer ({exc.kind}): {exc}")
    if isinstance(exc, ConnectionError | OSError):
        return Outcome("failed", f"the device link failed: {exc}")
    return Outcome("failed", f"internal error ({type(exc).__name__}: {exc}); see the log")


class Executor:
    """Runs requests on devices: one lock per device, limits, min_interval, timeout."""

    def __init__(self, devices: Devices, log: FilteringBoundLogger, *,
                 timeout: float | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.devices = devices
        self.log = log
        self.timeout = timeout
        self.monotonic = monotonic
        self._locks: dict[str, asyncio.Lock] = {}
        self._last_write: dict[tuple[str, str], float] = {}
        """When each point was last written (monotonic); in memory only, see README."""

    def timeout_for(self, options: DeviceOptions) -> float:
        """`commands.timeout`, or twice the device's (a write and its read-back)."""
        return self.timeout if self.timeout is not None else 2 * options.timeout

    async def run(self, req: Request, stale: Callable[[], str | None]) -> Outcome:
        """Carry out `req`; `stale()` says why it may no longer run (checked under the lock)."""
        options = self.devices.devices.get(req.device)
        if options is None:
            return Outcome("refused", f"unknown device '{req.device}'")
        lock = self._locks.setdefault(req.device, asyncio.Lock())
        async with lock:
            problem = stale()
            if problem is not None:
                return Outcome("expired", problem)
            timeout = self.timeout_for(options)
            try:
                async with asyncio.timeout(timeout):
                    return await self._run(req, options)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                outcome = outcome_of(exc, timeout)
                if outcome.error and outcome.error.startswith("internal error"):
                    self.log.error("command raised an unexpected error", id=req.id,
                                   device=req.device, action=req.action, exc_info=exc)
                return outcome

    async def _run(self, req: Request, options: DeviceOptions) -> Outcome:
        name = req.device
        driver = self.devices.driver(name)
        if driver is None:
            # connecting (just after a start or a reload) or down: wait as long as a
            # connect may take, then say so
            try:
                async with asyncio.timeout(options.timeout):
                    driver = await self.devices.wait_open(name)
            except TimeoutError:
                state = self.devices.state(name)
                why = f" ({state.kind}: {state.error})" if state and state.kind else ""
                return Outcome("failed", f"device '{name}' is not connected{why}; it is "
                                         "being retried")
        if req.action == "poll":
            await self.devices.poll_now(name)
            return Outcome("ok")
        if not isinstance(driver, Commandable):
            return Outcome("refused", f"device '{name}' (driver {options.driver}) takes no "
                                      "commands")
        if req.action == "read":
            assert req.point is not None
            reading = await driver.read_point(req.point)
            if reading.quality == "bad":
                return Outcome("failed", f"{req.point}: the device gave no good value",
                               value=reading.value, has_value=True)
            return Outcome("ok", value=reading.value, has_value=True)
        if req.action == "sync_time":
            await driver.sync_time()
            return Outcome("ok")
        assert req.action == "write"
        assert req.point is not None
        return await self._write(driver, name, req.point, req.value)

    async def _write(self, driver: Commandable, device: str, point: str,
                     value: Value) -> Outcome:
        limits = driver.writable().get(point)
        if limits is None:
            return Outcome("refused", f"'{point}' is not a writable point of device "
                                      f"'{device}' (no such point, or no write: block)")
        problem = limit_problem(point, limits, value)
        if problem is not None:
            return Outcome("refused", problem)
        key = (device, point)
        now = self.monotonic()
        last = self._last_write.get(key)
        if limits.min_interval is not None and last is not None \
                and now - last < limits.min_interval:
            return Outcome("refused", f"{point} was written {now - last:.1f} s ago; its "
                                      f"min_interval is {limits.min_interval:g} s")
        old = await self._old_value(driver, point)
        # counted from the attempt: a write the device refused may still have moved something
        self._last_write[key] = now
        back = await driver.write(point, value)
        return Outcome("ok", value=back, has_value=back is not None, old=old)

    async def _old_value(self, driver: Commandable, point: str) -> Value:
        """The value before the write, for the audit; None where it cannot be read."""
        try:
            reading = await driver.read_point(point)
        except (WriteRefused, DeviceError, OSError):
            return None  # write-only point, or the device is struggling: the write decides
        return reading.value if reading.quality != "bad" else None
