"""Runs every device in its own named task; one bad device never stalls the others."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from structlog.typing import FilteringBoundLogger

from gateway.backoff import Backoff
from gateway.driver import (
    DeviceOptions,
    Driver,
    DriverContext,
    DriverInfo,
    PollingDriver,
    ResourcePool,
    StreamingDriver,
)
from gateway.errors import DeviceConfigError, DeviceError
from gateway.metrics import Metrics
from gateway.model import Reading
from gateway.tasks import cancel_and_wait, honour_cancellation

Sink = Callable[[Sequence[Reading]], None]
Room = Callable[[], Awaitable[None]]
CLOSE_TIMEOUT = 5.0


@dataclass(slots=True)
class _Running:
    options: DeviceOptions
    task: asyncio.Task[None]


def error_kind(exc: BaseException) -> str:
    """The `kind` label for `parkgate_poll_errors_total`."""
    if isinstance(exc, DeviceError):
        return exc.kind
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionError):
        return "disconnected"
    if isinstance(exc, OSError):
        return "io"
    return "internal"


class Supervisor:
    """Owns the device tasks; `apply()` starts, stops and restarts them to match a config."""

    def __init__(self, drivers: Mapping[str, DriverInfo], sink: Sink, metrics: Metrics,
                 log: FilteringBoundLogger, *, resources: ResourcePool | None = None,
                 room: Room | None = None) -> None:
        self.drivers = drivers
        self.sink = sink
        self.room = room
        self.metrics = metrics
        self.log = log
        self.resources = resources or ResourcePool()
        self._running: dict[str, _Running] = {}
        self._group: asyncio.TaskGroup | None = None

    def bind(self, group: asyncio.TaskGroup) -> None:
        """Device tasks are created in the agent's TaskGroup."""
        self._group = group

    @property
    def devices(self) -> dict[str, DeviceOptions]:
        """Options of the running devices by name."""
        return {name: r.options for name, r in self._running.items()}

    async def apply(self, devices: Sequence[DeviceOptions]) -> dict[str, list[str]]:
        """Make the running devices match `devices`: only changed ones restart."""
        wanted = {d.name: d for d in devices if d.enabled}
        changes: dict[str, list[str]] = {"started": [], "stopped": [], "restarted": []}
        for name in list(self._running):
            if name not in wanted:
                await self._stop(name)
                changes["stopped"].append(name)
            elif wanted[name] != self._running[name].options:
                await self._stop(name)
                changes["restarted"].append(name)
        for name, opts in wanted.items():
            if name not in self._running:
                self._start(opts)
                if name not in changes["restarted"]:
                    changes["started"].append(name)
        return changes

    def _start(self, opts: DeviceOptions) -> None:
        assert self._group is not None, "bind() the supervisor to a TaskGroup first"
        task = self._group.create_task(self._device(opts), name=f"device[{opts.name}]")
        self._running[opts.name] = _Running(opts, task)

    async def _stop(self, name: str) -> None:
        running = self._running.pop(name)
        await cancel_and_wait(running.task, self.log)
        self.metrics.forget_device(name)

    async def stop_all(self) -> None:
        """Stop every device (drivers closed), the first step of shutdown."""
        names = list(self._running)
        await asyncio.gather(*(self._stop(n) for n in names))

    # -- one device ----------------------------------------------------------------------------
    def _emit(self, name: str, on_success: Callable[[], None] | None = None
              ) -> Callable[[Sequence[Reading]], None]:
        counter = self.metrics.readings.labels(device=name)
        up = self.metrics.device_up.labels(device=name)
        last = self.metrics.device_last_success.labels(device=name)
        sink = self.sink

        def emit(readings: Sequence[Reading]) -> None:
            if readings:
                sink(readings)
                counter.inc(len(readings))
            up.set(1)
            last.set(time.time())
            if on_success is not None:
                on_success()
            honour_cancellation()  # after every poll and batch (its readings kept)

        return emit

    async def _device(self, opts: DeviceOptions) -> None:
        info = self.drivers[opts.driver]
        assert info.cls is not None  # config validation refused unloadable drivers
        log = self.log.bind(device=opts.name, driver=opts.driver)
        ctx = DriverContext(device=opts.name, log=log, resources=self.resources,
                            metrics=self.metrics)
        backoff = Backoff(base=min(1.0, max(0.05, opts.interval)), cap=max(60.0, opts.interval))
        # a streaming device that delivers again has recovered: next failure starts small
        emit = self._emit(opts.name, backoff.reset)
        up = self.metrics.device_up.labels(device=opts.name)
        up.set(0)
        errors = self.metrics.poll_errors
        while True:
            driver: Driver | None = None
            failed: BaseException | None = None
            try:
                driver = info.cls(opts, ctx)
                async with asyncio.timeout(opts.timeout):
                    await driver.open()
                if isinstance(driver, StreamingDriver):
                    await driver.run(emit)
                    log.warning("driver stream ended; restarting")
                elif isinstance(driver, PollingDriver):
                    await self._poll_loop(driver, opts, emit, backoff)
                else:
                    raise TypeError(f"{type(driver).__name__} is neither a polling nor a "
                                    "streaming driver")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the supervisor boundary: log, count, retry
                failed = exc
            finally:
                if driver is not None:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(CLOSE_TIMEOUT):
                            await driver.close()
            up.set(0)
            kind = error_kind(failed) if failed else "ended"
            errors.labels(device=opts.name, kind=kind).inc()
            if isinstance(failed, DeviceConfigError):
                delay = backoff.max_out()
            else:
                delay = backoff.next_delay()
            if failed is None or isinstance(failed, DeviceError | TimeoutError | OSError):
                log.warning("device failed; retrying", kind=kind,
                            error=str(failed) or type(failed).__name__,
                            retry_in=round(delay, 2), attempt=backoff.attempts)
            else:
                log.error("driver raised an unexpected error; retrying", kind=kind,
                          error=repr(failed), retry_in=round(delay, 2), exc_info=failed)
            honour_cancellation()  # a swallowed stop may end in an error, too
            await asyncio.sleep(delay)

    async def _poll_loop(self, driver: PollingDriver, opts: DeviceOptions,
                         emit: Callable[[Sequence[Reading]], None], backoff: Backoff) -> None:
        """Poll on the monotonic clock without drift; overruns skip ticks and are counted."""
        loop = asyncio.get_running_loop()
        interval = opts.interval
        duration = self.metrics.poll_duration.labels(device=opts.name)
        overruns = self.metrics.poll_overruns.labels(device=opts.name)
        deadline = loop.time()
        room = self.room
        while True:
            if room is not None:
                await room()  # the buffer is behind: this poll waits (and may overrun)
            started = loop.time()
            async with asyncio.timeout(opts.timeout):
                readings = await driver.poll()
            duration.observe(loop.time() - started)
            emit(readings)
            backoff.reset()
            deadline += interval
            now = loop.time()
            if now > deadline:
                missed = int((now - deadline) // interval) + 1
                overruns.inc(missed)
                deadline += missed * interval
            await asyncio.sleep(deadline - now)
