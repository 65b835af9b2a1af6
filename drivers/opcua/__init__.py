"""`driver: opcua`: OPC UA servers (PLCs, production lines), polled or by subscription."""

from .driver import OpcUaDriver
from .options import OpcUaOptions

__all__ = ["OpcUaDriver", "OpcUaOptions"]
