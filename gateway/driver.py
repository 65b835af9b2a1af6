"""The driver contract: what a protocol plug-in implements and what the core gives it.

A driver is a class registered in the entry-point group `parkgate.drivers`:

    [project.entry-points."parkgate.drivers"]
    modbus = "drivers.modbus:ModbusDriver"

It declares `Options`, a pydantic model of its YAML keys (subclass of `DeviceOptions`,
which already holds `name`, `driver`, `interval`, `timeout`), and implements either

* `PollingDriver`: `open()`, `poll() -> Sequence[Reading]`, `close()`; the supervisor
  calls `poll()` every `interval` on the monotonic clock, under `timeout`; or
* `StreamingDriver`: `open()`, `run(emit)`, `close()`; `run` pushes readings as they come
  (BLE adverts, a sensor that talks on its own) until it is cancelled.

Errors: raise `gateway.errors.TransientError` (retried with backoff),
`DeviceConfigError` (retried at the maximum backoff) or `ProtocolError`. Anything else is
caught at the supervisor boundary, logged with a traceback and retried as well. A `poll()`
may also return readings with `quality="bad"` for single points that failed while the rest
of the device answered.

Devices that share hardware (several meters on one RS-485 port, BLE sensors on one
adapter) share it through `DriverContext.resources`, a reference-counted pool keyed by
whatever identifies the hardware (`("serial", "/dev/ttyUSB0")`).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Awaitable, Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from structlog.typing import FilteringBoundLogger

from gateway.errors import WriteRefused
from gateway.model import Reading, Value, now_ms
from gateway.units import Duration

if TYPE_CHECKING:
    from gateway.metrics import Metrics

ENTRY_POINT_GROUP = "parkgate.drivers"
COMMANDS_GROUP = "parkgate.commands"

Emit = Callable[[Sequence[Reading]], None]
"""Hands readings to the supervisor; cheap and never blocks (the buffer batches them)."""


class StrictModel(BaseModel):
    """Base for nested option models: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceOptions(BaseModel):
    """Keys every device has. A driver's `Options` subclasses this and adds its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$",
                      description="Unique device name; appears in topics, metrics and logs.")
    driver: str = Field(description="Which driver reads this device.")
    interval: Duration = Field(default=5.0, gt=0,
                               description="Time between polls (polling drivers).")
    timeout: Duration = Field(default=3.0, gt=0,
                              description="Longest one poll (or connect) may take.")
    enabled: bool = Field(default=True, description="false keeps the entry but does not run it.")


class SharedResource(Protocol):
    """Anything kept in the resource pool: closed when its last user releases it."""

    async def aclose(self) -> None: ...


R = TypeVar("R", bound=SharedResource)


class ResourcePool:
    """Reference-counted shared hardware (a serial bus, a TCP link, a BLE scanner)."""

    def __init__(self) -> None:
        self._items: dict[Hashable, tuple[SharedResource, int]] = {}
        self._lock = asyncio.Lock()

    async def acquire(self, key: Hashable, factory: Callable[[], R | Awaitable[R]]) -> R:
        """The resource under `key`, created by `factory` on first use."""
        async with self._lock:
            if key in self._items:
                item, refs = self._items[key]
                self._items[key] = (item, refs + 1)
                return item  # type: ignore[return-value]
            made = factory()
            item = await made if isinstance(made, Awaitable) else made
            self._items[key] = (item, 1)
            return item

    async def release(self, key: Hashable) -> None:
        """Drop one reference; closes the resource when it was the last."""
        async with self._lock:
            if key not in self._items:
                return
            item, refs = self._items[key]
            if refs > 1:
                self._items[key] = (item, refs - 1)
                return
            del self._items[key]
        await item.aclose()

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True, slots=True)
class DriverContext:
    """What the core hands a driver: its logger, shared hardware, metrics and clock."""

    device: str
    log: FilteringBoundLogger
    resources: ResourcePool
    metrics: Metrics
    clock: Callable[[], int] = field(default=now_ms)
    """Epoch milliseconds for `Reading.ts`."""


class Driver(abc.ABC):  # noqa: B024 - abstract through PollingDriver/StreamingDriver
    """Base of every driver; use `PollingDriver` or `StreamingDriver`."""

    Options: ClassVar[type[DeviceOptions]] = DeviceOptions
    """The driver's config model; the supervisor validates YAML against it."""

    def __init__(self, options: Any, ctx: DriverContext) -> None:
        self.options = options
        self.ctx = ctx

    async def open(self) -> None:  # noqa: B027 - optional hook, most drivers need it
        """Connect or acquire shared hardware; raise `TransientError` to be retried."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what `open` took. Must not raise; called also after a failed `open`."""


