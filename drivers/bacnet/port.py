"""What identifies the gateway's BACnet port, and what it learns about devices (no I/O)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .objects import ObjectRef
from .options import Network

PropertyValue = Any
"""A decoded property: float, int, bool, str, None, a list of flags, or `AnswerError`."""


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """What identifies the gateway's BACnet port and must agree between its devices."""

    address: str
    port: int
    device_id: int
    bbmd: str | None = None
    ttl: int = 300

    @classmethod
    def of(cls, network: Network) -> LinkSettings:
        """Settings of a device's `network:` block."""
        foreign = network.foreign
        return cls(network.address, network.port, network.device_id,
                   foreign.bbmd if foreign else None, int(foreign.ttl) if foreign else 300)

    @property
    def key(self) -> tuple[str, int]:
        """Resource-pool key: one stack per UDP port."""
        return ("bacnet", self.port)

    @property
    def label(self) -> str:
        """How logs and errors name the port."""
        return f"BACnet port {self.address.split('/')[0]}:{self.port}"

    def differences(self, other: LinkSettings) -> list[str]:
        """Human lines for each setting that differs."""
        out = []
        for name in ("address", "device_id", "bbmd", "ttl"):
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                out.append(f"{name}: {a!r} vs {b!r}")
        return out


@dataclass(slots=True)
class Capabilities:
    """What a device (by address) turned out to support, remembered across reconnects."""

    rpm: bool = True
    max_per_request: int | None = None
    no_cov: set[ObjectRef] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class IAm:
    """A device that answered Who-Is."""

    instance: int
    address: str
    vendor: int
    max_apdu: int
    segmentation: str


CovCallback = Callable[[str, PropertyValue], None]
"""Called with (property name, value) for each property of a COV notification."""


IAmCallback = Callable[[int], None]
"""Called with the device instance of an I-Am heard from a device's address."""
