"""The metrics of one Modbus bus, or no-ops for a bus without a registry (the CLI)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gateway.metrics import Metrics


class _Settable(Protocol):
    def set(self, value: float) -> None: ...


class _Countable(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class _NoMeter:
    """Stands in for a metric when the bus has no registry (CLI): every call is a no-op."""

    def set(self, value: float) -> None:
        """Nothing."""

    def inc(self, amount: float = 1) -> None:
        """Nothing."""


class BusMetrics:
    """The per-bus metrics, or no-ops (`BusMetrics.none()`) for a bus without a registry."""

    __slots__ = ("busy", "connect_errors", "garbage", "link_up", "reconnects")

    def __init__(self, link_up: _Settable, reconnects: _Countable, connect_errors: _Countable,
                 garbage: _Countable, busy: _Countable) -> None:
        self.link_up = link_up
        self.reconnects = reconnects
        self.connect_errors = connect_errors
        self.garbage = garbage
        self.busy = busy

    @classmethod
    def none(cls) -> BusMetrics:
        """Metrics that count nothing."""
        n = _NoMeter()
        return cls(n, n, n, n, n)

    @classmethod
    def create(cls, metrics: Metrics, label: str) -> BusMetrics:
        """The bus's series in `metrics`, labelled `bus=label`."""
        m = metrics
        return cls(
            link_up=m.gauge("modbus_link_up", "1 while the Modbus link (port or connection) "
                            "is open", ["bus"]).labels(bus=label),
            reconnects=m.counter("modbus_reconnects", "Modbus links re-opened after a loss",
                                 ["bus"]).labels(bus=label),
            connect_errors=m.counter("modbus_connect_errors", "Failed attempts to open a "
                                     "Modbus link", ["bus"]).labels(bus=label),
            garbage=m.counter("modbus_garbage", "Unexpected or garbled data received on a "
                              "Modbus link (noise, late or foreign replies)",
                              ["bus"]).labels(bus=label),
            busy=m.counter("modbus_bus_busy_seconds", "Time a Modbus link spent in "
                           "transactions", ["bus"]).labels(bus=label),
        )
