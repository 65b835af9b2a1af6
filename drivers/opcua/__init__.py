"""`driver: opcua`: OPC UA servers (PLCs, production lines), polled or by subscription.

The driver (and asyncua with it) loads on first use of `OpcUaDriver`, so `parkgate opcua`
can say what is missing when the `opcua` extra is not installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .options import OpcUaOptions

if TYPE_CHECKING:
    from .driver import OpcUaDriver

__all__ = ["OpcUaDriver", "OpcUaOptions"]


def __getattr__(name: str) -> Any:
    if name != "OpcUaDriver":
        raise AttributeError(name)
    try:
        import asyncua  # noqa: F401, PLC0415 - fail here with the fix, not deep inside
    except ImportError as exc:
        raise ImportError("driver opcua needs asyncua: pip install 'parkgate[opcua]'") \
            from exc
    from .driver import OpcUaDriver  # noqa: PLC0415

    return OpcUaDriver
