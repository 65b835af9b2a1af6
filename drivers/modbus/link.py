"""What identifies a Modbus link, and what a caller's requests on it cost."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .options import RtuOverTcpTransport, RtuTransport, TcpTransport


@dataclass(slots=True)
class Tally:
    """What a caller's requests cost: requests on the wire, and failures by kind."""

    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        """Count one failed request."""
        self.errors[kind] = self.errors.get(kind, 0) + 1


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """Everything that identifies a link and must agree between devices sharing it."""

    kind: Literal["tcp", "rtu", "rtu-over-tcp"]
    target: str
    """host for TCP kinds, serial device for RTU."""
    port: int = 0
    baudrate: int = 9600
    parity: str = "N"
    bytesize: int = 8
    stopbits: int = 1
    delay: float = 0.0
    connect_timeout: float = 3.0
    reconnect_max: float = 30.0

    @classmethod
    def of(cls, t: TcpTransport | RtuTransport | RtuOverTcpTransport) -> LinkSettings:
        """Settings of a device's `transport:`."""
        if t.type == "rtu":
            return cls("rtu", t.port, baudrate=t.baudrate, parity=t.parity,
                       bytesize=t.bytesize, stopbits=t.stopbits, delay=t.delay,
                       connect_timeout=t.connect_timeout, reconnect_max=t.reconnect_max)
        return cls(t.type, t.host, port=t.port, delay=t.delay,
                   connect_timeout=t.connect_timeout, reconnect_max=t.reconnect_max)

    @property
    def key(self) -> tuple[str | int, ...]:
        """Resource-pool key: one bus per serial port, one per TCP endpoint and framing."""
        if self.kind == "rtu":
            return ("modbus-serial", self.target)
        framer = "rtu" if self.kind == "rtu-over-tcp" else "socket"
        return ("modbus-tcp", self.target, self.port, framer)

    @property
    def label(self) -> str:
        """Short name for logs and the `bus` metric label."""
        if self.kind == "rtu":
            return f"rtu:{self.target}"
        return f"{self.kind}://{self.target}:{self.port}"

    def describe(self) -> str:
        """Label plus line settings."""
        if self.kind == "rtu":
            return f"{self.label} {self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"
        return self.label

    def differences(self, other: LinkSettings) -> list[str]:
        """`key: mine vs theirs` for every setting that differs."""
        return [f"{name}: {getattr(self, name)} vs {getattr(other, name)}"
                for name in self.__slots__ if getattr(self, name) != getattr(other, name)]
