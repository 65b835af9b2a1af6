"""`driver: ble`: BLE sensors by passive scanning (BTHome, Ruuvi, ATC/pvvx, iBeacon) or GATT.

bleak is imported only when a BLE device runs or a `parkgate ble` command is used.
"""

from drivers.ble.driver import BleDriver
from drivers.ble.options import BleOptions

__all__ = ["BleDriver", "BleOptions"]
