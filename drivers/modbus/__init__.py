"""`driver: modbus`: Modbus TCP, RTU and RTU-over-TCP meters with profiles and read planning."""

from .driver import ModbusDriver
from .options import ModbusOptions, RtuOverTcpTransport, RtuTransport, TcpTransport
from .registermap import RegisterSpec

__all__ = ["ModbusDriver", "ModbusOptions", "RegisterSpec", "RtuOverTcpTransport",
           "RtuTransport", "TcpTransport"]
