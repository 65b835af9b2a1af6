"""`driver: modem`: the gateway's 5G/LTE link (ModemManager or a Quectel AT port)."""

from drivers.modem.driver import ModemDriver, ModemOptions
from drivers.modem.model import ModemStatus

__all__ = ["ModemDriver", "ModemOptions", "ModemStatus"]