class PollingDriver(Driver):
    """A device read on a schedule."""

    @abc.abstractmethod
    async def poll(self) -> Sequence[Reading]:
        """Read the device once and return its readings."""


class StreamingDriver(Driver):
    """A device that talks on its own (adverts, pushed lines)."""

    @abc.abstractmethod
    async def run(self, emit: Emit) -> None:
        """Push readings through `emit` until cancelled; raise to be restarted."""


class WriteLimits(StrictModel):
    """A point's `write:` block. A point without one cannot be written, whatever is asked.

    The core checks these before a driver is called (see `Commandable`); a driver adds only
    what its encoding needs (a value that does not fit the register type is refused there).
    """

    min: float | None = Field(default=None, description="Smallest value accepted.")
    max: float | None = Field(default=None, description="Largest value accepted.")
    values: tuple[Value, ...] | None = Field(
        default=None, description="The only values accepted (instead of min/max).")
    min_interval: Duration | None = Field(
        default=None, gt=0, description="Least time between two writes to this point.")
    verify: bool | None = Field(
        default=None, description="Read back after writing; default: on where readable.")


class Commandable:
    """What a driver implements (next to `PollingDriver`/`StreamingDriver`) to take commands.

    The command path (gateway side) owns authentication, expiry, de-duplication, limits,
    `min_interval`, one-command-at-a-time per device and the audit; a driver only does
    the device I/O. Errors map to reply statuses: `WriteRefused` -> `refused`;
    `DeviceRejected`, `VerifyFailed`, `TransientError`, `TimeoutError` -> `failed`.
    """

    def writable(self) -> Mapping[str, WriteLimits]:
        """Points that accept writes, by name, with their `write:` block (from the YAML)."""
        return {}

    async def write(self, point: str, value: Value) -> Value | None:
        """Encode `value` with the point's own type, order, scale and offset and write it.

        When the point's `verify` is on (default where the point can be read), read it back,
        raise `VerifyFailed` if the device holds something else, and return the value read;
        otherwise return None. Only called for points in `writable()`, within limits.
        """
        raise WriteRefused(f"{point}: this device takes no writes")

    async def read_point(self, point: str) -> Reading:
        """Read one point now (action `read`); `WriteRefused` for an unknown point."""
        raise WriteRefused(f"{point}: this device cannot read a single point on demand")

    async def sync_time(self) -> None:
        """Set the device's clock to the gateway's (action `sync_time`)."""
        raise WriteRefused("this device has no clock to set")


@dataclass(frozen=True, slots=True)
class DriverInfo:
    """A registered driver, or the reason it could not be loaded."""

    name: str
    cls: type[Driver] | None
    error: str | None = None


class DriverRegistry(Mapping[str, DriverInfo]):
    """The drivers of the `parkgate.drivers` entry-point group, each imported on first use.

    Names come from package metadata; a driver module (and its protocol library: pymodbus,
    bleak, dbus-fast) is imported only when a config uses it, which keeps a gateway with
    two Modbus meters from paying for BLE in memory and start-up time. A driver that fails
    to import is reported with its error instead of taking the whole agent down.
    """

    def __init__(self) -> None:
        self._points = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
        self._loaded: dict[str, DriverInfo] = {}

    def __getitem__(self, name: str) -> DriverInfo:
        info = self._loaded.get(name)
        if info is None:
            ep = self._points[name]
            try:
                cls = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plug-in must not stop others
                info = DriverInfo(name, None, f"{type(exc).__name__}: {exc}")
            else:
                if isinstance(cls, type) and issubclass(cls, Driver):
                    info = DriverInfo(name, cls)
                else:
                    info = DriverInfo(name, None, f"{ep.value} is not a Driver subclass")
            self._loaded[name] = info
        return info

    def __iter__(self) -> Iterator[str]:
        return iter(self._points)

    def __len__(self) -> int:
        return len(self._points)


def discover_drivers() -> DriverRegistry:
    """All installed drivers, imported lazily (see `DriverRegistry`)."""
    return DriverRegistry()
