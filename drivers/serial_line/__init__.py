"""`driver: serial`: line-oriented sensors on a serial port (streamed or polled)."""

from drivers.serial_line.driver import SerialDriver
from drivers.serial_line.options import SerialOptions

__all__ = ["SerialDriver", "SerialOptions"]
