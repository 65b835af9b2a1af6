"""Writes to BACnet objects (`Commandable`): present-value at a priority, relinquish, verify."""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.driver import Commandable, DriverContext, WriteLimits
from gateway.errors import DeviceRejected, VerifyFailed, WriteRefused
from gateway.model import Reading, Value

from .answers import AnswerError
from .objects import ObjectRef, encode, same
from .options import BacnetOptions
from .port import PropertyValue

if TYPE_CHECKING:
    from .driver import _Point
    from .link import Link

T = TypeVar("T")


class BacnetWrites(Commandable):
    """The command side of `BacnetDriver`; reads go through the driver's own read path."""

    # provided by BacnetDriver (declared here for the type checker)
    o: BacnetOptions
    ctx: DriverContext
    _by_name: dict[str, _Point]

    def _need_link(self) -> Link:
        raise NotImplementedError

    async def _request(self, call: Awaitable[T], service: str) -> T:
        raise NotImplementedError

    async def _read_one(self, link: Link, point: _Point
                        ) -> dict[tuple[ObjectRef, str], PropertyValue]:
        raise NotImplementedError

    def _reading(self, point: _Point, got: Mapping[tuple[ObjectRef, str], Any],
                 ts: int) -> Reading:
        raise NotImplementedError

    def writable(self) -> Mapping[str, WriteLimits]:
        """Objects with a `write:` block."""
        return {s.name: s.write for s in self.o.objects if s.write is not None}

    async def write(self, point: str, value: Value) -> Value | None:
        """present-value at the object's priority; None relinquishes that priority."""
        spec = self._by_name.get(point)
        if spec is None or spec.spec.write is None:
            raise WriteRefused(f"{point}: not a writable object of this device")
        link = self._need_link()
        ref = spec.ref
        encoded: float | int | str | None = None
        if value is not None:
            states = None
            if ref.kind == "multistate":
                states = await self._states(link, spec)
            encoded = encode(ref.kind, value, states=states)
        try:
            await self._request(link.write(self.o.address, ref, ref.kind, encoded,
                                           spec.priority, reply_timeout=self.o.request_timeout),
                                "write")
        except AnswerError as exc:
            raise DeviceRejected(f"{point} ({ref}): {exc}", code=exc.number,
                                 device=self.o.name, address=str(ref)) from None
        self.ctx.log.info("object written", point=point, object=str(ref), value=value,
                          priority=spec.priority)
        verify = spec.spec.write.verify
        if verify is False:
            return None
        back = (await self.read_point(point)).value
        if encoded is not None and not same(ref.kind, encoded, back):
            raise VerifyFailed(f"{point} ({ref}): wrote {value!r} at priority {spec.priority} "
                               f"but present-value reads {back!r} (a higher priority may be "
                               "in control)", device=self.o.name, address=str(ref))
        return back

    async def _states(self, link: Link, point: _Point) -> int | None:
        try:
            got = await self._request(link.read(self.o.address, point.ref, "number-of-states",
                                                reply_timeout=self.o.request_timeout,
                                                retries=self.o.retries), "read")
        except AnswerError:
            return None
        return got if isinstance(got, int) else None

    async def read_point(self, point: str) -> Reading:
        """Read one object now."""
        spec = self._by_name.get(point)
        if spec is None:
            raise WriteRefused(f"{point}: no such object on this device")
        link = self._need_link()
        got = await self._read_one(link, spec)
        return self._reading(spec, got, self.ctx.clock())
