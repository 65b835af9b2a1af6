"""Runs every device in its own named task; one bad device never stalls the others."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

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
from gateway.errors import DeviceConfigError, DeviceError, TransientError, WriteRefused
from gateway.metrics import Metrics
from gateway.model import Reading, now_ms
from gateway.tasks import cancel_and_wait, honour_cancellation

Sink = Callable[[Sequence[Reading]], None]
Room = Callable[[], Awaitable[None]]
CLOSE_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class DeviceState:
    """Whether a device answers: `up`, or down with the kind of its last error, since when."""

    up: bool
    since: int
    """Epoch ms of the change."""
    kind: str | None = None
    error: str | None = None


StateListener = Callable[[str, DeviceState], None]


def state_document(state: DeviceState) -> dict[str, object]:
    """A device state as published upstream: `state` up/down, `since` (epoch ms), and for
    down the `kind` of the last error and its text."""
    doc: dict[str, object] = {"state": "up" if state.up else "down", "since": state.since}
    if not state.up:
        doc["kind"] = state.kind
        doc["error"] = state.error
    return doc


@dataclass(slots=True)
class _Running:
    options: DeviceOptions
    task: asyncio.Task[None] | None = None
    driver: Driver | None = None
    """The opened driver instance, None while the device is down."""
    state: DeviceState | None = None
    waiters: list[asyncio.Future[int]] = field(default_factory=list)
    """`poll_now()` callers waiting for the next poll."""
    waker: asyncio.Future[bool] | None = None
    """The poll loop's sleep; set to False to end it early."""
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while `driver` is open."""


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
        self.on_state: StateListener | None = None
        """Called when a device goes up or down (device state upstream)."""

    def bind(self, group: asyncio.TaskGroup) -> None:
        """Device tasks are created in the agent's TaskGroup."""
        self._group = group

    @property
    def devices(self) -> dict[str, DeviceOptions]:
        """Options of the running devices by name."""
        return {name: r.options for name, r in self._running.items()}

    def driver(self, name: str) -> Driver | None:
        """The opened driver of a running device (for commands); None while it is down."""
        running = self._running.get(name)
        return running.driver if running is not None else None

    async def wait_open(self, name: str) -> Driver:
        """The device's driver once it is open (commands arriving while it connects)."""
        while True:
            running = self._running.get(name)
            if running is None:
                raise WriteRefused(f"unknown device '{name}'")
            if running.driver is not None:
                return running.driver
            await running.opened.wait()

    def state(self, name: str) -> DeviceState | None:
        """A device's last known state; None before its first poll or failure."""
        running = self._running.get(name)
        return running.state if running is not None else None

    async def poll_now(self, name: str) -> int:
        """Poll a polling device now, off its schedule; returns the readings it gave.

        The poll runs in the device's own loop (never two polls of one device at once);
        a poll already under way does not count, the next one does. Raises the poll's
        error, `WriteRefused` for an unknown or streaming device, `TransientError` while
        the device is down.
        """
        running = self._running.get(name)
        if running is None:
            raise WriteRefused(f"unknown device '{name}'")
        if running.driver is None:
            state = running.state
            why = f" ({state.kind}: {state.error})" if state and state.kind else ""
            raise TransientError(f"device '{name}' is down{why}; it is being retried",
                                 device=name)
        if not isinstance(running.driver, PollingDriver):
            raise WriteRefused(f"device '{name}' reports on its own; it cannot be polled")
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        running.waiters.append(waiter)
        if running.waker is not None and not running.waker.done():
            running.waker.set_result(False)
        return await waiter

    def _set_state(self, name: str, up: bool, kind: str | None = None,
                   error: str | None = None) -> None:
        running = self._running.get(name)
        if running is None:
            return
        old = running.state
        if old is not None and old.up == up and old.kind == kind:
            return
        running.state = state = DeviceState(up, now_ms(), kind, error)
        if self.on_state is not None:
            self.on_state(name, state)

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
        running = self._running[opts.name] = _Running(opts)
        running.task = self._group.create_task(self._device(opts, running),
                                               name=f"device[{opts.name}]")

    async def _stop(self, name: str) -> None:
        running = self._running.pop(name)
        assert running.task is not None
        await cancel_and_wait(running.task, self.log)
        _fail_waiters(running, TransientError(f"device '{name}' was stopped", device=name))
        self.metrics.forget_device(name)

    async def stop_all(self) -> None:
        """Stop every device (drivers closed), the first step of shutdown."""
        names = list(self._running)
        await asyncio.gather(*(self._stop(n) for n in names))

    # -- one device ----------------------------------------------------------------------------
    def _emit(self, running: _Running, on_success: Callable[[], None] | None = None
              ) -> Callable[[Sequence[Reading]], None]:
        name = running.options.name
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
            if running.state is None or not running.state.up:
                self._set_state(name, True)
            if on_success is not None:
                on_success()
            honour_cancellation()  # after every poll and batch (its readings kept)

        return emit

    async def _device(self, opts: DeviceOptions, running: _Running) -> None:
        info = self.drivers[opts.driver]
        assert info.cls is not None  # config validation refused unloadable drivers
        log = self.log.bind(device=opts.name, driver=opts.driver)
        ctx = DriverContext(device=opts.name, log=log, resources=self.resources,
                            metrics=self.metrics)
        backoff = Backoff(base=min(1.0, max(0.05, opts.interval)), cap=max(60.0, opts.interval))
        # a streaming device that delivers again has recovered: next failure starts small
        emit = self._emit(running, backoff.reset)
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
                running.driver = driver
                running.opened.set()
                if isinstance(driver, StreamingDriver):
                    await driver.run(emit)
                    log.warning("driver stream ended; restarting")
                elif isinstance(driver, PollingDriver):
                    await self._poll_loop(driver, running, emit, backoff)
                else:
                    raise TypeError(f"{type(driver).__name__} is neither a polling nor a "
                                    "streaming driver")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the supervisor boundary: log, count, retry
                failed = exc
            finally:
                running.driver = None
                running.opened.clear()
                if driver is not None:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(CLOSE_TIMEOUT):
                            await driver.close()
            up.set(0)
            kind = error_kind(failed) if failed else "ended"
            _fail_waiters(running, failed or TransientError("the driver stopped", device=opts.name))
            self._set_state(opts.name, False, kind,
                            (str(failed) or type(failed).__name__) if failed else None)
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

    async def _poll_loop(self, driver: PollingDriver, running: _Running,
                         emit: Callable[[Sequence[Reading]], None], backoff: Backoff) -> None:
        """Poll on the monotonic clock without drift; overruns skip ticks and are counted.

        A `poll_now()` wakes the loop for one extra poll that leaves the schedule alone.
        """
        loop = asyncio.get_running_loop()
        opts = running.options
        interval = opts.interval
        duration = self.metrics.poll_duration.labels(device=opts.name)
        overruns = self.metrics.poll_overruns.labels(device=opts.name)
        deadline = loop.time()
        room = self.room
        scheduled = True
        while True:
            if room is not None:
                await room()  # the buffer is behind: this poll waits (and may overrun)
            waiters, running.waiters = running.waiters, []
            started = loop.time()
            try:
                async with asyncio.timeout(opts.timeout):
                    readings = await driver.poll()
            except BaseException:
                running.waiters[:0] = waiters  # _device fails them with the error
                raise
            duration.observe(loop.time() - started)
            emit(readings)
            backoff.reset()
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(len(readings))
            # not held through the sleep below: at 100 devices x 100 registers that is 1 MB
            del readings, waiters
            now = loop.time()
            if scheduled:
                deadline += interval
                if now > deadline:
                    missed = int((now - deadline) // interval) + 1
                    overruns.inc(missed)
                    deadline += missed * interval
            if running.waiters:
                scheduled = False
                continue
            # asyncio.sleep, with a future poll_now() can end early (no task per sleep)
            waker = running.waker = loop.create_future()
            timer = loop.call_later(deadline - now, _wake, waker)
            try:
                scheduled = await waker
            finally:
                timer.cancel()
                running.waker = None


def _wake(waker: asyncio.Future[bool]) -> None:
    if not waker.done():
        waker.set_result(True)


def _fail_waiters(running: _Running, exc: BaseException) -> None:
    waiters, running.waiters = running.waiters, []
    for waiter in waiters:
        if not waiter.done():
            waiter.set_exception(exc)
