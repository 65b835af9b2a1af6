"""What /readyz and `STATUS=` report about the uplink."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class UplinkState:
    """The uplink's connection as the health endpoints and systemd see it."""

    connected: bool = False
    broker: str | None = None
    last_error: str | None = None
    connected_since: float | None = None
    published: int = 0
    history: list[str] = field(default_factory=list)
